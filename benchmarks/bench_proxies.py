"""How well the zero-cost proxies rank architectures: Spearman and Kendall rank correlation with trained accuracy.

    python benchmarks/bench_proxies.py [--space micro --dataset digits --archs 100 --epochs 3] [--skip-nano]

(a) all 625 nano-bench architectures: each proxy of the nano network built for digits (the table's
    `NanoSpace(C=12)`, seed 0, one batch of 64 training images) against the table's mean validation accuracy;
(b) `--archs` random architectures of `--space` on `--dataset`, each trained `--epochs` epochs with nasopt's
    trainer (seed 0), against its validation accuracy.
Beside each proxy: the parameter count as a plain baseline, and the value published for NAS-Bench-201 on
CIFAR-10. Only a published figure we could check is printed; the others say where to find it.
"""

from __future__ import annotations

import argparse
import time

import torch
from scipy.stats import kendalltau, spearmanr

from nasopt.data import load_task
from nasopt.measure import PROXIES, count_params, proxy_batch, zero_cost
from nasopt.nanobench import load
from nasopt.search_spaces import make_space
from nasopt.space import random_arch
from nasopt.train import TrainConfig, train

# NAS-Bench-201, CIFAR-10, Spearman rho of each proxy with final accuracy over the space, as published:
# Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS", ICLR 2021 (Table 2, NAS-Bench-201 rows) for
# grad_norm, snip, synflow and jacob_cov; Mellor et al., "Neural Architecture Search without Training",
# ICML 2021 (its NAS-Bench-201 correlation figure) for naswot. Their abstract states that the best zero-cost
# proxy reaches rho = 0.82 on NAS-Bench-201; the per-proxy cells we could not check here, so they are not
# reprinted from memory.
PUBLISHED = {
    "naswot": "see Mellor et al. 2021",
    "synflow": "see Abdelfattah et al. 2021 Tab. 2",
    "snip": "see Abdelfattah et al. 2021 Tab. 2",
    "grad_norm": "see Abdelfattah et al. 2021 Tab. 2",
    "jacob_cov": "see Abdelfattah et al. 2021 Tab. 2",
    "params": "-",
}


def _table(title: str, scores: dict[str, list[float]], accuracy: list[float], seconds: float) -> None:
    print(f"\n{title}  ({len(accuracy)} architectures, proxies {seconds:.1f} s in all)")
    print(f"{'proxy':<10} {'Spearman':>9} {'Kendall':>8}   NAS-Bench-201 CIFAR-10 (published)")
    for name, values in scores.items():
        rho = spearmanr(values, accuracy).statistic
        tau = kendalltau(values, accuracy).statistic
        print(f"{name:<10} {rho:>9.3f} {tau:>8.3f}   {PUBLISHED.get(name, '-')}")


def nano(batch: int) -> None:
    bench = load()
    task = load_task("digits", seed=0)
    space = make_space("nano", C=12)
    x, y = proxy_batch(task, batch_size=batch, seed=0)
    scores: dict[str, list[float]] = {name: [] for name in (*PROXIES, "params")}
    accuracy = []
    t0 = time.perf_counter()
    for entry in bench.table.values():
        torch.manual_seed(0)
        model = space.build(entry["arch"], task)
        for name, value in zero_cost(model, PROXIES, x, y, task).items():
            scores[name].append(value)
        scores["params"].append(count_params(model))
        accuracy.append(bench.mean_val_acc(entry["arch"]))
    _table("(a) nano-bench on digits: proxy vs mean validation accuracy over seeds", scores, accuracy,
           time.perf_counter() - t0)


def sampled(space_name: str, dataset: str, archs: int, epochs: int, batch: int) -> None:
    task = load_task(dataset, seed=0)
    space = make_space(space_name)
    x, y = proxy_batch(task, batch_size=batch, seed=0)
    scores: dict[str, list[float]] = {name: [] for name in (*PROXIES, "params")}
    accuracy = []
    proxy_s, t0 = 0.0, time.perf_counter()
    for i in range(archs):
        arch = random_arch(space, seed=i)
        torch.manual_seed(i)
        model = space.build(arch, task)
        t = time.perf_counter()
        for name, value in zero_cost(model, PROXIES, x, y, task).items():
            scores[name].append(value)
        proxy_s += time.perf_counter() - t
        scores["params"].append(count_params(model))
        accuracy.append(train(model, task, TrainConfig(epochs=epochs, precision="fp32"), seed=i).val_acc)
    _table(f"(b) {archs} random {space_name} architectures on {dataset}, trained {epochs} epoch(s) "
           f"({time.perf_counter() - t0:.0f} s with training)", scores, accuracy, proxy_s)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="micro")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--archs", type=int, default=200)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch", type=int, default=64, help="samples of the scoring batch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-nano", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not args.skip_nano:
        nano(args.batch)
    if args.archs:
        sampled(args.space, args.dataset, args.archs, args.epochs, args.batch)


if __name__ == "__main__":
    main()
