"""What quantization-aware training recovers: int8 accuracy after post-training quantization, with and without QAT.

    python benchmarks/bench_qat.py [--archs 6] [--epochs 15] [--qat 3] [--space micro] [--threads 1]

`--archs` random architectures of the space (micro: the TinyML study's space; conv1d with C=4 and mobile, the demo's, also work) on
MNIST-1D are each trained twice with nasopt's trainer from the same initialisation and seed: plain, and with
`TrainConfig(qat_epochs=--qat)` (the last epochs fake-quantized, nasopt.quant). Each trained network is then
quantized as a study's trials are (nasopt.measure.int8_metrics: onnxruntime static quantization, QDQ,
per-channel int8 weights, MinMax on 256 training samples) and scored on the validation split (800 signals:
one signal is 0.125 points). Printed per network: fp32 and int8 accuracy and the drop, for both runs; then the
median and mean drop and the mean int8 accuracy of each. Training only the last epochs with QAT leaves the fp32
accuracy where it was; the figure of interest is the int8 accuracy of the network that ships.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nasopt.data import load_task
from nasopt.measure import Calibration, count_params, int8_metrics
from nasopt.search_spaces import make_space
from nasopt.space import random_arch
from nasopt.train import TrainConfig, train

SPACES = {"micro": {}, "conv1d": {"C": 4}, "mobile": {"stages": 3, "max_depth": 3}}  # mobile: the demo study's space


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--qat", type=int, default=3)
    parser.add_argument("--space", choices=sorted(SPACES), default="micro")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = load_task("mnist1d", seed=0)
    space = make_space(args.space, **SPACES[args.space])
    rows: dict[int, list[tuple[float, float]]] = {0: [], args.qat: []}
    print(f"{'network':<58} {'params':>6} | {'fp32':>6} {'int8':>6} {'drop':>6} | {'QAT fp32':>8} {'int8':>6} "
          f"{'drop':>6}")
    t0 = time.perf_counter()
    for seed in range(args.archs):
        arch = random_arch(space, seed=seed)
        cells = []
        for qat in rows:
            torch.manual_seed(seed)
            model = space.build(arch, task)
            config = TrainConfig(epochs=args.epochs, batch_size=64, lr=0.05, weight_decay=1e-4, qat_epochs=qat)
            fp32 = train(model, task, config, seed=seed).val_acc
            int8 = float(int8_metrics(model, task, Calibration(), repeats=3, warmup=1)["accuracy"])
            rows[qat].append((fp32, int8))
            cells.append(f"{100 * fp32:6.2f} {100 * int8:6.2f} {100 * (fp32 - int8):+6.2f}")
        name = space.describe(arch)
        print(f"{name[:58]:<58} {count_params(model):>6} | {cells[0]} | {cells[1].replace(' ', '  ', 1)}", flush=True)
    print(f"\n{args.archs} networks of {args.space} on MNIST-1D, {args.epochs} epochs, "
          f"{time.perf_counter() - t0:.0f} s")
    for qat, runs in rows.items():
        drops = [100 * (f - i) for f, i in runs]
        label = "post-training only" if qat == 0 else f"QAT, last {qat} epochs"
        print(f"{label:<22} drop fp32 -> int8: median {statistics.median(drops):+.2f}, mean "
              f"{statistics.mean(drops):+.2f}, worst {max(drops):+.2f} points; mean int8 accuracy "
              f"{100 * statistics.mean(i for _, i in runs):.2f} %")
    gain = [100 * (q[1] - p[1]) for p, q in zip(rows[0], rows[args.qat], strict=True)]
    print(f"int8 accuracy with QAT minus without: mean {statistics.mean(gain):+.2f}, median "
          f"{statistics.median(gain):+.2f} points (per network: {', '.join(f'{g:+.2f}' for g in gain)})")


if __name__ == "__main__":
    main()
