"""Issue 17's figures on the TinyML study (studies/tinyml_mnist1d.py): int8 against fp32 over its front, what
quantization-aware training recovers, and the flash/SRAM budgets against an independent count.

    python benchmarks/bench_tinyml.py --storage sqlite:///tiny.db [--front 6] [--archs 10] [--threads 1]

Run the study first (`nasopt run studies/tinyml_mnist1d.py --storage sqlite:///tiny.db`); its Pareto front
(int8 accuracy against int8 latency, feasible trials) is read from the storage. Printed:

1. per front architecture, retrained with the study's seed and settings twice — without QAT (qat_epochs=0) and
   with the study's QAT epochs: validation accuracy in fp32 (torch) and in int8 (onnxruntime static
   quantization, as the trials), and the median latency at batch 1 of the fp32 network in torch, of its fp32
   graph in onnxruntime and of the int8 graph in onnxruntime (ratios int8 / fp32);
2. the median accuracy drop fp32 -> int8 after post-training quantization, and with QAT;
3. for `--archs` random architectures of the space: `flash_kb` (counted from the architecture) against the
   tensors of the int8 ONNX file onnxruntime's quantizer writes (int8 weights, int32 biases, float32 scales and
   zero points; BN folded by the export) — the QDQ format also stores each bias' float32 scale and int32 zero
   point (8 bytes per output channel, which an MCU runtime derives from the input and weight scales) and a
   float32 scale and 8-bit zero point per quantized activation (5 bytes each), so `flash+QDQ` adds those to
   `flash_kb` and should equal the file's count —, and `sram_kb` (nasopt's op-by-op schedule) against a count over
   the exported ONNX graph: its nodes in the file's order, every activation 1 byte per element, each live
   from the node that writes it to the last node that reads it (no in-place ops: an upper bound when
   activations run in place).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from pathlib import Path

import optuna
import torch

from nasopt.cli.studyfile import load_study_file
from nasopt.data import load_task
from nasopt.measure import flash_kb, measure_latency, sram_kb
from nasopt.measure._int8 import Calibration, int8_metrics, quantize_onnx, tensor_kb
from nasopt.measure._onnx import write_onnx
from nasopt.space import random_arch
from nasopt.train import train

STUDY = Path(__file__).resolve().parent.parent / "studies" / "tinyml_mnist1d.py"


def onnx_peak_kb(path: Path) -> float:
    """Peak int8 activation KB over the ONNX graph's nodes in order, each tensor alive writer -> last reader."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    graph = model.graph
    sizes: dict[str, int] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = [d.dim_value or 1 for d in value.type.tensor_type.shape.dim]  # batch axis (dynamic) -> 1
        n = 1
        for d in dims:
            n *= d
        sizes[value.name] = n
    constants = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant"
                                                      for o in n.output}
    last: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            if name in sizes and name not in constants:
                last[name] = i
    outputs = {o.name for o in graph.output}
    live = {i.name for i in graph.input}
    peak = 0
    for i, node in enumerate(graph.node):
        written = [o for o in node.output if o in sizes and o not in constants]
        peak = max(peak, sum(sizes[t] for t in live) + sum(sizes[t] for t in written))
        live |= set(written)
        live = {t for t in live if last.get(t, -1) > i or t in outputs}
    return peak / 1024


def _channels(model: torch.nn.Module) -> int:
    """Output channels of every conv and linear layer (one bias each)."""
    return sum(m.out_channels if isinstance(m, torch.nn.modules.conv._ConvNd) else m.out_features
               for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd | torch.nn.Linear))


def _quantized_activations(path: Path) -> int:
    """QuantizeLinear nodes of the int8 graph (each reads an activation with its own scale and zero point)."""
    import onnx

    return sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(path)).graph.node)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True, help="where studies/tinyml_mnist1d.py was run")
    parser.add_argument("--front", type=int, default=6, help="at most this many front architectures")
    parser.add_argument("--archs", type=int, default=10, help="random architectures for the budget check")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = load_study_file(str(STUDY))
    study = optuna.load_study(study_name=spec.name, storage=args.storage)
    front = sorted(study.best_trials, key=lambda t: -t.values[0])[: args.front]
    task = load_task(spec.dataset, seed=spec.seed)
    calibration = Calibration(samples=spec.measure.int8_samples, method=spec.measure.int8_method)
    print(f"{len(front)} front architectures of {spec.name!r} ({len(study.trials)} trials), retrained "
          f"{spec.train.epochs} epochs without QAT and with qat_epochs={spec.train.qat_epochs}; {args.threads} thread(s)")
    print(f"{'trial':>5} {'arch':<34} {'fp32':>6} {'PTQ':>6} {'QAT fp32':>8} {'QAT int8':>8} {'torch ms':>8} "
          f"{'ort fp32':>8} {'ort int8':>8} {'int8/torch':>10} {'int8/ort':>8}")
    ptq_drops, qat_drops, vs_torch, vs_ort = [], [], [], []
    for trial in front:
        arch = trial.params
        seed = trial.user_attrs.get("seed", 0)
        row = {}
        for label, qat in (("ptq", 0), ("qat", spec.train.qat_epochs)):
            torch.manual_seed(seed)
            model = spec.space.build(arch, task)
            result = train(model, task, dataclasses.replace(spec.train, qat_epochs=qat), seed=seed)
            record = int8_metrics(model, task, calibration, threads=args.threads)
            row[label] = (result.val_acc, record)
        torch_ms = measure_latency(model, task.input_shape, threads=args.threads).median_ms
        (fp32, ptq), (qat_fp32, qat) = row["ptq"], row["qat"]
        ort_fp32 = qat["fp32_latency"]["median_ms"]
        ptq_drops.append(fp32 - ptq["accuracy"])
        qat_drops.append(fp32 - qat["accuracy"])
        vs_torch.append(qat["latency_ms"] / torch_ms)
        vs_ort.append(qat["latency_ms"] / ort_fp32)
        print(f"{trial.number:>5} {spec.space.describe(arch)[:34]:<34} {fp32:>6.4f} {ptq['accuracy']:>6.4f} "
              f"{qat_fp32:>8.4f} {qat['accuracy']:>8.4f} {torch_ms:>8.4f} {ort_fp32:>8.4f} {qat['latency_ms']:>8.4f} "
              f"{vs_torch[-1]:>10.3f} {vs_ort[-1]:>8.3f}")
    if front:
        print(f"median accuracy drop fp32 -> int8: {100 * statistics.median(ptq_drops):.2f} points after PTQ "
              f"(max {100 * max(ptq_drops):.2f}), {100 * statistics.median(qat_drops):.2f} with QAT "
              f"(max {100 * max(qat_drops):.2f}; against the fp32 network trained without QAT)")
        print(f"median int8 latency / fp32: {statistics.median(vs_torch):.3f} of torch, "
              f"{statistics.median(vs_ort):.3f} of onnxruntime fp32")

    print(f"\nbudgets of {args.archs} random architectures: predicted before training against the int8 file / "
          "the ONNX graph's schedule")
    print(f"{'arch':<40} {'flash_kb':>8} {'flash+QDQ':>9} {'int8 file':>9} {'sram_kb':>8} {'graph':>8}")
    for i in range(args.archs):
        arch = random_arch(spec.space, seed=i)
        torch.manual_seed(i)
        model = spec.space.build(arch, task).eval()
        with tempfile.TemporaryDirectory() as tmp:
            fp32_path, int8_path = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
            write_onnx(model, torch.randn(2, *task.input_shape), fp32_path)
            quantize_onnx(fp32_path, int8_path, task, calibration)
            extras = 8 * _channels(model) + 5 * _quantized_activations(int8_path)
            print(f"{spec.space.describe(arch)[:40]:<40} {flash_kb(model):>8.2f} {flash_kb(model) + extras / 1024:>9.2f} "
                  f"{tensor_kb(int8_path):>9.2f} "
                  f"{sram_kb(model, task.input_shape):>8.2f} {onnx_peak_kb(fp32_path):>8.2f}")


if __name__ == "__main__":
    main()
