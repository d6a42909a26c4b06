"""What a study file declares (`StudySpec`) and `run()`, which carries it out in an Optuna storage.

Resume is the same call again: the study is loaded by name and run until `n_trials` trials have
finished in total. A trial left RUNNING by a killed process is failed and retried with the same
params (at once when its process is known dead on this host, otherwise after the heartbeat grace
period), so no finished trial is lost or run twice.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from nasopt import _objective, _progress, nanobench
from nasopt.data import DATASETS, load_task
from nasopt.errors import UserError
from nasopt.inherit import artifact_store_for
from nasopt.metrics import MeasureConfig
from nasopt.pruners import CurvePruner
from nasopt.storage import close_storage, fast_sqlite, mask_url, open_storage
from nasopt.train import TrainConfig

__all__ = ["StudySpec", "run", "METRICS", "finished_count"]

# metric name -> (what it is, usable as a hard limit before training)
METRICS: dict[str, tuple[str, bool]] = {
    "accuracy": ("validation top-1 after the last epoch", False),
    "top5": ("validation top-5 after the last epoch", False),
    "params": ("trainable parameters", True),
    "macs": ("multiply-adds of one forward pass at batch 1", True),
    "latency_ms": ("median measured forward latency", True),
    "memory_mb": ("peak inference memory in MiB", True),
}


@dataclass(frozen=True, kw_only=True)
class StudySpec:
    """One NAS study: what to search, on which data, for which objectives, with which sampler."""

    name: str
    space: Any
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    val_fraction: float = 0.2
    image_size: int | None = None
    objectives: Mapping[str, str] = field(default_factory=lambda: {"accuracy": "maximize"})
    constraints: Mapping[str, float] = field(default_factory=dict)
    sampler: Any = None
    strategy: Any = None  # a gradient method (nasopt.oneshot.DARTS(...)) or a list of them: one trial each
    pruner: optuna.pruners.BasePruner | CurvePruner | None = None
    n_trials: int = 20
    timeout: float | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    seed: int = 0
    device: str = "auto"
    storage: str | None = None
    inherit_weights: bool = False
    artifacts: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise UserError(f"a study needs a non-empty `name`, but got name={self.name!r}")
        if not self.objectives:
            raise UserError("a study needs at least one objective, e.g. objectives={'accuracy': 'maximize'}")
        for metric, direction in self.objectives.items():
            if metric not in METRICS:
                raise UserError(f"unknown objective {metric!r}; known metrics: {', '.join(METRICS)}")
            if direction not in ("maximize", "minimize"):
                raise UserError(f"objective {metric!r} has direction {direction!r}; use 'maximize' or 'minimize'")
        limits = [m for m, (_, cheap) in METRICS.items() if cheap]
        for metric, limit in self.constraints.items():
            if metric not in limits:
                raise UserError(f"unknown constraint {metric!r}; hard limits exist for: {', '.join(limits)}")
            if not isinstance(limit, (int, float)) or limit <= 0:
                raise UserError(f"constraint {metric!r} must be a positive number, but got {limit!r}")
        if not isinstance(self.n_trials, int) or self.n_trials < 1:
            raise UserError(f"`n_trials >= 1` must hold, but got n_trials={self.n_trials!r}")
        if self.timeout is not None and self.timeout <= 0:
            raise UserError(f"`timeout > 0` must hold, but got timeout={self.timeout!r}")
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise UserError(f"unknown device {self.device!r}; use auto, cpu or cuda")
        if isinstance(self.pruner, optuna.pruners.BasePruner) and len(self.objectives) > 1:
            raise UserError("Optuna's pruners need a single-objective study; use a nasopt pruner "
                            "(nasopt.pruners.MedianStop, EarlyKill, SuccessiveHalving, Hyperband) instead")
        if self.pruner is not None and not isinstance(self.pruner, (optuna.pruners.BasePruner, CurvePruner)):
            raise UserError(f"`pruner` must be a nasopt or Optuna pruner, but got {self.pruner!r}")
        for method in ("suggest", "build", "distributions", "encode", "describe"):
            if not callable(getattr(self.space, method, None)):
                raise UserError(f"`space` must be a search space (missing `{method}`), but got {self.space!r}")
        if self.sampler is not None and not isinstance(self.sampler, optuna.samplers.BaseSampler):
            raise UserError(f"`sampler` must be an Optuna sampler, but got {self.sampler!r}")
        if self.strategy is not None:
            strategies = self.strategy if isinstance(self.strategy, (list, tuple)) else [self.strategy]
            for s in strategies:
                if not callable(getattr(s, "search", None)) or not isinstance(getattr(s, "label", None), str):
                    raise UserError(f"`strategy` must be a gradient method such as nasopt.oneshot.DARTS(...) or a "
                                    f"list of them, but got {s!r}")
            if not strategies:
                raise UserError("`strategy` is an empty list; give nasopt.oneshot.DARTS(...) or leave it out")
            if self.sampler is not None:
                raise UserError("a study file gives either a `sampler` (sampled trials) or a `strategy` (gradient "
                                "trials), not both; put the other in a second study file with the same `name`")

    @property
    def directions(self) -> list[str]:
        return list(self.objectives.values())

    def replace(self, **changes: Any) -> StudySpec:
        return dataclasses.replace(self, **changes)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but no CUDA device is available; use --device cpu")
    return name


def finished_count(study: optuna.Study) -> int:
    """Sampled trials that count against the budget: COMPLETE, PRUNED, and FAIL without a pending retry.

    Gradient trials (a `strategy` run, which share the study) do not count: they have their own budget
    of one trial per strategy."""
    from nasopt.oneshot._trial import STRATEGY_KEY

    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return sum(1 for t in trials if STRATEGY_KEY not in t.system_attrs and (
        t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (t.state == TrialState.FAIL and t.number not in retried)))


def _open_study(spec: StudySpec, storage_url: str | optuna.storages.BaseStorage | None) -> optuna.Study:
    storage: Any = storage_url if isinstance(storage_url, optuna.storages.BaseStorage) else \
        open_storage(storage_url or spec.storage)
    sampler = spec.sampler if spec.sampler is not None else _default_sampler(spec)
    directions = [optuna.study.StudyDirection[d.upper()] for d in spec.directions]
    # load_if_exists: several workers may create the same study at once; the first one wins
    # Optuna would default to a MedianPruner: no pruning unless the study asks for it
    pruner = spec.pruner if isinstance(spec.pruner, optuna.pruners.BasePruner) else optuna.pruners.NopPruner()
    study = optuna.create_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner,
                                directions=directions, load_if_exists=True)
    if study.directions != directions or (study.metric_names or list(spec.objectives)) != list(spec.objectives):
        stored = [d.name.lower() for d in study.directions]
        raise UserError(f"study {spec.name!r} in {mask_url(getattr(storage, 'url', 'the storage'))} has objectives "
                        f"{study.metric_names} {stored}, but the study file asks for "
                        f"{dict(spec.objectives)}; give the study another `name`")
    fast_sqlite(storage)
    if study.get_trials(deepcopy=False) and hasattr(sampler, "reseed_rng"):
        # resuming: a seeded sampler would replay the proposals of the first run from its start
        sampler.reseed_rng()
    if study.metric_names is None:
        study.set_metric_names(list(spec.objectives))
        study.set_user_attr("nasopt", {"space": type(spec.space).__name__, "dataset": spec.dataset,
                                       "objectives": dict(spec.objectives), "constraints": dict(spec.constraints),
                                       "train": dataclasses.asdict(spec.train)})
    return study


def _default_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    if spec.strategy is not None:  # gradient trials take their params from the search (fixed params)
        return optuna.samplers.RandomSampler(seed=spec.seed)
    if len(spec.objectives) > 1:
        return optuna.samplers.NSGAIISampler(seed=spec.seed)
    return optuna.samplers.TPESampler(seed=spec.seed, constant_liar=True)


def run(spec: StudySpec, *, storage: str | optuna.storages.BaseStorage | None = None, n_trials: int | None = None,
        timeout: float | None = None, device: str | None = None, progress: bool = True) -> optuna.Study:
    """Run (or resume) the study `spec.name` until `n_trials` trials have finished in total.

    Everything the user could have got wrong is checked before the storage is touched. Returns the
    Optuna study; Ctrl-C stops after marking the interrupted trial for a retry on the next run.
    """
    spec = spec.replace(n_trials=spec.n_trials if n_trials is None else n_trials,
                        timeout=spec.timeout if timeout is None else timeout,
                        device=device or spec.device)
    dev = _device(spec.device)
    task = _load(spec, dev)
    _dry_build(spec, task)
    for strategy in (spec.strategy if isinstance(spec.strategy, (list, tuple)) else [spec.strategy]):
        if strategy is not None and hasattr(strategy, "check"):
            strategy.check(spec.space, task)  # e.g. DARTS on a space with depth choices: refused, nothing written
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the progress bar and our messages say it all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            study = _open_study(spec, storage)
            store = None
            url = storage if isinstance(storage, str) else getattr(storage, "url", None)
            if spec.strategy is not None:
                from nasopt.oneshot._trial import run_strategies

                run_strategies(spec, study, task, artifact_store_for(url or spec.storage, spec.artifacts), progress)
                return study
            if spec.inherit_weights:
                store = artifact_store_for(url or spec.storage, spec.artifacts)
            return _run(spec, study, task, progress, store)
        finally:
            optuna.logging.set_verbosity(level)
            if "study" in locals():
                close_storage(study._storage)


def _run(spec: StudySpec, study: optuna.Study, task: Any, progress: bool, store: Any) -> optuna.Study:
    objective = _objective.Objective(spec, task, store)
    deadline = time.monotonic() + spec.timeout if spec.timeout else math.inf
    bar = _progress.Progress(study, spec, enabled=progress)
    try:
        while True:
            _objective.recover_dead_local_trials(study)
            remaining = spec.n_trials - finished_count(study)
            left = deadline - time.monotonic()
            if remaining <= 0 or left <= 0:
                break
            bar.refresh()
            study.optimize(objective, n_trials=remaining, timeout=None if math.isinf(left) else left,
                           callbacks=[_stop_at_budget(spec.n_trials, bar)],
                           catch=_objective.CATCH, gc_after_trial=False)
    except KeyboardInterrupt:
        _objective.retry_interrupted(study)
        raise
    finally:
        bar.close()
    return study


def _dry_build(spec: StudySpec, task: Any) -> None:
    """Build one random architecture before the storage is touched: a space that cannot build for this
    task fails here, with nothing written, instead of inside the first trial."""
    from nasopt.space import random_arch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arch = random_arch(spec.space, seed=spec.seed)
    try:
        spec.space.build(arch, task)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"space {type(spec.space).__name__} cannot build a network for {task.name} "
                        f"(input {tuple(task.input_shape)}): {type(e).__name__}: {e}") from None


def _load(spec: StudySpec, device: str) -> Any:
    if spec.dataset == "nanobench" and spec.strategy is not None:
        raise UserError("nanobench answers sampled trials from its table; a gradient strategy needs real data "
                        "(dataset='digits', 'mnist1d', ...)")
    if spec.dataset == "nanobench":
        bench = nanobench.load()
        bench.check_space(spec.space)
        missing = [m for m in list(spec.objectives) + list(spec.constraints) if m not in nanobench.METRICS]
        if missing:
            raise UserError(f"nanobench has no {missing[0]!r}; its metrics are {', '.join(nanobench.METRICS)}")
        return bench
    if spec.dataset.lower().replace("-", "_") not in DATASETS:
        raise UserError(f"unknown dataset {spec.dataset!r}; known datasets: {', '.join((*DATASETS, 'nanobench'))}")
    return load_task(spec.dataset, data_dir=spec.data_dir, download=spec.download,
                     val_fraction=spec.val_fraction, seed=spec.seed, device=device, image_size=spec.image_size)


def _stop_at_budget(n_trials: int, bar: _progress.Progress) -> Any:
    """After each trial: count the finished trials once (all workers'), stop at the budget, update the bar."""

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        done = finished_count(study)
        if done >= n_trials:
            study.stop()
        bar.on_trial(study, trial, done)

    return callback
