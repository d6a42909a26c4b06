"""A latency lookup table: every candidate op at every shape a space can produce, measured once by
`build_table` (in `_latency_build`); here the table itself, its keys and files, and the predictor.

A slot is one `choose` call of a space's `build`: `record_slots` walks the build with a recording chooser
(zero ops in every slot) and one forward pass gives each slot its shape `(C_in, C_out, stride, input H x W)`,
the key of its entries (`shape_key`); a frame (stem, head and the forward pass around the slots) is named by
the architecture's shape-changing decisions (`frame_key`). A `LatencyTable` is the JSON document: saved as
JSON, its provenance says how it was measured: device and device name, threads, batch, warm-up, repeats,
torch version, date, the space's name and configuration (`space_config`) and the input shape; every entry
has a median and an inter-quartile range.

The predictor sums table entries: `table.predict(space, arch, task)` = the frame's fixed part + the
chosen op of every slot. `predicted_latency(table, space, arch, task)` returns the same figure with its
provenance (`"method": "predicted"`), for use as the latency objective or constraint of a discrete study;
ProxylessNAS uses the entries of every candidate as its differentiable expected latency.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasopt._json import plain
from nasopt.errors import UserError
from nasopt.ops import Zero
from nasopt.space import Chooser, head_kind

__all__ = ["FORMAT", "Slot", "LatencyTable", "predicted_latency", "record_slots", "default_path", "space_slug",
           "shape_key", "space_config", "frame_key"]

FORMAT = "nasopt-latency-table/1"


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


def space_config(space: Any) -> dict[str, Any]:
    """The space's public settings (its constructor's values), as JSON: what the table's shapes depend on."""
    return plain({k: v for k, v in sorted(vars(space).items()) if not k.startswith("_") and not callable(v)})


def frame_key(structural: Sequence[str], arch: Mapping[str, Any]) -> str:
    """`"width=0.5"`: the frame of an architecture, named by its shape-changing decisions (`*` when none)."""
    missing = [n for n in structural if n not in arch]
    if missing:
        raise UserError(f"the architecture has no {missing[0]!r}, which the latency table's frames depend on")
    return ",".join(f"{n}={arch[n]}" for n in structural) or "*"


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
        number of classes, head (dense or not) or (when given) device type."""
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
        built, kind = str(p.get("kind") or "classify"), head_kind(task)  # tables before kinds: classify
        if (built == "dense") != (kind == "dense"):  # a dense head (1x1 conv + upsample) is another frame
            raise UserError(f"{where} was built for a {built} task, but the task is {kind}: its head costs "
                            f"differently; {self.rebuild_hint()}")
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
        return max(float(self.frames[key]["median_ms"]), 0.0)  # a table from before negatives were clamped

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
