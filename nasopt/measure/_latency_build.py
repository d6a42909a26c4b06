"""Building a latency table: walk a space, measure every candidate op at every shape and every frame.

`build_table(space, task, device=...)` walks the space's own `build` with a recording chooser (every
decision, width and depth, so no slot is missed), measures each candidate op of each slot at its
shape `(C_in, C_out, stride, input H x W)` and the fixed part of every network frame (stem, head and
the forward pass around the slots, once per width), and returns a `LatencyTable` (`_latency_table`: the
table, its files and the predictor).

The fixed part of a frame is measured as the network with a zero op (strided slice + zeros, no
arithmetic) in every slot, minus those zero ops' own measured latency: stem, pooling, classifier and the
Python cost of the frame, whatever the space puts there.
"""

from __future__ import annotations

import datetime
import itertools
import random
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from torch import nn
from tqdm.auto import tqdm

from nasopt.errors import UserError
from nasopt.measure._latency_table import FORMAT, LatencyTable, Slot, frame_key, record_slots, space_config
from nasopt.measure._metrics import device_name
from nasopt.ops import OPS, build_op
from nasopt.space import head_kind

__all__ = ["build_table"]

_MAX_FRAMES = 256  # combinations of shape-changing decisions (widths, ...) a table measures at most


def _values(dist: BaseDistribution) -> list[Any]:
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution):
        return list(range(dist.low, dist.high + 1, dist.step))
    if isinstance(dist, FloatDistribution):
        return [dist.low, dist.high]
    raise UserError(f"cannot enumerate the distribution {dist!r} for a latency table")


def _base(dist: BaseDistribution) -> Any:
    """The value every other decision holds while one varies: the first choice, the largest number."""
    return dist.choices[0] if isinstance(dist, CategoricalDistribution) else dist.high  # type: ignore[attr-defined]


class _Shapes:
    """Everything `build_table` measures for one space and input: op entries, frames, shape-changing decisions."""

    def __init__(self, space: Any, task: Any) -> None:
        self.space, self.task = space, task
        self.entries: dict[tuple[str, str], Slot] = {}  # (op, shape key) -> a slot of that shape
        self.frames: dict[str, tuple[nn.Module, list[Slot], dict[str, Any]]] = {}
        dists = space.distributions()
        base = {n: _base(d) for n, d in dists.items()}
        signature = self._signature(base)
        # the decisions that change the frame (a width): every combination of them gets its own frame
        self.structural = [n for n, d in dists.items()
                           if any(self._signature({**base, n: v}) != signature for v in _values(d))]
        combos = list(itertools.product(*(_values(dists[n]) for n in self.structural)))
        if len(combos) > _MAX_FRAMES:
            raise UserError(f"{type(space).__name__} has {len(combos)} combinations of shape-changing decisions "
                            f"({', '.join(self.structural)}), more than a latency table measures ({_MAX_FRAMES})")
        others = [(n, v) for n, d in dists.items() if n not in self.structural for v in _values(d)]
        for combo in combos:
            fixed = dict(zip(self.structural, combo, strict=True))
            for change in [{}, *({n: v} for n, v in others)]:
                self.add({**base, **fixed, **change})

    def _signature(self, arch: Mapping[str, Any]) -> Any:
        slots, net = self._record(arch)
        return (tuple((s.name, s.C_in, s.C_out, s.stride, s.spatial) for s in slots),
                sum(p.numel() for p in net.parameters()))

    def _record(self, arch: Mapping[str, Any]) -> tuple[list[Slot], nn.Module]:
        return record_slots(lambda choose: self.space.build(arch, self.task, choose), self.task.input_shape)

    def add(self, arch: Mapping[str, Any]) -> None:
        slots, net = self._record(arch)
        key = frame_key(self.structural, arch)
        if key not in self.frames:
            self.frames[key] = (net, [s for s in slots if s.spatial is not None],
                                {n: arch[n] for n in self.structural})
        for slot in slots:
            if slot.spatial is None:
                continue
            for op in {*slot.candidates, *([slot.chosen] if slot.chosen else []), "zero"}:
                self.entries.setdefault((op, slot.key()), slot)


def _measure(jobs: Sequence[tuple[nn.Module, torch.Tensor]], warmup: int, repeats: int, bar: Any,
             seed: int = 0) -> list[tuple[float, float]]:
    """Median and inter-quartile range (ms) of each job's forward pass (eval, inference mode).

    Interleaved: every round runs every job once, in a fresh random order, after `warmup` such rounds.
    A network runs each op once between other ops, so ops timed this way see the caches a network
    leaves them (an op timed 30 times in a row runs about 10% faster than inside the network), and a
    burst of load from other processes spreads over all entries instead of spoiling a few.
    """
    cuda = any(x.device.type == "cuda" for _, x in jobs)
    times: list[list[float]] = [[] for _ in jobs]
    order = list(range(len(jobs)))
    rng = random.Random(seed)
    for module, _ in jobs:
        module.eval()
    with torch.inference_mode():
        for round_ in range(warmup + repeats):
            rng.shuffle(order)
            for i in order:
                module, x = jobs[i]
                if cuda:
                    torch.cuda.synchronize(x.device)
                t0 = time.perf_counter()
                module(x)
                if cuda:
                    torch.cuda.synchronize(x.device)
                if round_ >= warmup:
                    times[i].append((time.perf_counter() - t0) * 1e3)
            bar.update(1)
    out = []
    for t in times:
        q1, _, q3 = statistics.quantiles(t, n=4) if len(t) > 1 else (t[0], 0.0, t[0])
        out.append((statistics.median(t), q3 - q1))
    return out


def build_table(space: Any, task: Any, *, device: str = "cpu", batch_size: int = 1, threads: int | None = None,
                warmup: int = 5, repeats: int = 30, progress: bool = False) -> LatencyTable:
    """Measure every op/shape entry and every frame of `space` on `task.input_shape` (see the module doc)."""
    if batch_size < 1 or repeats < 1 or warmup < 0 or (threads is not None and threads < 1):
        raise UserError("`batch_size >= 1`, `repeats >= 1`, `warmup >= 0` and `threads >= 1` must hold, but got "
                        f"{batch_size=}, {repeats=}, {warmup=}, {threads=}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but no CUDA device is available; use --device cpu")
    shapes = _Shapes(space, task)
    unknown = sorted({op for op, _ in shapes.entries if op not in OPS})
    if unknown:
        raise UserError(f"op {unknown[0]!r} is not in the op table; known ops: {', '.join(sorted(OPS))}")
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    bar = tqdm(total=warmup + repeats, desc=f"latency table: {len(shapes.entries)} ops, {len(shapes.frames)} frames "
               f"({dev.type})", unit="round", disable=not progress, dynamic_ncols=True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            inputs: dict[tuple[int, ...], torch.Tensor] = {}  # one input per shape, shared by its ops

            def example(*shape: int) -> torch.Tensor:
                return inputs.setdefault(shape, torch.randn(batch_size, *shape, device=dev))

            entries = sorted(shapes.entries.items())
            jobs = [(build_op(op, s.C_in, s.C_out, s.stride, **s.options).to(dev), example(s.C_in, *s.spatial or ()))
                    for (op, _), s in entries]
            jobs += [(net.to(dev), example(*task.input_shape)) for net, _, _ in shapes.frames.values()]
            results = _measure(jobs, warmup, repeats, bar)
    finally:
        bar.close()
        torch.set_num_threads(old_threads)
    ops: dict[str, dict[str, dict[str, float]]] = {}
    for ((op, key), _), (median, iqr) in zip(entries, results, strict=False):
        ops.setdefault(op, {})[key] = {"median_ms": round(median, 6), "iqr_ms": round(iqr, 6)}
    frames: dict[str, dict[str, Any]] = {}
    for (key, (_, slots, decisions)), (median, iqr) in zip(shapes.frames.items(), results[len(entries):], strict=True):
        zeros = sum(ops["zero"][s.key()]["median_ms"] for s in slots)
        frames[key] = {"median_ms": round(max(median - zeros, 0.0), 6), "iqr_ms": round(iqr, 6),
                       "skeleton_ms": round(median, 6), "slots": len(slots), "decisions": decisions}
        if median < zeros:  # the skeleton timed faster than its zero ops alone: timing noise, never a negative cost
            frames[key]["clamped_from_ms"] = round(median - zeros, 6)
    provenance = {
        "method": "measured per op", "device": dev.type, "device_name": device_name(dev),
        "threads": threads or old_threads, "batch_size": batch_size, "warmup": warmup, "repeats": repeats,
        "torch": torch.__version__, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "space": type(space).__name__, "space_config": space_config(space),
        "input_shape": [int(s) for s in task.input_shape], "num_classes": int(task.num_classes),
        "kind": head_kind(task),
        "structural": shapes.structural,
    }
    return LatencyTable({"format": FORMAT, "provenance": provenance, "frames": frames, "ops": ops})
