"""Energy per inference: measured where the machine exposes a counter, else estimated, always with provenance.

- CPU, measured: the RAPL package counters of Linux's powercap interface
  (`/sys/class/powercap/intel-rapl:N/energy_uj`, also used for AMD's RAPL). The package counts every
  process on the socket, so the idle power measured just before is subtracted: the result is the
  extra energy the inferences cost. Reading the counters usually needs root (mode 0400 since 2020).
- CUDA, measured: NVML's total-energy counter of the GPU (Volta and later; `pip install nvidia-ml-py`),
  with the same idle subtraction.
- Otherwise, estimated from the work itself: multiply-adds x the energy of one fp32 multiply-add, plus
  the bytes a forward pass moves x the energy per byte. The constants are Horowitz's 45 nm figures
  (ISSCC 2014, "Computing's energy problem"): fp32 multiply 3.7 pJ + add 0.9 pJ; weights fetched from
  DRAM at 1.3-2.6 nJ per 64 bits (about 160 pJ per byte, with the weights read once per inference at
  batch 1); activations written and read through an on-chip SRAM at about 10 pJ per 64 bits (1.25 pJ
  per byte). Real processors spend more on control and data movement, so the estimate ranks
  architectures by the work they cause; it is not a reading of this machine.

`energy_per_inference(model, input_shape, device)` returns `(joules, provenance)`.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["energy_per_inference", "estimate_energy", "rapl_domains", "PJ_PER_MAC", "PJ_PER_DRAM_BYTE",
           "PJ_PER_SRAM_BYTE"]

PJ_PER_MAC = 4.6  # fp32 multiply (3.7 pJ) + add (0.9 pJ), 45 nm
PJ_PER_DRAM_BYTE = 160.0  # ~1.3 nJ per 64-bit DRAM access
PJ_PER_SRAM_BYTE = 1.25  # ~10 pJ per 64-bit read of an 8 KB SRAM
POWERCAP = "/sys/class/powercap"


class _WrittenBytes(TorchDispatchMode):
    """Sums the bytes of every tensor the forward pass produces (each is written once, read once)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.total += t.numel() * t.element_size()
        return out


def estimate_energy(model: nn.Module, input_shape: Sequence[int], *, batch_size: int = 1) -> tuple[float, dict[str, Any]]:
    """Joules per inference from MACs and memory traffic (see the module doc for the constants)."""
    from nasopt.measure._metrics import count_macs

    macs = count_macs(model, input_shape)
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    device = next(iter(model.parameters()), torch.empty(0)).device
    x = torch.randn(batch_size, *input_shape, device=device)
    was_training = model.training
    model.eval()
    counter = _WrittenBytes()
    try:
        with torch.inference_mode(), counter:
            model(x)
    finally:
        model.train(was_training)
    activations = 2 * (counter.total + x.numel() * x.element_size()) / batch_size  # written + read, per sample
    pj = macs * PJ_PER_MAC + weights * PJ_PER_DRAM_BYTE / batch_size + activations * PJ_PER_SRAM_BYTE
    return pj * 1e-12, {
        "method": "estimate", "model": "MACs x 4.6 pJ + weight bytes x 160 pJ (DRAM) + activation bytes written "
                                       "and read x 1.25 pJ (SRAM); Horowitz, ISSCC 2014, 45 nm",
        "macs": int(macs), "weight_bytes": int(weights), "activation_bytes": int(activations),
        "batch_size": batch_size, "input_shape": [batch_size, *input_shape], "torch": torch.__version__,
    }


def rapl_domains(root: str = POWERCAP) -> list[str]:
    """Readable RAPL package domains (`.../intel-rapl:N`), excluding their sub-zones (core, uncore, dram)."""
    found = []
    for path in sorted(glob.glob(os.path.join(root, "intel-rapl:*"))):
        if os.path.basename(path).count(":") != 1:
            continue
        try:
            with open(os.path.join(path, "energy_uj")) as f:
                int(f.read())
            found.append(path)
        except (OSError, ValueError):
            continue
    return found


class _Rapl:
    """Cumulative joules of RAPL domains since construction, correcting counter wrap-arounds."""

    def __init__(self, domains: list[str]) -> None:
        self.domains = domains
        self.ranges = []
        for d in domains:
            try:
                with open(os.path.join(d, "max_energy_range_uj")) as f:
                    self.ranges.append(int(f.read()))
            except (OSError, ValueError):
                self.ranges.append(2**32)
        self.last = self._raw()
        self.total_uj = 0

    def _raw(self) -> list[int]:
        out = []
        for d in self.domains:
            with open(os.path.join(d, "energy_uj")) as f:
                out.append(int(f.read()))
        return out

    def __call__(self) -> float:
        now = self._raw()
        for i, (a, b) in enumerate(zip(now, self.last, strict=True)):
            self.total_uj += a - b if a >= b else a + self.ranges[i] - b
        self.last = now
        return self.total_uj * 1e-6


def nvml_handle(device: torch.device) -> Any:
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # mJ; raises where not supported
        return handle
    except Exception:
        return None


def _measure(model: nn.Module, x: torch.Tensor, read: Any, min_seconds: float) -> tuple[float, dict[str, Any]]:
    """Idle power over `min_seconds / 2`, then inferences for at least `min_seconds`: joules per sample above idle."""
    device = x.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *a: None)
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        sync(device)
        idle_s = max(min_seconds / 2, 0.1)
        e0, t0 = read(), time.perf_counter()
        time.sleep(idle_s)
        e1, t1 = read(), time.perf_counter()
        n = 0
        while True:
            model(x)
            n += 1
            if n % 8 == 0:
                sync(device)
                if time.perf_counter() - t1 >= min_seconds:
                    break
        e2, t2 = read(), time.perf_counter()
    idle_w = (e1 - e0) / (t1 - t0)
    active_j = e2 - e1
    extra = max(active_j - idle_w * (t2 - t1), 0.0)
    samples = n * x.shape[0]
    return extra / samples, {"idle_w": round(idle_w, 3), "active_w": round(active_j / (t2 - t1), 3),
                             "inferences": samples, "seconds": round(t2 - t1, 3)}


def energy_per_inference(model: nn.Module, input_shape: Sequence[int], device: str | torch.device | None = None,
                         *, method: str = "auto", batch_size: int = 1, min_seconds: float = 1.0,
                         powercap: str = POWERCAP) -> tuple[float, dict[str, Any]]:
    """Joules per inference of one sample, and how they were obtained.

    `method`: "auto" (measured where a counter is readable, else estimated), "measured" (raises when
    no counter is readable) or "estimate". The model runs on `device` (default: where its parameters are).
    """
    if method not in ("auto", "measured", "estimate"):
        raise ValueError(f"method must be 'auto', 'measured' or 'estimate', but got {method!r}")
    device = torch.device(device) if device is not None else next(iter(model.parameters()), torch.empty(0)).device
    model = model.to(device).eval()
    if method != "estimate":
        x = torch.randn(batch_size, *input_shape, device=device)
        if device.type == "cpu" and (domains := rapl_domains(powercap)):
            joules, info = _measure(model, x, _Rapl(domains), min_seconds)
            return joules, {"method": "measured", "source": "RAPL package counters " +
                            ", ".join(os.path.basename(d) for d in domains), "device": "cpu",
                            "note": "package energy above the idle power measured just before; other processes' "
                                    "load on the socket counts too", "batch_size": batch_size,
                            "torch": torch.__version__, **info}
        if device.type == "cuda" and (handle := nvml_handle(device)) is not None:
            import pynvml

            joules, info = _measure(model, x, lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) * 1e-3,
                                    min_seconds)
            return joules, {"method": "measured", "source": "NVML total energy counter", "device": "cuda",
                            "device_name": torch.cuda.get_device_name(device), "batch_size": batch_size,
                            "note": "GPU board energy above its idle power", "torch": torch.__version__, **info}
        if method == "measured":
            where = "RAPL (/sys/class/powercap)" if device.type == "cpu" else "NVML's energy counter"
            raise RuntimeError(f"no readable energy counter on this {device.type}: {where} is absent or not readable")
    joules, info = estimate_energy(model, input_shape, batch_size=batch_size)
    reason = "requested" if method == "estimate" else (
        "no readable RAPL counter under " + powercap if device.type == "cpu" else "no NVML energy counter")
    return joules, {**info, "device": device.type, "why": reason}
