"""`load_object("module:function")`: the user's code named in a study file, `--set` or YAML (a leaf: imports
nothing of nasopt but its errors). The current folder is importable, as it is for `python -m`."""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Any

from nasopt.errors import UserError

__all__ = ["load_object", "named", "qualname"]

_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"


def load_object(path: str, what: str) -> Any:
    """The object `path` ("package.module:attr.sub") names; `what` says what it is for in messages."""
    module_name, sep, attr = str(path).partition(":")
    if not sep or not re.fullmatch(_DOTTED, module_name) or not re.fullmatch(_DOTTED, attr):
        raise UserError(f"{what} {path!r} is not of the form 'module:function'; give e.g. 'mydata:make_datasets' "
                        "(a module importable from the current folder or PYTHONPATH, and a name in it)")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:
        first = str(e).splitlines()[0][:160] if str(e) else ""
        raise UserError(f"{what} {path!r}: cannot import module {module_name!r} ({type(e).__name__}: {first}); "
                        "run from the folder that holds it or add that folder to PYTHONPATH") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"{what} {path!r}: {module_name} has no {attr!r}; check the name after the colon")
        obj = getattr(obj, part)
    return obj


def named(value: Any, what: str) -> Any:
    """`value` itself, or the object it names when it is a 'module:function' string."""
    return load_object(value, what) if isinstance(value, str) else value


def qualname(value: Any) -> str | None:
    """How a study records the user's code: the 'module:function' string as given, `module:qualname` of a
    function or class, the class's of an object (a torchmetrics metric); None for None."""
    if value is None or isinstance(value, str):
        return value
    target = value if hasattr(value, "__qualname__") else type(value)
    return f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', type(value).__name__)}"
