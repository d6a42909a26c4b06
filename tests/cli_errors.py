"""The CLI's bad-input contract, shared by the command tests: exit 2 and one line naming the problem."""

from __future__ import annotations

import pytest

from nasopt.cli.main import main


def user_error(capsys: pytest.CaptureFixture[str], argv: list[str], *words: str) -> str:
    """Run `nasopt ARGV` in-process: exit 2 and exactly one error line containing `words`."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nasopt: error: "), err
    for word in words:
        assert word in err[0], (word, err[0])
    return err[0]
