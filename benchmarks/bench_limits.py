"""Does telling the sampler of a study's hard limit spare the budget that rejected architectures take?

    python benchmarks/bench_limits.py [--seeds 10] [--trials 100] [--limit 2000] [--strategies random,tpe,nsga2,rea,botorch,pnas]

A single-objective study on nano-bench (accuracy) with the hard limit `params <= 2000`, which 189 of the
625 nano architectures meet (30 %). Each trial goes as in a nasopt study: the sampler proposes, the
architecture's params are looked up, `trial.set_constraint("params", params - limit)` is stored, and an
architecture over the limit is pruned before training; one within it is answered from the table (one
seed's validation accuracy, the seed of the run). "before": the sampler as `make_sampler` builds it,
which learns of the limit only from the constraints of the trials it sees; "after": the same sampler
given the limit with `nasopt.samplers.with_limits` (what `nasopt run` does with a study's counted limits).

Printed per strategy: the share of trials pruned for the limit (mean over seeds), the median trials until
the best architecture within the limit (the best mean validation accuracy over nano-bench's seeds) was
trained, how many runs found it, and the median best mean accuracy trained after 25 trials and at the end.
'>N': the median run missed it within N trials. The defaults take about half a minute; botorch adds about
10 s per run and pnas 1-2 minutes per run (its predictor is trained at every trial).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import optuna

from nasopt.nanobench import load
from nasopt.samplers import Limits, make_sampler, with_limits
from nasopt.search_spaces import make_space


def _key(arch: dict[str, Any]) -> str:
    return json.dumps(arch, sort_keys=True)


def one_run(strategy: str, seed: int, trials: int, limit: float, informed: bool) -> dict[str, Any]:
    bench, space = load(), make_space("nano")
    sampler = make_sampler(strategy, seed=seed, n_objectives=1, space=space)
    if informed:
        sampler = with_limits(sampler, Limits({"params": limit}, lambda a: {"params": bench.entry(a)["params"]},
                                              space), seed=seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    means = {_key(e["arch"]): statistics.fmean(r["val_acc"] for r in e["seeds"].values())
             for e in bench.table.values() if e["params"] <= limit}
    top = max(means.values())
    pruned, hit, best, best_at_25 = 0, None, 0.0, 0.0
    for number in range(trials):
        trial = study.ask()
        arch = space.suggest(trial)
        record = bench.query(arch, seed)
        trial.set_constraint("params", record["params"] - limit)
        if record["params"] > limit:
            pruned += 1
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, record["val_acc"])
            best = max(best, means[_key(arch)])
            if hit is None and means[_key(arch)] == top:
                hit = number + 1
        if number + 1 == 25:
            best_at_25 = best
    return {"pruned": pruned / trials, "hit": hit, "best25": best_at_25, "best": best}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--limit", type=float, default=2000)
    p.add_argument("--strategies", default="random,tpe,nsga2,rea")
    args = p.parse_args()
    bench = load()
    fit = sum(e["params"] <= args.limit for e in bench.table.values())
    print(f"nano-bench, accuracy, params <= {args.limit:g} ({fit} of {len(bench.table)} architectures fit); "
          f"{args.seeds} seeds x {args.trials} trials")
    print(f"{'strategy':<9} {'sampler':<8} {'pruned for the limit':>21} {'trials to best (median)':>24} "
          f"{'found':>6} {'best acc @25':>13} {'best acc @end':>14} {'s/run':>6}")
    for strategy in [s for s in args.strategies.split(",") if s]:
        for informed in (False, True):
            t0 = time.perf_counter()
            runs = [one_run(strategy, seed, args.trials, args.limit, informed) for seed in range(args.seeds)]
            seconds = (time.perf_counter() - t0) / args.seeds
            hits = sorted(float("inf") if r["hit"] is None else r["hit"] for r in runs)
            median = statistics.median(hits)
            shown = f">{args.trials}" if median == float("inf") else f"{median:.1f}"
            print(f"{strategy:<9} {'after' if informed else 'before':<8} "
                  f"{statistics.fmean(r['pruned'] for r in runs):>21.1%} {shown:>24} "
                  f"{sum(r['hit'] is not None for r in runs):>3}/{args.seeds:<2} "
                  f"{statistics.median(r['best25'] for r in runs):>13.4f} "
                  f"{statistics.median(r['best'] for r in runs):>14.4f} {seconds:>6.1f}", flush=True)


if __name__ == "__main__":
    main()
