"""The objective of one sampled trial, and the bookkeeping that makes resume exact.

suggest -> (already evaluated? reuse) -> build -> cheap metrics -> hard constraints -> train ->
objectives in the study's metric order. Reasons for PRUNED and FAIL states are user attrs.

Every FAIL says why (`fail_reason`) and by whom (`nasopt.keys.FAILURE_KEY`): the architecture itself (an
exception, out of memory, a non-finite objective: retried with the same params while its chain has failed
at most MAX_RETRY times; a `--trial-timeout`: never retried) or an interruption from outside (SIGTERM,
Ctrl-C, a dead process, a stale heartbeat: always retried, never counted).
"""

from __future__ import annotations

import math
import os
import socket
import sys
import time
import traceback
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import optuna
import torch
from optuna.artifacts._upload import ARTIFACTS_ATTR_PREFIX
from optuna.trial import FrozenTrial, TrialState

from nasopt.artifacts._inherit import Recorder, inherit, save_weights
from nasopt.artifacts._pictures import keep_weights, save_picture
from nasopt.errors import Terminated, UserError
from nasopt.keys import DECISIONS_ATTR, FAILURE_KEY, FAILURES_KEY, INTERRUPTED_KEY, PICTURE_ATTR, WORKER_KEY
from nasopt.measure._metrics import count_macs, count_params, measure_latency, peak_memory
from nasopt.nanobench import NanoBench
from nasopt.pruners import CurvePruner
from nasopt.space import fixed
from nasopt.storage._fast._buffer import flush, hold
from nasopt.storage._fast._load import seconds_since
from nasopt.storage._open import (
    MAX_RETRY,
    retry_callback,
    set_user_attrs,
    stamp_trials,
)
from nasopt.study._identity import accepted_changes
from nasopt.study._index import StudyIndex
from nasopt.train import train

if TYPE_CHECKING:
    from nasopt.study._run import StudySpec

__all__ = ["Objective", "CATCH", "TrialFailed", "NotRetried", "claim_trials", "latency_table_for", "worker_record", "process_alive", "architecture_failure",
           "record_failure", "interrupted", "retry_failed", "recover_dead_local_trials", "retry_interrupted",
           "retry_own_running", "trial_seed"]


class TrialFailed(Exception):
    """The trial failed by its architecture; its `fail_reason` and whether it is retried are recorded."""


class NotRetried(Exception):
    """An architecture failure that is never retried (`nasopt.study._worker.TrialTimeout`: it would hang again)."""


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


def latency_table_for(spec: StudySpec, task: Any) -> Any:
    """The study's latency table, loaded and checked against its space, data and device (a missing or stale
    table is a UserError), or None when latency is timed per trial (or looked up in nano-bench)."""
    if spec.measure.latency_table is None or isinstance(task, NanoBench):
        return None
    from nasopt.measure._latency_table import LatencyTable

    table = LatencyTable.load(spec.measure.latency_table)
    table.check(spec.space, task, getattr(task, "device", None))
    return table


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
    reason = record_failure(trial, reason, final=isinstance(error, NotRetried))
    if isinstance(error, NotRetried):
        return error
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


def trial_seed(base: int, number: int) -> int:
    return (base * 1_000_003 + number * 7919) % 2**31


class Objective:
    """Callable passed to `study.optimize`; holds the spec and the loaded task."""

    def __init__(self, spec: StudySpec, task: Any, store: Any = None, *, worker: Mapping[str, Any] | None = None,
                 index: StudyIndex | None = None) -> None:
        self.spec, self.task, self.store = spec, task, store
        self.worker = dict(worker or {})  # this worker's index and sampler seed, for its trials' records
        self.table = None
        self.table = latency_table_for(spec, task)
        # the study's trials as the runner last read them, indexed (saves a read and a pass per trial); the
        # runner keeps it up to date, without one each trial reads the study
        self.index = index
        self._settings: dict[str, Any] | None = None  # changes accepted with allow_changed (read once)

    def settings(self, study: optuna.Study) -> dict[str, Any]:
        """The study-defining settings this run changed on purpose (`allow_changed`), recorded per trial."""
        if self._settings is None:
            self._settings = accepted_changes(study.user_attrs.get("nasopt"), self.spec) \
                if self.spec.allow_changed else {}
        return self._settings

    def _evaluated(self, study: optuna.Study, params: dict[str, Any], number: int) -> FrozenTrial | None:
        index = self.index if self.index is not None else StudyIndex().update(study.get_trials(deepcopy=False))
        return index.evaluated(params, number, self.settings(study))

    def _reuse(self, trial: optuna.Trial, prev: FrozenTrial) -> list[float]:
        # the result is the original's; the time spent is this trial's own
        set_user_attrs(trial, {**{k: v for k, v in prev.user_attrs.items() if k != "timings"},
                               "reused_from": prev.number})
        for key, value in prev.system_attrs.items():
            if key.startswith("constraints:"):
                trial.set_constraint(key.split(":", 1)[1], value)
        # the same architecture has the same picture: point to the original's file instead of drawing it again
        picture = prev.user_attrs.get(PICTURE_ATTR)
        meta = prev.system_attrs.get(f"{ARTIFACTS_ATTR_PREFIX}{picture}") if picture else None
        if meta is not None:
            trial.storage.set_trial_system_attr(trial._trial_id, f"{ARTIFACTS_ATTR_PREFIX}{picture}", meta)
        elif not isinstance(self.task, NanoBench):  # a table look-up draws no picture (see `_lookup`)
            save_picture(trial, self.spec.space, trial.params, self.store, task=self.task,
                         directory=self.spec.artifacts)
        if prev.state == TrialState.PRUNED:
            raise optuna.TrialPruned(f"same architecture as trial {prev.number}: "
                                     f"{prev.user_attrs.get('pruned_reason', 'pruned')}")
        assert prev.values is not None
        return list(prev.values)

    def __call__(self, trial: optuna.Trial) -> list[float]:
        self._curve: list[dict[str, float]] = []
        try:
            values = self._run(trial)
            for metric, value in zip(self.spec.objectives, values, strict=False):
                if not math.isfinite(value):
                    raise ValueError(f"objective {metric} is {value}")
            return values
        except optuna.TrialPruned as e:
            attrs: dict[str, Any] = {"pruned_reason": str(e) or "pruned"}
            if self._curve and len(self._curve) > len(trial.user_attrs.get("curve", [])):
                attrs["curve"] = self._curve  # pruned after the last epoch, whose curve was not written yet
            set_user_attrs(trial, attrs)
            raise
        except KeyboardInterrupt as e:
            interrupted(trial, e, self.worker)
            raise
        except Exception as e:
            failure = architecture_failure(trial, e)
            if failure is e:
                raise
            raise failure from e

    def _check_pruner(self, trial: optuna.Trial, curve: list[dict[str, float]]) -> None:
        if isinstance(self.spec.pruner, CurvePruner):
            reason = self.spec.pruner.prune(trial.study, trial.number, [r["val_acc"] for r in curve])
            if reason:
                raise optuna.TrialPruned(reason)

    def _check_limits(self, trial: optuna.Trial, metrics: dict[str, float]) -> None:
        """The hard limits, as Optuna constraints (for the samplers) and as a prune before any training."""
        violated = []
        for metric, limit in self.spec.constraints.items():
            trial.set_constraint(metric, metrics[metric] - limit)
            if metrics[metric] > limit:
                violated.append(f"{metric}={metrics[metric]:g} > {limit:g}")
        if violated:
            raise optuna.TrialPruned("constraint violated before training: " + ", ".join(violated))

    def _after_epoch(self, trial: optuna.Trial, curve: list[dict[str, float]], val_acc: float) -> None:
        """The pruners after an epoch: nasopt's curve pruner, or Optuna's (single-objective studies only), which
        gets the epoch's `val_acc` unrounded (the curve keeps 6 digits), as the trial's value will be."""
        self._check_pruner(trial, curve)
        if len(self.spec.objectives) == 1 and not isinstance(self.spec.pruner, CurvePruner):
            epoch = int(curve[-1]["epoch"])
            trial.report(val_acc, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned by {type(trial.study.pruner).__name__} at epoch {epoch} "
                                         f"(val_acc={val_acc:.4f})")

    def _lookup(self, trial: optuna.Trial, arch: dict[str, Any], seed: int) -> list[float]:
        """nano-bench: answer from the table, epoch by epoch so that pruners see the curve."""
        record = self.task.query(arch, seed)
        metrics = {"params": record["params"], "macs": record["macs"]}
        settings = self.settings(trial.study)
        set_user_attrs(trial, {"arch": self.spec.space.describe(arch), **metrics, "seed": record["seed"],
                               "benchmark": "nanobench", **({"settings": settings} if settings else {})})
        self._check_limits(trial, metrics)
        curve: list[dict[str, float]] = []
        self._curve = curve  # a pruned look-up stores its curve so far (see __call__)
        for epoch, val_acc in enumerate(record["curve"], 1):
            curve.append({"epoch": epoch, "val_acc": val_acc})
            self._after_epoch(trial, curve, val_acc)
        set_user_attrs(trial, {"curve": curve, "accuracy": record["val_acc"],
                               "timings": {"train_s": record["train_s"], "simulated": True}})
        metrics["accuracy"] = record["val_acc"]
        return [float(metrics[m]) for m in self.spec.objectives]

    def _run(self, trial: optuna.Trial) -> list[float]:
        spec, task, space = self.spec, self.task, self.spec.space
        study = trial.study
        system = trial.storage.get_trial_system_attrs(trial._trial_id)
        hold(trial)  # writes go out together: after suggest, before training, per epoch, with the result
        trial.storage.set_trial_system_attr(trial._trial_id, WORKER_KEY, worker_record(self.worker))
        if system.get(INTERRUPTED_KEY):  # a retry inherits its original's attrs: this one is not interrupted
            trial.storage.set_trial_system_attr(trial._trial_id, INTERRUPTED_KEY, False)
        t0 = time.perf_counter()
        arch = space.suggest(trial)
        flush(trial)  # the architecture and its worker are visible (and a killed trial is retried with them)
        prev = self._evaluated(study, trial.params, trial.number)
        if prev is not None:
            return self._reuse(trial, prev)

        seed = trial_seed(spec.seed, system.get("failed_trial", trial.number))
        if isinstance(task, NanoBench):
            return self._lookup(trial, arch, seed)
        torch.manual_seed(seed)
        recorder = Recorder() if self.store is not None else None
        model = space.build(arch, task, recorder or fixed).to(task.device)
        t1 = time.perf_counter()
        if self.table is not None:  # predicted from the latency table instead of timed
            from nasopt.measure._latency_table import predicted_latency
            from nasopt.measure._metrics import Latency

            ms, provenance = predicted_latency(self.table, space, arch, task)
            latency = Latency(median_ms=ms, iqr_ms=0.0, provenance=provenance)
        else:
            latency = measure_latency(model, task.input_shape, batch_size=spec.measure.batch_size,
                                      threads=spec.measure.threads, warmup=spec.measure.warmup,
                                      repeats=spec.measure.repeats)
        t2 = time.perf_counter()
        memory, _ = peak_memory(model, task.input_shape)
        metrics: dict[str, float] = {"params": count_params(model), "macs": count_macs(model, task.input_shape),
                                     "latency_ms": round(latency.median_ms, 4),
                                     "memory_mb": round(memory / 2**20, 4)}
        # the sampler that proposed it (a gradient trial already names its method)
        strategy = {} if "strategy" in trial.user_attrs else {"strategy": type(study.sampler).__name__}
        extra: dict[str, Any] = {}
        if "energy_mj" in spec.objectives or "energy_mj" in spec.constraints:
            from nasopt.measure._energy import energy_per_inference

            joules, provenance = energy_per_inference(model, task.input_shape, task.device)
            metrics["energy_mj"] = round(joules * 1e3, 9)
            extra["energy"] = {"mj": metrics["energy_mj"], **provenance}
        settings = self.settings(study)
        extra.update({"settings": settings} if settings else {})
        set_user_attrs(trial, {"arch": space.describe(arch), **strategy, **metrics, "seed": seed, **extra,
                               "latency": {"median_ms": latency.median_ms, "iqr_ms": latency.iqr_ms,
                                           **latency.provenance}})
        # the architecture picture for the dashboard (infeasible ones too); never fails the trial
        save_picture(trial, space, arch, self.store, task=task, directory=spec.artifacts)
        self._check_limits(trial, metrics)
        flush(trial)  # the dashboard shows the metrics while the network trains

        curve: list[dict[str, float]] = []
        self._curve = curve

        def on_epoch(epoch: int, record: dict[str, float]) -> None:
            curve.append({k: round(v, 6) for k, v in record.items()})
            if epoch < spec.train.epochs:  # the last epoch's curve goes out with the result (one commit)
                trial.set_user_attr("curve", curve)
            self._after_epoch(trial, curve, record["val_acc"])
            if epoch < spec.train.epochs:
                flush(trial)

        if recorder is not None:
            accuracy_index = list(spec.objectives).index("accuracy") if "accuracy" in spec.objectives else None
            info = inherit(model, recorder, study, self.store, exclude=trial.number, accuracy_index=accuracy_index)
            if info is not None:
                trial.set_user_attr("inherited", {"parent": info["parent"], "tensors": len(info["tensors"]),
                                                  "of": info["total"], "names": info["tensors"]})
        t3 = time.perf_counter()
        result = train(model, task, spec.train, seed=seed, on_epoch=on_epoch)
        if recorder is not None:
            trial.set_user_attr(DECISIONS_ATTR, recorder.sequence)
            save_weights(trial, model, self.store)
        metrics["accuracy"] = result.val_acc
        metrics["top5"] = result.curve[-1].get("val_top5", 1.0)
        set_user_attrs(trial, {"curve": curve, "accuracy": round(result.val_acc, 6),
                               "trained_as": {"precision": result.precision, "channels_last": result.channels_last},
                               "timings": {"build_s": round(t1 - t0, 4), "latency_s": round(t2 - t1, 4),
                                           "metrics_s": round(t3 - t2, 4), "train_s": round(result.seconds, 4)}})
        values = [float(metrics[m]) for m in spec.objectives]
        keep_weights(trial, model, values, self.store, directory=spec.artifacts)  # trials not dominated so far
        return values
