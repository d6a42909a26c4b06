"""The one-line API of the nanoNAS seed: `nasopt.nano_nas`, `nasopt.search`, `nasopt.benchmark`.

A front like the CLI (it resolves space and strategy names), so it lives beside it; every search it
starts is an ordinary study, stored like any other run.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from typing import Any

import optuna
from torch import nn

from nasopt.errors import SuspectResult, UserError
from nasopt.search_spaces import make_space

__all__ = ["nano_nas", "search", "benchmark", "STRATEGY_ALIASES"]

# the seed's strategy words -> nasopt sampler names
STRATEGY_ALIASES = {"evolution": "rea", "evolutionary": "rea", "regularized_evolution": "rea",
                    "bayesian": "botorch", "bo": "botorch", "predictor": "pnas", "nsga": "nsga2"}


def _gradient(strategy: str, epochs: int, options: dict[str, Any]) -> Any:
    """The gradient method called `strategy` (darts, darts_2nd, pc_darts, proxyless, enas) with `epochs` and
    `options` as its settings; None when `strategy` names a sampler."""
    import dataclasses

    from nasopt.oneshot import STRATEGIES, make_strategy

    name = STRATEGY_ALIASES.get(strategy, strategy)
    if name not in STRATEGIES:
        return None
    method = make_strategy(name)
    fields = {f.name for f in dataclasses.fields(method)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise UserError(f"strategy {strategy!r} has no option {', '.join(unknown)}; its options: {', '.join(sorted(fields))}")
    return dataclasses.replace(method, **{"epochs": epochs, **options})


def _sampler(strategy: str, *, seed: int, n_objectives: int, space: Any, gradient: bool = True,
             **options: Any) -> Any:
    """The sampler called `strategy` (a sampler name or one of STRATEGY_ALIASES); an unknown name is refused
    with every name the caller takes (`gradient`: the gradient methods too, as `search` does)."""
    from nasopt.samplers import make_sampler

    name = STRATEGY_ALIASES.get(strategy, strategy)
    if name == "rea" and options:
        from nasopt.samplers import REASampler

        return REASampler(seed=seed, **options)
    if options:
        raise UserError(f"strategy {strategy!r} takes no options, but got {sorted(options)}")
    from nasopt.oneshot import STRATEGIES
    from nasopt.samplers import SAMPLERS

    if name not in SAMPLERS:  # the API's words too: the samplers, their aliases (and the gradient methods)
        known = [*SAMPLERS, *STRATEGY_ALIASES, *(STRATEGIES if gradient else ())]
        raise UserError(f"unknown {'strategy' if gradient else 'sampler'} {strategy!r}; known: {', '.join(known)}")
    return make_sampler(name, seed=seed, n_objectives=n_objectives, space=space)


def search(strategy: str = "evolution", *, space: Any = "nano", dataset: str = "digits", n_trials: int = 20,
           objectives: dict[str, str] | None = None, epochs: int = 5, storage: Any = None,
           study_name: str | None = None, seed: int = 0, return_results: bool = False, progress: bool = True,
           **strategy_options: Any) -> nn.Module | tuple[nn.Module, dict[str, Any]]:
    """Search `space` on `dataset` with `strategy` and return the best architecture, trained.

    `strategy` is a sampler ("evolution", "random", "tpe", "nsga2", "pnas", "botorch", ...) that runs
    `n_trials` trials, or a gradient method ("darts", "darts_2nd", "pc_darts", "proxyless", "enas") that
    runs one trial of `epochs` supernet epochs; `strategy_options` are its settings.

    The study is stored in `storage` (default `sqlite:///nasopt.db`) under `study_name` (default
    `search_<strategy>_<space>`), so the dashboard, pandas and a later resume see it. The returned
    module is the best trial's architecture trained again with that trial's seed and schedule (on the
    CPU the same weights). With `return_results=True` also returns a dict: study name, best trial
    number, params, architecture string, validation accuracy and test accuracy.
    """
    import nasopt
    from nasopt.data import load_task
    from nasopt.train import evaluate, train

    space_obj = make_space(space) if isinstance(space, str) else space
    objectives = objectives or {"accuracy": "maximize"}
    method = _gradient(strategy, epochs, strategy_options)  # a gradient method: one trial, n_trials unused
    sampler = None if method is not None else _sampler(strategy, seed=seed, n_objectives=len(objectives),
                                                       space=space_obj, **strategy_options)
    name = study_name or f"search_{strategy}_{space if isinstance(space, str) else type(space).__name__}"
    spec = nasopt.StudySpec(name=name, space=space_obj, dataset=dataset, objectives=objectives, sampler=sampler,
                            strategy=method, n_trials=n_trials, seed=seed, train=nasopt.TrainConfig(epochs=epochs),
                            storage=storage if isinstance(storage, str) else None)
    study = nasopt.run(spec, storage=storage, progress=progress)
    best = _best(study, list(objectives))
    task = load_task(dataset if dataset != "nanobench" else "digits", seed=seed)
    import torch

    seed_used = int(best.user_attrs.get("seed", seed))
    torch.manual_seed(seed_used)
    model = space_obj.build(best.params, task).to(task.device)
    train(model, task, spec.train, seed=seed_used)
    model.eval()
    for message in best.user_attrs.get("warnings") or []:  # what the study stored against this result
        warnings.warn(f"{name} trial {best.number}: {message}", SuspectResult, stacklevel=2)
    if not return_results:
        return model
    return model, {"study_name": name, "trial": best.number, "params": dict(best.params),
                   "arch": space_obj.describe(best.params), "val_acc": evaluate(model, task.val)["acc"],
                   "test_acc": evaluate(model, task.test)["acc"], "n_trials": len(study.trials)}


def _best(study: optuna.Study, metrics: list[str]) -> optuna.trial.FrozenTrial:
    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    if not complete:
        raise UserError(f"study {study.study_name!r} has no completed trial to return; run more trials")
    if len(metrics) == 1:
        return study.best_trial
    i = metrics.index("accuracy") if "accuracy" in metrics else 0
    return max(study.best_trials, key=lambda t: t.values[i])  # the most accurate Pareto-optimal trial


def nano_nas(strategy: str = "evolution", *, population_size: int = 20, generations: int = 10, epochs: int = 5,
             **kwargs: Any) -> nn.Module:
    """The nanoNAS seed's one line: `nasopt.nano_nas('evolution', population_size=20, generations=10)`.

    Evolution is regularized evolution over the nano space (population_size x generations trials);
    other strategies run population_size x generations trials too.
    """
    options: dict[str, Any] = {"population_size": population_size, "sample_size": max(2, population_size // 4)} \
        if STRATEGY_ALIASES.get(strategy, strategy) == "rea" else {}
    result = search(strategy, space="nano", n_trials=population_size * generations, epochs=epochs,
                    study_name=kwargs.pop("study_name", f"nano_nas_{strategy}"), **options, **kwargs)
    return result if isinstance(result, nn.Module) else result[0]


def _censored_median(hits: list[int | None]) -> float:
    """The median of trials-to-optimum where a run that never found it (None) counts as more than any; NaN
    when the median falls among those (or there are no runs)."""
    median = statistics.median([math.inf if h is None else h for h in hits]) if hits else math.nan
    return float(median) if math.isfinite(median) else math.nan


def benchmark(strategies: Any = ("random", "tpe", "rea"), *, num_runs: int = 3,
              space: Any = "nano", dataset: str = "nanobench", n_trials: int = 100, epochs: int = 5,
              storage: Any = None, progress: bool = False) -> Any:
    """Compare strategies over `num_runs` seeded runs each; returns a pandas DataFrame.

    `strategies` are sampler names, or a mapping label -> factory(seed) -> sampler for configured ones.

    Columns: strategy, runs, best_val (mean), best_val_std, best_test (mean test accuracy of the chosen
    architecture, nano-bench only), best_true and per_run_true (the chosen architecture's validation
    accuracy averaged over the table's seeds: its quality without the noise of one run), trials_to_opt (median
    trials until an optimum of the table was found — any architecture tied with the best mean validation
    accuracy, `nanobench.optima` — counting a run that never found one as more than n_trials; NaN when that
    median is not reached, i.e. when at most half the runs found one; nano-bench only), found_opt (runs that
    found one), seconds per run. Every run is a study in
    `storage` (default: in memory) named `bench_<strategy>_<run>`.
    """
    import pandas as pd

    import nasopt
    from nasopt import nanobench

    bench = nanobench.load() if dataset == "nanobench" else None
    factories = dict(strategies) if isinstance(strategies, dict) else {
        name: (lambda seed, name=name: _sampler(name, seed=seed, n_objectives=1, space=space_of(), gradient=False))
        for name in strategies}

    def space_of() -> Any:
        return make_space(space) if isinstance(space, str) else space

    for factory in factories.values():  # every strategy checked before any run starts
        factory(0)
    rows = []
    for strategy, factory in factories.items():
        best_vals: list[float] = []
        best_tests: list[float] = []
        best_means: list[float] = []
        hits: list[int | None] = []
        seconds: list[float] = []
        for run in range(num_runs):
            space_obj = space_of()
            sampler = factory(run)
            spec = nasopt.StudySpec(name=f"bench_{strategy}_{run}", space=space_obj, dataset=dataset,
                                    sampler=sampler, n_trials=n_trials, seed=run,
                                    train=nasopt.TrainConfig(epochs=epochs))
            t0 = time.perf_counter()
            study = nasopt.run(spec, storage=storage or optuna.storages.InMemoryStorage(), progress=progress)
            seconds.append(time.perf_counter() - t0)
            best = study.best_trial
            best_vals.append(float(best.value if best.value is not None else math.nan))
            if bench is not None:
                best_tests.append(bench.mean_test_acc(best.params))
                best_means.append(bench.mean_val_acc(best.params))
                order = sorted(study.trials, key=lambda t: t.number)
                hit = next((i + 1 for i, t in enumerate(order) if t.params in bench.optima), None)
                hits.append(hit)
        found = [h for h in hits if h is not None]
        rows.append({"strategy": strategy, "runs": num_runs, "best_val": statistics.fmean(best_vals),
                     "best_val_std": statistics.pstdev(best_vals),
                     "best_test": statistics.fmean(best_tests) if best_tests else float("nan"),
                     "best_true": statistics.fmean(best_means) if best_means else float("nan"),
                     "per_run_true": best_means,
                     "trials_to_opt": _censored_median(hits),
                     "found_opt": f"{len(found)}/{num_runs}" if bench is not None else "",
                     "seconds": statistics.fmean(seconds)})
    return pd.DataFrame(rows)
