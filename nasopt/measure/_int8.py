"""int8 post-training quantization of a trained network, measured in the runtime that runs it.

Why onnxruntime: `torch.ao.quantization` (eager and FX graph mode) is deprecated in torch 2.x, and its
successor torchao targets server GPUs and large language models (int4/int8 weight-only, float8) rather
than int8 CNNs on a CPU; onnxruntime's static quantization is maintained, runs true int8 kernels on the
CPU (x86 VNNI/AVX2, ARM dot-product), and is the runtime people deploy int8 ONNX with. The QDQ graph it
writes is also what converters to other int8 runtimes read.

The recipe, the same for every trial and for `nasopt export --int8` (all of it recorded):

1. the trained network is written as fp32 ONNX (opset 17) by the export's writer (`nasopt.measure._onnx`),
   then `quant_pre_process` (ONNX shape inference, graph optimisation: BatchNorm folded into the conv before
   it; onnxruntime's symbolic shape inference skipped, see `quantize_onnx`);
2. `quantize_static`, QDQ format: weights int8, symmetric, one scale per output channel; activations 8-bit,
   asymmetric, one scale and zero point per tensor, their ranges calibrated (`method`: MinMax, Entropy or
   Percentile) on `samples` training samples, in batches of 64 in a shuffled order fixed by `seed` (the same
   samples for every architecture of a study, so the trials compare). The activations are uint8 on x86-64,
   where onnxruntime's int8 kernels take unsigned activations and signed weights (int8 activations are
   converted at run time: 1.5-2x slower measured on small CNNs), and int8 elsewhere (ARM, as TFLite Micro and
   CMSIS-NN run them); both are the same 256-level asymmetric grid, so accuracy does not depend on it;
3. the int8 graph runs in an onnxruntime CPU session over the validation split and is scored by
   `nasopt.scoring.evaluate` exactly like the fp32 network (accuracy where the task has classes, the loss,
   the user's metrics), beside the fp32 graph in the same runtime; `agreement` is the share of validation
   predictions (samples, or positions of a dense task) whose class is the same in int8 and fp32;
4. latency: both graphs timed in onnxruntime on the CPU (CPUExecutionProvider, every graph optimisation,
   so QDQ pairs run as fused int8 kernels), with `measure_latency`'s provenance (device, threads, batch,
   warm-up, repeats, median and inter-quartile range) plus the runtime and provider;
5. size: `kb` counts the tensors of the int8 file (int8 weights, int32 biases, float32 scales, zero points)
   in KB of 1024 bytes, comparable to `flash_kb`; `file_kb` is the whole file (the graph and its names too).

The int8 model always runs on the CPU, whatever device trained the network: the number a phone or a
microcontroller user wants; the provenance says so (`study_device`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nasopt.errors import UserError
from nasopt.measure._metrics import INT8_METHODS, Latency, device_name
from nasopt.measure._onnx import need_onnx, ort_session, run_onnx, write_onnx
from nasopt.scoring import MetricFailed, evaluate, kind_of

__all__ = ["INT8_METRICS", "AT_LEAST", "Calibration", "default_activations", "Int8Failed", "need_int8", "quantize_onnx", "compare", "ort_latency", "tensor_kb",
           "scales", "int8_metrics", "export_int8", "INT8_FILE"]

INT8_FILE = "model.int8.onnx"
INT8_METRICS = ("int8_accuracy", "int8_latency_ms", "int8_kb")  # a study's names for `int8_metrics`' figures
AT_LEAST = ("int8_accuracy",)  # limits that are minimums: a trial below one is infeasible
_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


class Int8Failed(MetricFailed):
    """The network could not be exported, quantized or run in int8: its trial fails with the reason (not
    retried: the same network would fail again), and the study goes on."""


def default_activations() -> str:
    """The activations' 8-bit type onnxruntime runs fastest here: uint8 on x86-64, int8 elsewhere."""
    return "uint8" if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86") else "int8"


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """Which training samples set the activations' int8 ranges, and how (see the module doc)."""

    samples: int = 256
    method: str = "minmax"
    seed: int = 0
    batch_size: int = 64
    activations: str = field(default_factory=default_activations)

    def __post_init__(self) -> None:
        if self.activations not in ("int8", "uint8"):
            raise UserError(f"int8 activations are 'int8' or 'uint8', but got {self.activations!r}")
        if self.method not in INT8_METHODS:
            raise UserError(f"unknown int8 calibration method {self.method!r}; use one of {', '.join(INT8_METHODS)}")
        if self.samples < 1 or self.batch_size < 1:
            raise UserError(f"`samples >= 1` and `batch_size >= 1` must hold, but got {self.samples=}, "
                            f"{self.batch_size=}")


def need_int8() -> None:
    """onnx, onnxruntime and its quantization module, else one line naming the extra."""
    need_onnx("int8 metrics and exports", ("onnx", "onnxruntime", "onnxruntime.quantization"))


@contextlib.contextmanager
def _stage(what: str) -> Iterator[None]:
    """A failure of a step of the recipe as `Int8Failed` naming the step; the quantizer's log lines muted."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime.quantization logs its advice through the root logger
    try:
        yield
    except (UserError, MetricFailed, KeyboardInterrupt):
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise Int8Failed(f"int8: {what} failed ({type(e).__name__}{': ' + first if first else ''})") from e
    finally:
        root.setLevel(level)


def _calibration_batches(task: Any, calibration: Calibration) -> tuple[list[np.ndarray], dict[str, Any]]:
    generator = torch.Generator().manual_seed(calibration.seed)
    batches, n = [], 0
    for x, _ in task.train.batches(calibration.batch_size, shuffle=True, generator=generator):
        x = x[: calibration.samples - n]
        batches.append(x.detach().float().cpu().numpy())
        n += len(x)
        if n >= calibration.samples:
            break
    if not batches:
        raise UserError("int8 calibration needs training samples, but the training split is empty")
    return batches, {"split": "train", "samples": n, "batches": len(batches), "batch_size": calibration.batch_size,
                     "order": f"shuffled with seed {calibration.seed} (the same samples for every trial)"}


def quantize_onnx(fp32: Path | str, int8: Path | str, task: Any, calibration: Calibration) -> dict[str, Any]:
    """Write the int8 QDQ graph of the fp32 ONNX file `fp32` to `int8`, calibrated on `task`'s training
    split; returns how (format, types, per-channel, method, which samples)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    batches, samples = _calibration_batches(task, calibration)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rewind()

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.left, None)
            return None if batch is None else {"input": batch}

        def rewind(self) -> None:
            self.left = iter(batches)

    with tempfile.TemporaryDirectory(prefix="nasopt-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        with _stage("onnxruntime's pre-processing (shape inference, graph optimisation)"):
            # onnxruntime's symbolic shape inference fails on DARTS and 1-D cells and then writes its files into
            # the working directory; ONNX's own shape inference (kept) knows every shape of a fixed-size network
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        with _stage("onnxruntime's static quantization"):
            quantize_static(str(prepared), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8 if calibration.activations == "uint8" else
                            QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=getattr(CalibrationMethod, _METHODS[calibration.method]),
                            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    return {"library": "onnxruntime.quantization.quantize_static", "format": "QDQ",
            "preprocess": "onnxruntime.quantization.quant_pre_process (ONNX shape inference, graph optimisation)",
            "weights": "int8, symmetric, per output channel", "activations": f"{calibration.activations}, asymmetric, per tensor",
            "method": _METHODS[calibration.method], "calibration": samples}


class _Runtime(nn.Module):
    """An onnxruntime session as a module, so that `evaluate` scores it like the network; keeps its outputs."""

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session
        self.outputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = run_onnx(self.session, x)
        self.outputs.append(out)
        return out.to(x.device)


def compare(int8: Path | str, fp32: Path | str, task: Any, *, batch_size: int = 256,
            threads: int | None = None) -> dict[str, Any]:
    """Both graphs in onnxruntime over the validation split: each one's `evaluate` record and the agreement
    of their predicted classes (a regression: the largest and mean |difference| of the outputs).

    The int8 figures are the int8 model's exact arithmetic (its QDQ graph run as written, `ort_session(...,
    fused=False)`), what an int8 runtime with 32-bit accumulators computes (TFLite, CMSIS-NN, onnxruntime on
    ARM or on x86 with VNNI). `host_kernels` holds the same figures from this CPU's fused int8 kernels, which
    the latency times: on x86 without VNNI (AVX2 only) onnxruntime's uint8 x int8 kernels add pairs of
    products in 16 bits, which saturate (a nano network on digits: 82 % there against 90 % exact), so a
    study's int8 accuracy does not depend on which CPU measured it; `int8_warning` says when they differ."""
    runs = {}
    for name, path, fused in (("int8", int8, False), ("host", int8, True), ("fp32", fp32, True)):
        with _stage(f"running the {'int8' if name == 'host' else name} graph in onnxruntime"):
            runtime = _Runtime(ort_session(path, threads or torch.get_num_threads(), fused=fused))
        runs[name] = (evaluate(runtime, task.val, batch_size, task=task), torch.cat(runtime.outputs))
    (val8, out8), (host8, host_out), (val32, out32) = runs["int8"], runs["host"], runs["fp32"]
    result: dict[str, Any] = {"int8_val": _rounded(val8), "fp32_val": _rounded(val32), "split": "validation",
                              "samples": len(out8), "int8_graph": "run as written (the int8 arithmetic exactly)"}
    host: dict[str, Any] = {"int8_val": _rounded(host8), "kernels": f"onnxruntime's fused int8 kernels on "
                            f"{device_name('cpu')}"}
    if kind_of(task) in ("classify", "dense"):
        result["agreement"] = _agreement(out8, out32)
        host["agreement"] = _agreement(host_out, out32)
        lost = result["agreement"] - host["agreement"]
        if lost > 0.01:
            result["int8_warning"] = (
                f"this CPU's int8 kernels agree with fp32 on {host['agreement']:.1%} of the validation predictions, "
                f"the int8 model itself on {result['agreement']:.1%}: onnxruntime's uint8 x int8 kernels saturate "
                "on x86 without VNNI; int8_accuracy is the exact one, the latency is this CPU's")
    else:
        diff = (out8 - out32).abs()
        result.update(max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()))
        host["max_abs_diff"] = float((host_out - out32).abs().max())
    result["host_kernels"] = host
    return result


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return round(float((a.argmax(1) == b.argmax(1)).float().mean()), 6)


def _rounded(record: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in record.items()}


def ort_latency(path: Path | str, input_shape: Sequence[int], *, batch_size: int = 1, threads: int | None = None,
                warmup: int = 5, repeats: int = 30) -> Latency:
    """Median and spread of `repeats` runs of the ONNX file in onnxruntime on the CPU after `warmup` runs, on
    `threads` intra-op threads (None: torch's current count, as `measure_latency`)."""
    import onnxruntime as ort

    if repeats < 3:
        raise ValueError(f"`repeats >= 3` must hold, but got {repeats=}")
    threads = threads or torch.get_num_threads()
    with _stage("loading the graph in onnxruntime"):
        session = ort_session(path, threads)
    feed = {session.get_inputs()[0].name:
            np.random.default_rng(0).standard_normal((batch_size, *input_shape)).astype(np.float32)}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    q1, _, q3 = statistics.quantiles(times, n=4)
    return Latency(median_ms=statistics.median(times), iqr_ms=q3 - q1, provenance={
        "method": "measured", "runtime": f"onnxruntime {ort.__version__}", "provider": "CPUExecutionProvider",
        "device": "cpu", "device_name": device_name("cpu"), "threads": threads, "batch_size": batch_size,
        "input_shape": [batch_size, *input_shape], "warmup": warmup, "repeats": repeats})


def tensor_kb(path: Path | str) -> float:
    """KB (1024 bytes) of the tensors stored in the ONNX file (initializers and constants), graph excluded."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    tensors = [*graph.initializer, *(a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute
                                      if a.name == "value")]
    return sum(numpy_helper.to_array(t).nbytes for t in tensors) / 1024


def scales(path: Path | str) -> dict[str, Any]:
    """Where the int8 file keeps its quantization parameters, and each activation's scale and zero point."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    activations, weights = {}, 0
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in init and node.input[1] in init:
            zero = init.get(node.input[2]) if len(node.input) > 2 else None
            activations[node.input[0]] = {"scale": float(init[node.input[1]]),
                                          "zero_point": int(zero) if zero is not None else 0}
        elif node.op_type == "DequantizeLinear" and node.input[0] in init and init[node.input[0]].ndim > 1:
            weights += 1
    return {"activations": activations,
            "weights": {"tensors": weights, "where": f"{INT8_FILE}: the scale and zero-point initializers of each "
                                                    "weight's DequantizeLinear node (one per output channel)"}}


def _file_kb(path: Path) -> float:
    return round(os.path.getsize(path) / 1024, 4)


def int8_metrics(model: nn.Module, task: Any, calibration: Calibration, *, batch_size: int = 1,
                 threads: int | None = None, warmup: int = 5, repeats: int = 30) -> dict[str, Any]:
    """The int8 record of a trained network (see the module doc): `accuracy` (None where the task has no
    classes), `latency_ms`, `kb`, and how each was made. Raises `Int8Failed` when a step fails."""
    need_int8()
    t0 = time.perf_counter()
    shape = tuple(int(v) for v in task.input_shape)
    study_device = str(next(iter(model.parameters()), torch.empty(0)).device)
    with tempfile.TemporaryDirectory(prefix="nasopt-int8-") as tmp:
        fp32, int8 = Path(tmp) / "model.onnx", Path(tmp) / INT8_FILE
        with _stage("the ONNX export"):
            cpu = copy.deepcopy(model).float().cpu().eval()
            write_onnx(cpu, torch.randn(2, *shape, generator=torch.Generator().manual_seed(0)), fp32)
        quantization = quantize_onnx(fp32, int8, task, calibration)
        check = compare(int8, fp32, task, threads=threads)
        latency, fp32_latency = (ort_latency(path, shape, batch_size=batch_size, threads=threads, warmup=warmup,
                                             repeats=repeats) for path in (int8, fp32))
        size = {"tensors_kb": round(tensor_kb(int8), 4), "file_kb": _file_kb(int8), "fp32_file_kb": _file_kb(fp32),
                "counts": "int8_kb: the tensors of the int8 ONNX file (int8 weights, int32 biases, float32 scales, "
                          "zero points), KB = 1024 bytes; file_kb: the whole file, graph and names included"}
    accuracy = check["int8_val"].get("acc")
    where = {} if study_device == "cpu" else {"study_device": study_device,
                                             "note": "int8 runs in onnxruntime's CPU provider, whatever trained it"}
    return {"accuracy": accuracy, "latency_ms": round(latency.median_ms, 4), "kb": size["tensors_kb"],
            "agreement": check.get("agreement"), "check": check,
            "latency": {"median_ms": latency.median_ms, "iqr_ms": latency.iqr_ms, **latency.provenance, **where},
            "fp32_latency": {"median_ms": fp32_latency.median_ms, "iqr_ms": fp32_latency.iqr_ms,
                             "graph": "the same network as fp32 ONNX, same runtime and settings"},
            "size": size, "quantization": quantization, "calibration_settings": asdict(calibration),
            "versions": _versions(), "seconds": round(time.perf_counter() - t0, 3)}


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__}


def export_int8(folder: Path, task: Any, calibration: Calibration, *, threads: int | None = None) -> dict[str, Any]:
    """`nasopt export --int8`: the int8 graph of `folder`/model.onnx written beside it as INT8_FILE, checked in
    onnxruntime against the fp32 graph on the validation split; returns the manifest's `int8` section."""
    need_int8()
    fp32, int8 = folder / "model.onnx", folder / INT8_FILE
    quantization = quantize_onnx(fp32, int8, task, calibration)
    check = compare(int8, fp32, task, threads=threads)
    shape = tuple(int(v) for v in task.input_shape)
    latency, fp32_latency = ort_latency(int8, shape, threads=threads), ort_latency(fp32, shape, threads=threads)
    return {"file": INT8_FILE, **quantization, "calibration_settings": asdict(calibration),
            "check": check, "scales": scales(int8),
            "latency": {"int8_median_ms": latency.median_ms, "int8_iqr_ms": latency.iqr_ms,
                        "fp32_median_ms": fp32_latency.median_ms, "fp32_iqr_ms": fp32_latency.iqr_ms,
                        **latency.provenance},
            "size": {"tensors_kb": round(tensor_kb(int8), 4), "file_kb": _file_kb(int8),
                     "fp32_file_kb": _file_kb(fp32)},
            "versions": _versions()}
