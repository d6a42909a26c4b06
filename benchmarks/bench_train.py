"""Training throughput: nasopt's trainer vs a plain PyTorch DataLoader loop on the same model and data.

Both sides train the SAME architecture (built twice from the same seed: identical initial weights) on
the same digits split, for the same epochs and batch size, with SGD + Nesterov momentum, weight decay,
a per-step cosine schedule, gradient-norm clipping at `TrainConfig.grad_clip`, and a full validation
pass (batch 512, no_grad, eval mode) after every epoch, in one process with the same torch thread
count. Throughput is training samples per second of wall time over the whole fit, validation included.

- nasopt       `nasopt.train.train(model, task, TrainConfig(...))`: tensors in memory batched by index
               (`index_select` + one fused normalise per batch), metrics accumulated on the device, and
               TrainConfig's default rules: channels_last for models with grouped/depthwise convs, bf16
               autocast (precision="auto") on an AMX-BF16 CPU for models without them; the picks are printed.
- nasopt fp32  the same with `TrainConfig(precision="fp32")`: an ablation that separates the precision's
               share of the gain.
- nasopt nchw  the same with `TrainConfig(channels_last=False)`: an ablation that separates the memory
               format's share. Whichever nasopt variant runs fp32 in NCHW (as plain does) isolates the
               data path's share; the three shares are printed per model.
- plain w=0    the tutorial loop: `DataLoader(TensorDataset(x, y), batch_size, shuffle=True)` with the
               default num_workers=0 over PRE-normalised tensors (normalised once up front, so the plain
               side does less work per batch than nasopt), `loss.item()` / `.sum().item()` per step,
               default NCHW format, the same validation through `DataLoader(val, batch_size=512)`.
- plain w=2    the same loop with `num_workers=2` (workers re-forked every epoch, as tutorials write it).
- plain w=2p   `num_workers=2, persistent_workers=True` (workers forked once per fit).

Before that, the data path alone is timed: one epoch of shuffled training batches plus the validation
batches, with no model, from `TensorSplit.batches` and from the DataLoader.

Runs are interleaved (every variant once per round, the order rotated each round) so load from other
processes hits all variants alike; the headline ratio is the median over rounds of the per-round ratio
plain/nasopt of wall times, with the ratio of best-ofs and the spread next to it. Threads default to 1:
on a shared 2-core machine two OpenMP threads per process make timings up to 10x noisier (a stalled
thread holds up every barrier); `--threads 2` uses both cores. The script reports; it never asserts.

    .venv/bin/python benchmarks/bench_train.py                    # ~1.5-2 min on a loaded 2-core box
    .venv/bin/python benchmarks/bench_train.py --repeats 15 --epochs 10 --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
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
VAL_BATCH = 512  # what nasopt.train.evaluate uses


def build(space: Any, arch: dict[str, Any], task: Any, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return space.build(arch, task).to(task.device)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def plain_datasets(task: Any) -> tuple[TensorDataset, TensorDataset]:
    """The task's train / val tensors, normalised once (what a Normalize transform would give)."""
    tr, va = task.train, task.val
    return (TensorDataset(torch.addcmul(tr.shift, tr.x.float(), tr.scale), tr.y.clone()),
            TensorDataset(torch.addcmul(va.shift, va.x.float(), va.scale), va.y.clone()))


# ---------------------------------------------------------------------------------------------- the plain loop

def plain_fit(model: nn.Module, train_ds: TensorDataset, val_ds: TensorDataset, config: TrainConfig, seed: int,
              workers: int = 0, persistent: bool = False) -> float:
    """A sensible hand-written loop (what a tutorial writes) doing the same optimisation as nasopt."""
    extra: dict[str, Any] = {"num_workers": workers, "persistent_workers": workers > 0 and persistent}
    train_loader = DataLoader(train_ds, batch_size=config.batch_size, shuffle=True,
                              generator=torch.Generator().manual_seed(seed), **extra)
    val_loader = DataLoader(val_ds, batch_size=VAL_BATCH, **extra)
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
        v_loss, v_correct, v_seen = 0.0, 0, 0
        with torch.no_grad():
            for x, y in val_loader:
                logits = model(x)
                v_loss += F.cross_entropy(logits, y, reduction="sum").item()
                v_correct += (logits.argmax(1) == y).sum().item()
                v_seen += len(y)
        val_acc = v_correct / v_seen
    return val_acc


# ---------------------------------------------------------------------------------------------- harness

def spread(ts: list[float]) -> str:
    return f"{(max(ts) - min(ts)) / statistics.median(ts):.0%}"


def bench_data_path(task: Any, batch_size: int, repeats: int) -> float:
    """Median ms per epoch that the DataLoader spends beyond TensorSplit (train + val batches, no model)."""
    train_ds, val_ds = plain_datasets(task)
    g = torch.Generator().manual_seed(0)

    def tensor_split() -> None:
        for _ in task.train.batches(batch_size, shuffle=True, generator=g):
            pass
        for _ in task.val.batches(VAL_BATCH):
            pass

    def dataloader() -> None:
        for _ in DataLoader(train_ds, batch_size=batch_size, shuffle=True, generator=g):
            pass
        for _ in DataLoader(val_ds, batch_size=VAL_BATCH):
            pass

    times: dict[str, list[float]] = {"TensorSplit.batches": [], "DataLoader w=0": []}
    for _ in range(repeats):
        for name, f in zip(times, (tensor_split, dataloader), strict=True):
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    print("\n== data path alone (one epoch: shuffled train batches + val batches, no model)")
    for name, ts in times.items():
        print(f"   {name:<20} {min(ts) * 1e3:7.2f} ms best, {statistics.median(ts) * 1e3:7.2f} ms median "
              f"(spread {spread(ts)})")
    dl, ts = statistics.median(times["DataLoader w=0"]), statistics.median(times["TensorSplit.batches"])
    print(f"   data path ratio DataLoader / TensorSplit: {dl / ts:.0f}x (median)")
    return (dl - ts) * 1e3


def bench_arch(label: str, space: Any, arch: dict[str, Any], task: Any, config: TrainConfig,
               args: argparse.Namespace, data_ms: float) -> float:
    train_ds, val_ds = plain_datasets(task)
    picks: dict[str, tuple[str, bool]] = {}  # variant -> (precision, channels_last) it ran with

    def nasopt(name: str, **overrides: Any) -> Callable[[nn.Module, TrainConfig], float]:
        def fit(m: nn.Module, c: TrainConfig) -> float:
            result = train(m, task, dataclasses.replace(c, **overrides), seed=args.seed)
            picks[name] = (result.precision, result.channels_last)
            return result.val_acc
        return fit

    variants: dict[str, Callable[[nn.Module, TrainConfig], float]] = {
        "nasopt": nasopt("nasopt"),
        "nasopt fp32": nasopt("nasopt fp32", precision="fp32"),
        "nasopt nchw": nasopt("nasopt nchw", channels_last=False),
        "plain w=0": lambda m, c: plain_fit(m, train_ds, val_ds, c, args.seed),
    }
    if not args.no_workers:
        variants["plain w=2"] = lambda m, c: plain_fit(m, train_ds, val_ds, c, args.seed, 2)
        variants["plain w=2p"] = lambda m, c: plain_fit(m, train_ds, val_ds, c, args.seed, 2, persistent=True)

    a, b = build(space, arch, task, args.seed), build(space, arch, task, args.seed)
    print(f"\n== {label}: {space.describe(arch)}  ({sum(p.numel() for p in a.parameters()):,} params; identical "
          f"initial weights on both sides: {'yes' if same_weights(a, b) else 'NO'})")
    warm = dataclasses.replace(config, epochs=1)  # oneDNN primitive caches, allocator, first fork
    for fit in variants.values():
        fit(build(space, arch, task, args.seed), warm)
    precision, channels_last = picks["nasopt"]
    print(f"   nasopt picked (TrainConfig defaults): precision={precision}, memory format "
          f"{'channels_last (NHWC)' if channels_last else 'contiguous (NCHW)'}")

    names = list(variants)
    times: dict[str, list[float]] = {k: [] for k in names}
    accs: dict[str, list[float]] = {k: [] for k in names}
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotated: no variant always first
            model = build(space, arch, task, args.seed)
            t0 = time.perf_counter()
            accs[name].append(variants[name](model, config))
            times[name].append(time.perf_counter() - t0)

    def per_round(slow: str, fast: str) -> float:  # median over rounds of the wall-time ratio slow/fast
        return statistics.median(t / n for t, n in zip(times[slow], times[fast], strict=True))

    samples = config.epochs * len(task.train)
    ref = times["nasopt"]
    print(f"   {'variant':<12} {'runs as':<10} {'median s':>8} {'best s':>7} {'spread':>6} {'samples/s':>9} {'best':>6} "
          f"{'val_acc':>7}   nasopt/this: per-round median [min..max], best-of")
    for name in names:
        ts = times[name]
        paired = sorted(t / n for t, n in zip(ts, ref, strict=True))
        cmp = "" if name == "nasopt" else (f"{statistics.median(paired):.2f}x [{paired[0]:.2f}..{paired[-1]:.2f}], "
                                           f"{min(ts) / min(ref):.2f}x")
        prec, nhwc = picks.get(name, ("fp32", False))  # the plain loops: fp32, NCHW
        print(f"   {name:<12} {prec + (' NHWC' if nhwc else ' NCHW'):<10} {statistics.median(ts):8.3f} {min(ts):7.3f} "
              f"{spread(ts):>6} {samples / statistics.median(ts):9.0f} {samples / min(ts):6.0f} "
              f"{statistics.median(accs[name]):7.3f}   {cmp}")
    ratio = per_round("plain w=0", "nasopt")
    # the shares multiply (roughly) to the headline: each ablation switches one of nasopt's picks off
    base = next((n for n in ("nasopt", "nasopt fp32", "nasopt nchw") if picks[n] == ("fp32", False)), None)
    shares = [f"precision {per_round('nasopt fp32', 'nasopt'):.2f}x (nasopt fp32 / nasopt)",
              f"memory format {per_round('nasopt nchw', 'nasopt'):.2f}x (nasopt nchw / nasopt)"]
    if base is not None:
        shares.append(f"data path {per_round('plain w=0', base):.2f}x (plain w=0 / {base}: both fp32, NCHW)")
    print(f"   shares of the gain, per-round medians: {'; '.join(shares)}")
    epoch_ms = statistics.median(times["plain w=0"]) * 1e3 / config.epochs
    share = min(data_ms / epoch_ms, 0.99)
    print(f"   the DataLoader's own cost (~{data_ms:.0f} ms/epoch, measured above) is ~{share:.0%} of a plain(w=0) "
          f"epoch ({epoch_ms:.0f} ms): removing it alone can give at most {1 / (1 - share):.2f}x")
    print(f"   => throughput nasopt / plain(w=0) = {ratio:.2f}x (target >= {TARGET}x: "
          f"{'met' if ratio >= TARGET else 'NOT met'})")
    return ratio


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds per architecture (default 5)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per fit (default 2)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0, help="weights / shuffle seed")
    p.add_argument("--threads", type=int, default=1, help="torch threads for every side (default 1, see above)")
    p.add_argument("--no-workers", action="store_true", help="skip the num_workers=2 variants")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size)
    task = load_task("digits", seed=args.seed)
    print(f"digits: {len(task.train)} train / {len(task.val)} val samples of {task.input_shape}; torch "
          f"{torch.__version__}, {torch.get_num_threads()} thread(s) on every side; epochs={config.epochs}, "
          f"batch={config.batch_size}, SGD lr={config.lr} momentum={config.momentum} nesterov "
          f"wd={config.weight_decay}, cosine per step, grad_clip={config.grad_clip}; {args.repeats} rounds; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("nasopt = nasopt.train.train (in-memory tensors batched by index, device-side metrics, TrainConfig's "
          "default precision and memory format rules);\n"
          "plain  = DataLoader(TensorDataset) loop over pre-normalised tensors, .item() per step, fp32, NCHW; same "
          "model, init, optimiser, schedule, clipping and per-epoch validation (fp32 on both sides)")
    data_ms = bench_data_path(task, config.batch_size, max(10, 3 * args.repeats))

    ratios = []
    for label, space, arch_seed in (("nano", NanoSpace(), 1), ("mobile", MobileSpace(stages=3, max_depth=3), 2)):
        arch = random_arch(space, seed=arch_seed)
        ratios.append(bench_arch(label, space, arch, task, config, args, data_ms))
    geo = math.exp(statistics.fmean(math.log(r) for r in ratios))
    met = min(ratios) >= TARGET
    print(f"\nsummary: throughput nasopt / plain(w=0) = {', '.join(f'{r:.2f}x' for r in ratios)} (nano, mobile; "
          f"geometric mean {geo:.2f}x); target >= {TARGET}x {'met' if met else 'NOT met'}")
    if not met:
        print("why: the data path is many times faster, but on these models forward/backward compute is most "
              "of each step,\nso removing DataLoader overhead (per-sample __getitem__ + collate) gains only its "
              "share of the epoch;\nthe rest of nasopt's edge is bf16 autocast for dense convs (compare 'nasopt "
              "fp32'; only on CPUs with AMX-BF16)\nand channels_last for depthwise convs (compare 'nasopt nchw'). "
              "The ratio grows with cheaper models / smaller batches and shrinks with heavier ones.")


if __name__ == "__main__":
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # random_arch's in-memory study: no INFO line
    main()
