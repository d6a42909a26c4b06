"""Early kill, median stopping, successive halving and Hyperband over validation-accuracy curves."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import optuna

from nasopt.errors import UserError
from nasopt.pruners._base import CurvePruner, val_curves


def _check(rule: bool, message: str) -> None:
    if not rule:
        raise UserError(message)


class EarlyKill(CurvePruner):
    """Stop a trial whose validation accuracy is below `threshold` after epoch `epoch`.

    The NAS-from-scratch habit ("killed below 0.3 at epoch 3"): a network that has not left chance
    level after a few epochs will not become the best one.
    """

    def __init__(self, *, threshold: float = 0.3, epoch: int = 3) -> None:
        _check(0.0 <= threshold <= 1.0, f"`0 <= threshold <= 1` must hold, but got threshold={threshold}")
        _check(isinstance(epoch, int) and epoch >= 1, f"`epoch >= 1` must hold, but got epoch={epoch}")
        self.threshold, self.epoch = threshold, epoch

    def prune(self, study: optuna.Study, trial_number: int, curve: Sequence[float]) -> str | None:
        if len(curve) == self.epoch and curve[-1] < self.threshold:
            return f"early kill: val_acc={curve[-1]:.4f} < {self.threshold} at epoch {self.epoch}"
        return None


class MedianStop(CurvePruner):
    """Stop a trial whose accuracy at epoch k is below the median of the other trials at epoch k."""

    def __init__(self, *, n_startup_trials: int = 5, n_warmup_epochs: int = 1) -> None:
        _check(n_startup_trials >= 1, f"`n_startup_trials >= 1` must hold, but got {n_startup_trials=}")
        _check(n_warmup_epochs >= 0, f"`n_warmup_epochs >= 0` must hold, but got {n_warmup_epochs=}")
        self.n_startup_trials, self.n_warmup_epochs = n_startup_trials, n_warmup_epochs

    def prune(self, study: optuna.Study, trial_number: int, curve: Sequence[float]) -> str | None:
        epoch = len(curve)
        if epoch <= self.n_warmup_epochs:
            return None
        others = [c[epoch - 1] for c in val_curves(study, exclude=trial_number) if len(c) >= epoch]
        if len(others) < self.n_startup_trials:
            return None
        median = statistics.median(others)
        if curve[-1] < median:
            return f"median stop: val_acc={curve[-1]:.4f} < median {median:.4f} of {len(others)} trials at epoch {epoch}"
        return None


class SuccessiveHalving(CurvePruner):
    """Asynchronous successive halving: at rung epochs min_epochs * r^i keep the top 1/r.

    A trial reaching a rung goes on only if its accuracy there is within the top 1/`reduction_factor`
    of all trials that reached that rung so far (itself included); the first trials to reach a rung
    always go on, as in ASHA.
    """

    def __init__(self, *, min_epochs: int = 1, reduction_factor: int = 3, bracket: int = 0,
                 n_brackets: int = 1) -> None:
        _check(min_epochs >= 1, f"`min_epochs >= 1` must hold, but got {min_epochs=}")
        _check(reduction_factor >= 2, f"`reduction_factor >= 2` must hold, but got {reduction_factor=}")
        _check(0 <= bracket < n_brackets, f"`0 <= bracket < n_brackets` must hold, but got {bracket=}, {n_brackets=}")
        self.min_epochs, self.reduction_factor = min_epochs, reduction_factor
        self.bracket, self.n_brackets = bracket, n_brackets

    def rungs(self, max_epochs: int) -> list[int]:
        out, epoch = [], self.min_epochs * self.reduction_factor ** self.bracket
        while epoch < max_epochs:
            out.append(epoch)
            epoch *= self.reduction_factor
        return out

    def _is_rung(self, epoch: int) -> bool:
        base = self.min_epochs * self.reduction_factor ** self.bracket
        if epoch < base or epoch % base:
            return False
        ratio = epoch // base
        return ratio & (ratio - 1) == 0 if self.reduction_factor == 2 else _is_power(ratio, self.reduction_factor)

    def prune(self, study: optuna.Study, trial_number: int, curve: Sequence[float]) -> str | None:
        epoch = len(curve)
        if not self._is_rung(epoch):
            return None
        # with several brackets (Hyperband) a trial is judged only against its own bracket
        peers = val_curves(study, exclude=trial_number, where=lambda n: n % self.n_brackets == self.bracket)
        at_rung = [c[epoch - 1] for c in peers if len(c) >= epoch] + [curve[-1]]
        keep = max(1, math.ceil(len(at_rung) / self.reduction_factor)) if len(at_rung) >= self.reduction_factor \
            else len(at_rung)
        cutoff = sorted(at_rung, reverse=True)[keep - 1]
        if curve[-1] < cutoff:
            return (f"successive halving: val_acc={curve[-1]:.4f} not in the top 1/{self.reduction_factor} "
                    f"(cutoff {cutoff:.4f}) of {len(at_rung)} trials at rung epoch {epoch}")
        return None


def _is_power(n: int, base: int) -> bool:
    while n > 1 and n % base == 0:
        n //= base
    return n == 1


class Hyperband(CurvePruner):
    """Hyperband: several successive-halving brackets with different first rungs.

    Trial n goes to bracket n mod (number of brackets), and is compared only with its bracket's trials,
    so some trials are judged early and aggressively, others late, hedging against curves that cross.
    """

    def __init__(self, *, min_epochs: int = 1, max_epochs: int = 27, reduction_factor: int = 3) -> None:
        _check(min_epochs >= 1, f"`min_epochs >= 1` must hold, but got {min_epochs=}")
        _check(max_epochs > min_epochs, f"`max_epochs > min_epochs` must hold, but got {max_epochs=}, {min_epochs=}")
        _check(reduction_factor >= 2, f"`reduction_factor >= 2` must hold, but got {reduction_factor=}")
        self.min_epochs, self.max_epochs, self.reduction_factor = min_epochs, max_epochs, reduction_factor
        self.n_brackets = max(1, math.floor(math.log(max_epochs / min_epochs, reduction_factor)) + 1)

    def prune(self, study: optuna.Study, trial_number: int, curve: Sequence[float]) -> str | None:
        bracket = trial_number % self.n_brackets
        halving = SuccessiveHalving(min_epochs=self.min_epochs, reduction_factor=self.reduction_factor,
                                    bracket=bracket, n_brackets=self.n_brackets)
        reason = halving.prune(study, trial_number, curve)
        return f"hyperband bracket {bracket}: {reason}" if reason else None
