"""Workers: the trial loop of one process, and N of them forked on this machine.

Every worker, here or on another machine, runs the same loop against the shared storage:

    recover trials of dead local workers -> count the study -> start a trial, wait, or stop

`n_trials` is a budget of FINISHED trials in the whole study (COMPLETE, PRUNED, or FAIL with no retry
pending). A worker starts a new trial only while finished + running + waiting trials are below the
budget, or to pick up a queued retry; workers that count at the same instant can each start one, so
a study ends with between n_trials and n_trials + workers - 1 finished trials (workers: all of them,
on all machines). While the last trials run, idle workers wait: one of those may still fail and need
its retry run.

SIGTERM (what Slurm, Kubernetes and `kill` send) is handled like Ctrl-C: the running trial is marked
FAIL at once and queued again with the same params (a gradient trial keeps its checkpoint and resumes
from it). `trial_timeout` arms a watchdog per trial: SIGALRM raises `TrialTimeout` in the trial
(FAIL, not retried: a hung architecture would hang again); when the trial does not return even then
(stuck in C code), a timer thread marks it failed and ends the process, which the supervisor replaces.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import signal
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import TrialState

from nasopt.errors import Terminated, UserError
from nasopt.keys import WORKER_KEY
from nasopt.storage import (
    GRACE_PERIOD,
    close_storage,
    on_close,
    open_storage,
    scrub,
    sqlite_lock,
    sqlite_path,
)
from nasopt.study import _objective, _progress, _recovery
from nasopt.study._index import StudyIndex, budget
from nasopt.study._signals import EXIT_HUNG, TrialTimeout, Watchdog, stop_signals

if TYPE_CHECKING:
    from nasopt.study._spec import StudySpec

__all__ = ["Terminated", "TrialTimeout", "budget", "worker_seed", "seed_sampler", "run_worker", "supervise",
           "check_single_process"]

POLL = 0.5  # seconds an idle worker waits before it counts the study again


# -- the budget ------------------------------------------------------------------------------------

def _fail_stale(study: optuna.Study) -> None:
    """Heartbeat-stale trials (their worker, maybe on another machine, went silent): fail and retry."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _optimize_one(study: optuna.Study, objective: Callable[[optuna.Trial], Any], who: str, **kwargs: Any) -> None:
    """`study.optimize` for one trial. A trial that another worker failed meanwhile (judged heartbeat-stale:
    this worker's heartbeats did not reach the database for the grace period, e.g. it was cut off alone) is
    this worker's no longer: its next write, after an epoch or with the result, is refused; the trial is
    dropped here with one line, its retry (queued by the other worker, as for any stale trial) trains it
    again, and this worker goes on with the next trial."""
    current: list[int] = []

    def tracked(trial: optuna.Trial) -> Any:
        current.append(trial.number)
        return objective(trial)

    try:
        study.optimize(tracked, n_trials=1, **kwargs)
    except optuna.exceptions.UpdateFinishedTrialError:
        which = f"trial {current[-1]}" if current else "its trial"
        print(f"nasopt: {who}{which} was failed by another worker meanwhile (no heartbeat of it reached the "
              f"database for over {GRACE_PERIOD} s), which queued its retry: dropped here, going on",
              file=sys.stderr, flush=True)


# -- seeds -----------------------------------------------------------------------------------------

def worker_seed(base: int, index: int, host: str, trials_at_start: int, pid: int = 0) -> int:
    """A worker's own sampler seed: the study seed, the host, the process, the worker index, the trials
    so far (separate commands on one host, started together, differ by their pid)."""
    digest = hashlib.sha256(f"{base}:{host}:{pid}:{index}:{trials_at_start}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def seed_sampler(sampler: Any, seed: int) -> int:
    """Seed every random generator of `sampler` (and of the samplers and helpers inside it) from `seed`.

    Optuna's `reseed_rng()` draws fresh OS entropy; this gives a worker a seed of its own that is
    recorded and reproducible. Returns the number of generators seeded (0: none found, so the
    sampler's own `reseed_rng` was used instead)."""
    draw = np.random.RandomState(seed)
    seen: set[int] = set()
    count = 0

    def visit(obj: Any, depth: int) -> None:
        nonlocal count
        if id(obj) in seen or depth > 3 or not hasattr(obj, "__dict__"):
            return
        seen.add(id(obj))
        for name, value in sorted(vars(obj).items()):
            s = int(draw.randint(2**31 - 1))
            if type(value).__name__ == "LazyRandomState":  # Optuna's lazily made RandomState (its `rng`)
                value.rng.seed(s)
            elif isinstance(value, np.random.RandomState):
                value.seed(s)
            elif isinstance(value, np.random.Generator):
                setattr(obj, name, np.random.default_rng(s))
            elif isinstance(value, random.Random):
                value.seed(s)
            else:
                if type(value).__module__.startswith(("optuna.", "nasopt.")):
                    visit(value, depth + 1)
                continue
            count += 1

    visit(sampler, 0)
    if count == 0 and hasattr(sampler, "reseed_rng"):
        sampler.reseed_rng()
    return count


def _seed_worker(spec: StudySpec, study: optuna.Study, index: int, workers: int, created: bool) -> int | None:
    """A lone worker that created the study keeps the study file's seed (a sequential study is
    reproducible); every other worker gets its own seed, recorded with each of its trials in the
    `nasopt:worker` system attr. Of several lone workers starting at once, one creates the study."""
    trials = len(study.get_trials(deepcopy=False))
    if workers == 1 and created and trials == 0:
        return None
    seed = worker_seed(spec.seed, index, socket.gethostname(), trials, os.getpid())
    seed_sampler(study.sampler, seed)
    return seed


# -- one worker ------------------------------------------------------------------------------------

def run_worker(spec: StudySpec, study: optuna.Study, task: Any, store: Any, *, progress: bool,
               trial_timeout: float | None, index: int = 0, workers: int = 1,
               deadline: float = math.inf, created: bool = False) -> None:
    """The trial loop of one process until the budget is reached (or the deadline passed)."""
    seed = _seed_worker(spec, study, index, workers, created)
    info = {"index": index, **({"seed": seed} if seed is not None else {})}  # in each of its trials' records
    _recovery.claim_trials(study, info)  # a trial names this worker from its creation on
    watchdog = Watchdog(trial_timeout) if trial_timeout else None
    sampler = getattr(study.sampler, "sampler", study.sampler)  # inside WithinLimits (nasopt.samplers)
    if workers > 1 and isinstance(sampler, optuna.samplers.TPESampler) and not getattr(sampler, "_constant_liar", True):
        print("nasopt: warning: TPESampler(constant_liar=False) with several workers proposes near-duplicate "
              "architectures; set constant_liar=True", file=sys.stderr)
    catch = (*_recovery.CATCH, TrialTimeout)
    who = f"worker {index}: " if workers > 1 else ""
    try:
        if spec.strategy is not None:
            _gradient_loop(spec, study, task, store, progress, watchdog, catch, index, deadline, who, info)
        else:
            _sampled_loop(spec, study, task, store, progress, watchdog, catch, deadline, who, info)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: this worker's trial is failed and queued again
        _recovery.retry_interrupted(study, e)
        raise


def _sampled_loop(spec: StudySpec, study: optuna.Study, task: Any, store: Any, progress: bool,
                  watchdog: Watchdog | None, catch: tuple[type[Exception], ...], deadline: float,
                  who: str = "", info: dict[str, Any] | None = None) -> None:
    index = StudyIndex()  # the budget and the evaluated architectures, kept up to date for objective and bar
    evaluate = _objective.Objective(spec, task, store, worker=info, index=index)
    objective: Callable[[optuna.Trial], Any] = watchdog.wrap(evaluate) if watchdog is not None else evaluate
    bar = _progress.Progress(study, spec, enabled=progress, index=index.update(study.get_trials(deepcopy=False)))
    try:
        callbacks = [_recovery.retry_failed, *([lambda s, t: bar.on_trial(s, t)] if progress else [])]
        while time.monotonic() < deadline:
            trials = study.get_trials(deepcopy=False)
            if _recovery.recover_dead_local_trials(study, trials):
                trials = study.get_trials(deepcopy=False)
            finished, running, waiting = index.update(trials).budget()
            if finished >= spec.n_trials:
                break
            bar.refresh(finished)
            if not waiting and finished + running >= spec.n_trials:
                _fail_stale(study)  # the last trials are running (somewhere): wait, one may need a retry
                time.sleep(POLL * (0.5 + random.random()))
                continue
            left = deadline - time.monotonic()
            _optimize_one(study, objective, who, timeout=None if math.isinf(left) else left, catch=catch,
                          callbacks=callbacks, gc_after_trial=False)
        bar.refresh()
    finally:
        bar.close()


def _gradient_loop(spec: StudySpec, study: optuna.Study, task: Any, store: Any, progress: bool,
                   watchdog: Watchdog | None, catch: tuple[type[Exception], ...], index: int,
                   deadline: float, who: str = "", info: dict[str, Any] | None = None) -> None:
    """Gradient methods run one trial each: this worker takes a method that no one else is running
    (workers start at different ones), and waits while the others' methods may still need a retry."""
    from nasopt.keys import STRATEGY_KEY
    from nasopt.study._gradient import GradientObjective, labels, strategy_done

    strategies = spec.strategy if isinstance(spec.strategy, (list, tuple)) else [spec.strategy]
    named = dict(zip(labels(strategies), strategies, strict=True))
    objective = GradientObjective(spec, task, store, named, progress, worker=info)
    call: Callable[[optuna.Trial], Any] = watchdog.wrap(objective) if watchdog is not None else objective
    while time.monotonic() < deadline:
        _recovery.recover_dead_local_trials(study)
        pending = [label for label in named if not strategy_done(study, label)]
        if not pending:
            return
        trials = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
        busy = {t.system_attrs.get(STRATEGY_KEY) for t in trials}
        free = [label for label in pending if label not in busy]
        if not free and not any(t.state == TrialState.WAITING for t in trials):
            _fail_stale(study)
            time.sleep(POLL * (0.5 + random.random()))
            continue
        k = index % len(free) if free else 0
        objective.pending = free[k:] + free[:k]
        _optimize_one(study, call, who, catch=catch, callbacks=[_recovery.retry_failed], gc_after_trial=False)


# -- N workers on this machine -----------------------------------------------------------------------

def check_single_process(study: optuna.Study, url: str) -> None:
    """SQLite serves one process: refuse to run beside another live `nasopt run` on the same study.

    Check and claim are one step: under `sqlite_lock` (one process at a time on this machine), a live
    runner of this study elsewhere, in its claim or in a RUNNING trial, refuses this run; else this process
    records its claim (the study's system attr `nasopt:worker`: host, pid, start time, as in a trial's) and
    gives it back when the run closes its storage. Of two runs started at the same moment, one runs and the
    other is refused, even before either started a trial (and between two trials)."""
    path = sqlite_path(url)
    if path is None:
        return
    storage, study_id = study._storage, study._study_id
    key = WORKER_KEY
    with sqlite_lock(path):
        claims = [storage.get_study_system_attrs(study_id).get(key)]
        claims += [t.system_attrs.get(key) for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
        for worker in claims:
            if (isinstance(worker, dict) and worker.get("host") == socket.gethostname()
                    and worker.get("pid") != os.getpid() and _recovery.process_alive(worker)):
                raise UserError(f"another nasopt run (pid {worker['pid']}) is running study {study.study_name!r} "
                                "in this SQLite file, which serves one process; wait for it, or use a journal file "
                                "(--storage journal:///nasopt.log) or PostgreSQL to run several workers")
        mine = _recovery.worker_record()
        storage.set_study_system_attr(study_id, key, mine)

    def give_back() -> None:
        with sqlite_lock(path):
            claim = storage.get_study_system_attrs(study_id).get(key) or {}
            if claim.get("pid") == mine["pid"] and claim.get("host") == mine["host"]:
                storage.set_study_system_attr(study_id, key, None)

    on_close(storage, give_back)


def _threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def _child(index: int, workers: int, url: str, spec: StudySpec, task: Any, store: Any,
           open_study: Callable[[StudySpec, Any], optuna.Study], trial_timeout: float | None,
           deadline: float) -> None:
    """The body of a forked worker; never returns (os._exit with the worker's exit code)."""
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the supervisor's handlers (forked with them)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        import torch

        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(_threads(workers))
        with stop_signals(ignore_sigint=True):
            study = None
            try:
                # a fresh connection pool and journal reader of its own (a journal's writer id is per object)
                study = open_study(spec, open_storage(url, who=f"worker {index}: "))
                run_worker(spec, study, task, store, progress=False, trial_timeout=trial_timeout, index=index,
                           workers=workers, deadline=deadline)
                code = 0
            finally:
                if study is not None:
                    close_storage(study._storage)
    except Terminated:
        code = 143
    except KeyboardInterrupt:
        code = 130
    except UserError as e:
        print(f"nasopt: error: worker {index}: {e}", file=sys.stderr)
        code = 2
    except BaseException:
        print(f"nasopt: worker {index} crashed:\n{scrub(traceback.format_exc(), url)}", file=sys.stderr)
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def supervise(spec: StudySpec, study: optuna.Study, url: str, task: Any, store: Any, *, workers: int,
              open_study: Callable[[StudySpec, Any], optuna.Study], progress: bool,
              trial_timeout: float | None, deadline: float) -> None:
    """Fork `workers` worker processes and wait for them, drawing one progress bar from the storage.

    The first SIGTERM or Ctrl-C is passed on to the workers as SIGTERM (each fails and queues its
    trial, then exits); a second one kills them. A worker ended by its watchdog is replaced; a worker
    killed from outside is reported, and its trial is retried by the others. Raises `Terminated` or
    `KeyboardInterrupt` after an interruption, `UserError` when a worker failed."""
    close_storage(study._storage)  # no connection may be shared with the children
    sys.stdout.flush()
    sys.stderr.flush()
    pids: dict[int, int] = {}

    def start(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            _child(index, workers, url, spec, task, store, open_study, trial_timeout, deadline)
        pids[pid] = index

    stop: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        stop.append(signum)
        for pid in list(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM if len(stop) == 1 else signal.SIGKILL)

    for i in range(workers):
        start(i)
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    bar = _progress.Progress(study, spec, enabled=progress)
    errors: list[str] = []
    try:
        last = 0.0
        while pids:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                if time.monotonic() - last > 1.0:
                    with contextlib.suppress(Exception):  # a database outage must not end the supervisor
                        bar.refresh()
                    last = time.monotonic()
                time.sleep(0.1)
                continue
            index = pids.pop(pid, None)
            if index is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if code == EXIT_HUNG and not stop:
                close_storage(study._storage)  # the progress bar's connections stay with the parent
                start(index)
            elif code < 0 and not stop:
                bar.bar.write(f"nasopt: worker {index} (pid {pid}) was killed by {signal.Signals(-code).name}; "
                              "its trial is retried by the other workers", file=sys.stderr)
            elif code not in (0, 130, 143) and code >= 0:
                errors.append(f"worker {index} exited with code {code}")
        with contextlib.suppress(Exception):
            bar.refresh()
    finally:
        bar.close()
        for s, handler in old.items():
            signal.signal(s, handler)
    if stop:
        raise Terminated() if stop[0] == signal.SIGTERM else KeyboardInterrupt()
    if errors:
        raise UserError("; ".join(errors) + " (see the messages above)")
    finished = budget(study)[0]
    if spec.strategy is None and finished < spec.n_trials and time.monotonic() < deadline:
        print(f"nasopt: the workers stopped with {finished} of {spec.n_trials} trials finished; run the same "
              "command to continue", file=sys.stderr)
