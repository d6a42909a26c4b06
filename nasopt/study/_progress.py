"""The progress bar of `run()`: finished/target trials, ETA, best accuracy and Pareto-front size."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from nasopt.study._index import StudyIndex, budget

if TYPE_CHECKING:
    from nasopt.study._spec import StudySpec


# metrics known before training (the bar shows the best trained one)
_CHEAP = ("params", "macs", "latency_ms", "memory_mb", "energy_mj", "flash_kb", "sram_kb")


class Progress:
    def __init__(self, study: optuna.Study, spec: StudySpec, *, enabled: bool = True,
                 index: StudyIndex | None = None) -> None:
        """`index`: the runner's index of the study's trials (kept up to date by the runner); without one
        (the fork supervisor) each redraw counts from a fresh read."""
        self.study, self.spec, self.enabled, self.index = study, spec, enabled, index
        self.bar: Any = tqdm(total=spec.n_trials, initial=min(self._count(), spec.n_trials),
                             desc=spec.name, unit="trial", disable=not enabled, dynamic_ncols=True)
        self.refresh()

    def refresh(self, done: int | None = None) -> None:
        """Redraw; `done` is the finished count when the caller has just computed it."""
        if not self.enabled:
            return
        done = min(self._count() if done is None else done, self.spec.n_trials)
        self.bar.n = done
        complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        postfix: dict[str, Any] = {}
        # the best of the first objective that is measured by training (accuracy, val_loss, the user's own)
        trained = [i for i, m in enumerate(self.spec.objectives) if m not in _CHEAP]
        if trained:
            i = trained[0]
            metric, direction = list(self.spec.objectives.items())[i]
            values = [t.values[i] for t in complete if t.values]
            best = (max if direction == "maximize" else min)(values) if values else None
            shown = "-" if best is None else f"{best:.4f}" if metric == "accuracy" else f"{best:.4g}"
            postfix[f"best_{'acc' if metric == 'accuracy' else metric}"] = shown
        elif complete:
            postfix["best"] = f"{self.study.best_value:.4g}" if len(self.spec.objectives) == 1 else "-"
        if len(self.spec.objectives) > 1:
            postfix["pareto"] = len(self.study.best_trials) if complete else 0
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.refresh()

    def on_trial(self, study: optuna.Study, trial: FrozenTrial, done: int | None = None) -> None:
        if trial.state == TrialState.FAIL:
            reason = trial.user_attrs.get("fail_reason", "error")
            self.bar.write(f"trial {trial.number} failed: {reason}")
        self.refresh(done)

    def close(self) -> None:
        self.bar.close()

    def _count(self) -> int:
        return (self.index.budget() if self.index is not None else budget(self.study))[0]
