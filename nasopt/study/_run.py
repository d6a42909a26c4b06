"""`run()`: carries out what a study file declares (`StudySpec`, in `_spec`) in an Optuna storage.

Resume is the same call again: the study is loaded by name and run until `n_trials` trials have
finished in total. A trial left RUNNING by a killed process is failed and retried with the same
params (at once when its process is known dead on this host, otherwise after the heartbeat grace
period), so no finished trial is lost or run twice.

`workers=N` forks N worker processes here; the same call on another machine (same storage URL)
joins the study. `n_trials` stays a budget for the whole study (see `nasopt.study._worker`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

import optuna

from nasopt import nanobench
from nasopt.artifacts._inherit import artifact_store_for
from nasopt.data import DATASETS, load_task, resolve_device, user_task
from nasopt.errors import UserError
from nasopt.samplers import with_limits
from nasopt.storage import (
    DEFAULT_STORAGE,
    check_workers,
    close_storage,
    fast_sqlite,
    mask_url,
    open_storage,
    storage_url,
)
from nasopt.storage._fast._buffer import BufferedStorage
from nasopt.study import _identity as identity
from nasopt.study import _worker as workers
from nasopt.study._limits import check_reachable, limits_for
from nasopt.study._objective import latency_table_for
from nasopt.study._proxies import give_proxies
from nasopt.study._scoring import check_output, with_scoring
from nasopt.study._spec import METRICS, StudySpec

__all__ = ["StudySpec", "run", "METRICS", "finished_count"]


def finished_count(study: optuna.Study) -> int:
    """Sampled trials that count against the budget: COMPLETE, PRUNED, and FAIL without a pending retry.

    Gradient trials (a `strategy` run, which share the study) do not count: they have their own budget
    of one trial per strategy."""
    return workers.budget(study)[0]


def _open_study(spec: StudySpec, storage_url: str | optuna.storages.BaseStorage | None) -> optuna.Study:
    return _open_or_create(spec, storage_url)[0]


def _open_or_create(spec: StudySpec, storage_url: str | optuna.storages.BaseStorage | None, task: Any = None
                    ) -> tuple[optuna.Study, bool]:
    """The study, and whether this call created it (several workers may start at once: one creates)."""
    storage: Any = storage_url if isinstance(storage_url, optuna.storages.BaseStorage) else \
        open_storage(storage_url or spec.storage)
    storage = BufferedStorage.around(storage)  # RDB: fewer round trips per trial, on a verified Optuna (nasopt.storage._fast._buffer)
    sampler = spec.sampler if spec.sampler is not None else _default_sampler(spec)
    directions = [optuna.study.StudyDirection[d.upper()] for d in spec.directions]
    # Optuna would default to a MedianPruner: no pruning unless the study asks for it
    pruner = spec.pruner if isinstance(spec.pruner, optuna.pruners.BasePruner) else optuna.pruners.NopPruner()
    created = False
    try:
        study = optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        try:
            study = optuna.create_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner,
                                        directions=directions)
            created = True
        except optuna.exceptions.DuplicatedStudyError:  # another worker was quicker
            study = optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner)
    if study.directions != directions or (study.metric_names or list(spec.objectives)) != list(spec.objectives):
        stored = [d.name.lower() for d in study.directions]
        raise UserError(f"study {spec.name!r} in {mask_url(getattr(storage, 'url', 'the storage'))} has objectives "
                        f"{study.metric_names} {stored}, but the study file asks for "
                        f"{dict(spec.objectives)}; give the study another `name`")
    if not created:  # a re-run, or a worker joining: the file must still define the same study
        backend = getattr(storage, "_backend", storage)
        where = mask_url(getattr(storage, "url", None) or getattr(backend, "url", None) or "the storage")
        identity.check(identity.stored_definition(study.user_attrs.get("nasopt") or {}), spec, where)
    fast_sqlite(storage)
    if study.metric_names is None:
        study.set_metric_names(list(spec.objectives))
        from nasopt.export._rebuild import (
            study_record,  # the space's settings etc.: export/train rebuild from them
        )

        study.set_user_attr("nasopt", {"space": type(spec.space).__name__, "dataset": spec.dataset,
                                       "objectives": dict(spec.objectives), "constraints": dict(spec.constraints),
                                       "train": dataclasses.asdict(spec.train), **study_record(spec, task),
                                       "definition": identity.definition(spec)})
    return study, created


def _default_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    if spec.strategy is not None:  # gradient trials take their params from the search (fixed params)
        return optuna.samplers.RandomSampler(seed=spec.seed)
    if len(spec.objectives) > 1:
        return optuna.samplers.NSGAIISampler(seed=spec.seed)
    return optuna.samplers.TPESampler(seed=spec.seed, constant_liar=True)


def run(spec: StudySpec, *, storage: str | optuna.storages.BaseStorage | None = None, n_trials: int | None = None,
        timeout: float | None = None, device: str | None = None, progress: bool = True, workers: int = 1,
        trial_timeout: float | None = None, allow_changed: Sequence[str] = ()) -> optuna.Study:
    """Run (or resume, or join) the study `spec.name` until `n_trials` trials have finished in total.

    Everything the user could have got wrong is checked before the storage is touched. `workers > 1`
    forks that many worker processes (Linux/macOS; call it before multi-threaded torch work in this
    process) and needs a journal file or a database server; `trial_timeout` fails a trial that runs
    longer. Returns the Optuna study; Ctrl-C and SIGTERM stop after marking the running trial(s) for a
    retry (`KeyboardInterrupt` / `nasopt.study._worker.Terminated` propagate).

    An existing study is run only if the spec still defines it (same space, data, objectives, limits,
    training and measurement; see `nasopt.study._identity`): `allow_changed` names settings that change on
    purpose (`["train.epochs"]`), added to the spec's own `allow_changed`.
    """
    if isinstance(allow_changed, str):
        allow_changed = [allow_changed]
    spec = spec.replace(n_trials=spec.n_trials if n_trials is None else n_trials,
                        timeout=spec.timeout if timeout is None else timeout,
                        device=device or spec.device,
                        allow_changed=tuple(dict.fromkeys((*spec.allow_changed, *allow_changed))))
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise UserError(f"`workers >= 1` must hold, but got workers={workers!r}")
    if trial_timeout is not None and not trial_timeout > 0:
        raise UserError(f"`trial_timeout > 0` must hold, but got trial_timeout={trial_timeout!r}")
    url = storage_url(storage) or spec.storage or DEFAULT_STORAGE
    if workers > 1 and storage is not None and storage_url(storage) is None:
        raise UserError("with workers > 1, give the storage as a URL (journal:///FILE.log or postgresql://...): "
                        "each worker opens its own connection to it")
    check_workers(url, workers)
    if workers > 1 and not hasattr(os, "fork"):
        raise UserError("--workers needs os.fork (Linux or macOS); start one `nasopt run` per worker instead")
    threads = None
    if workers > 1:
        import torch

        # forked children hang in OpenMP if this process ran a parallel region first: keep it serial
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
    try:
        return _run_checked(spec, storage, url, progress, workers, trial_timeout)
    finally:
        if threads is not None:
            import torch

            torch.set_num_threads(threads)


def _run_checked(spec: StudySpec, storage: str | optuna.storages.BaseStorage | None, url: str, progress: bool,
                 n_workers: int, trial_timeout: float | None) -> optuna.Study:
    dev = resolve_device(spec.device)
    task = _load(spec, dev)
    _check_batch(spec, task)
    _dry_build(spec, task)
    if spec.dataset != "nanobench":  # a limit no network of the space meets would reject every trial
        check_reachable(spec.space, task, dict(spec.constraints), seed=spec.seed)
    if spec.strategy is None:  # the sampler proposes within the counted limits (nasopt.samplers.with_limits)
        sampler = spec.sampler if spec.sampler is not None else _default_sampler(spec)
        limits = limits_for(spec.space, task, dict(spec.constraints))
        give_proxies(sampler, spec.space, task, spec.seed)  # a sampler reading zero-cost proxies scores on the task
        spec = spec.replace(sampler=with_limits(sampler, limits, seed=spec.seed))
    for strategy in (spec.strategy if isinstance(spec.strategy, (list, tuple)) else [spec.strategy]):
        if strategy is not None and hasattr(strategy, "check"):
            strategy.check(spec.space, task)  # e.g. DARTS on a space with depth choices: refused, nothing written
    latency_table_for(spec, task)  # a missing or stale latency table: refused before the storage is touched
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the progress bar and our messages say it all
    deadline = time.monotonic() + spec.timeout if spec.timeout else math.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = None
        try:
            study, created = _open_or_create(spec, storage, task)
            if not created and _nothing_to_do(spec, study):  # reads only: no claim, nothing written
                return study
            workers.check_single_process(study, url)
            store = None
            if spec.strategy is not None or spec.inherit_weights:
                store = artifact_store_for(url, spec.artifacts)
            if spec.strategy is not None and n_workers > 1:
                from nasopt.study._gradient import labels, strategy_done

                strategies = spec.strategy if isinstance(spec.strategy, (list, tuple)) else [spec.strategy]
                pending = [label for label in labels(strategies) if not strategy_done(study, label)]
                n_workers = max(1, min(n_workers, len(pending)))  # one gradient trial per worker
            if n_workers == 1:
                with workers.stop_signals():
                    workers.run_worker(spec, study, task, store, progress=progress, trial_timeout=trial_timeout,
                                       deadline=deadline, created=created)
                return study
            workers.supervise(spec, study, url, task, store, workers=n_workers, open_study=_open_study,
                              progress=progress, trial_timeout=trial_timeout, deadline=deadline)
            return study
        finally:
            optuna.logging.set_verbosity(level)
            if study is not None:
                close_storage(study._storage)


def _check_batch(spec: StudySpec, task: Any) -> None:
    """A batch larger than the training split is refused: it would silently train on one batch per epoch."""
    split = getattr(task, "train", None)
    try:
        n = len(split) if split is not None else None
    except TypeError:  # a stream of unknown length
        n = None
    if n and spec.train.batch_size > n:
        raise UserError(f"train.batch_size={spec.train.batch_size} is larger than the {n} training samples of "
                        f"{spec.dataset}; use train.batch_size <= {n} (--set train.batch_size={min(n, 128)})")


def _nothing_to_do(spec: StudySpec, study: optuna.Study) -> bool:
    """The study already has its budget (and nothing to retry): say so in one line instead of running."""
    if spec.strategy is not None:
        from nasopt.study._gradient import labels, strategy_done

        strategies = spec.strategy if isinstance(spec.strategy, (list, tuple)) else [spec.strategy]
        done = labels(strategies)
        if not all(strategy_done(study, label) for label in done):
            return False
        print(f"nasopt: study {spec.name!r} already has the trial of {', '.join(done)}; nothing to run (give "
              "another strategy, or another `name` to search again)", file=sys.stderr)
        return True
    finished, running, waiting = workers.budget(study)
    if finished < spec.n_trials or running or waiting:
        return False
    print(f"nasopt: study {spec.name!r} already has {finished} finished trials (n_trials={spec.n_trials}); raise "
          f"--n-trials to continue", file=sys.stderr)
    return True


def _dry_build(spec: StudySpec, task: Any) -> None:
    """Build one random architecture before the storage is touched: a space that cannot build for this
    task fails here, with nothing written, instead of inside the first trial."""
    from nasopt.space import random_arch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arch = random_arch(spec.space, seed=spec.seed)
    try:
        model = spec.space.build(arch, task)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"space {type(spec.space).__name__} cannot build a network for {task.name} "
                        f"(input {tuple(task.input_shape)}): {type(e).__name__}: {e}") from None
    if hasattr(task, "train"):  # the output the task needs, and a loss that gives a scalar
        check_output(model, task, spec.train)
    if getattr(task, "device", None) is not None:  # e.g. precision='fp16' on a CPU: refused before any write
        import torch

        from nasopt.train import resolve_precision

        resolve_precision(model, torch.device(task.device), spec.train)


def _load(spec: StudySpec, device: str) -> Any:
    if spec.dataset == "nanobench" and spec.strategy is not None:
        raise UserError("nanobench answers sampled trials from its table; a gradient strategy needs real data "
                        "(dataset='digits', 'mnist1d', ...)")
    if spec.dataset == "nanobench":
        bench = nanobench.load()
        bench.check_space(spec.space)
        missing = [m for m in list(spec.objectives) + list(spec.constraints) if m not in nanobench.METRICS]
        if missing:
            built = (f" ({missing[0]} needs the network itself: search the space on real data, e.g. "
                     "dataset='digits')") if missing[0] in METRICS else ""
            raise UserError(f"nanobench has no {missing[0]!r}; its metrics are {', '.join(nanobench.METRICS)}"
                            f"{built}")
        return bench
    if spec.data is not None:
        task = user_task(spec.data, kind=spec.kind, input_shape=spec.input_shape, num_classes=spec.num_classes,
                         val_fraction=spec.val_fraction, seed=spec.seed, device=device)
    else:
        if spec.dataset.lower().replace("-", "_") not in DATASETS:
            raise UserError(f"unknown dataset {spec.dataset!r}; known datasets: {', '.join((*DATASETS, 'nanobench'))}")
        if spec.kind not in (None, "classify"):
            raise UserError(f"dataset {spec.dataset!r} is a classification; kind={spec.kind!r} needs your own `data`")
        task = load_task(spec.dataset, data_dir=spec.data_dir, download=spec.download,
                         val_fraction=spec.val_fraction, seed=spec.seed, device=device, image_size=spec.image_size)
    return with_scoring(spec, task)
