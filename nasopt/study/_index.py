"""What the runner asks of a study's trials before every trial, kept up to date instead of recounted.

Before each trial a worker counts the budget (finished, running, waiting sampled trials) and looks
for an earlier trial of the same architecture. Both were a pass over every trial of the study, with
several property reads each: ~3 ms per trial at 1,000 trials, more than the database's part. A
finished trial never changes again (Optuna refuses writes to it), so `StudyIndex` files each one once,
when it is first seen finished, and re-examines only the unfinished ones at every update.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from nasopt.keys import STRATEGY_KEY

__all__ = ["StudyIndex", "arch_key", "budget"]

_DONE = (TrialState.COMPLETE, TrialState.PRUNED)


def arch_key(params: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A hashable key of an architecture (its params); equal params give equal keys."""
    return tuple(sorted(params.items()))


def _settings_key(settings: Any) -> str:
    """The settings a trial ran under when they differ from the study's (`--allow-changed`), as a key:
    the same architecture trained for other epochs is another result, never a reuse. Where the data was
    read from (`data_dir`: the same data, moved) does not change a result."""
    import json

    settings = {k: v for k, v in (settings or {}).items() if k != "data_dir"}
    return json.dumps(settings, sort_keys=True, default=str) if settings else ""


class StudyIndex:
    """The budget counts and the evaluated architectures of one study, updated from its trials."""

    def __init__(self) -> None:
        self._strategy_key = STRATEGY_KEY
        self._final: set[int] = set()  # numbers of the finished trials filed so far
        self._done = 0  # COMPLETE + PRUNED sampled trials
        self._failed: set[int] = set()  # FAIL sampled trials (finished unless a retry of them exists)
        self._retried: set[int] = set()  # numbers named in some trial's retry_history
        self._evaluated: dict[tuple[Any, str], FrozenTrial] = {}  # arch -> its first evaluation
        self._running = self._waiting = 0
        self._open_retried: set[int] = set()

    def update(self, trials: Iterable[FrozenTrial]) -> StudyIndex:
        """File the newly finished trials and recount the unfinished ones (`trials`: all of the study's)."""
        running = waiting = 0
        open_retried: set[int] = set()
        for t in trials:
            if t.number in self._final:
                continue
            system = t.system_attrs
            state = t.state
            history = system.get("retry_history")
            if not state.is_finished():
                if self._strategy_key not in system:
                    running += state == TrialState.RUNNING
                    waiting += state == TrialState.WAITING
                if history:
                    open_retried.update(history)
                continue
            self._final.add(t.number)
            if history:
                self._retried.update(history)
            if self._strategy_key in system:
                continue
            if state in _DONE:
                self._done += 1
                if "reused_from" not in t.user_attrs:
                    key = (arch_key(t.params), _settings_key(t.user_attrs.get("settings")))
                    first = self._evaluated.get(key)
                    if first is None or t.number < first.number:
                        self._evaluated[key] = t
            elif state == TrialState.FAIL:
                self._failed.add(t.number)
        self._running, self._waiting, self._open_retried = running, waiting, open_retried
        return self

    def budget(self) -> tuple[int, int, int]:
        """(finished, running, waiting) sampled trials: finished = COMPLETE, PRUNED, and FAIL with no retry."""
        retried = self._retried | self._open_retried
        failed = sum(1 for n in self._failed if n not in retried)
        return self._done + failed, self._running, self._waiting

    def evaluated(self, params: dict[str, Any], number: int, settings: Any = None) -> FrozenTrial | None:
        """The first COMPLETE or PRUNED trial (not itself a reuse) with these params, other than `number`,
        that ran under the same accepted `settings` (see `nasopt.study._identity`)."""
        found = self._evaluated.get((arch_key(params), _settings_key(settings)))
        return found if found is not None and found.number != number else None


def budget(study: Any, trials: list[FrozenTrial] | None = None) -> tuple[int, int, int]:
    """(finished, running, waiting) sampled trials of `study` (finished as in `StudyIndex.budget`), from a
    fresh read of its trials unless `trials` are given."""
    return StudyIndex().update(study.get_trials(deepcopy=False) if trials is None else trials).budget()
