"""What quantization-aware training recovers: a study's metric after post-training int8 quantization, with and
without QAT.

    python benchmarks/bench_qat.py [--archs 6] [--epochs 15] [--qat 3] [--space micro] [--threads 1]
    python benchmarks/bench_qat.py --study studies/shapes_segmentation.py [--archs 6] [--qat 3] [--threads 1]

Without `--study`: `--archs` random architectures of `--space` (micro: the TinyML study's space; conv1d with C=4
and mobile, the demo's, also work) on MNIST-1D, trained `--epochs` epochs (batch 64, lr 0.05, weight decay 1e-4),
scored by validation accuracy. With `--study FILE`: the study file's space, task (its dataset or its own
`data`, loss and metrics), training settings and int8 calibration; scored by its first objective when that is a
validation metric (`accuracy`, `int8_accuracy`, `val_loss` or the user's own metric, e.g. `r2` or `miou`), else
by accuracy (loss for a regression); `--epochs` replaces the study's epochs when given.

Each network is trained twice with nasopt's trainer from the same initialisation and seed: plain, and with
`qat_epochs=--qat` (the last epochs fake-quantized, nasopt.quant; default: the study's qat_epochs, else 3). Each
trained network is then quantized as a study's trials are (nasopt.measure.int8_metrics: onnxruntime static
quantization, QDQ, per-channel int8 weights, MinMax on the study's calibration samples) and scored on the
validation split in fp32 and int8 by the same code. Printed per network, for both runs: the metric in fp32 and
int8, the drop (quality lost: fp32 - int8 for a metric to maximize, int8 - fp32 for one to minimize; accuracy in
points) and the int8 loss over the fp32 loss (`loss x`, every task has a loss: for a regression it is the MSE
ratio); then the median and mean drop, the mean int8 metric and int8/fp32 loss ratio of each, and the int8 metric
with QAT against without, per network.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from typing import Any

import torch

from nasopt.cli.studyfile import load_study_file
from nasopt.data import load_task, user_task
from nasopt.measure import Calibration, count_params, int8_metrics
from nasopt.scoring import scored
from nasopt.search_spaces import make_space
from nasopt.space import random_arch
from nasopt.train import TrainConfig, train

SPACES = {"micro": {}, "conv1d": {"C": 4}, "mobile": {"stages": 3, "max_depth": 3}}  # mobile: the demo study's space
# a study's objective -> the name of its value in `evaluate`'s record (a user's metric keeps its own)
RECORD_NAMES = {"accuracy": "acc", "int8_accuracy": "acc", "val_loss": "loss"}


@dataclasses.dataclass(frozen=True)
class Setup:
    """What is trained, on what, and how it is scored."""

    label: str
    space: Any
    task: Any
    config: TrainConfig
    calibration: Calibration
    metric: str  # a key of `evaluate`'s record
    maximize: bool

    @property
    def scale(self) -> float:  # accuracy in %, drops in points; other metrics in their own units
        return 100.0 if self.metric == "acc" else 1.0

    def fmt(self, value: float, sign: str = "") -> str:
        return f"{self.scale * value:{sign}.{2 if self.metric == 'acc' else 4}f}"


def from_study(path: str, epochs: int | None) -> Setup:
    spec = load_study_file(path)
    if spec.data is not None:
        task = user_task(spec.data, kind=spec.kind, input_shape=spec.input_shape, num_classes=spec.num_classes,
                         val_fraction=spec.val_fraction, seed=spec.seed)
    else:
        task = load_task(spec.dataset, data_dir=spec.data_dir, download=spec.download, val_fraction=spec.val_fraction,
                         seed=spec.seed, image_size=spec.image_size)
    task = scored(task, spec.loss, spec.metrics)
    kind = str(getattr(task, "kind", "classify"))
    first, direction = next(iter(spec.objectives.items()))
    metric = RECORD_NAMES.get(first, first)
    if metric not in (*spec.metrics, "acc", "loss") or (metric == "acc" and kind == "regress"):
        metric, direction = ("loss", "minimize") if kind == "regress" else ("acc", "maximize")
    config = spec.train if epochs is None else dataclasses.replace(spec.train, epochs=epochs,
                                                                   qat_epochs=min(spec.train.qat_epochs, epochs))
    return Setup(label=f"{spec.name} ({path})", space=spec.space, task=task, config=config,
                 calibration=Calibration(samples=spec.measure.int8_samples, method=spec.measure.int8_method),
                 metric=metric, maximize=direction == "maximize")


def from_space(name: str, epochs: int | None) -> Setup:
    return Setup(label=f"{name} on MNIST-1D", space=make_space(name, **SPACES[name]),
                 task=load_task("mnist1d", seed=0),
                 config=TrainConfig(epochs=epochs or 15, batch_size=64, lr=0.05, weight_decay=1e-4),
                 calibration=Calibration(), metric="acc", maximize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=None, help="default: the study's, else 15")
    parser.add_argument("--qat", type=int, default=None, help="QAT epochs; default: the study's qat_epochs, else 3")
    parser.add_argument("--space", choices=sorted(SPACES), default="micro")
    parser.add_argument("--study", default=None, help="a study file: its space, task, metric and training")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setup = from_study(args.study, args.epochs) if args.study else from_space(args.space, args.epochs)
    qat = args.qat if args.qat is not None else (setup.config.qat_epochs or min(3, setup.config.epochs))
    if not 1 <= qat <= setup.config.epochs:
        parser.error(f"`1 <= --qat <= epochs` must hold, but got --qat {qat} with {setup.config.epochs} epochs")
    sign = 1.0 if setup.maximize else -1.0
    runs: dict[int, list[dict[str, float]]] = {0: [], qat: []}
    print(f"{setup.label}: {args.archs} random networks, {setup.config.epochs} epochs, plain and with the last {qat} "
          f"fake-quantized; metric {setup.metric!r} ({'max' if setup.maximize else 'min'}imize) on the validation "
          f"split; {args.threads} thread(s)")
    head = f"{'fp32':>8} {'int8':>8} {'drop':>8} {'loss x':>6}"
    print(f"{'network':<44} {'params':>6} | {head} | QAT {head}")
    t0 = time.perf_counter()
    for seed in range(args.archs):
        arch = random_arch(setup.space, seed=seed)
        cells = []
        for epochs in runs:
            torch.manual_seed(seed)
            model = setup.space.build(arch, setup.task)
            train(model, setup.task, dataclasses.replace(setup.config, qat_epochs=epochs), seed=seed)
            check = int8_metrics(model, setup.task, setup.calibration, repeats=3, warmup=1)["check"]
            fp32, int8 = check["fp32_val"], check["int8_val"]  # both graphs in onnxruntime, scored by `evaluate`
            row = {"fp32": fp32[setup.metric], "int8": int8[setup.metric],
                   "drop": sign * (fp32[setup.metric] - int8[setup.metric]), "loss_x": int8["loss"] / fp32["loss"]}
            runs[epochs].append(row)
            cells.append(f"{setup.fmt(row['fp32']):>8} {setup.fmt(row['int8']):>8} {setup.fmt(row['drop'], '+'):>8} "
                         f"{row['loss_x']:>6.3f}")
        name = setup.space.describe(arch)
        print(f"{name[:44]:<44} {count_params(model):>6} | {cells[0]} | QAT {cells[1]}", flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s; drop = quality lost fp32 -> int8 ({'points' if setup.scale == 100 else 'units'}"
          f" of {setup.metric!r}); loss x = int8 loss / fp32 loss")
    for epochs, rows in runs.items():
        drops = [r["drop"] for r in rows]
        label = "post-training only" if epochs == 0 else f"QAT, last {epochs} epochs"
        print(f"{label:<22} drop: median {setup.fmt(statistics.median(drops), '+')}, mean "
              f"{setup.fmt(statistics.mean(drops), '+')}, worst {setup.fmt(max(drops), '+')}; mean fp32 "
              f"{setup.fmt(statistics.mean(r['fp32'] for r in rows))}, int8 {setup.fmt(statistics.mean(r['int8'] for r in rows))};"
              f" int8/fp32 loss: median {statistics.median(r['loss_x'] for r in rows):.3f}")
    gain = [sign * (q["int8"] - p["int8"]) for p, q in zip(runs[0], runs[qat], strict=True)]
    print(f"int8 {setup.metric} with QAT against without (better +): mean {setup.fmt(statistics.mean(gain), '+')}, "
          f"median {setup.fmt(statistics.median(gain), '+')} (per network: {', '.join(setup.fmt(g, '+') for g in gain)})")


if __name__ == "__main__":
    main()
