"""Screening before training: prune a candidate whose zero-cost proxy ranks in the bottom share of the study's.

`Screen(proxy="naswot", bottom=0.5, warmup=10)` scores every candidate on one training batch at
initialisation (`nasopt.measure.zero_cost`, milliseconds) and prunes it before any training when its score
ranks in the bottom `bottom` share of the scores the study has seen so far: every other trial's stored
proxy value (running, complete or pruned, from every worker: they are read from the storage), each
architecture once. The first `warmup` scored trials are never screened. It reads user attrs, not Optuna's
intermediate values, so it works in multi-objective studies, where `Trial.should_prune` raises.

After screening, `then` (a curve pruner such as `MedianStop()`) decides after each epoch as it would alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import optuna
from optuna.trial import TrialState

from nasopt.errors import UserError
from nasopt.pruners._base import CurvePruner

__all__ = ["Screen", "seen_scores"]


def seen_scores(study: optuna.Study, proxy: str, *, exclude: int | None = None) -> list[float]:
    """The stored `proxy` values of the study's trials (not `exclude`, not reuses: one per architecture)."""
    states = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
    values = []
    for t in study.get_trials(deepcopy=False, states=states):
        value = t.user_attrs.get(proxy)
        if t.number != exclude and "reused_from" not in t.user_attrs and isinstance(value, (int, float)):
            values.append(float(value))
    return values


class Screen(CurvePruner):
    """Prune before training when `proxy` ranks in the bottom `bottom` share (0 < bottom < 1) of the study's
    scores, once `warmup` trials have been scored; then follow `then` (a curve pruner) after each epoch."""

    def __init__(self, *, proxy: str = "naswot", bottom: float = 0.5, warmup: int = 10,
                 then: CurvePruner | None = None) -> None:
        from nasopt.measure._proxies import check_names  # on use: the proxies' module loads torch

        check_names([proxy])
        if isinstance(bottom, bool) or not isinstance(bottom, (int, float)) or not 0 < bottom < 1:
            raise UserError(f"`0 < bottom < 1` must hold (the share screened out), but got bottom={bottom!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise UserError(f"`warmup >= 0` must hold (trials scored before screening starts), but got "
                            f"warmup={warmup!r}")
        if then is not None and not isinstance(then, CurvePruner):
            raise UserError(f"`then` must be a nasopt curve pruner (e.g. nasopt.pruners.MedianStop()), but got {then!r}")
        self.proxy, self.bottom, self.warmup, self.then = proxy, float(bottom), warmup, then

    def screen(self, study: optuna.Study, trial_number: int, value: float) -> str | None:
        """The reason to prune the trial scoring `value` before training, or None to train it."""
        seen = seen_scores(study, self.proxy, exclude=trial_number)
        if len(seen) < self.warmup or not seen:
            return None
        # mid-rank: the share of seen scores below `value`, ties counting half
        rank = (sum(v < value for v in seen) + 0.5 * sum(v == value for v in seen)) / len(seen)
        if rank < self.bottom:
            return (f"screened before training: {self.proxy}={value:.6g} ranks at {rank:.0%} of {len(seen)} "
                    f"scored trials, in the bottom {self.bottom:.0%}")
        return None

    def prune(self, study: optuna.Study, trial_number: int, curve: Sequence[float]) -> str | None:
        return self.then.prune(study, trial_number, curve) if self.then is not None else None
