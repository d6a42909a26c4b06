"""One-shot search cost: peak activation memory and time per search step of DARTS and PC-DARTS.

The same supernet (the DARTS cell space's search network) and batch for every method, built through
the real code path (`nasopt.oneshot.darts.build_supernet`, `DARTS.step`):

- memory: the peak bytes of tensors alive at once during the weight step's forward and backward
  (activations kept for backward, gradients, temporaries; `nasopt.measure._metrics.peak_live_bytes`), i.e. the
  activation memory beyond the weights. Target: PC-DARTS with K=4 at most 40% of DARTS.
- time: wall time of one full search step (architecture update, then weight update), median of
  `--steps` after one warm-up step, for DARTS first order, DARTS second order (unrolled) and PC-DARTS.

    .venv/bin/python benchmarks/bench_oneshot.py                  # C=8, 5 cells, batch 32, 32x32: ~1 min
    .venv/bin/python benchmarks/bench_oneshot.py --paper          # C=16, 8 cells, batch 64 (the paper's search)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from nasopt.measure._metrics import peak_live_bytes
from nasopt.oneshot import DARTS, MixedChooser
from nasopt.oneshot.darts import build_supernet
from nasopt.search_spaces.darts_cell import DartsCellSpace


class Task:
    def __init__(self, channels: int, size: int, num_classes: int = 10) -> None:
        self.input_shape, self.num_classes, self.device = (channels, size, size), num_classes, "cpu"


def make(space: DartsCellSpace, task: Task, strategy: DARTS, seed: int = 0):  # noqa: ANN201
    torch.manual_seed(seed)
    net = build_supernet(space, task, MixedChooser(strategy.partial_channels),
                         edge_normalization=strategy.normalize_edges)
    return net, *strategy.optimizers(net)


def activation_peak(space: DartsCellSpace, task: Task, strategy: DARTS, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
    net, _, _ = make(space, task, strategy)
    x, y = batch

    def step() -> None:
        F.cross_entropy(net(x), y).backward()

    step()  # lazily created state (e.g. BN running stats are preallocated; grads now exist) out of the count
    net.zero_grad(set_to_none=True)
    return peak_live_bytes(step)


def step_times(space: DartsCellSpace, task: Task, strategy: DARTS, batch: tuple[torch.Tensor, torch.Tensor],
               steps: int) -> list[float]:
    net, w_opt, a_opt = make(space, task, strategy)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        strategy.step(net, w_opt, a_opt, batch, batch)
        if i:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--C", type=int, default=8)
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--K", type=int, default=4, help="PC-DARTS' partial-channel divisor (default 4)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--paper", action="store_true", help="C=16, 8 cells, batch 64 (DARTS' CIFAR search setting)")
    args = p.parse_args()
    if args.paper:
        args.C, args.layers, args.batch = 16, 8, 64
    torch.set_num_threads(args.threads)
    space, task = DartsCellSpace(C=args.C, layers=args.layers), Task(3, args.size)
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(args.batch, 3, args.size, args.size, generator=g), torch.randint(0, 10, (args.batch,), generator=g))
    methods = {"DARTS (1st order)": DARTS(), "DARTS (2nd order)": DARTS(unrolled=True),
               f"PC-DARTS (K={args.K})": DARTS(partial_channels=args.K)}
    print(f"DARTS cell search network: C={args.C}, {args.layers} cells, batch {args.batch} x 3x{args.size}x{args.size}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.1f}")
    darts_peak = activation_peak(space, task, methods["DARTS (1st order)"], batch)
    pc_peak = activation_peak(space, task, methods[f"PC-DARTS (K={args.K})"], batch)
    print(f"\npeak activation memory of a weight step (forward + backward):\n"
          f"  DARTS          {darts_peak / 2**20:9.1f} MiB\n  PC-DARTS K={args.K}  {pc_peak / 2**20:9.1f} MiB\n"
          f"  ratio PC-DARTS / DARTS = {pc_peak / darts_peak:.3f} (target <= 0.40: "
          f"{'met' if pc_peak <= 0.4 * darts_peak else 'NOT met'})")
    print("\ntime per search step (architecture + weight update), median of "
          f"{args.steps} after a warm-up step:")
    base = None
    for label, strategy in methods.items():
        t = statistics.median(step_times(space, task, strategy, batch, args.steps))
        base = base or t
        print(f"  {label:20s} {t * 1e3:9.1f} ms   {t / base:5.2f}x DARTS 1st order")


if __name__ == "__main__":
    main()
