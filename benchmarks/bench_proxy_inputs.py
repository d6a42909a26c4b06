"""Do zero-cost proxies help the PNAS predictor as extra inputs? Trials until nano-bench's optimum is trained.

    python benchmarks/bench_proxy_inputs.py [--seeds 10] [--trials 100] [--inputs none,synflow,naswot,synflow+naswot]

PNASSampler predicts accuracy from `space.encode(arch)`. Here the nano space's encoding is given extra columns:
the zero-cost proxies of the untrained network (log synflow and naswot, min-max scaled over the 625
architectures; computed once per architecture on the digits batch nasopt uses, as bench_screening.py does),
through a space whose `encode` appends them — no change to the sampler. Each arm runs the same seeds; a
trial is one seed's nano-bench record (the seed of the run). Printed per input set: the median trials until
any of the tied optima is trained (a miss counts beyond the budget, '>N' when the median falls there), the
runs that found one, and the mean.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from typing import Any

import numpy as np
import optuna
import torch
from bench_screening import proxy_table

from nasopt.nanobench import load
from nasopt.samplers import PNASSampler
from nasopt.search_spaces import make_space


def _key(arch: dict[str, Any]) -> str:
    return json.dumps(arch, sort_keys=True)


class WithProxies:
    """The nano space, its encoding followed by the scaled proxy scores `names` of the architecture."""

    def __init__(self, space: Any, table: dict[str, dict[str, float]], names: list[str]) -> None:
        self.space, self.table, self.names = space, table, names
        values = {n: [self._raw(v, n) for v in table.values()] for n in names}
        self.range = {n: (min(v), max(v)) for n, v in values.items()}

    @staticmethod
    def _raw(scores: dict[str, float], name: str) -> float:
        return math.log(scores[name] + 1e-9) if name == "synflow" else scores[name]  # synflow spans decades

    def __getattr__(self, name: str) -> Any:
        return getattr(self.space, name)

    def encode(self, arch: Any) -> np.ndarray:
        scores = self.table[_key(dict(arch))]
        extra = [(self._raw(scores, n) - lo) / (hi - lo) for n, (lo, hi) in self.range.items()]
        return np.concatenate([self.space.encode(arch), np.asarray(extra, dtype=np.float32)])


def one_run(seed: int, trials: int, names: list[str], table: dict[str, dict[str, float]]) -> int | None:
    bench, space = load(), make_space("nano")
    optima = {_key(a) for a in bench.optima}
    sampler = PNASSampler(WithProxies(space, table, names) if names else space, seed=seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for number in range(trials):
        trial = study.ask()
        arch = space.suggest(trial)
        study.tell(trial, bench.query(arch, seed)["val_acc"])
        if _key(arch) in optima:
            return number + 1
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--inputs", default="none,synflow,naswot,synflow+naswot")
    args = p.parse_args()
    torch.set_num_threads(1)
    arms = [[] if a == "none" else a.split("+") for a in args.inputs.split(",") if a]
    table, _ = proxy_table(sorted({n for arm in arms for n in arm}) or ["synflow"])
    print(f"PNASSampler on nano-bench, {args.seeds} seeds x {args.trials} trials; trials until an optimum is trained")
    print(f"{'extra inputs':<16} {'median':>7} {'mean':>7} {'found':>6} {'s/run':>6}")
    for names in arms:
        t0 = time.perf_counter()
        hits = [one_run(seed, args.trials, names, table) for seed in range(args.seeds)]
        counted = [math.inf if h is None else h for h in hits]
        median = statistics.median(counted)
        found = [h for h in hits if h is not None]
        mean = f"{statistics.fmean(found):.1f}" if len(found) == len(hits) else "-"
        print(f"{'+'.join(names) or 'none':<16} {f'>{args.trials}' if median == math.inf else f'{median:.1f}':>7} "
              f"{mean:>7} {len(found):>3}/{args.seeds:<2} {(time.perf_counter() - t0) / args.seeds:>6.1f}", flush=True)


if __name__ == "__main__":
    main()
