"""The one exception type for user mistakes.

A `UserError` carries a one-line message that names the problem and the fix. The CLI prints it
without a traceback and exits with code 2; library users catch it like any `ValueError`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["UserError", "Terminated", "SuspectResult", "check_fields"]


class UserError(ValueError):
    """A mistake in what the user asked for (bad name, bad value, missing file): never a bug."""


class SuspectResult(UserWarning):
    """A result that should not be trusted (a trial's `warnings`: near-chance accuracy, a collapsed derived
    architecture), raised as a Python warning by the one-line API."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: handled like Ctrl-C (the running trial is failed and queued again)."""


def check_fields(obj: Any, hints: dict[str, str] | None = None) -> None:
    """Every field of the dataclass `obj` holds a value of its annotated type, else a UserError naming the
    field, the value and (from `hints`, by field name) the fix. `float` takes ints, `int` takes no bools,
    `Mapping`/`Sequence` are checked as containers; `Any` and unresolvable annotations are skipped."""
    import dataclasses
    import typing

    try:
        types = typing.get_type_hints(type(obj))
    except Exception:  # an annotation that cannot be resolved here: nothing to check against
        return
    owner = type(obj).__name__
    for f in dataclasses.fields(obj):
        expected = types.get(f.name, Any)
        value = getattr(obj, f.name)
        if not _matches(value, expected):
            fix = (hints or {}).get(f.name, f"give {_describe(expected)}")
            raise UserError(f"{owner} field `{f.name}` must be {_describe(expected)}, but got {f.name}={value!r} "
                            f"({type(value).__name__}); {fix}")


def _matches(value: Any, expected: Any) -> bool:
    import collections.abc
    import types
    import typing

    if expected is Any:
        return True
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is not None:
        expected = origin
    if expected is tuple:  # a sequence of names: a list is as good as a tuple
        return isinstance(value, (tuple, list))
    if expected in (collections.abc.Mapping, dict):
        return isinstance(value, collections.abc.Mapping)
    try:
        return isinstance(value, expected)
    except TypeError:
        return True


def _describe(expected: Any) -> str:
    import types
    import typing

    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(expected)
        return " or ".join(_describe(a) for a in args)
    if expected is type(None):
        return "None"
    if origin is not None:
        expected = origin
    names = {int: "an int", float: "a number", str: "a string", bool: "true/false", tuple: "a list",
             dict: "a dict"}
    if expected in names:
        return names[expected]
    if getattr(expected, "__name__", "") == "Mapping":
        return "a dict"
    return f"a {getattr(expected, '__module__', '').split('.')[0]}.{getattr(expected, '__qualname__', expected)}" \
        if getattr(expected, "__module__", "").startswith(("nasopt", "optuna")) else f"a {expected!r}"
