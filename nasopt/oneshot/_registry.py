"""The gradient methods by name (`--set strategy=NAME`, YAML `strategy: {name: ...}`, the one-line API),
beside the methods they list."""

from __future__ import annotations

import importlib
from typing import Any

from nasopt.errors import UserError

__all__ = ["STRATEGIES", "make_strategy", "strategy_classes"]

# name -> ("module:Class", the settings that make the variant)
STRATEGIES: dict[str, tuple[str, dict[str, Any]]] = {
    "darts": ("nasopt.oneshot.darts:DARTS", {}),
    "darts_2nd": ("nasopt.oneshot.darts:DARTS", {"unrolled": True}),
    "pc_darts": ("nasopt.oneshot.darts:DARTS", {"partial_channels": 4}),
    "proxyless": ("nasopt.oneshot.proxyless:ProxylessNAS", {}),
    "enas": ("nasopt.oneshot.enas:ENAS", {}),
}


def strategy_classes() -> list[Any]:
    """The classes behind STRATEGIES, each once."""
    paths = dict.fromkeys(path for path, _ in STRATEGIES.values())
    return [getattr(importlib.import_module(p.split(":")[0]), p.split(":")[1]) for p in paths]


def make_strategy(name: str, **kwargs: Any) -> Any:
    """A gradient method by name with its default settings, updated by `kwargs`."""
    if name not in STRATEGIES:
        raise UserError(f"unknown strategy {name!r}; gradient methods: {', '.join(STRATEGIES)} "
                        "(samplers go in --sampler)")
    path, defaults = STRATEGIES[name]
    module, cls = path.split(":")
    return getattr(importlib.import_module(module), cls)(**{**defaults, **kwargs})
