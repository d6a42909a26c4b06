"""Search spaces, one per module (installed as `nasopt.search_spaces`).

Each space is a small object with `suggest`, `build`, `distributions`, `encode` and `describe`
(see `nasopt.space.SearchSpace`). The CLI's name table lists them; the engine never imports them.
"""
