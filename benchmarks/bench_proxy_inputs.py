"""Do zero-cost proxies help the PNAS predictor (or botorch's GP) as extra inputs? Trials until nano-bench's optimum is trained.

    python benchmarks/bench_proxy_inputs.py [--seeds 10] [--trials 100] [--inputs none,synflow,naswot,synflow+naswot]
                                            [--shortlist 64,1250] [--sampler pnas|botorch]

PNASSampler predicts accuracy from `space.encode(arch)`; with `proxy_inputs` it predicts its shortlist again
from the encoding plus the zero-cost proxies of the untrained networks (`nasopt.samplers._proxy_inputs`),
scored by the rule `nasopt run` hands it (`nasopt.study._proxies.proxy_scorer`: built from a fixed seed, one
fixed digits batch; cached here across arms). Each arm runs the same seeds; a trial is one seed's nano-bench
record (the seed of the run). Printed per input set and shortlist (1250: the whole pool): the median trials
until any of the tied optima is trained (a miss counts beyond the budget, '>N' when the median falls there),
the runs that found one, and the mean. `--sampler botorch`: BoTorchPoolSampler, whose shortlist is scored
again by a GP that also reads the proxies.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from typing import Any

import optuna
import torch

from nasopt.nanobench import load
from nasopt.samplers import PNASSampler
from nasopt.search_spaces import make_space
from nasopt.study._proxies import proxy_scorer


def _key(arch: dict[str, Any]) -> str:
    return json.dumps(arch, sort_keys=True)


def one_run(sampler_name: str, seed: int, trials: int, names: list[str], scorer: Any, shortlist: int) -> int | None:
    bench, space = load(), make_space("nano")
    optima = {_key(a) for a in bench.optima}
    options = {"seed": seed, "proxy_inputs": names or None, "proxy_shortlist": shortlist}
    if sampler_name == "botorch":
        from nasopt.samplers import BoTorchPoolSampler

        sampler: Any = BoTorchPoolSampler(space=space, **options)
    else:
        sampler = PNASSampler(space, **options)
    sampler.use_proxies(scorer)  # as `nasopt run` does (nasopt.study._proxies.give_proxies)
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
    p.add_argument("--sampler", choices=("pnas", "botorch"), default="pnas")
    p.add_argument("--shortlist", default="64", help="comma-separated proxy_shortlist values to compare")
    args = p.parse_args()
    torch.set_num_threads(1)
    arms = [[] if a == "none" else a.split("+") for a in args.inputs.split(",") if a]
    names_all = sorted({n for arm in arms for n in arm}) or ["synflow"]
    scorer = proxy_scorer(make_space("nano"), load(), names_all)  # the runner's rule: nano-bench scores on digits
    cached: dict[str, Any] = {}

    def score(arch: Any) -> Any:  # every arm reads the same scores (each computed once)
        key = _key(dict(arch))
        if key not in cached:
            cached[key] = scorer(arch)
        return cached[key]

    print(f"{args.sampler} on nano-bench, {args.seeds} seeds x {args.trials} trials; trials until an optimum is trained")
    print(f"{'extra inputs':<16} {'shortlist':>9} {'median':>7} {'mean':>7} {'found':>6} {'s/run':>6}")
    for names, shortlist in ((n, int(k)) for n in arms for k in (args.shortlist.split(",") if n else ["0"])):
        t0 = time.perf_counter()
        hits = [one_run(args.sampler, seed, args.trials, names, score, max(shortlist, 2)) for seed in range(args.seeds)]
        counted = [math.inf if h is None else h for h in hits]
        median = statistics.median(counted)
        found = [h for h in hits if h is not None]
        mean = f"{statistics.fmean(found):.1f}" if len(found) == len(hits) else "-"
        print(f"{'+'.join(names) or 'none':<16} {shortlist or '-':>9} {f'>{args.trials}' if median == math.inf else f'{median:.1f}':>7} "
              f"{mean:>7} {len(found):>3}/{args.seeds:<2} {(time.perf_counter() - t0) / args.seeds:>6.1f}", flush=True)


if __name__ == "__main__":
    main()
