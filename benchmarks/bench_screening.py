"""Does screening by a zero-cost proxy find nano-bench's optimum with fewer trials and less compute?

    python benchmarks/bench_screening.py [--seeds 20] [--trials 200] [--strategies rea,tpe] [--proxies synflow,naswot]

For each strategy (a nasopt sampler by name) and seed, an Optuna study proposes nano architectures; each is
scored by the proxy at initialisation (computed once per architecture here, on the digits batch nasopt uses,
timed) and, with screening, passed to `nasopt.pruners.Screen(proxy, bottom=0.5, warmup=10).screen` — the same
rule a study's Screen pruner applies — which prunes it before training when it ranks in the bottom half of
what the study has scored so far. A trained trial's accuracy is one seed's nano-bench record (the seed of the
run), and its training time is that record's `train_s`; a repeated architecture reuses its first result at
no cost, as a nasopt study does. Printed per strategy and screening: the median (over seeds) trials proposed
and trained, and compute (training + proxies) until any of the tied optima (`NanoBench.optima`) is trained;
a run that never trains one counts as beyond the budget (`>N` when the median falls there), as
`nasopt benchmark` counts it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import optuna
import torch

from nasopt.data import load_task
from nasopt.measure import proxy_batch, zero_cost
from nasopt.nanobench import load
from nasopt.pruners import Screen
from nasopt.samplers import make_sampler
from nasopt.search_spaces import make_space


def _key(arch: dict) -> str:
    return json.dumps(arch, sort_keys=True)


def proxy_table(proxies: list[str]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Every nano architecture's proxy scores, and the seconds each proxy took per architecture (mean)."""
    bench, task, space = load(), load_task("digits", seed=0), make_space("nano")
    x, y = proxy_batch(task, batch_size=64, seed=0)
    table: dict[str, dict[str, float]] = {}
    seconds = dict.fromkeys(proxies, 0.0)
    for entry in bench.table.values():
        torch.manual_seed(0)
        model = space.build(entry["arch"], task)
        scores = {}
        for name in proxies:
            t0 = time.perf_counter()
            scores.update(zero_cost(model, [name], x, y, task))
            seconds[name] += time.perf_counter() - t0
        table[_key(entry["arch"])] = scores
    return table, {k: v / len(bench.table) for k, v in seconds.items()}


def one_run(strategy: str, seed: int, trials: int, proxy: str | None, table: dict, proxy_s: dict) -> dict:
    """Trials proposed, trials trained and seconds until an optimum was trained (None: never)."""
    bench, space = load(), make_space("nano")
    optima = {_key(a) for a in bench.optima}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize",
                                sampler=make_sampler(strategy, seed=seed, n_objectives=1, space=space))
    screen = Screen(proxy=proxy, bottom=0.5, warmup=10) if proxy else None
    seen: dict[str, tuple[float, int]] = {}
    trained, seconds = 0, 0.0
    for number in range(trials):
        trial = study.ask()
        arch = space.suggest(trial)
        key = _key(arch)
        if key in seen:  # a repeat reuses its first result, at no cost
            trial.set_user_attr("reused_from", seen[key][1])
            study.tell(trial, seen[key][0])
            continue
        if screen is not None:
            value = table[key][proxy]
            trial.set_user_attr(proxy, value)
            seconds += proxy_s[proxy]
            if screen.screen(study, trial.number, value) is not None:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                continue
        record = bench.query(arch, seed)
        trained += 1
        seconds += record["train_s"]
        seen[key] = (record["val_acc"], trial.number)
        study.tell(trial, record["val_acc"])
        if key in optima:
            return {"proposed": number + 1, "trained": trained, "seconds": seconds}
    return {"proposed": None, "trained": None, "seconds": None}


def _median(values: list) -> str:
    median = statistics.median([float("inf") if v is None else v for v in values])
    return f"{median:.1f}" if median != float("inf") else "beyond"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--strategies", default="rea,tpe")
    p.add_argument("--proxies", default="synflow,naswot")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    proxies = [s for s in args.proxies.split(",") if s]
    t0 = time.perf_counter()
    table, proxy_s = proxy_table(proxies)
    print(f"proxies of all 625 nano architectures in {time.perf_counter() - t0:.1f} s "
          f"({', '.join(f'{k} {v * 1e3:.1f} ms' for k, v in proxy_s.items())} each); {args.seeds} seeds x "
          f"{args.trials} trials; screening: bottom 50 % after 10 scored trials")
    print(f"{'strategy':<10} {'screening':<10} {'found':>6} {'proposed (median)':>18} {'trained (median)':>17} "
          f"{'compute s (median)':>19}")
    for strategy in [s for s in args.strategies.split(",") if s]:
        for proxy in [None, *proxies]:
            runs = [one_run(strategy, seed, args.trials, proxy, table, proxy_s) for seed in range(args.seeds)]
            found = sum(r["proposed"] is not None for r in runs)
            print(f"{strategy:<10} {proxy or 'none':<10} {found:>3}/{args.seeds:<2} "
                  f"{_median([r['proposed'] for r in runs]):>18} {_median([r['trained'] for r in runs]):>17} "
                  f"{_median([r['seconds'] for r in runs]):>19}")


if __name__ == "__main__":
    main()
