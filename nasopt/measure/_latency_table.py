"""A latency lookup table: every candidate op at every shape a space can produce, measured once.

`build_table(space, task, device=...)` walks the space's own `build` with a recording chooser (every
decision, width and depth, so no slot is missed), measures each candidate op of each slot at its
shape `(C_in, C_out, stride, input H x W)` and the fixed part of every network frame (stem, head and
the forward pass around the slots, once per width), and returns a `LatencyTable`. Saved as JSON, its
provenance says how it was measured: device and device name, threads, batch, warm-up, repeats, torch
version, date, the space's name and configuration and the input shape; every entry has a median and
an inter-quartile range.

The predictor sums table entries: `table.predict(space, arch, task)` = the frame's fixed part + the
chosen op of every slot. `predicted_latency(table, space, arch, task)` returns the same figure with its
provenance (`"method": "predicted"`), for use as the latency objective or constraint of a discrete study;
ProxylessNAS uses the entries of every candidate as its differentiable expected latency.

The fixed part of a frame is measured as the network with a zero op (strided slice + zeros, no
arithmetic) in every slot, minus those zero ops' own measured latency: stem, pooling, classifier and the
Python cost of the frame, whatever the space puts there.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import math
import random
import re
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from torch import nn
from tqdm.auto import tqdm

from nasopt.errors import UserError
from nasopt.measure._metrics import device_name
from nasopt.ops import OPS, Zero, build_op
from nasopt.space import Chooser

__all__ = ["FORMAT", "Slot", "LatencyTable", "build_table", "predicted_latency", "record_slots", "default_path",
           "space_slug", "shape_key"]

FORMAT = "nasopt-latency-table/1"
_MAX_FRAMES = 256  # combinations of shape-changing decisions (widths, ...) a table measures at most


@dataclasses.dataclass(frozen=True)
class Slot:
    """One `choose` call of a build: the decision, its candidates and the shape contract; `spatial` is the
    input's spatial size seen during a forward pass (None: the slot does not run at inference)."""

    name: str
    candidates: tuple[str, ...]
    chosen: str | None
    C_in: int
    C_out: int
    stride: int
    options: dict[str, Any]
    spatial: tuple[int, ...] | None = None

    def key(self) -> str:
        assert self.spatial is not None
        return shape_key(self.C_in, self.C_out, self.stride, self.spatial, self.options)


def shape_key(C_in: int, C_out: int, stride: int, spatial: Sequence[int], options: Mapping[str, Any]) -> str:
    """The table key of one shape: `"16->24 s2 @8x8"`, plus the op options when there are any."""
    key = f"{C_in}->{C_out} s{stride} @{'x'.join(str(int(s)) for s in spatial)}"
    extra = ",".join(f"{k}={v}" for k, v in sorted(options.items()))
    return f"{key} {extra}" if extra else key


class _Recorder:
    """A Chooser that returns a zero op (the slot's output shape, no arithmetic) and records the call."""

    def __init__(self) -> None:
        self.slots: list[Slot] = []
        self.modules: list[nn.Module] = []

    def __call__(self, name: str, candidates: Sequence[str], chosen: str | None, C_in: int, C_out: int,
                 stride: int, **options: Any) -> nn.Module:
        self.slots.append(Slot(name, tuple(candidates), chosen, C_in, C_out, stride, dict(options)))
        self.modules.append(Zero(C_in, C_out, stride))
        return self.modules[-1]


def record_slots(build: Callable[[Chooser], nn.Module], input_shape: Sequence[int]) -> tuple[list[Slot], nn.Module]:
    """Build through `build(chooser)` with zero ops in every slot; one forward pass (eval, batch 1)
    records each slot's input spatial size. Returns the slots in build order and the skeleton network."""
    recorder = _Recorder()
    net = build(recorder)
    sizes: dict[int, tuple[int, ...]] = {}

    def hook(i: int) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            sizes.setdefault(i, tuple(args[0].shape[2:]))
        return record

    hooks = [m.register_forward_pre_hook(hook(i)) for i, m in enumerate(recorder.modules)]
    try:
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    return [dataclasses.replace(s, spatial=sizes.get(i)) for i, s in enumerate(recorder.slots)], net


def space_slug(space: Any) -> str:
    """`MobileSpace` -> `mobile`, `DartsCellSpace` -> `darts_cell`, `NB201Space` -> `nb201`."""
    name = re.sub(r"Space$", "", type(space).__name__) or type(space).__name__
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def default_path(space: Any, device: str, storage: str | None = None) -> Path:
    """`latency_<space>_<device>.json` next to the SQLite database of `storage`, else in the working directory."""
    name = f"latency_{space_slug(space)}_{torch.device(device).type}.json"
    if storage and storage.startswith("sqlite:///"):
        return Path(storage[len("sqlite:///"):]).expanduser().parent / name
    return Path(name)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def space_config(space: Any) -> dict[str, Any]:
    """The space's public settings (its constructor's values), as JSON: what the table's shapes depend on."""
    return _jsonable({k: v for k, v in sorted(vars(space).items()) if not k.startswith("_") and not callable(v)})


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


def frame_key(structural: Sequence[str], arch: Mapping[str, Any]) -> str:
    """`"width=0.5"`: the frame of an architecture, named by its shape-changing decisions (`*` when none)."""
    missing = [n for n in structural if n not in arch]
    if missing:
        raise UserError(f"the architecture has no {missing[0]!r}, which the latency table's frames depend on")
    return ",".join(f"{n}={arch[n]}" for n in structural) or "*"


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
        frames[key] = {"median_ms": round(median - zeros, 6), "iqr_ms": round(iqr, 6), "skeleton_ms": round(median, 6),
                       "slots": len(slots), "decisions": decisions}
    provenance = {
        "method": "measured per op", "device": dev.type, "device_name": device_name(dev),
        "threads": threads or old_threads, "batch_size": batch_size, "warmup": warmup, "repeats": repeats,
        "torch": torch.__version__, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "space": type(space).__name__, "space_config": space_config(space),
        "input_shape": [int(s) for s in task.input_shape], "num_classes": int(task.num_classes),
        "structural": shapes.structural,
    }
    return LatencyTable({"format": FORMAT, "provenance": provenance, "frames": frames, "ops": ops})


class LatencyTable:
    """A measured latency table (the JSON document of `build_table`); `path` is where it was loaded from."""

    def __init__(self, data: Mapping[str, Any], path: str | Path | None = None) -> None:
        self.data = dict(data)
        self.path = None if path is None else str(path)

    @property
    def provenance(self) -> dict[str, Any]:
        return dict(self.data["provenance"])

    @property
    def ops(self) -> dict[str, dict[str, dict[str, float]]]:
        return self.data["ops"]

    @property
    def frames(self) -> dict[str, dict[str, Any]]:
        return self.data["frames"]

    def __len__(self) -> int:
        return sum(len(v) for v in self.ops.values())

    # -- files -------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.data, indent=1) + "\n")
        self.path = str(out)
        return out

    @classmethod
    def load(cls, path: str | Path, rebuild: str = "") -> LatencyTable:
        """Read a table; a missing or unreadable file is a UserError that says how to build one."""
        file = Path(path)
        hint = rebuild or f"build it with `nasopt latency-table --study STUDY.py -o {file}`"
        if not file.is_file():
            raise UserError(f"no latency table at {file}; {hint}")
        try:
            data = json.loads(file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"latency table {file} cannot be read ({type(e).__name__}); {hint}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or not {"provenance", "ops", "frames"} <= set(data):
            raise UserError(f"{file} is not a nasopt latency table ({FORMAT}); {hint}")
        return cls(data, file)

    # -- use ---------------------------------------------------------------------------------
    def rebuild_hint(self) -> str:
        p = self.provenance
        return (f"rebuild it with `nasopt latency-table --study STUDY.py --device {p['device']} "
                f"-o {self.path or 'FILE'}`")

    def check(self, space: Any, task: Any, device: str | torch.device | None = None) -> None:
        """Raise a UserError when the table was built for another space, space configuration, input shape,
        number of classes or (when given) device type."""
        p = self.provenance
        where = f"latency table {self.path or ''}".rstrip()
        if p["space"] != type(space).__name__:
            raise UserError(f"{where} was built for {p['space']}, not {type(space).__name__}; {self.rebuild_hint()}")
        config = space_config(space)
        diff = [k for k in sorted(set(config) | set(p["space_config"])) if config.get(k) != p["space_config"].get(k)]
        if diff:
            k = diff[0]
            raise UserError(f"{where} was built for {p['space']} with {k}={p['space_config'].get(k)!r}, but the space "
                            f"has {k}={config.get(k)!r}; {self.rebuild_hint()}")
        shape = [int(s) for s in task.input_shape]
        if p["input_shape"] != shape or p["num_classes"] != int(task.num_classes):
            raise UserError(f"{where} was built for input shape {tuple(p['input_shape'])} and {p['num_classes']} classes, "
                            f"but the task has {tuple(shape)} and {task.num_classes}; {self.rebuild_hint()}")
        if device is not None and torch.device(device).type != p["device"]:
            raise UserError(f"{where} was measured on {p['device']} ({p['device_name']}), but the latency is wanted "
                            f"on {torch.device(device).type}; {self.rebuild_hint()}")

    def op_ms(self, op: str, C_in: int, C_out: int, stride: int, spatial: Sequence[int],
              options: Mapping[str, Any] | None = None) -> float:
        key = shape_key(C_in, C_out, stride, spatial, options or {})
        try:
            return float(self.ops[op][key]["median_ms"])
        except KeyError:
            raise UserError(f"latency table {self.path or ''} has no entry for {op} at {key}: it was built for "
                            f"another space or input; {self.rebuild_hint()}") from None

    def frame_ms(self, arch: Mapping[str, Any]) -> float:
        """The fixed part (stem, head, the frame's own cost) of the frame `arch` uses."""
        key = frame_key(self.provenance["structural"], arch)
        if key not in self.frames:
            raise UserError(f"latency table {self.path or ''} has no frame {key}: it was built for another "
                            f"space configuration; {self.rebuild_hint()}")
        return float(self.frames[key]["median_ms"])

    def predict(self, space: Any, arch: Mapping[str, Any], task: Any) -> float:
        """Predicted latency (ms) of `arch`: its frame's fixed part + the chosen op of every slot that runs."""
        self.check(space, task)
        slots, _ = record_slots(lambda choose: space.build(arch, task, choose), task.input_shape)
        total = self.frame_ms(arch)
        for s in slots:
            if s.spatial is not None and s.chosen is not None:
                total += self.op_ms(s.chosen, s.C_in, s.C_out, s.stride, s.spatial, s.options)
        return total


def predicted_latency(table: LatencyTable, space: Any, arch: Mapping[str, Any], task: Any) -> tuple[float, dict[str, Any]]:
    """`(ms, provenance)` of `arch` from the table, for a study's latency objective or constraint in place of
    a measurement: the provenance is the table's (device, threads, batch, date, ...) with `"method": "predicted"`."""
    ms = table.predict(space, arch, task)
    p = table.provenance
    keep = ("device", "device_name", "threads", "batch_size", "warmup", "repeats", "torch", "date")
    provenance = {"method": "predicted", "table": table.path, **{k: p[k] for k in keep},
                  "input_shape": [p["batch_size"], *p["input_shape"]], "table_method": p["method"]}
    return (round(ms, 6) if math.isfinite(ms) else ms), provenance
