"""int8 against fp32 on trained networks: accuracy, agreement of predicted classes, latency and size.

    python benchmarks/bench_int8.py [--archs 3] [--threads 1] [--epochs-digits 8] [--epochs-mnist1d 8]

`--archs` random architectures each of nano on digits and conv1d (C=8, 2 layers) on MNIST-1D are trained
with nasopt's trainer (seed 0), then quantized exactly as a study's trials are (nasopt.measure._int8:
onnxruntime static quantization, QDQ, per-channel int8 weights, MinMax on 256 training samples). Printed per
network: validation accuracy in fp32 (torch) and int8 (onnxruntime), the share of validation samples whose
predicted class is the same, the median latency at batch 1 of the fp32 network in torch, of the fp32 graph
in onnxruntime and of the int8 graph in onnxruntime (all on the CPU, `--threads` threads), and the int8
tensors' KB beside `flash_kb`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nasopt.data import load_task
from nasopt.measure import flash_kb, measure_latency
from nasopt.measure._int8 import Calibration, int8_metrics
from nasopt.search_spaces import make_space
from nasopt.space import random_arch
from nasopt.train import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs-digits", type=int, default=8)
    parser.add_argument("--epochs-mnist1d", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = [("nano", {"C": 8, "positions": 2}, "digits", args.epochs_digits),
            ("conv1d", {"C": 8, "layers": 2}, "mnist1d", args.epochs_mnist1d)]
    print(f"{'network':<44} {'fp32 acc':>8} {'int8 acc':>8} {'same':>6} {'torch ms':>9} {'ort fp32':>9} "
          f"{'ort int8':>9} {'int8/fp32':>9} {'int8 KB':>8} {'flash_kb':>8}")
    drops, ratios = [], []
    for space_name, kwargs, dataset, epochs in runs:
        task = load_task(dataset, seed=0)
        space = make_space(space_name, **kwargs)
        for i in range(args.archs):
            arch = random_arch(space, seed=i)
            torch.manual_seed(0)
            model = space.build(arch, task)
            result = train(model, task, TrainConfig(epochs=epochs, batch_size=64, lr=0.05), seed=0)
            torch_ms = measure_latency(model, task.input_shape, threads=args.threads).median_ms
            t0 = time.perf_counter()
            rec = int8_metrics(model, task, Calibration(), threads=args.threads)
            fp32_ms = rec["fp32_latency"]["median_ms"]
            drops.append(result.val_acc - rec["accuracy"])
            ratios.append(rec["latency_ms"] / fp32_ms)
            name = f"{dataset}: {space.describe(arch)}"[:44]
            print(f"{name:<44} {result.val_acc:>8.4f} {rec['accuracy']:>8.4f} {rec['agreement']:>6.3f} "
                  f"{torch_ms:>9.4f} {fp32_ms:>9.4f} {rec['latency_ms']:>9.4f} {ratios[-1]:>9.2f} "
                  f"{rec['kb']:>8.2f} {flash_kb(model):>8.2f}   ({time.perf_counter() - t0:.1f} s int8)")
    print(f"\nmedian accuracy drop fp32 -> int8: {100 * statistics.median(drops):.2f} points "
          f"(max {100 * max(drops):.2f}); median int8/fp32 latency in onnxruntime: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
