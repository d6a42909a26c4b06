"""Fewer database round trips per trial: write-behind for this process's trials, on the fast path's trial cache.

A short trial on an RDB storage used to cost about 15 transactions and 50 statements: one per
parameter, one per attribute, three full reads of its own trial (each 6 lazy loads); now 4 and 10. On a database
server that CPU caps how many workers a few cores can feed; on SQLite every commit is an fsync.
`BufferedStorage` is the write side, built on the read side (`nasopt.storage._fast._cache.CachedReads`: Optuna's
`_CachedStorage` serving this process's running trials from local copies, with coalesced, narrow reads of the
study), and adds:

- while the runner `hold`s a trial, its writes (params, user/system attrs, intermediate values) are
  kept in memory and written together, in ONE transaction, at `flush` and at the state change that
  ends the trial (Optuna's `_CachedStorage` makes the same promise: every write before a state
  change is persistent once the state change is). The runner flushes after `suggest` (other workers
  and the dashboard see the architecture, a killed trial is retried with its params) and after every
  epoch; without `hold` every write goes through at once, as before;
- a held trial's first heartbeat goes out with its first flush, not in a transaction of its own, and
  the heartbeat-stale check Optuna runs before every trial runs once per heartbeat interval;
- a trial this process creates or takes from the queue gets the runner's worker record
  (`nasopt.storage._retry.stamp_trials`) and a heartbeat in the same transaction, and beats from then on (also
  while the sampler works, before Optuna's heartbeat thread starts): a process killed at any moment leaves
  a trial that names it (retried at once on its machine) and goes stale after the grace period elsewhere.

Values are checked when they are buffered (JSON, distribution compatibility), so a mistake fails
where it is made, not at the next flush.

All of this relies on Optuna's private internals, so it runs only on the Optuna releases it was verified
on (`nasopt.storage._fast._load.fast_path_verified`); on any other, `BufferedStorage.around` leaves the storage to
Optuna's own classes and says so once on stderr.
"""

from __future__ import annotations

import copy
import datetime
import json
import math
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from optuna import distributions
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from nasopt.storage._fast._batch import create_trial, start_trial, write_batch
from nasopt.storage._fast._cache import CachedReads, copy_trial
from nasopt.storage._fast._load import fast_path_verified, unverified_notice

__all__ = ["BufferedStorage", "hold", "flush"]


@dataclass
class _Pending:
    params: list[tuple[str, float, distributions.BaseDistribution]] = field(default_factory=list)
    user: dict[str, str] = field(default_factory=dict)  # key -> JSON text
    system: dict[str, str] = field(default_factory=dict)
    intermediate: dict[int, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.params or self.user or self.system or self.intermediate)


class BufferedStorage(CachedReads):
    """Optuna's `_CachedStorage` around an `RDBStorage`, with local copies of this process's running
    trials (`CachedReads`) and write-behind for the held ones (see the module docstring)."""

    def __init__(self, backend: RDBStorage) -> None:
        super().__init__(backend)
        self._pending: dict[int, _Pending] = {}  # held trials' unwritten changes
        self._beats: set[int] = set()  # own running trials whose heartbeat thread has beaten
        self._beat: set[int] = set()  # of those, the ones whose first beat waits for their next flush
        self._stale_checked: dict[int, float] = {}  # study_id -> monotonic time of the last stale check

    @staticmethod
    def around(storage: Any) -> Any:
        """The storage the runner uses: a `BufferedStorage` around an `RDBStorage` when the installed Optuna
        is one this fast path was verified on; else `storage` itself (Optuna puts its own cache around an
        RDBStorage, and its own code writes every row), with a one-line notice on stderr, once."""
        if not isinstance(storage, RDBStorage):
            return storage
        if not fast_path_verified():
            _unverified_notice()
            return storage
        return BufferedStorage(storage)

    # -- holding and flushing ------------------------------------------------------------------

    def hold(self, trial_id: int) -> None:
        """Keep this (own, running) trial's writes until `flush` or its final state."""
        with self._mutex:
            if trial_id in self._own:
                self._pending.setdefault(trial_id, _Pending())

    def flush(self, trial_id: int) -> None:
        """Write the trial's held changes in one transaction (it stays held)."""
        with self._mutex:
            pending = self._pending.get(trial_id)
            if not pending:
                return
            self._write(trial_id, pending)
            self._pending[trial_id] = _Pending()

    def _write(self, trial_id: int, pending: _Pending, state: TrialState | None = None,
               values: Sequence[float] | None = None) -> datetime.datetime:
        self._last_read.clear()
        beat = trial_id in self._beat and state is None
        when = write_batch(self._backend, trial_id, pending.params, pending.user, pending.system,
                           pending.intermediate, state, values, heartbeat=beat)
        self._beat.discard(trial_id)
        return when

    # -- heartbeats --------------------------------------------------------------------------------

    def record_heartbeat(self, trial_id: int) -> None:
        """Optuna's heartbeat thread beats once when a trial starts, then every interval. The first beat
        of this process's trial goes out with the trial's next flush (for a held trial: right after
        `suggest`, milliseconds later; one transaction fewer per trial) or with the thread's second beat,
        whichever comes first. Until then the beat written with the trial's creation (and `_prebeat`) stands."""
        with self._mutex:
            if trial_id in self._own and trial_id not in self._beats:
                self._beats.add(trial_id)
                self._beat.add(trial_id)
                return
            self._beat.discard(trial_id)
        super().record_heartbeat(trial_id)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna looks for heartbeat-stale trials before every trial (a query over the running trials and
        their heartbeats); a trial is stale only after the grace period (several heartbeat intervals), so
        once per interval finds the same trials as often as it matters."""
        interval = self.get_heartbeat_interval() or 0
        now = time.monotonic()
        with self._mutex:
            if now - self._stale_checked.get(study_id, -math.inf) < interval:
                return []
            self._stale_checked[study_id] = now
        return super()._get_stale_trial_ids(study_id)

    # -- trials of this process ------------------------------------------------------------------

    def _stamp(self) -> dict[str, str] | None:
        """This process's worker record as JSON texts (`nasopt.storage._retry.stamp_trials`), None when not set."""
        stamp = getattr(self._backend, "_nasopt_stamp", None)
        if stamp is None or stamp[0] != os.getpid():
            return None
        return {key: json.dumps(value) for key, value in stamp[1].items()}

    def _prebeat(self, trial_id: int) -> None:
        """Beat for an own trial from its start until Optuna's heartbeat thread takes over (that thread starts
        only after `ask`, i.e. after the sampler's work, which may take longer than the grace period)."""
        interval = self.get_heartbeat_interval()
        if not interval:
            return

        def beat() -> None:
            with self._mutex:
                if trial_id not in self._own or trial_id in self._beats:
                    return
            try:
                self._backend.record_heartbeat(trial_id)
            except Exception:  # the trial finished meanwhile, or the database is away: the next one tries
                pass
            self._prebeat(trial_id)

        timer = threading.Timer(interval, beat)
        timer.daemon = True
        timer.start()

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        stamp = self._stamp() if template_trial is None else None
        beat = stamp is not None and self.get_heartbeat_interval() is not None
        frozen = (create_trial(self._backend, study_id, stamp, heartbeat=beat) if template_trial is None else None) \
            or self._backend._create_new_trial(study_id, template_trial)  # (stamped there, `nasopt.storage._retry`)
        with self._lock:
            if study_id not in self._studies:
                self._studies[study_id] = self._study_info()
            self._add_trials_to_cache(study_id, [frozen])
        with self._mutex:
            self._last_read.clear()
            if frozen.state == TrialState.RUNNING:
                self._own[frozen._trial_id] = copy_trial(frozen)
        if beat and frozen.state == TrialState.RUNNING:
            self._prebeat(frozen._trial_id)
        return frozen._trial_id

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        with self._mutex:
            own = self._own.get(trial_id)
            if own is None or not state.is_finished():
                self._last_read.clear()
                stamp = self._stamp() if state == TrialState.RUNNING and values is None else None
                beat = stamp is not None and self.get_heartbeat_interval() is not None
                if stamp is not None:  # taken from the queue with the worker record and a heartbeat, at once
                    done = start_trial(self._backend, trial_id, stamp, heartbeat=beat)
                else:
                    done = super().set_trial_state_values(trial_id, state=state, values=values)
                if done and state == TrialState.RUNNING:  # taken from the queue: ours from now on
                    self._own[trial_id] = copy.deepcopy(self._backend.get_trial(trial_id))
                    if beat:
                        self._prebeat(trial_id)
                return done
            pending = self._pending.pop(trial_id, None) or _Pending()
            del self._own[trial_id]
            self._beats.discard(trial_id)
            when = self._write(trial_id, pending, state, values)  # raises UpdateFinishedTrialError if taken
        own.state, own.datetime_complete = state, when
        own.values = list(values) if values is not None else None
        with self._lock:  # finished: Optuna's cache serves it (and re-reads it once with the next read)
            study_id, _ = self._trial_id_to_study_id_and_number[trial_id]
            self._add_trials_to_cache(study_id, [own])
        return True

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: distributions.BaseDistribution) -> None:
        with self._mutex:
            own = self._own.get(trial_id)
            if own is None:
                return super().set_trial_param(trial_id, param_name, param_value_internal, distribution)
            with self._lock:
                study_id, _ = self._trial_id_to_study_id_and_number[trial_id]
                known = self._studies[study_id].param_distribution.get(param_name)
            pending = self._pending.get(trial_id)
            if known is None or pending is None:  # first use of this name here: the database checks it
                if pending:
                    self.flush(trial_id)
                super().set_trial_param(trial_id, param_name, param_value_internal, distribution)
            else:
                distributions.check_distribution_compatibility(known, distribution)
                pending.params.append((param_name, param_value_internal, distribution))
            own.params[param_name] = distribution.to_external_repr(param_value_internal)
            own.distributions[param_name] = distribution

    def _set_attr(self, trial_id: int, kind: str, key: str, value: Any) -> bool:
        """Buffer an attribute of a held trial (True), or update the local copy after a write (False)."""
        with self._mutex:
            own = self._own.get(trial_id)
            if own is None:
                return False
            text = json.dumps(value)  # not JSON-serialisable: fails here, as the direct write would
            attrs = own.user_attrs if kind == "user" else own.system_attrs
            pending = self._pending.get(trial_id)
            if pending is None:
                write = super().set_trial_user_attr if kind == "user" else super().set_trial_system_attr
                write(trial_id, key, value)
            else:
                (pending.user if kind == "user" else pending.system)[key] = text
            attrs[key] = json.loads(text)
            return True

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        if not self._set_attr(trial_id, "user", key, value):
            super().set_trial_user_attr(trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        if not self._set_attr(trial_id, "system", key, value):
            super().set_trial_system_attr(trial_id, key, value)

    def set_trial_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """Several user attrs at once: buffered when held, else one transaction."""
        with self._mutex:
            own = self._own.get(trial_id)
            pending = self._pending.get(trial_id)
            if own is None or pending is not None:
                for key, value in attrs.items():
                    self.set_trial_user_attr(trial_id, key, value)
                return
            texts = {key: json.dumps(value) for key, value in attrs.items()}
            self._write(trial_id, _Pending(user=texts))
            own.user_attrs.update({key: json.loads(text) for key, text in texts.items()})

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        with self._mutex:
            own = self._own.get(trial_id)
            pending = self._pending.get(trial_id)
            if own is None or pending is None:
                super().set_trial_intermediate_value(trial_id, step, intermediate_value)
            else:
                pending.intermediate[step] = intermediate_value
            if own is not None:
                own.intermediate_values[step] = intermediate_value


@cache
def _unverified_notice() -> None:
    print(unverified_notice(), file=sys.stderr)


def hold(trial: Any) -> None:
    """Buffer `trial`'s writes until `flush` or its end (no-op on storages without write-behind)."""
    storage = getattr(trial, "storage", None)
    if isinstance(storage, BufferedStorage):
        storage.hold(trial._trial_id)


def flush(trial: Any) -> None:
    """Write `trial`'s held changes now (no-op on storages without write-behind)."""
    storage = getattr(trial, "storage", None)
    if isinstance(storage, BufferedStorage):
        storage.flush(trial._trial_id)
