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
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from nasopt._format import fmt
from nasopt.artifacts._inherit import Recorder, inherit, save_weights
from nasopt.artifacts._notes import note_picture
from nasopt.artifacts._pictures import keep_weights, save_picture
from nasopt.errors import UserError
from nasopt.importing import named
from nasopt.keys import DECISIONS_ATTR, INTERRUPTED_KEY, OPTUNA_ARTIFACT_PREFIX, PICTURE_ATTR, WORKER_KEY
from nasopt.measure._metrics import count_macs, count_params, measure_latency, peak_memory
from nasopt.nanobench import NanoBench
from nasopt.pruners import CurvePruner, score
from nasopt.samplers import WithinLimits
from nasopt.space import fixed
from nasopt.storage import (
    set_user_attrs,
)
from nasopt.storage._fast._buffer import flush, hold
from nasopt.study import _int8 as int8
from nasopt.study import _proxies as proxies
from nasopt.study import _suspect as suspect
from nasopt.study._identity import accepted_changes
from nasopt.study._index import StudyIndex
from nasopt.study._recovery import (
    architecture_failure,
    interrupted,
    worker_record,
)
from nasopt.study._scoring import final_metrics, signal
from nasopt.study._signals import check_stop
from nasopt.train import train, train_with

if TYPE_CHECKING:
    from nasopt.study._spec import StudySpec

__all__ = ["Objective", "latency_table_for", "trial_seed"]


def latency_table_for(spec: StudySpec, task: Any) -> Any:
    """The study's latency table, loaded and checked against its space, data and device (a missing or stale
    table is a UserError), or None when latency is timed per trial (or looked up in nano-bench)."""
    if spec.measure.latency_table is None or isinstance(task, NanoBench):
        return None
    from nasopt.measure._latency_table import LatencyTable

    table = LatencyTable.load(spec.measure.latency_table)
    table.check(spec.space, task, getattr(task, "device", None))
    return table


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
        # the curve entry the pruners follow, and its sign (higher is better after it)
        self.signal = signal(spec, task) if not isinstance(task, NanoBench) else ("val_acc", 1.0)

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
        meta = prev.system_attrs.get(f"{OPTUNA_ARTIFACT_PREFIX}{picture}") if picture else None
        if picture and meta is not None:
            trial.storage.set_trial_system_attr(trial._trial_id, f"{OPTUNA_ARTIFACT_PREFIX}{picture}", meta)
            note_picture(trial, picture, f"trial {trial.number}: {prev.user_attrs.get('arch', '')}")  # shown large
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
            reason = self.spec.pruner.prune(trial.study, trial.number, [score(r) for r in curve])
            if reason:
                key, sign = self.signal  # the pruners speak of val_acc: name what they compared
                named = key if sign > 0 else f"-{key}"
                raise optuna.TrialPruned(reason.replace("val_acc=", f"{named}=") if key != "val_acc" else reason)

    def _check_limits(self, trial: optuna.Trial, metrics: dict[str, float]) -> None:
        """The hard limits, as Optuna constraints (for the samplers) and as a prune before any training."""
        violated = []
        for metric, limit in self.spec.constraints.items():
            if metric not in metrics:  # measured after training (the int8 metrics: nasopt.study._int8)
                continue
            trial.set_constraint(metric, metrics[metric] - limit)
            if metrics[metric] > limit:
                violated.append(f"{metric}={fmt(metrics[metric], metric)} > {fmt(limit, metric)}")
        if violated:
            raise optuna.TrialPruned("constraint violated before training: " + ", ".join(violated))

    def _after_epoch(self, trial: optuna.Trial, curve: list[dict[str, float]], value: float) -> None:
        """The pruners after an epoch: nasopt's curve pruner, or Optuna's (single-objective studies only), which
        gets the epoch's value of the signal (`val_acc`, or the first objective measured per epoch) unrounded
        (the curve keeps 6 digits), as the trial's value will be. A Ctrl-C that some library swallowed is
        raised here (`check_stop`)."""
        check_stop()
        self._check_pruner(trial, curve)
        if len(self.spec.objectives) == 1 and not isinstance(self.spec.pruner, CurvePruner):
            epoch = int(curve[-1]["epoch"])
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned by {type(trial.study.pruner).__name__} at epoch {epoch} "
                                         f"({self.signal[0]}={value:.4f})")

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
        sampler = study.sampler.sampler if isinstance(study.sampler, WithinLimits) else study.sampler
        strategy = {} if "strategy" in trial.user_attrs else {"strategy": type(sampler).__name__}
        extra: dict[str, Any] = {}
        if "energy_mj" in spec.objectives or "energy_mj" in spec.constraints:
            from nasopt.measure._energy import energy_per_inference

            joules, provenance = energy_per_inference(model, task.input_shape, task.device)
            metrics["energy_mj"] = round(joules * 1e3, 9)
            extra["energy"] = {"mj": metrics["energy_mj"], **provenance}
        budgets = set(spec.objectives) | set(spec.constraints)  # int8 flash/SRAM, counted when the study asks
        if "flash_kb" in budgets or "sram_kb" in budgets:
            from nasopt.measure._budgets import counted_metrics

            metrics.update(counted_metrics(model, task.input_shape, budgets & {"flash_kb", "sram_kb"}))
        zero_cost = proxies.measure(spec, model, task, seed)  # the zero-cost proxies the study names
        extra.update(zero_cost)
        settings = self.settings(study)
        extra.update({"settings": settings} if settings else {})
        set_user_attrs(trial, {"arch": space.describe(arch), **strategy, **metrics, "seed": seed, **extra,
                               "latency": {"median_ms": latency.median_ms, "iqr_ms": latency.iqr_ms,
                                           **latency.provenance}})
        # the architecture picture for the dashboard (infeasible ones too); never fails the trial
        save_picture(trial, space, arch, self.store, task=task, directory=spec.artifacts)
        self._check_limits(trial, metrics)
        proxies.screen(trial, spec, zero_cost)  # their limits (the least allowed), then the Screen pruner
        metrics.update(zero_cost)
        flush(trial)  # the dashboard shows the metrics while the network trains

        curve: list[dict[str, float]] = []
        self._curve = curve

        key, sign = self.signal

        def on_epoch(epoch: int, record: dict[str, float]) -> None:
            if key not in record:
                raise UserError(f"epoch {epoch} has no {key!r} (the metric the pruners follow); report it from "
                                "train_fn (reporter.report(epoch, {...}))")
            entry = {k: round(v, 6) for k, v in record.items()}
            if key != "val_acc":  # what the pruners compare, higher is better (see nasopt.pruners)
                entry["score"] = round(sign * record[key], 6)
            curve.append(entry)
            if epoch < spec.train.epochs:  # the last epoch's curve goes out with the result (one commit)
                trial.set_user_attr("curve", curve)
            self._after_epoch(trial, curve, record[key])
            if epoch < spec.train.epochs:
                flush(trial)

        if recorder is not None:
            accuracy_index = list(spec.objectives).index("accuracy") if "accuracy" in spec.objectives else None
            info = inherit(model, recorder, study, self.store, exclude=trial.number, accuracy_index=accuracy_index)
            if info is not None:
                trial.set_user_attr("inherited", {"parent": info["parent"], "tensors": len(info["tensors"]),
                                                  "of": info["total"], "names": info["tensors"]})
        t3 = time.perf_counter()
        if spec.train_fn is not None:
            result = train_with(named(spec.train_fn, "train_fn"), model, task, spec.train, seed=seed,
                                on_epoch=on_epoch)
        else:
            result = train(model, task, spec.train, seed=seed, on_epoch=on_epoch)
        if recorder is not None:
            trial.set_user_attr(DECISIONS_ATTR, recorder.sequence)
            save_weights(trial, model, self.store)
        measured = final_metrics(result.curve[-1], spec.metrics)
        if int8.wanted(spec):  # quantized and measured in onnxruntime; its limits become constraints
            measured.update(int8.record(trial, spec, model, task))
        missing = [m for m in spec.objectives if m not in metrics and m not in measured]
        if missing:
            raise UserError(f"training gave no {missing[0]!r}, an objective of the study; return it from train_fn "
                            f"(e.g. {{{missing[0]!r}: value}})")
        metrics.update(measured)
        user = {name: round(measured[name], 6) for name in spec.metrics if name in measured}
        if "val_loss" in measured:
            user["val_loss"] = round(measured["val_loss"], 6)
        if "val_acc" in result.curve[-1]:
            user["accuracy"] = round(result.val_acc, 6)
        set_user_attrs(trial, {"curve": curve, **user,
                               "trained_as": {"precision": result.precision, "channels_last": result.channels_last},
                               "timings": {"build_s": round(t1 - t0, 4), "latency_s": round(t2 - t1, 4),
                                           "metrics_s": round(t3 - t2, 4), "train_s": round(result.seconds, 4)}})
        if "accuracy" in user:  # a result that should not be trusted says so (nasopt.study._suspect)
            suspect.warn(trial, suspect.near_chance(user["accuracy"], getattr(task, "num_classes", None)))
        values = [float(metrics[m]) for m in spec.objectives]
        keep_weights(trial, model, values, self.store, directory=spec.artifacts)  # trials not dominated so far
        return values
