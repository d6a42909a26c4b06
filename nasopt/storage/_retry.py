"""Retries and the worker record: the retry rule (interruptions never count, the architecture's failures up to
MAX_RETRY), and the stamp that names a trial's worker from the moment it is created."""

from __future__ import annotations

import copy
import datetime
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import optuna
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalStorage
from optuna.trial import FrozenTrial, TrialState

from nasopt.keys import FAILURE_KEY, INTERRUPTED_KEY, WORKER_KEY
from nasopt.storage._outage import GRACE_PERIOD, ResilientRDBStorage

__all__ = ["MAX_RETRY", "RetryTrial", "retried", "retry_callback", "stamp_trials", "StampedJournalStorage"]

MAX_RETRY = 3  # retries of an architecture that failed (an exception, out of memory); interruptions do not count

T = TypeVar("T")


# Why a trial failed, written with its FAIL (system attrs; the words are its `fail_reason` user attr):


class RetryTrial(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry: a WAITING copy with the same params and attrs, `failed_trial` and `retry_history` kept as
    Optuna keeps them (`retried_trial_number`, `retry_history` work). Optuna caps the whole history; here only
    failures of the architecture itself count (`retried`): an interruption from outside (a signal, a dead
    process or machine, a database outage) is always retried. The copy drops the failed runner's identity (a
    popped retry that still named its predecessor's dead process would look dead itself) and its failure;
    it keeps the count of architecture failures so far (`FAILURES_KEY`)."""

    DROP = (WORKER_KEY, INTERRUPTED_KEY, FAILURE_KEY)

    def __call__(self, study: optuna.Study, trial: Any) -> None:
        if not retried(trial.system_attrs):
            return
        trial = copy.copy(trial)
        trial.system_attrs = {k: v for k, v in trial.system_attrs.items() if k not in self.DROP}
        super().__call__(study, trial)


def retried(system_attrs: Mapping[str, Any]) -> bool:
    """Whether a FAIL with these system attrs is retried: every one but an architecture failure past the cap
    (decided when it failed, and said in its `fail_reason`); a FAIL without a record is an interruption."""
    failure = system_attrs.get(FAILURE_KEY)
    return not isinstance(failure, dict) or bool(failure.get("retry", True))


def retry_callback() -> RetryTrial:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryTrial(max_retry=None)  # the cap is `retried`'s






# -- the worker record of a new trial ---------------------------------------------------------------

def stamp_trials(storage: object, attrs: Mapping[str, Any]) -> None:
    """Write the system attrs `attrs` (the runner's worker record) with every trial this process creates, in
    the same transaction or journal line, and with every trial it takes from the queue (in the same
    transaction on the fast path, `nasopt.storage._fast._buffer`; right after the state change on Optuna's own classes).
    A process killed between Optuna's `ask` and its objective's first write thus leaves a trial that names
    its process, and a worker on the same machine retries it at once. Only in the process that called it:
    a storage object that reaches another process (a fork) stamps nothing there."""
    backend = getattr(storage, "_backend", storage)  # inside Optuna's (or nasopt's) cache; a journal's is a file
    backend = backend if isinstance(backend, BaseStorage) else storage
    backend._nasopt_stamp = (os.getpid(), dict(attrs))  # type: ignore[attr-defined]


def _stamp(storage: object) -> dict[str, Any] | None:
    stamp = getattr(storage, "_nasopt_stamp", None)
    return stamp[1] if stamp is not None and stamp[0] == os.getpid() else None


def _stamped_template(stamp: Mapping[str, Any]) -> FrozenTrial:
    """A new RUNNING trial as Optuna's `create_new_trial` makes one (start time now, naive local time as Optuna
    passes it), with the stamp as its system attrs."""
    return FrozenTrial(number=-1, state=TrialState.RUNNING, value=None, values=None,
                       datetime_start=datetime.datetime.now(), datetime_complete=None, params={}, distributions={},
                       user_attrs={}, system_attrs=copy.deepcopy(dict(stamp)), intermediate_values={}, trial_id=-1)


def stamp_created(create: Callable[..., T]) -> Callable[..., T]:
    def create_stamped(self: Any, study_id: int, template_trial: FrozenTrial | None = None) -> T:
        stamp = _stamp(self) if template_trial is None else None
        return create(self, study_id, _stamped_template(stamp) if stamp else template_trial)

    create_stamped.__name__ = create_stamped.__qualname__ = create.__name__
    return create_stamped


def stamp_started(set_state: Callable[..., bool]) -> Callable[..., bool]:
    def set_state_stamped(self: Any, trial_id: int, state: TrialState, values: Any = None) -> bool:
        done = set_state(self, trial_id, state, values)
        stamp = _stamp(self) if done and state == TrialState.RUNNING else None
        for key, value in (stamp or {}).items():
            self.set_trial_system_attr(trial_id, key, value)
        return done

    set_state_stamped.__name__ = set_state_stamped.__qualname__ = "set_trial_state_values"
    return set_state_stamped


ResilientRDBStorage._create_new_trial = stamp_created(ResilientRDBStorage._create_new_trial)  # type: ignore[method-assign]
ResilientRDBStorage.set_trial_state_values = stamp_started(  # type: ignore[method-assign]
    ResilientRDBStorage.set_trial_state_values)


def _stale_with_reasons(find: Callable[..., list[int]]) -> Callable[..., list[int]]:
    """The heartbeat-stale trials, each given its `fail_reason` before Optuna fails it (a finished trial takes
    no more writes): an interruption, always retried (`RetryTrial`)."""
    def find_stale(self: Any, study_id: int) -> list[int]:
        stale = []
        for trial_id in find(self, study_id):
            try:
                self.set_trial_user_attr(trial_id, "fail_reason", f"interrupted: no heartbeat for over "
                                         f"{self.grace_period or GRACE_PERIOD} s (its machine or process was lost)")
                self.set_trial_system_attr(trial_id, FAILURE_KEY, {"by": "interruption", "retry": True})
            except optuna.exceptions.UpdateFinishedTrialError:  # another worker failed it first
                continue
            stale.append(trial_id)
        return stale

    find_stale.__name__ = find_stale.__qualname__ = "_get_stale_trial_ids"
    return find_stale


ResilientRDBStorage._get_stale_trial_ids = _stale_with_reasons(  # type: ignore[method-assign]
    ResilientRDBStorage._get_stale_trial_ids)


class StampedJournalStorage(JournalStorage):
    """Optuna's JournalStorage whose new trials carry the stamp (`stamp_trials`) in their creating line."""

    create_new_trial = stamp_created(JournalStorage.create_new_trial)
    set_trial_state_values = stamp_started(JournalStorage.set_trial_state_values)


