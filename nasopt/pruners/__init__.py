"""Pruning from validation-accuracy curves, in single- AND multi-objective studies.

Optuna's `Trial.report`/`should_prune` raise in multi-objective studies, so these pruners read the
per-epoch curves nasopt stores for every trial (the `curve` user attribute) instead of intermediate
values. The runner asks the study's pruner after every epoch; a pruned trial ends PRUNED with the
pruner's reason in its `pruned_reason` attribute. In single-objective studies Optuna's own pruners
(`optuna.pruners.MedianPruner`, ...) keep working unchanged through `StudySpec(pruner=...)`. `Screen`
prunes before training instead, from a zero-cost proxy (`nasopt.measure.zero_cost`).
"""

from __future__ import annotations

from typing import Any

from nasopt.errors import UserError
from nasopt.pruners._base import CurvePruner, score, val_curves
from nasopt.pruners._curve import EarlyKill, Hyperband, MedianStop, SuccessiveHalving
from nasopt.pruners._screen import Screen

__all__ = ["CurvePruner", "EarlyKill", "MedianStop", "SuccessiveHalving", "Hyperband", "Screen", "PRUNERS",
           "make_pruner", "val_curves", "score"]

PRUNERS: dict[str, Any] = {
    "none": None,
    "early_kill": EarlyKill,
    "median": MedianStop,
    "halving": SuccessiveHalving,
    "hyperband": Hyperband,
    "screen": Screen,  # zero-cost screening before training (naswot, bottom half, after 10 trials)
}


def make_pruner(name: str, *, max_epochs: int | None = None) -> CurvePruner | None:
    """The pruner called `name` with its default settings (`none` gives no pruner)."""
    if name not in PRUNERS:
        raise UserError(f"unknown pruner {name!r}; known pruners: {', '.join(PRUNERS)}")
    cls = PRUNERS[name]
    if cls is None:
        return None
    if cls is Hyperband and max_epochs is not None:
        return Hyperband(max_epochs=max_epochs)
    return cls()
