"""What this machine is and how fast it computes: the device, the torch build, measured throughput.

`profile_device(device)` returns a plain dict: the device (name; logical and usable cores or
streaming multiprocessors; memory), the torch build (version, CUDA/cuDNN, MKL, oneDNN, OpenMP threads),
the measured throughput of a square fp32 matrix product and of a 3x3 convolution (GFLOP/s, each the
best of several timed rounds of at least `seconds` in total), and where energy readings would come from.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from typing import Any

import torch

from nasopt.measure._energy import PJ_PER_DRAM_BYTE, PJ_PER_MAC, PJ_PER_SRAM_BYTE, POWERCAP, rapl_domains
from nasopt.measure._metrics import device_name

__all__ = ["profile_device", "throughput"]


def _meminfo() -> dict[str, int]:
    out = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def _physical_cores() -> int | None:
    try:
        with open("/proc/cpuinfo") as f:
            pairs, phys = set(), None
            for line in f:
                key, _, value = (s.strip() for s in line.partition(":"))
                if key == "physical id":
                    phys = value
                elif key == "core id":
                    pairs.add((phys, value))
        return len(pairs) or None
    except OSError:
        return None


def throughput(fn: Callable[[], Any], flops: float, device: torch.device, seconds: float) -> dict[str, float]:
    """GFLOP/s of `fn` (which does `flops` floating-point operations): the best of 5 rounds."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *a: None)
    fn()
    sync(device)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds / 10 or n < 1:  # calibrate a round of ~seconds/5
        fn()
        n += 1
    sync(device)
    per_call = (time.perf_counter() - t0) / n
    calls = max(1, int(seconds / 5 / per_call))
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync(device)
        best = min(best, (time.perf_counter() - t0) / calls)
    return {"gflops": round(flops / best / 1e9, 2), "ms_per_call": round(best * 1e3, 4)}


def _device_info(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": props.name, "sms": props.multi_processor_count,
                "memory_bytes": props.total_memory, "capability": f"{props.major}.{props.minor}"}
    memory = _meminfo()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"type": "cpu", "name": device_name(device), "machine": platform.machine(),
            "logical_cores": os.cpu_count(), "physical_cores": _physical_cores(), "usable_cores": usable,
            "torch_threads": torch.get_num_threads(), "memory_bytes": memory.get("MemTotal"),
            "memory_available_bytes": memory.get("MemAvailable")}


def _build() -> dict[str, Any]:
    return {"torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "mkl": torch.backends.mkl.is_available(), "onednn": torch.backends.mkldnn.is_available(),
            "openmp": torch.backends.openmp.is_available(), "debug": torch.version.debug,
            "cuda_available": torch.cuda.is_available()}


def _energy_source(device: torch.device, powercap: str) -> dict[str, Any]:
    if device.type == "cpu":
        domains = rapl_domains(powercap)
        if domains:
            return {"method": "measured", "source": "RAPL " + ", ".join(os.path.basename(d) for d in domains)}
        why = f"{powercap} absent" if not os.path.isdir(powercap) else f"no readable RAPL counter under {powercap}"
    else:
        from nasopt.measure._energy import nvml_handle

        if nvml_handle(device) is not None:
            return {"method": "measured", "source": "NVML total energy counter"}
        why = "NVML's energy counter is not available (pip install nvidia-ml-py; Volta or later)"
    return {"method": "estimate", "why": why,
            "constants": {"pj_per_mac": PJ_PER_MAC, "pj_per_dram_byte": PJ_PER_DRAM_BYTE,
                          "pj_per_sram_byte": PJ_PER_SRAM_BYTE, "source": "Horowitz, ISSCC 2014, 45 nm"}}


def profile_device(device: str | torch.device = "cpu", *, seconds: float = 1.0,
                   powercap: str = POWERCAP) -> dict[str, Any]:
    """Device, torch build, measured fp32 matmul and conv3x3 throughput, and the energy source."""
    device = torch.device(device)
    big = device.type == "cuda"
    n = 4096 if big else 512
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    N, C, H = (32, 128, 56) if big else (8, 64, 32)
    x = torch.randn(N, C, H, H, device=device)
    conv = torch.nn.Conv2d(C, C, 3, padding=1, bias=False).to(device).eval()
    with torch.inference_mode():
        matmul = throughput(lambda: a @ b, 2.0 * n**3, device, seconds / 2)
        conv_rate = throughput(lambda: conv(x), 2.0 * N * C * H * H * C * 9, device, seconds / 2)
    return {
        "device": _device_info(device),
        "build": _build(),
        "throughput": {"matmul_fp32": {"shape": [n, n, n], **matmul},
                       "conv3x3_fp32": {"shape": [N, C, H, H], "out_channels": C, **conv_rate}},
        "energy": _energy_source(device, powercap),
    }
