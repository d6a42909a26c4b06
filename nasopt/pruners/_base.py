"""The curve-pruner interface and the one helper every pruner needs: the study's recorded curves."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence

import optuna
from optuna.trial import TrialState


def score(record: Mapping[str, float]) -> float:
    """What the pruners compare in one epoch's record, higher is better: its `score` (the study's first objective
    measured per epoch, signed; written when that is not the accuracy), else its `val_acc`."""
    return float(record["score"] if "score" in record else record["val_acc"])


def val_curves(study: optuna.Study, *, exclude: int | None = None,
               where: Callable[[int], bool] | None = None) -> list[list[float]]:
    """Validation curves (one `score` per epoch: the accuracy, or the study's first per-epoch objective) of the
    study's finished trials.

    Trials that reused another trial's result are left out so an architecture counts once; `where`
    filters by trial number.
    """
    curves = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if t.number == exclude or "reused_from" in t.user_attrs or (where is not None and not where(t.number)):
            continue
        curve = t.user_attrs.get("curve") or []
        if curve:
            curves.append([score(r) for r in curve])
    return curves


class CurvePruner(ABC):
    """Decides after each epoch whether a trial should stop, from its own and the study's curves."""

    @abstractmethod
    def prune(self, study: optuna.Study, trial_number: int, curve: Sequence[float]) -> str | None:
        """Return the reason to stop the trial now, or None to go on.

        `curve[i]` is the validation accuracy after epoch i + 1; the last entry is the epoch just done.
        """

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"
