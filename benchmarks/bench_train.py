"""Training throughput: nasopt's trainer vs a plain PyTorch DataLoader loop on the same model and data.

Both sides train the SAME architecture (built twice from the same seed, so the initial weights are
identical) on the same digits split, for the same epochs and batch size, with SGD + Nesterov momentum,
weight decay, a per-step cosine schedule, gradient-norm clipping at `TrainConfig.grad_clip`, and a full
validation pass (batch 512, no_grad, eval mode) after every epoch. Throughput is training samples per
second of wall time over the whole fit, validation included:

- nasopt:      `nasopt.train.train(model, task, TrainConfig(...))` -- tensors in memory, batches by
               index (`index_select` + one fused normalise per batch), metrics accumulated on the
               device, channels_last (TrainConfig's default).
- plain w=0:   the tutorial loop: `DataLoader(TensorDataset(x, y), batch_size, shuffle=True)` with the
               default num_workers=0 over PRE-normalised tensors (normalised once, so the plain side
               does less work per batch than nasopt), `loss.item()` / `.sum().item()` per step,
               contiguous (NCHW) format, the same validation through a DataLoader(batch_size=512).
- plain w=2:   the same loop with `num_workers=2` (workers re-forked every epoch, as tutorials write it).
- plain w=2p:  `num_workers=2, persistent_workers=True` (workers forked once per fit).

Runs are interleaved (every variant once per round, the order rotated each round) so that load from
other processes hits all variants alike; medians, best-of and the spread are printed. Timings on a
shared machine are noisy: the script reports, it never asserts.

    .venv/bin/python benchmarks/bench_train.py                 # ~1 min
    .venv/bin/python benchmarks/bench_train.py --repeats 15 --epochs 10
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nasopt.data import load_task
from nasopt.search_spaces.mobile import MobileSpace
from nasopt.search_spaces.nano import NanoSpace
from nasopt.space import random_arch
from nasopt.train import TrainConfig, train

TARGET = 1.5  # nasopt / plain (num_workers=0) throughput on digits-sized data


def build(space: Any, arch: dict[str, Any], task: Any, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return space.build(arch, task).to(task.device)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------------------------------- the sides

def fit_nasopt(model: nn.Module, task: Any, config: TrainConfig, seed: int) -> float:
    return train(model, task, config, seed=seed).val_acc


def plain_fit(model: nn.Module, train_ds: TensorDataset, val_ds: TensorDataset, config: TrainConfig, seed: int,
              workers: int, persistent: bool) -> float:
    """A sensible hand-written loop (what a tutorial writes), doing the same optimisation as nasopt."""
    g = torch.Generator().manual_seed(seed)
    extra: dict[str, Any] = {"persistent_workers": True} if workers and persistent else {}
    train_loader = DataLoader(train_ds, batch_size=config.batch_size, shuffle=True, generator=g,
                              num_workers=workers, **extra)
    val_loader = DataLoader(val_ds, batch_size=512, num_workers=workers, **extra)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=True,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * len(train_loader))
    val_acc = 0.0
    for _epoch in range(config.epochs):
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in train_loader:
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
        model.eval()
        v_correct, v_loss, v_seen = 0, 0.0, 0
        with torch.no_grad():
            for x, y in val_loader:
                logits = model(x)
                v_loss += F.cross_entropy(logits, y, reduction="sum").item()
                v_correct += (logits.argmax(1) == y).sum().item()
                v_seen += len(y)
        val_acc = v_correct / v_seen
    return val_acc


# ---------------------------------------------------------------------------------------------- harness

def bench_arch(label: str, space: Any, arch: dict[str, Any], task: Any, config: TrainConfig, args: Any) -> float:
    n_train = len(task.train)
    # the plain side gets already-normalised float tensors (less work per batch than nasopt does)
    tr, va = task.train, task.val
    train_ds = TensorDataset(torch.addcmul(tr.shift, tr.x.float(), tr.scale), tr.y.clone())
    val_ds = TensorDataset(torch.addcmul(va.shift, va.x.float(), va.scale), va.y.clone())

    variants: dict[str, Callable[[nn.Module, TrainConfig], float]] = {
        "nasopt": lambda m, c: fit_nasopt(m, task, c, args.seed),
        "plain w=0": lambda m, c: plain_fit(m, train_ds, val_ds, c, args.seed, 0, False),
    }
    if not args.no_workers:
        variants["plain w=2"] = lambda m, c: plain_fit(m, train_ds, val_ds, c, args.seed, 2, False)
        variants["plain w=2p"] = lambda m, c: plain_fit(m, train_ds, val_ds, c, args.seed, 2, True)

    a, b = build(space, arch, task, args.seed), build(space, arch, task, args.seed)
    n_params = sum(p.numel() for p in a.parameters())
    print(f"\n== {label}: {space.describe(arch)}  ({n_params:,} params; identical initial weights on both "
          f"sides: {'yes' if same_weights(a, b) else 'NO'})")

    # warm-up: one short fit per variant (oneDNN primitive caches, allocator, first fork)
    warm = dataclasses.replace(config, epochs=1)
    for fit in variants.values():
        fit(build(space, arch, task, args.seed), warm)

    times: dict[str, list[float]] = {k: [] for k in variants}
    accs: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(args.repeats):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate: no variant always runs first
        for name in order:
            model = build(space, arch, task, args.seed)
            t0 = time.perf_counter()
            acc = variants[name](model, config)
            times[name].append(time.perf_counter() - t0)
            accs[name].append(acc)

    samples = config.epochs * n_train
    base = statistics.median(times["plain w=0"])
    print(f"   {'variant':<11} {'median s':>9} {'best s':>8} {'spread':>7} {'samples/s':>10} "
          f"{'best samp/s':>11} {'val_acc':>7}  ratio nasopt/this (median, best-of)")
    for name in names:
        ts = times[name]
        med, best = statistics.median(ts), min(ts)
        spread = (max(ts) - best) / med
        ratio = f"{med / statistics.median(times['nasopt']):.2f}x, {best / min(times['nasopt']):.2f}x"
        print(f"   {name:<11} {med:9.3f} {best:8.3f} {spread:6.0%} {samples / med:10.0f} {samples / best:11.0f} "
              f"{statistics.median(accs[name]):7.3f}  {'-' if name == 'nasopt' else ratio}")
    paired = [p / n for p, n in zip(times["plain w=0"], times["nasopt"], strict=True)]
    ratio = base / statistics.median(times["nasopt"])
    print(f"   throughput nasopt / plain(w=0): {ratio:.2f}x median "
          f"(per-round ratios {min(paired):.2f}..{max(paired):.2f}); target >= {TARGET}x: "
          f"{'MET' if ratio >= TARGET else 'NOT MET'}")
    return ratio


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds per architecture (default 5)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads for both sides (default: torch's)")
    p.add_argument("--no-workers", action="store_true", help="skip the num_workers=2 variants")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size)
    task = load_task("digits", seed=args.seed)
    print(f"digits: {len(task.train)} train / {len(task.val)} val samples {task.input_shape}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads (both sides); epochs={config.epochs}, "
          f"batch={config.batch_size}, SGD lr={config.lr} momentum={config.momentum} nesterov, "
          f"wd={config.weight_decay}, cosine per step, grad_clip={config.grad_clip}; repeats={args.repeats}")
    print("nasopt  = nasopt.train.train: in-memory tensors batched by index, device-side metrics, channels_last")
    print("plain   = DataLoader(TensorDataset) loop, pre-normalised tensors, .item() per step, NCHW; same "
          "optimiser/schedule/clip/validation")
    ratios = []
    for label, space, arch_seed in (("nano", NanoSpace(), 1), ("mobile", MobileSpace(stages=3, max_depth=3), 2)):
        arch = random_arch(space, seed=arch_seed)
        ratios.append(bench_arch(label, space, arch, task, config, args))
    geo = math.exp(statistics.fmean(math.log(r) for r in ratios))
    print(f"\nsummary: nasopt / plain(w=0) throughput = {', '.join(f'{r:.2f}x' for r in ratios)} "
          f"(geometric mean {geo:.2f}x); target >= {TARGET}x {'MET' if min(ratios) >= TARGET else 'NOT MET'}")


if __name__ == "__main__":
    main()
