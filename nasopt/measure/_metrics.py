"""Hardware metrics of a network: parameters, MACs, measured latency and peak inference memory.

Every measurement comes with its provenance (device, threads, batch, input shape, method, torch
version) so a number can be trusted or discounted later. MACs count the multiply-adds of
convolutions, linear layers and matrix products, as the papers and torchvision's published GFLOPS do.
"""

from __future__ import annotations

import logging
import math
import platform
import statistics
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from nasopt.errors import UserError, check_fields

__all__ = ["MeasureConfig", "INT8_METHODS", "count_params", "count_macs", "flop_counter_macs", "Latency", "measure_latency",
           "peak_memory", "peak_live_bytes", "device_name"]

# onnxruntime's calibration methods for the int8 activations' ranges (MeasureConfig.int8_method)
INT8_METHODS = ("minmax", "entropy", "percentile")
# fvcore op names that are multiply-adds in the papers' sense (conv, linear, matmul family)
_MAC_OPS = ("conv", "linear", "matmul", "bmm", "einsum", "addmm", "scaled_dot_product_attention")


@dataclass(frozen=True, kw_only=True)
class MeasureConfig:
    """How latency is measured: batch size, CPU threads (None = torch's current), warm-up and repeats.

    `latency_table`: a table file from `nasopt latency-table`; the study's `latency_ms` is then PREDICTED
    from it (the sum of the architecture's entries; provenance says "method": "predicted") instead of
    timed per trial: cheap, and the same on every worker.

    `int8`: record the int8 metrics (`int8_accuracy`, `int8_latency_ms`, `int8_kb`; nasopt.measure._int8) of
    every trained trial even when the study does not optimise or limit them; `int8_samples` training samples
    calibrate the activations' ranges by `int8_method` (one of INT8_METHODS: onnxruntime's calibrators)."""

    batch_size: int = 1
    threads: int | None = None
    warmup: int = 5
    repeats: int = 30
    latency_table: str | None = None
    int8: bool = False
    int8_samples: int = 256
    int8_method: str = "minmax"

    def __post_init__(self) -> None:
        check_fields(self)
        if self.batch_size < 1 or self.repeats < 3 or self.warmup < 0:
            raise UserError("`batch_size >= 1`, `repeats >= 3` and `warmup >= 0` must hold, but got "
                             f"batch_size={self.batch_size}, repeats={self.repeats}, warmup={self.warmup}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"`threads >= 1` must hold, but got threads={self.threads}")
        if self.int8_samples < 1:
            raise UserError(f"`int8_samples >= 1` must hold, but got int8_samples={self.int8_samples}")
        if self.int8_method not in INT8_METHODS:
            raise UserError(f"unknown int8_method {self.int8_method!r}; use one of {', '.join(INT8_METHODS)}")


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _example(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1) -> torch.Tensor:
    device = next(iter(model.parameters()), torch.empty(0)).device
    return torch.randn(batch_size, *input_shape, device=device)


def _sdpa_macs(q: Sequence[int], k: Sequence[int], v: Sequence[int]) -> int:
    """Q K^T and attn @ V of attention: q (..., L, E), k (..., S, E), v (..., S, Ev)."""
    return math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


def _fvcore_sdpa(inputs: Any, outputs: Any) -> int:
    from fvcore.nn.jit_handles import get_shape

    return _sdpa_macs(*(get_shape(v) for v in inputs[:3]))


def _torch_sdpa_flops(q: Sequence[int], k: Sequence[int], v: Sequence[int], *args: Any, **kwargs: Any) -> int:
    return 2 * _sdpa_macs(q, k, v)  # FlopCounterMode counts FLOPs = 2 x MACs


class _NoMHAFastPath:
    """nn.MultiheadAttention's inference fast path is one fused op that neither counter sees; the
    regular path runs linear + scaled_dot_product_attention, which both count."""

    def __enter__(self) -> None:
        self.old = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)

    def __exit__(self, *exc: object) -> None:
        torch.backends.mha.set_fastpath_enabled(self.old)


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one forward pass at batch size 1, counted by fvcore.

    fvcore traces with `torch.jit`, which torch deprecates; its warnings and its per-op log lines are
    kept out of the user's output here.
    """
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad(), _NoMHAFastPath():
            warnings.simplefilter("ignore")
            from fvcore.nn import FlopCountAnalysis  # its import scripts functions with torch.jit: warns

            logging.getLogger("fvcore").setLevel(logging.ERROR)
            analysis = FlopCountAnalysis(model, _example(model, input_shape))
            analysis.set_op_handle("aten::scaled_dot_product_attention", _fvcore_sdpa)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            by_op = analysis.by_operator()
    finally:
        model.train(was_training)
    return int(sum(v for k, v in by_op.items() if any(tag in k for tag in _MAC_OPS)))


def flop_counter_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """The same count through torch's own `FlopCounterMode` (FLOPs = 2 x MACs): a cross-check."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        # the CPU attention kernel is missing from torch's table (the CUDA kernels are in it)
        cpu_sdpa = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _torch_sdpa_flops}
        with torch.no_grad(), _NoMHAFastPath(), FlopCounterMode(display=False, custom_mapping=cpu_sdpa) as counter:
            model(_example(model, input_shape))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops() // 2)


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class Latency:
    """Median and spread (inter-quartile range) of forward-pass times, with how they were measured."""

    median_ms: float
    iqr_ms: float
    provenance: dict[str, Any] = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(model: nn.Module, input_shape: Sequence[int], *, batch_size: int = 1,
                    threads: int | None = None, warmup: int = 5, repeats: int = 30) -> Latency:
    """Time `repeats` forward passes in eval mode on the model's own device after `warmup` passes."""
    if repeats < 3:
        raise ValueError(f"`repeats >= 3` must hold, but got {repeats=}")
    device = next(iter(model.parameters()), torch.empty(0)).device
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    was_training = model.training
    model.eval()
    x = _example(model, input_shape, batch_size)
    times: list[float] = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            _sync(device)
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(x)
                _sync(device)
                times.append((time.perf_counter() - t0) * 1e3)
    finally:
        model.train(was_training)
        torch.set_num_threads(old_threads)
    q1, _, q3 = statistics.quantiles(times, n=4)
    return Latency(
        median_ms=statistics.median(times),
        iqr_ms=q3 - q1,
        provenance={
            "method": "measured",
            "device": device.type,
            "device_name": device_name(device),
            "threads": threads or old_threads,
            "batch_size": batch_size,
            "input_shape": [batch_size, *input_shape],
            "warmup": warmup,
            "repeats": repeats,
            "torch": torch.__version__,
        },
    )


class _LiveBytes(TorchDispatchMode):
    """Tracks the bytes of tensor storages created inside the mode and still alive; keeps the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self._seen:
                    self._seen.add(key)
                    nbytes = storage.nbytes()
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key, nbytes)
        return out


def peak_memory(model: nn.Module, input_shape: Sequence[int], *, batch_size: int = 1) -> tuple[int, dict[str, Any]]:
    """Peak inference memory in bytes: weights + buffers + input + the peak of live activations.

    On CUDA this is the allocator's own peak; on the CPU every tensor created during the forward
    pass is tracked until it is freed (a dispatch mode), which measures the same quantity.
    """
    device = next(iter(model.parameters()), torch.empty(0)).device
    was_training = model.training
    model.eval()
    x = _example(model, input_shape, batch_size)
    static = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    try:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            with torch.inference_mode():
                model(x)
            torch.cuda.synchronize(device)
            activations = torch.cuda.max_memory_allocated(device) - base
            method = "cuda allocator peak"
        else:
            tracker = _LiveBytes()
            with torch.inference_mode(), tracker:
                model(x)
            activations = tracker.peak
            method = "live-tensor tracking (dispatch mode)"
    finally:
        model.train(was_training)
    total = static + x.numel() * x.element_size() + activations
    return int(total), {"method": method, "device": device.type, "batch_size": batch_size,
                        "input_shape": [batch_size, *input_shape], "torch": torch.__version__}


def peak_live_bytes(step: Callable[[], Any]) -> int:
    """Peak bytes of tensors created by `step()` and alive at the same time (activations kept for
    backward, gradients, temporaries): the live-tensor tracking of `peak_memory`, for any computation
    such as a training step. On the CPU; for CUDA use the allocator's own peak statistics."""
    tracker = _LiveBytes()
    with tracker:
        step()
    return tracker.peak
