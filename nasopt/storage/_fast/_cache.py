"""The read side of the fast path: Optuna's trial cache with fewer, narrower reads of the study.
`CachedReads` is the base of `nasopt.storage._fast._buffer.BufferedStorage` (the write side):

- the trials this process created (or took from the queue) are served from a local copy while they
  run (`_own`, kept by `BufferedStorage` from their start to their end): reading one's own trial costs nothing;
- two reads of the study's trials within `COALESCE` seconds, with no write of this process between
  them, are one read (the runner's budget read and `ask`'s look for queued trials); a write of this
  process clears `_last_read`;
- a read is one transaction: the states of the trials that may have changed, then in full only what
  did: new trials, trials whose state changed, and other workers' running trials with new params or
  system attrs, or last read over `REFRESH` seconds ago (their user attrs — a curve, say — may lag by
  that much; their states, params and system attrs never lag). A new trial with nothing written yet
  is cached empty, without a load (the statements are `nasopt.storage._fast._load.read_study`);
- every distribution the study has used is known in the cache, so held params are checked without a query.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Container
from typing import Any

from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from nasopt.storage._fast._load import from_stored, read_study

try:  # Optuna's private cache, the fast path's base; an Optuna without it is one the path was not verified on
    from optuna.storages._cached_storage import _CachedStorage
except ImportError:  # pragma: no cover  (then `fast_path_verified()` is False: BufferedStorage is never built)
    _CachedStorage = object  # type: ignore[misc,assignment]

__all__ = ["CachedReads", "copy_trial", "COALESCE", "REFRESH"]

COALESCE = 0.05  # seconds within which a second read of the study's trials reuses the first
REFRESH = 1.0  # seconds after which another worker's running trial is read in full again


class CachedReads(_CachedStorage):
    """Optuna's `_CachedStorage` around an `RDBStorage` that serves this process's running trials from local
    copies and reads the study narrowly and at most once per `COALESCE` (see the module docstring)."""

    def __init__(self, backend: RDBStorage) -> None:
        super().__init__(backend)
        self._own: dict[int, FrozenTrial] = {}  # trial_id -> this process's running trial
        self._last_read: dict[int, float] = {}  # study_id -> monotonic time of the last remote read
        self._seen: dict[int, float] = {}  # trial_id -> when it was last read in full
        self._mutex = threading.RLock()

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state.pop("_mutex", None)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._mutex = threading.RLock()

    @staticmethod
    def _study_info() -> Any:
        from optuna.storages._cached_storage import _StudyInfo

        return _StudyInfo()

    def get_trial(self, trial_id: int) -> FrozenTrial:
        with self._mutex:
            own = self._own.get(trial_id)
            if own is not None:
                return copy_trial(own)
        return super().get_trial(trial_id)

    def _add_trials_to_cache(self, study_id: int, trials: list[FrozenTrial]) -> None:
        super()._add_trials_to_cache(study_id, trials)
        # every distribution the study has used is known here, so held params are checked without a query
        known = self._studies[study_id].param_distribution
        for trial in trials:
            for name, distribution in trial.distributions.items():
                known.setdefault(name, distribution)

    def _read_trials_from_remote_storage(self, study_id: int) -> None:
        """Optuna re-reads every unfinished trial of the study, with all its params and attributes, at
        every read: with W workers that is W-1 running trials (7 statements) per trial. Here a first,
        narrow query asks for the states of the trials Optuna would read (and, for running ones, how many
        params and system attrs they have); in the same transaction, only new trials, trials whose state
        changed, and other workers' running trials with new params or system attrs, or read more than
        `REFRESH` seconds ago, are loaded in full. A new running trial with neither is cached as it is
        (empty), without a load."""
        now = time.monotonic()
        if now - self._last_read.get(study_id, -1e9) < COALESCE:
            return
        with self._lock:
            known = study_id in self._studies
        if not known:  # a study this process has not read yet: one that does not exist is a KeyError, as in Optuna
            self._backend.get_study_name_from_id(study_id)
        with self._lock:
            if study_id not in self._studies:
                self._studies[study_id] = self._study_info()
            study = self._studies[study_id]
            last, unfinished = study.last_finished_trial_id, set(study.unfinished_trial_ids)
        empty: list[FrozenTrial] = []

        def choose(rows: list[Any]) -> set[int]:
            load, empty[:] = set(), []
            with self._lock:
                for row in rows:
                    trial_id, state = row.trial_id, row.state
                    if trial_id in self._own:
                        continue  # this process's running trial: the local copy is the newest
                    where = self._trial_id_to_study_id_and_number.get(trial_id)
                    cached = study.trials.get(where[1]) if where is not None else None
                    if state == TrialState.RUNNING and not row.marks:
                        if cached is None or cached.state != state:  # just created: nothing to read yet
                            empty.append(FrozenTrial(
                                number=row.number, state=state, value=None, values=None,
                                datetime_start=from_stored(row.datetime_start), datetime_complete=None, params={},
                                distributions={}, user_attrs={}, system_attrs={}, intermediate_values={},
                                trial_id=trial_id))
                    elif cached is None or cached.state != state or state == TrialState.WAITING or (
                            state == TrialState.RUNNING and (
                                row.marks != len(cached.params) + len(cached.system_attrs)
                                or now - self._seen.get(trial_id, 0.0) > REFRESH)):
                        load.add(trial_id)
            return load

        rows, trials = read_study(self._backend, study_id, last, unfinished, choose)
        with self._lock:
            self._add_trials_to_cache(study_id, empty + trials)
            states = {row.trial_id: row.state for row in rows}
            for trial in trials:
                self._seen[trial._trial_id] = now
                states[trial._trial_id] = trial.state
            for trial_id, state in states.items():
                if state.is_finished():
                    study.last_finished_trial_id = max(study.last_finished_trial_id, trial_id)
                    study.unfinished_trial_ids.discard(trial_id)
                else:
                    study.unfinished_trial_ids.add(trial_id)
        self._last_read[study_id] = time.monotonic()

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        trials = super().get_all_trials(study_id, deepcopy=deepcopy, states=states)
        with self._mutex:
            if not self._own:
                return trials
            own = {t.number: t for t in self._own.values()}
        # this process's running trials as it has changed them (the database may not have all of it yet); a
        # copy even without `deepcopy`: what the caller holds does not change with the trial's later writes
        return [(copy.deepcopy(own[t.number]) if deepcopy else copy_trial(own[t.number]))
                if t.number in own and t._trial_id == own[t.number]._trial_id and t.state == TrialState.RUNNING
                else t for t in trials]


def copy_trial(trial: FrozenTrial) -> FrozenTrial:
    """A copy of a running trial whose dicts are its own (what Optuna's `Trial` changes in its copy);
    their values are shared: neither side changes one in place (a new attribute value replaces the old)."""
    twin = copy.copy(trial)
    twin._params, twin._distributions = dict(trial._params), dict(trial._distributions)
    twin._user_attrs, twin._system_attrs = dict(trial._user_attrs), dict(trial._system_attrs)
    twin.intermediate_values = dict(trial.intermediate_values)
    twin._values = None if trial._values is None else list(trial._values)
    return twin
