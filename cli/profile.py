"""`nasopt profile`: this device, its torch build, measured throughput, and energy per inference."""

from __future__ import annotations

import argparse
import json
from typing import Any

from nasopt.errors import UserError

__all__ = ["add_parser", "cmd_profile"]


def _gib(n: int | None) -> str:
    return f"{n / 2**30:.1f} GiB" if n else "?"


def _print(report: dict[str, Any]) -> None:
    d, b, t, e = report["device"], report["build"], report["throughput"], report["energy"]
    if d["type"] == "cuda":
        print(f"device      cuda: {d['name']}, {d['sms']} SMs, compute capability {d['capability']}, "
              f"{_gib(d['memory_bytes'])}")
    else:
        print(f"device      cpu: {d['name']} ({d['machine']}), {d['logical_cores']} logical cores "
              f"({d['physical_cores'] or '?'} physical, {d['usable_cores']} usable, torch uses {d['torch_threads']} "
              f"threads), memory {_gib(d['memory_bytes'])} ({_gib(d['memory_available_bytes'])} available)")
    cudnn = f"{b['cudnn'] // 10000}.{b['cudnn'] % 10000 // 100}.{b['cudnn'] % 100}" if b["cudnn"] else "-"
    cuda = f"built for CUDA {b['cuda']}, cuDNN {cudnn}" if b["cuda"] else "CPU-only build"
    print(f"torch       {b['torch']} ({cuda}; CUDA device available: {'yes' if b['cuda_available'] else 'no'}), "
          f"MKL {b['mkl']}, oneDNN {b['onednn']}, OpenMP {b['openmp']}")
    m, c = t["matmul_fp32"], t["conv3x3_fp32"]
    print(f"matmul      {m['gflops']:.1f} GFLOP/s  (fp32 {m['shape'][0]}x{m['shape'][1]} @ "
          f"{m['shape'][1]}x{m['shape'][2]}, {m['ms_per_call']} ms)")
    print(f"conv3x3     {c['gflops']:.1f} GFLOP/s  (fp32 input {'x'.join(map(str, c['shape']))} -> "
          f"{c['out_channels']} channels, {c['ms_per_call']} ms)")
    if e["method"] == "measured":
        print(f"energy      measured: {e['source']}")
    else:
        k = e["constants"]
        print(f"energy      estimated ({e['why']}): {k['pj_per_mac']} pJ/MAC, {k['pj_per_dram_byte']} pJ per weight "
              f"byte, {k['pj_per_sram_byte']} pJ per activation byte ({k['source']})")
    if "model" in report:
        r = report["model"]
        print(f"model       {r['directory']}: {r['describe']}, {r['params']:,} params, {r['macs']:,} MACs")
        print(f"latency     {r['latency_ms']:.4f} ms median (batch 1, {r['latency']['threads']} threads)")
        how = r["energy"]["method"]
        print(f"energy/inf  {r['energy_mj'] * 1e3:.3f} µJ = {r['energy_mj']:.6f} mJ ({how}{': ' + r['energy'].get('source', '') if how == 'measured' else ''})")


def cmd_profile(args: argparse.Namespace) -> int:
    from nasopt.data import resolve_device
    from nasopt.measure._profile import profile_device

    if args.seconds <= 0:
        raise UserError(f"`--seconds > 0` must hold, but got {args.seconds}")
    device = resolve_device(args.device)
    report = profile_device(device, seconds=args.seconds)
    if args.model:
        from nasopt.export._export import load_model, read_arch
        from nasopt.measure._energy import energy_per_inference
        from nasopt.measure._metrics import count_macs, count_params, measure_latency

        arch = read_arch(args.model)
        model = load_model(args.model, device=device)
        shape = tuple(arch["input_shape"])
        try:
            joules, provenance = energy_per_inference(model, shape, device, method=args.energy,
                                                      min_seconds=args.seconds)
        except RuntimeError as e:
            raise UserError(f"{e}; use --energy estimate or auto") from None
        latency = measure_latency(model, shape)
        report["model"] = {"directory": args.model, "describe": arch.get("describe"), "params": count_params(model),
                           "macs": count_macs(model, shape), "latency_ms": latency.median_ms,
                           "latency": latency.provenance, "energy_mj": joules * 1e3, "energy": provenance}
    if args.json:
        print(json.dumps(report, default=str))
    else:
        _print(report)
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("profile", help="the device, torch build, measured matmul/conv throughput and energy source; "
                                       "with --model DIR the energy per inference of an exported model",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=(
                           "examples:\n"
                           "  nasopt profile\n"
                           "  nasopt profile --model exports/mobile-t2 --energy estimate\n"
                           "  nasopt profile --device cuda --json\n"))
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu",
                   help="the hardware to profile (default cpu; auto: cuda when available)")
    p.add_argument("--model", metavar="DIR", help="an export directory (`nasopt export`): its latency and energy "
                                                  "per inference on this device")
    p.add_argument("--energy", choices=["auto", "measured", "estimate"], default="auto",
                   help="energy from RAPL/NVML counters (measured), from MACs and memory traffic (estimate), or "
                        "measured where possible (auto)")
    p.add_argument("--seconds", type=float, default=1.0, help="time spent per measurement (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_profile)
