"""The one rule for turning settings into plain JSON (a leaf: imports nothing of nasopt)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def plain(value: Any, *, strict: bool = False) -> Any:
    """JSON-like, recursively: tuples to lists, mappings to dicts with str keys. Anything else (a path, an
    enum) becomes its str, or raises TypeError with `strict=True` (where only plain JSON may be kept)."""
    if isinstance(value, (list, tuple)):
        return [plain(v, strict=strict) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v, strict=strict) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if strict:
        raise TypeError(f"{type(value).__name__} is not plain JSON")
    return str(value)
