"""Gradient (one-shot) methods: each run is one trial of the study, beside the sampled trials.

    study = nasopt.StudySpec(name="mnist1d", space=Conv1dSpace(), dataset="mnist1d",
                             strategy=[nasopt.oneshot.DARTS(epochs=20), nasopt.oneshot.DARTS(partial_channels=4)])
"""

from nasopt.oneshot._registry import STRATEGIES, make_strategy, strategy_classes
from nasopt.oneshot.controller import Controller
from nasopt.oneshot.darts import DARTS
from nasopt.oneshot.enas import ENAS
from nasopt.oneshot.mixed import MixedChooser, MixedOp, Supernet
from nasopt.oneshot.proxyless import ProxylessNAS

__all__ = ["DARTS", "ProxylessNAS", "ENAS", "Controller", "MixedChooser", "MixedOp", "Supernet", "STRATEGIES",
           "make_strategy", "strategy_classes"]
