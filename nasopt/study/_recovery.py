"""Why a trial failed, and the recovery that makes resume exact: every FAIL records its reason and whether it
was the architecture's failure (retried up to MAX_RETRY times) or an interruption from outside (always
retried); a RUNNING trial whose process died on this machine is failed and queued again at once, one that
no worker ever claimed after ORPHAN_AFTER seconds. A trial names its worker (`worker_record`) from the
moment it is created (`claim_trials`)."""

from __future__ import annotations

import os
import socket
import sys
import traceback
from collections.abc import Mapping
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from nasopt.errors import Terminated, UserError
from nasopt.keys import FAILURE_KEY, FAILURES_KEY, INTERRUPTED_KEY, WORKER_KEY
from nasopt.scoring import MetricFailed
from nasopt.storage import MAX_RETRY, retry_callback, stamp_trials
from nasopt.storage._fast._load import seconds_since

__all__ = ["CATCH", "TrialFailed", "NotRetried", "ORPHAN_AFTER", "claim_trials", "worker_record", "process_alive",
           "architecture_failure", "record_failure", "interrupted", "retry_failed", "recover_dead_local_trials",
           "retry_interrupted", "retry_own_running"]


class TrialFailed(Exception):
    """The trial failed by its architecture; its `fail_reason` and whether it is retried are recorded."""


class NotRetried(Exception):
    """An architecture failure that is never retried (`nasopt.study._signals.TrialTimeout`: it would hang again)."""


# an architecture failure ends its trial as FAIL (reason stored, retry queued) and the study goes on
CATCH: tuple[type[Exception], ...] = (TrialFailed,)
OOM: tuple[type[BaseException], ...] = tuple(
    {getattr(torch, "OutOfMemoryError", MemoryError), torch.cuda.OutOfMemoryError, MemoryError})

ORPHAN_AFTER = 120.0  # seconds a RUNNING trial may go without a worker claiming it before it is retried


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> str | None:
    """The process start time from /proc (tells a live process from a reused pid), None if unknown."""
    fields = _stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def worker_record(info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """This process as a trial's runner: host, pid, start time, plus `info` (the worker's index and sampler
    seed, passed down by the runner)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid()), **(info or {})}


def process_alive(worker: Mapping[str, Any]) -> bool:
    """Whether the process a worker record names is alive on this host (a reused pid is not)."""
    pid = int(worker.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat(pid)
    if fields and fields[0] in ("Z", "X"):  # killed, not yet reaped by its parent: dead all the same
        return False
    started = fields[19] if fields and len(fields) > 19 else None
    return started is None or worker.get("start") is None or started == worker["start"]


def claim_trials(study: optuna.Study, info: Mapping[str, Any] | None = None) -> None:
    """Every trial this process creates or takes from the queue names its worker from its first moment
    (`nasopt.storage._retry.stamp_trials`; marked "at": "ask" until the objective writes the record again)."""
    stamp_trials(study._storage, {WORKER_KEY: {**worker_record(info), "at": "ask"}})


def _retry(study: optuna.Study, trial: FrozenTrial, reason: str) -> bool:
    """Fail a RUNNING trial as interrupted (`reason`) and queue its retry (same params); False when another
    worker got there first."""
    storage = study._storage
    try:
        storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
        storage.set_trial_system_attr(trial._trial_id, FAILURE_KEY, {"by": "interruption", "retry": True})
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    retry_callback()(study, storage.get_trial(trial._trial_id))
    return True


def recover_dead_local_trials(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> list[int]:
    """Fail-and-retry RUNNING trials whose worker process on this host is gone (at once: no grace period;
    the record is written with the trial's creation, `claim_trials`), and trials that no worker claimed
    for ORPHAN_AFTER seconds (created by a plain Optuna client, or by a process on another machine that died
    before its objective began and before its first heartbeat). `trials`: the study's trials when the
    caller has just read them."""
    host, recovered = socket.gethostname(), []
    running = [t for t in (study.get_trials(deepcopy=False) if trials is None else trials)
               if t.state == TrialState.RUNNING]
    for t in running:
        worker = t.system_attrs.get(WORKER_KEY)
        reason = None
        if isinstance(worker, dict) and worker.get("host") == host:
            if worker.get("pid") != os.getpid() and not process_alive(worker):
                reason = (f"interrupted: its process died (pid {worker.get('pid')} on {host}: SIGKILL, the OOM "
                          "killer, a crash)")
        elif not isinstance(worker, dict) or worker.get("at") == "ask":
            started = t.datetime_start
            if started is not None and seconds_since(started) > ORPHAN_AFTER:
                where = f" on {worker.get('host')}" if isinstance(worker, dict) else ""
                reason = (f"interrupted: no worker took it up within {ORPHAN_AFTER:.0f} s of its creation (its "
                          f"process{where} died right after creating it)")
        if reason is not None and _retry(study, t, reason):
            recovered.append(t.number)
    return recovered


def retry_own_running(study: optuna.Study, reason: str = "interrupted by Ctrl-C (SIGINT)") -> list[int]:
    """After SIGTERM or Ctrl-C: fail this process's RUNNING trials and queue them again (same params)."""
    return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if _own(t) and _retry(study, t, reason)]


def _own(t: FrozenTrial) -> bool:
    worker = t.system_attrs.get(WORKER_KEY) or {}
    return worker.get("host") == socket.gethostname() and worker.get("pid") == os.getpid()


def retry_interrupted(study: optuna.Study, error: BaseException | None = None) -> None:
    """After Ctrl-C or SIGTERM (`error`): queue this process's interrupted trial again so that a worker trains
    it (same params). Other workers' trials are theirs to queue: two retries of one trial would run it twice."""
    reason = _interruption(error)
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    for t in trials:
        if t.system_attrs.get(INTERRUPTED_KEY) and t.number not in retried and _own(t):
            if t.state == TrialState.RUNNING:
                _retry(study, t, t.user_attrs.get("fail_reason") or reason)
            elif t.state == TrialState.FAIL:
                retry_callback()(study, t)
    retry_own_running(study, reason)


def _interruption(error: BaseException | None) -> str:
    return "interrupted by SIGTERM" if isinstance(error, Terminated) else "interrupted by Ctrl-C (SIGINT)"


def interrupted(trial: optuna.Trial, error: BaseException, info: Mapping[str, Any] | None = None) -> None:
    """A signal stopped the trial (Optuna fails it next): its reason, and the marks `retry_interrupted` looks
    for (buffered on the fast path: they go out with the FAIL, in one transaction)."""
    storage, trial_id = trial.storage, trial._trial_id
    if (storage.get_trial_system_attrs(trial_id).get(WORKER_KEY) or {}).get("pid") != os.getpid():  # stopped at once
        storage.set_trial_system_attr(trial_id, WORKER_KEY, worker_record(info))
    storage.set_trial_system_attr(trial_id, INTERRUPTED_KEY, True)
    storage.set_trial_system_attr(trial_id, FAILURE_KEY, {"by": "interruption", "retry": True})
    storage.set_trial_user_attr(trial_id, "fail_reason", _interruption(error))


def record_failure(trial: optuna.Trial, reason: str, *, final: bool = False) -> str:
    """Record that the (running) trial failed by its architecture: the count of such failures in its retry
    chain, whether it is retried (never when `final`; else while the count is at most MAX_RETRY: the same
    architecture fails at most MAX_RETRY + 1 times), and `reason`, completed with that decision. Once per
    trial (a second call returns the first reason). Returns the reason stored."""
    storage, trial_id = trial.storage, trial._trial_id
    system = storage.get_trial_system_attrs(trial_id)
    if isinstance(system.get(FAILURE_KEY), dict):
        return str(storage.get_trial_user_attrs(trial_id).get("fail_reason", reason))
    count = int(system.get(FAILURES_KEY, 0)) + 1
    retry = not final and count <= MAX_RETRY
    if final:
        reason += "; not retried"
    elif not retry:
        reason += f"; failed {count} times; not retried"
    storage.set_trial_system_attr(trial_id, FAILURES_KEY, count)
    storage.set_trial_system_attr(trial_id, FAILURE_KEY, {"by": "architecture", "retry": retry})
    storage.set_trial_user_attr(trial_id, "fail_reason", reason)
    return reason


def _outside(e: BaseException) -> bool:
    """An error that is not the architecture's: the user's settings (`UserError`; a database outage past its
    limit is one), Optuna's (a trial that another worker finished), the database driver's."""
    if isinstance(e, (UserError, optuna.exceptions.OptunaError)):
        return True
    drivers = ("sqlalchemy", "psycopg", "psycopg2", "sqlite3", "pymysql", "MySQLdb")
    return any(c.__module__.split(".")[0] in drivers for c in type(e).__mro__)


def architecture_failure(trial: optuna.Trial, error: Exception) -> Exception:
    """The exception to raise for `error` from a trial: an architecture's failure is recorded
    (`record_failure`) and becomes `TrialFailed` (caught by the runner, whose `retry_failed` queues the
    retry), or stays a `NotRetried`; an error from outside the architecture goes on as it is."""
    if isinstance(error, TrialFailed) or _outside(error):
        return error
    if isinstance(error, OOM):
        reason = f"out of memory: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
    else:
        text = str(error).strip().splitlines()
        reason = f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
    # a user metric that raised or gave NaN would do so again: the trial fails with the reason, no retry
    reason = record_failure(trial, reason, final=isinstance(error, (NotRetried, MetricFailed)))
    if isinstance(error, NotRetried):
        return error
    if isinstance(error, MetricFailed):
        return TrialFailed(reason)
    if not isinstance(error, OOM) and _first(trial):  # the traceback of a bug, once per architecture
        trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        print(f"nasopt: trial {trial.number} failed ({reason}); it is retried with the same params up to "
              f"{MAX_RETRY} times:\n{trace}", file=sys.stderr, end="", flush=True)
    return TrialFailed(reason)


def _first(trial: optuna.Trial) -> bool:
    """This trial's failure is the first architecture failure of its retry chain."""
    return int(trial.storage.get_trial_system_attrs(trial._trial_id).get(FAILURES_KEY, 1)) == 1


def retry_failed(study: optuna.Study, trial: FrozenTrial) -> None:
    """`study.optimize` callback: queue the retry of a trial that failed by its architecture and is to be
    retried (`record_failure` decided; Optuna's callbacks run once the FAIL is stored)."""
    failure = trial.system_attrs.get(FAILURE_KEY)
    if trial.state == TrialState.FAIL and isinstance(failure, dict) and failure.get("by") == "architecture" \
            and failure.get("retry"):
        retry_callback()(study, trial)
