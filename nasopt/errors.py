"""The one exception type for user mistakes.

A `UserError` carries a one-line message that names the problem and the fix. The CLI prints it
without a traceback and exits with code 2; library users catch it like any `ValueError`.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(ValueError):
    """A mistake in what the user asked for (bad name, bad value, missing file): never a bug."""
