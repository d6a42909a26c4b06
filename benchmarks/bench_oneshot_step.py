"""nasopt's one-shot search step against the reference step, side by side: time and peak activation memory.

The configuration of issue 18: DARTS' CIFAR search network (C=16, 8 cells, 1,930,618 weights), a batch of
32 of 3x32x32, one CPU thread. The reference is `_darts_reference.py`: the search network and step rebuilt
from the papers' definitions (DARTS, PC-DARTS) the way their reference code computes them. nasopt's step is
the real code path (`nasopt.oneshot.darts.build_supernet`, `DARTS.step`), fast (the default) and, with
`--plain`, also with `Supernet(fast=False)`: the straightforward mixed op in NCHW.

- time: one full search step (architecture update on a validation batch, then weight update), for DARTS
  first order, second order (unrolled) and PC-DARTS (K=4). The two implementations run interleaved, one step
  each per round after a warm-up round; printed are the medians and the median of the per-round ratios.
  Targets: ratio <= 0.5.
- memory: the peak bytes of tensors alive at once during a weight step's forward and backward, beyond the
  weights (`nasopt.measure._metrics.peak_live_bytes`). Target: ratio <= 0.7.

    .venv/bin/python benchmarks/bench_oneshot_step.py                 # all three methods, 3 rounds: ~15 min
    .venv/bin/python benchmarks/bench_oneshot_step.py --methods darts --rounds 2 --batch 16   # a quick look
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import _darts_reference as reference  # noqa: E402

from nasopt.measure._metrics import peak_live_bytes  # noqa: E402
from nasopt.oneshot import DARTS, MixedChooser  # noqa: E402
from nasopt.oneshot.darts import build_supernet  # noqa: E402
from nasopt.search_spaces.darts_cell import DartsCellSpace  # noqa: E402

METHODS = {"darts": ("DARTS 1st order", {}), "darts_2nd": ("DARTS 2nd order", {"unrolled": True}),
           "pc_darts": ("PC-DARTS K=4", {"partial_channels": 4})}


class Task:
    def __init__(self, size: int) -> None:
        self.input_shape, self.num_classes, self.device = (3, size, size), 10, "cpu"


class Ours:
    def __init__(self, strategy: DARTS, C: int, layers: int, size: int, fast: bool = True) -> None:
        torch.manual_seed(0)
        self.net = build_supernet(DartsCellSpace(C=C, layers=layers), Task(size),
                                  MixedChooser(strategy.partial_channels), edge_normalization=strategy.normalize_edges)
        self.net.fast = fast
        for op in self.net._mixed:
            op.fast = fast
        self.strategy, (self.w_opt, self.a_opt) = strategy, strategy.optimizers(self.net)

    def step(self, train: tuple[torch.Tensor, torch.Tensor], valid: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.strategy.step(self.net, self.w_opt, self.a_opt, train, valid)


class Reference:
    def __init__(self, strategy: DARTS, C: int, layers: int) -> None:
        torch.manual_seed(0)
        self.net = reference.Network(C=C, layers=layers, K=strategy.partial_channels)
        self.search = reference.Search(self.net, unrolled=strategy.unrolled)

    def step(self, train: tuple[torch.Tensor, torch.Tensor], valid: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.search.step(train, valid)


def weight_step_peak(net: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
    x, y = batch

    def step() -> None:
        F.cross_entropy(net(x), y).backward()

    step()  # lazily made state (gradients, a memory-format change) out of the count
    net.zero_grad(set_to_none=True)
    peak = peak_live_bytes(step)
    net.zero_grad(set_to_none=True)
    return peak


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    p.add_argument("--C", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds after the warm-up round (default 3)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--plain", action="store_true", help="also time nasopt's straightforward mixed op (fast=False)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.randn(args.batch, 3, args.size, args.size, generator=g),
                torch.randint(0, 10, (args.batch,), generator=g))

    train, valid = batch(), batch()
    print(f"DARTS search network C={args.C}, {args.layers} cells, batch {args.batch} x 3x{args.size}x{args.size}; "
          f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"load average {os.getloadavg()[0]:.1f}")
    for key in args.methods:
        label, options = METHODS[key]
        strategy = DARTS(**options)
        runners = {"nasopt": Ours(strategy, args.C, args.layers, args.size),
                   "reference": Reference(strategy, args.C, args.layers)}
        if args.plain:
            runners["nasopt plain"] = Ours(strategy, args.C, args.layers, args.size, fast=False)
        weights = {name: sum(q.numel() for q in (r.net.weight_parameters())) for name, r in runners.items()}
        assert len(set(weights.values())) == 1, weights
        times: dict[str, list[float]] = {name: [] for name in runners}
        for round_ in range(args.rounds + 1):
            for name, runner in runners.items():
                t0 = time.perf_counter()
                runner.step(train, valid)
                if round_:  # round 0 warms up allocators and kernels
                    times[name].append(time.perf_counter() - t0)
                print(f"  [{label}] round {round_}/{args.rounds} {name}: {time.perf_counter() - t0:.2f} s"
                      f"{' (warm-up)' if not round_ else ''}", file=sys.stderr, flush=True)
        peaks = {name: weight_step_peak(r.net, train) for name, r in runners.items()}
        ratios = [a / b for a, b in zip(times["nasopt"], times["reference"], strict=True)]
        print(f"\n{label} ({weights['nasopt']:,} weights):")
        for name in runners:
            print(f"  {name:13s} step {statistics.median(times[name]):7.2f} s (median of {args.rounds}; "
                  f"{', '.join(f'{t:.2f}' for t in times[name])})   peak {peaks[name] / 2**20:8.1f} MiB")
        ratio, mem = statistics.median(ratios), peaks["nasopt"] / peaks["reference"]
        print(f"  time nasopt / reference  {ratio:.3f} (rounds {', '.join(f'{r:.3f}' for r in ratios)}; "
              f"target <= 0.5: {'met' if ratio <= 0.5 else 'NOT met'})")
        print(f"  peak nasopt / reference  {mem:.3f} (target <= 0.7: {'met' if mem <= 0.7 else 'NOT met'})")
        if args.plain:
            print(f"  time nasopt plain / reference  "
                  f"{statistics.median(times['nasopt plain']) / statistics.median(times['reference']):.3f}")


if __name__ == "__main__":
    main()
