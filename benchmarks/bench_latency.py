"""Latency lookup table: how well the summed table predicts measured end-to-end latency.

Draws random architectures of the default mobile space and compares `LatencyTable.predict` (the table
of `nasopt.measure._latency_build.build_table`) with `nasopt.measure._metrics.measure_latency` of each built network (eval,
batch 1). On a machine shared with other work the load, and with it every latency, drifts by up to 2x
within a minute, so the benchmark runs `--rounds` rounds of (a fresh table, then every architecture
measured once) and compares the medians over rounds: table and measurements see the same load. Prints the mean absolute (percentage) error, the mean signed error (bias) and the
rank correlation. Target: mean absolute percentage error <= 15% on CPU.

    .venv/bin/python benchmarks/bench_latency.py                       # default mobile space, digits 8x8, 1 thread
    .venv/bin/python benchmarks/bench_latency.py --input-shape 3,32,32  # CIFAR-sized inputs
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import numpy as np
import torch

from nasopt.measure._latency_build import build_table
from nasopt.measure._metrics import measure_latency
from nasopt.search_spaces.mobile import MobileSpace
from nasopt.space import random_arch


def ranks(values: list[float]) -> np.ndarray:
    return np.argsort(np.argsort(values)).astype(float)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", type=int, default=30)
    p.add_argument("--input-shape", default="1,8,8", help="C,H,W (default 1,8,8: digits)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=30, help="timed rounds of the table and of each measurement")
    p.add_argument("--rounds", type=int, default=5, help="rounds of (table, end-to-end measurements)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    shape = tuple(int(v) for v in args.input_shape.split(","))
    task = SimpleNamespace(name="bench", input_shape=shape, num_classes=10, device=args.device)
    space = MobileSpace()
    torch.set_num_threads(args.threads)

    archs = [random_arch(space, seed=args.seed + i) for i in range(args.archs)]
    models = []
    for i, arch in enumerate(archs):
        torch.manual_seed(i)
        models.append(space.build(arch, task).to(args.device))
    # each round: a fresh table, then every architecture measured end to end, so both see the same load
    predictions: list[list[float]] = [[] for _ in archs]
    measurements: list[list[float]] = [[] for _ in archs]
    per_round = []
    for r in range(args.rounds):
        t0 = time.perf_counter()
        table = build_table(space, task, device=args.device, threads=args.threads, repeats=args.repeats)
        built = time.perf_counter() - t0
        for i, (arch, model) in enumerate(zip(archs, models, strict=True)):
            predictions[i].append(table.predict(space, arch, task))
            measurements[i].append(measure_latency(model, shape, threads=args.threads, repeats=args.repeats).median_ms)
        per_round.append(statistics.mean(abs(p[-1] - m[-1]) / m[-1] for p, m in zip(predictions, measurements,
                                                                                         strict=True)))
        if r == 0:
            prov = table.provenance
            print(f"table: {len(table)} op entries, {len(table.frames)} frames in {built:.1f} s on "
                  f"{prov['device_name']} ({prov['threads']} threads, batch {prov['batch_size']}, {prov['repeats']} "
                  f"repeats), input {shape}")
        print(f"round {r + 1}: mean absolute % error {100 * per_round[-1]:.1f} %")
    predicted = [statistics.median(p) for p in predictions]
    measured = [statistics.median(m) for m in measurements]

    print(f"\n{'architecture':60s} {'predicted':>10s} {'measured':>10s} {'error':>8s}")
    errors = []
    for arch, pred, meas in zip(archs, predicted, measured, strict=True):
        errors.append((pred - meas) / meas)
        print(f"{space.describe(arch):60s} {pred:9.4f}  {meas:9.4f}  {100 * errors[-1]:+6.1f}%")
    abs_ms = [abs(pred - meas) for pred, meas in zip(predicted, measured, strict=True)]
    rho = float(np.corrcoef(ranks(predicted), ranks(measured))[0, 1])
    print(f"\n{len(archs)} architectures, measured {min(measured):.3f}-{max(measured):.3f} ms; predicted and measured: "
          f"median over {args.rounds} rounds (a table and measure_latency with {args.repeats} repeats each)")
    print(f"mean absolute error      {statistics.mean(abs_ms):.4f} ms")
    print(f"mean absolute % error    {100 * statistics.mean(abs(e) for e in errors):.1f} %   (target <= 15 %)")
    print(f"max absolute % error     {100 * max(abs(e) for e in errors):.1f} %")
    print(f"mean signed % error      {100 * statistics.mean(errors):+.1f} %   (bias)")
    print(f"Spearman rank corr.      {rho:.3f}")
    print(f"per round: mean absolute % error {', '.join(f'{100 * e:.1f}' for e in per_round)} %")
    # load only ever adds time, so the fastest round of each is the least disturbed estimate of both
    fastest = [(min(p), min(m)) for p, m in zip(predictions, measurements, strict=True)]
    best = [(p - m) / m for p, m in fastest]
    print(f"fastest round of each (least load): mean absolute % error {100 * statistics.mean(abs(e) for e in best):.1f} %, "
          f"bias {100 * statistics.mean(best):+.1f} %")


if __name__ == "__main__":
    main()
