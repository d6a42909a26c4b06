"""Search spaces, one per module (installed as `nasopt.search_spaces`).

Each space is a small object with `suggest`, `build`, `distributions`, `encode` and `describe`
(see `nasopt.space.SearchSpace`). `SPACES` below names them, beside what it lists (the CLI, YAML
studies and the one-line API take spaces by these names); the engine never imports them.
"""

from __future__ import annotations

import importlib
from typing import Any

from nasopt.errors import UserError

__all__ = ["SPACES", "DENSE_SPACES", "make_space"]

SPACES = {
    "nano": "nasopt.search_spaces.nano:NanoSpace",
    "mobile": "nasopt.search_spaces.mobile:MobileSpace",
    "layers": "nasopt.search_spaces.layers:LayersSpace",
    "nb201": "nasopt.search_spaces.nb201:NB201Space",
    "darts_cell": "nasopt.search_spaces.darts_cell:DartsCellSpace",
    "conv1d": "nasopt.search_spaces.conv1d:Conv1dSpace",
    "micro": "nasopt.search_spaces.micro:MicroSpace",
}
# the spaces that build a dense (per-position) head for a task of kind "dense" (nasopt.space.DenseHead);
# the others refuse one in `build`
DENSE_SPACES = ("nano", "layers", "nb201", "darts_cell", "conv1d", "micro")


def make_space(name: str, **kwargs: Any) -> Any:
    """The space called `name` (a key of SPACES), with its default settings updated by `kwargs`."""
    if name not in SPACES:
        raise UserError(f"unknown space {name!r}; known spaces: {', '.join(SPACES)}")
    module, cls = SPACES[name].split(":")
    return getattr(importlib.import_module(module), cls)(**kwargs)
