"""Sampling time and hypervolume: nasopt's `botorch` sampler against optuna_integration.BoTorchSampler.

One cheap synthetic problem, so sampling dominates: 3 objectives (all minimised), 5 parameters (three
categorical, two integer), 6 x 5 x 11 x 8 x 4 = 10560 configurations. It is DTLZ2 on a discretised
grid: categorical `a` and `b` place a point on the spherical front (their choices map to positions in a
fixed shuffled order, so the choice order carries no information), `c`, `d` and `e` set the distance
g >= 0 from it. All samplers use the same seed, 10 random startup trials and the same fixed reference
point (2.2, 2.2, 2.2); the best reachable hypervolume (every configuration evaluated) is printed too.

Time is measured around every sampler call (infer_relative_search_space, sample_relative,
sample_independent, before/after_trial) and attributed to the trial: wall and CPU (process) time, the
latter less sensitive to other load on shared cores. "end" is the mean over the last 10 trials. On
shared cores, OMP_NUM_THREADS=1 keeps torch's idle threads of the reference samplers from spinning
against other processes (nasopt's sampler runs on one thread anyway); the comparison is fairer so.

    .venv/bin/python benchmarks/bench_botorch.py                      # 100 trials; the reference takes hours
    .venv/bin/python benchmarks/bench_botorch.py --trials 30          # all four at a reduced size
    .venv/bin/python benchmarks/bench_botorch.py --skip-reference --seeds 0,1,2,3,4,5
    .venv/bin/python benchmarks/bench_botorch.py --samplers reference --trials 30   # one line only

Lines: nasopt `botorch` (BoTorchPoolSampler), optuna_integration.BoTorchSampler (defaults: qLogEHVI
optimised by multi-start L-BFGS on the relaxed box), Optuna's GPSampler and RandomSampler for reference.
The script reports; it never asserts.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
from optuna._hypervolume import compute_hypervolume
from optuna.samplers import BaseSampler
from optuna.study._multi_objective import _is_pareto_front

REF = np.array([2.2, 2.2, 2.2])
_POS = {k: np.random.RandomState(123).permutation(n) / (n - 1) for k, n in (("a", 6), ("b", 5), ("e", 4))}


def objective(trial: optuna.Trial) -> tuple[float, float, float]:
    a = trial.suggest_categorical("a", [f"a{i}" for i in range(6)])
    b = trial.suggest_categorical("b", [f"b{i}" for i in range(5)])
    c = trial.suggest_int("c", 0, 10)
    d = trial.suggest_int("d", 1, 8)
    e = trial.suggest_categorical("e", [f"e{i}" for i in range(4)])
    x0, x1 = _POS["a"][int(a[1:])] * math.pi / 2, _POS["b"][int(b[1:])] * math.pi / 2
    g = (c / 10 - 0.3) ** 2 + ((d - 1) / 7 - 0.6) ** 2 + (_POS["e"][int(e[1:])] - 0.5) ** 2
    return ((1 + g) * math.cos(x0) * math.cos(x1), (1 + g) * math.cos(x0) * math.sin(x1), (1 + g) * math.sin(x0))


def hypervolume(values: Any) -> float:
    Y = np.asarray(values, dtype=float)
    Y = Y[(Y <= REF).all(axis=1)]
    return float(compute_hypervolume(Y, REF)) if len(Y) else 0.0


def best_hypervolume() -> float:
    grid = itertools.product(*({"a": [f"a{i}" for i in range(6)], "b": [f"b{i}" for i in range(5)],
                                "c": range(11), "d": range(1, 9), "e": [f"e{i}" for i in range(4)]}.values()))
    Y = np.array([objective(optuna.trial.FixedTrial(dict(zip("abcde", p, strict=True)))) for p in grid])
    return hypervolume(Y[_is_pareto_front(Y, assume_unique_lexsorted=False)])


class Timed(BaseSampler):
    """Delegates to `inner` and adds the wall / CPU time of every call to the trial it serves."""

    def __init__(self, inner: BaseSampler) -> None:
        self.inner = inner
        self.wall: dict[int, float] = defaultdict(float)
        self.cpu: dict[int, float] = defaultdict(float)

    def _timed(self, trial: Any, call: Callable[[], Any]) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return call()
        finally:
            self.wall[trial.number] += time.perf_counter() - wall
            self.cpu[trial.number] += time.process_time() - cpu

    def infer_relative_search_space(self, study, trial):
        return self._timed(trial, lambda: self.inner.infer_relative_search_space(study, trial))

    def sample_relative(self, study, trial, search_space):
        return self._timed(trial, lambda: self.inner.sample_relative(study, trial, search_space))

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._timed(trial, lambda: self.inner.sample_independent(study, trial, param_name,
                                                                          param_distribution))

    def before_trial(self, study, trial):
        return self._timed(trial, lambda: self.inner.before_trial(study, trial))

    def after_trial(self, study, trial, state, values):
        return self._timed(trial, lambda: self.inner.after_trial(study, trial, state, values))

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


def make(name: str, seed: int) -> BaseSampler:
    if name == "nasopt botorch":
        from nasopt.samplers import make_sampler

        return make_sampler("botorch", seed=seed, n_objectives=3)
    if name == "integration BoTorch":
        from optuna_integration import BoTorchSampler

        return BoTorchSampler(seed=seed, n_startup_trials=10)
    if name == "optuna GPSampler":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=10)
    return optuna.samplers.RandomSampler(seed=seed)


def run(name: str, seed: int, n_trials: int) -> dict[str, float]:
    sampler = Timed(make(name, seed))
    study = optuna.create_study(directions=["minimize"] * 3, sampler=sampler)
    started = time.perf_counter()
    for done in range(5, n_trials + 5, 5):
        study.optimize(objective, n_trials=min(done, n_trials) - len(study.trials))
        last = range(max(10, len(study.trials) - 5), len(study.trials)) or range(len(study.trials))
        print(f"  {name:20s} seed {seed}  trials {len(study.trials):4d}  "
              f"{statistics.fmean(sampler.wall[i] for i in last):6.2f} s/trial (last 5)  "
              f"elapsed {time.perf_counter() - started:7.1f} s  "
              f"hypervolume so far {hypervolume([t.values for t in study.trials]):.4f}", flush=True)
    bo = range(10, n_trials)  # after the random startup
    end = range(max(10, n_trials - 10), n_trials)
    def mean(times: dict[int, float], trials: range) -> float:
        return statistics.fmean(times[i] for i in trials) if trials else 0.0

    return {"all": mean(sampler.wall, bo), "all_cpu": mean(sampler.cpu, bo), "end": mean(sampler.wall, end),
            "end_cpu": mean(sampler.cpu, end), "max": max((sampler.wall[i] for i in bo), default=0.0),
            "hv": hypervolume([t.values for t in study.trials])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=100, help="trials per sampler (default 100)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; times and HV are averaged")
    parser.add_argument("--skip-reference", action="store_true",
                        help="skip optuna_integration.BoTorchSampler (25-60 s/trial on 2 cores)")
    parser.add_argument("--samplers", default="nasopt,reference,gp,random",
                        help="comma-separated subset of nasopt, reference, gp, random")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    known = {"nasopt": "nasopt botorch", "reference": "integration BoTorch", "gp": "optuna GPSampler",
             "random": "random"}
    names = [known[k] for k in args.samplers.split(",") if not (args.skip_reference and k == "reference")]
    print(f"3 objectives, 5 parameters, {args.trials} trials, seeds {seeds}; best reachable hypervolume "
          f"{best_hypervolume():.4f} (reference point {tuple(REF.tolist())})", flush=True)
    results = {n: [run(n, s, args.trials) for s in seeds] for n in names}
    mean = {n: {k: statistics.fmean(r[k] for r in rs) for k in rs[0]} for n, rs in results.items()}

    print(f"\ns/trial: mean over trials 11-{args.trials} (after the random startup) and over the last 10 "
          f"(end), wall and CPU\n{'sampler':22s} {'wall':>7s} {'cpu':>7s} {'end wall':>9s} {'end cpu':>8s} "
          f"{'max wall':>9s} {'hypervolume':>12s}")
    for n, m in mean.items():
        hvs = ", ".join(f"{r['hv']:.4f}" for r in results[n]) if len(seeds) > 1 else ""
        timing = (f"{m['all']:7.3f} {m['all_cpu']:7.3f} {m['end']:9.3f} {m['end_cpu']:8.3f} {m['max']:9.2f}"
                  if n != "random" else " " * 45)
        print(f"{n:22s} {timing} {m['hv']:12.4f}   {hvs}")
    if "integration BoTorch" in mean and "nasopt botorch" in mean:
        ref, ours = mean["integration BoTorch"], mean["nasopt botorch"]
        print(f"\ntime ratio integration / nasopt: wall {ref['all'] / ours['all']:.0f}x, CPU "
              f"{ref['all_cpu'] / ours['all_cpu']:.0f}x over all BO trials; wall {ref['end'] / ours['end']:.0f}x, "
              f"CPU {ref['end_cpu'] / ours['end_cpu']:.0f}x at the end; hypervolume {ours['hv']:.4f} (nasopt) vs "
              f"{ref['hv']:.4f} (integration)")


if __name__ == "__main__":
    main()
