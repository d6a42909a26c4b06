"""Gradient (one-shot) methods: each run is one trial of the study, beside the sampled trials.

    study = nasopt.StudySpec(name="mnist1d", space=Conv1dSpace(), dataset="mnist1d",
                             strategy=[nasopt.oneshot.DARTS(epochs=20), nasopt.oneshot.DARTS(partial_channels=4)])

The methods are imported on first use (PEP 562): the names in STRATEGIES are read without torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from nasopt.oneshot._registry import STRATEGIES, make_strategy, strategy_classes

__all__ = ["DARTS", "ProxylessNAS", "ENAS", "Controller", "MixedChooser", "MixedOp", "Supernet", "STRATEGIES",
           "make_strategy", "strategy_classes"]

# public name -> the module that defines it
_LAZY = {"DARTS": "nasopt.oneshot.darts", "ProxylessNAS": "nasopt.oneshot.proxyless", "ENAS": "nasopt.oneshot.enas",
         "Controller": "nasopt.oneshot.controller", "MixedChooser": "nasopt.oneshot.mixed",
         "MixedOp": "nasopt.oneshot.mixed", "Supernet": "nasopt.oneshot.mixed"}

if TYPE_CHECKING:
    from nasopt.oneshot.controller import Controller
    from nasopt.oneshot.darts import DARTS
    from nasopt.oneshot.enas import ENAS
    from nasopt.oneshot.mixed import MixedChooser, MixedOp, Supernet
    from nasopt.oneshot.proxyless import ProxylessNAS


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups are plain attribute reads
        return value
    if not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")  # nasopt.oneshot.darts after `import nasopt.oneshot`
    raise AttributeError(f"module 'nasopt.oneshot' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
