"""Gradient (one-shot) methods: each run is one trial of the study, beside the sampled trials.

    study = nasopt.StudySpec(name="mnist1d", space=Conv1dSpace(), dataset="mnist1d",
                             strategy=[nasopt.oneshot.DARTS(epochs=20), nasopt.oneshot.DARTS(partial_channels=4)])

The methods are imported on first use (PEP 562): the names in STRATEGIES are read without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nasopt._lazy import lazy_exports
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


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY, submodules=True)  # nasopt.oneshot.darts too
