"""What defines a study, and the check that a re-run still means the same study.

A study's trials compare fairly only when they were searched in the same space, on the same data,
for the same objectives, trained and measured the same way. `definition(spec)` flattens exactly that
into `{field: value}` (`space.ops`, `dataset`, `train.epochs`, `measure.threads`, ...); the study stores
it when it is created, and `check(stored, spec)` refuses a re-run whose file says otherwise, naming
every differing field with its stored and new value.

What does not change a trial's meaning (`n_trials`, `timeout`, workers, the sampler and its seed, the
pruner, the device, the storage) may change freely. A setting where a mix is meaningful (a longer
training, a tighter limit, data moved to another folder) may change on purpose: the study file lists
it in `allow_changed` (the CLI: `--allow-changed FIELD`), and every trial run under the changed
setting records it in its user attr `settings` (`{"train.epochs": 20}`). The space, the dataset, the
image size and the objectives never change within a study: its trials would be other networks on other
data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from nasopt._json import plain
from nasopt.errors import UserError
from nasopt.importing import qualname

__all__ = ["definition", "stored_definition", "check", "accepted_changes", "FIXED", "ALLOWABLE"]

FIXED = ("space", "dataset", "image_size", "objectives", "data", "kind", "input_shape", "num_classes", "loss",
         "metrics")  # never within one study
ALLOWABLE = ("data_dir", "val_fraction", "constraints", "train", "measure", "train_fn")  # with --allow-changed
# settings added after studies were stored whose absence from a stored definition means their default (a study
# made before the field existed ran without it): a re-run at the default compares equal, any other value differs
LATER_DEFAULTS: dict[str, Any] = {"train.qat_epochs": 0}


def _decisions(space: Any) -> dict[str, str]:
    """The space's decisions in Optuna's own storage format (stable across Optuna versions)."""
    from optuna.distributions import distribution_to_json

    return {name: distribution_to_json(d) for name, d in space.distributions().items()}


def definition(spec: Any) -> dict[str, Any]:
    """What defines `spec`'s trials, flat: `{"space": "module:Class", "space.C": 8, ..., "train.epochs": 3}`.

    A space whose constructor arguments can be captured (every bundled one) is compared by them; any
    other space by its decisions and their choices (`space.decisions`)."""
    from nasopt.export._rebuild import space_config

    cls = type(spec.space)
    out: dict[str, Any] = {"space": f"{cls.__module__}:{cls.__qualname__}"}
    config = space_config(spec.space)
    if config is not None:
        out.update({f"space.{k}": plain(v) for k, v in config["kwargs"].items()})
    else:
        out["space.decisions"] = _decisions(spec.space)
    out.update({"dataset": spec.dataset, "data_dir": plain(spec.data_dir), "val_fraction": spec.val_fraction,
                "image_size": spec.image_size, "objectives": plain(spec.objectives),
                "constraints": plain(spec.constraints)})
    for group in ("train", "measure"):
        out.update({f"{group}.{k}": plain(v) for k, v in dataclasses.asdict(getattr(spec, group)).items()})
    # the user's own task and code (None where the study uses nasopt's own)
    out.update({"data": _data(spec.data), "kind": spec.kind, "input_shape": plain(spec.input_shape),
                "num_classes": spec.num_classes, "loss": qualname(spec.loss),
                "metrics": {name: qualname(fn) for name, fn in spec.metrics.items()},
                "train_fn": qualname(spec.train_fn)})
    return out


def _data(data: Any) -> Any:
    """The user's data as a study records it: the factory's name, or the classes of the objects given."""
    if data is None or isinstance(data, str) or callable(data):
        return qualname(data)
    items = data.values() if isinstance(data, Mapping) else data if isinstance(data, (list, tuple)) else [data]
    return [qualname(item) for item in items]


def stored_definition(info: Mapping[str, Any]) -> dict[str, Any] | None:
    """The definition a study recorded (its user attr `nasopt`); for a study created by an earlier
    nasopt, the fields it did record. None for a study that nasopt did not create."""
    if not info:
        return None
    if isinstance(info.get("definition"), Mapping):
        return dict(info["definition"])
    out: dict[str, Any] = {}
    config = info.get("space_config")
    if isinstance(config, Mapping) and config.get("class"):
        out["space"] = config["class"]
        out.update({f"space.{k}": v for k, v in dict(config.get("kwargs") or {}).items()})
    elif info.get("space"):
        out["space:name"] = info["space"]  # the class name alone
    data = info.get("data") or {}
    for key in ("dataset", "data_dir", "val_fraction", "image_size"):
        if key in data:
            out[key] = data[key]
    if "dataset" not in out and "dataset" in info:
        out["dataset"] = info["dataset"]
    for key in ("objectives", "constraints"):
        if key in info:
            out[key] = info[key]
    for key, value in dict(info.get("train") or {}).items():
        out[f"train.{key}"] = value
    return out


def _now(stored: Mapping[str, Any], spec: Any) -> dict[str, Any]:
    now = definition(spec)
    if "space:name" in stored:  # an earlier nasopt recorded the class name only
        now["space:name"] = type(spec.space).__name__
    return now


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return bool(a == b)


def differences(stored: Mapping[str, Any], spec: Any) -> dict[str, tuple[Any, Any]]:
    """`{field: (stored, now)}` for every field the study recorded that the spec sets otherwise.
    Fields the study did not record (an earlier nasopt) are not compared, except those of `LATER_DEFAULTS`,
    which it ran at their default."""
    now = _now(stored, spec)
    stored = {**{k: v for k, v in LATER_DEFAULTS.items() if k in now}, **stored}
    keys = [k for k in stored if k in now] + [k for k in now if k.startswith("space.") and k not in stored
                                               and any(s.startswith("space.") for s in stored)]
    diff = {k: (stored.get(k), now[k]) for k in dict.fromkeys(keys) if not _same(stored.get(k), now[k])}
    if "space" in diff or "space:name" in diff:  # another class: its settings are not comparable
        diff = {k: v for k, v in diff.items() if not k.startswith("space.")}
    return diff


def _root(field: str) -> str:
    return field.split(".", 1)[0].split(":", 1)[0]


def _allowed(field: str, allow: Iterable[str]) -> bool:
    root = _root(field)
    if root not in ALLOWABLE:
        return False
    return any(a == field or a == root for a in allow)


def check_allow(allow: Iterable[str]) -> None:
    """Every `--allow-changed` name must be a field that may change on purpose."""
    groups = {"train": "TrainConfig", "measure": "MeasureConfig"}
    for name in allow:
        if not isinstance(name, str) or _root(name) not in ALLOWABLE:
            fixed = f"; {name} never changes within a study (give it another `name`)" if _root(str(name)) in FIXED else ""
            raise UserError(f"--allow-changed {name!r} is not a field that may change on purpose{fixed}; it takes "
                            f"{', '.join(ALLOWABLE)} or one setting such as train.epochs")
        if "." in name and _root(name) in groups:
            from nasopt.measure._metrics import MeasureConfig
            from nasopt.train import TrainConfig

            cls = {"train": TrainConfig, "measure": MeasureConfig}[_root(name)]
            fields = [f.name for f in dataclasses.fields(cls)]
            if name.split(".", 1)[1] not in fields:
                raise UserError(f"--allow-changed {name!r}: {groups[_root(name)]} has no field "
                                f"{name.split('.', 1)[1]!r}; its fields: {', '.join(fields)}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check(stored: Mapping[str, Any] | None, spec: Any, where: str) -> dict[str, Any]:
    """Refuse (UserError) a spec that differs from the study's stored definition, except in the fields
    `spec.allow_changed` accepts; returns the accepted changes `{field: new value}` (what each trial
    run now records in its `settings`)."""
    if stored is None:
        return {}
    diff = differences(stored, spec)
    if not diff:
        return {}
    allow = tuple(spec.allow_changed)
    refused = {k: v for k, v in diff.items() if not _allowed(k, allow)}
    if not refused:
        return {k: now for k, (_, now) in diff.items()}
    if "space.decisions" in refused:  # a space defined in a study file: name the decisions that differ
        old, new = refused.pop("space.decisions")
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        refused["space decisions"] = (f"{len(old)} decisions", f"{len(changed)} added/removed/changed: "
                                      + ", ".join(changed[:4]) + (" ..." if len(changed) > 4 else ""))
    fields = "; ".join(f"{k}: stored {_show(a)}, now {_show(b)}" for k, (a, b) in refused.items())
    can = [k for k in refused if _root(k) in ALLOWABLE]
    way = (f", or accept the change on purpose with --allow-changed {' --allow-changed '.join(can)} "
           "(each trial then records its setting)") if len(can) == len(refused) else \
        f" ({' and '.join(sorted({_root(k) for k in refused if k not in can}))} cannot change within a study)"
    raise UserError(f"study {spec.name!r} in {where} was created with other settings: {fields}; give the study "
                    f"another `name` (--set name=NEW){way}")


def accepted_changes(info: Mapping[str, Any] | None, spec: Any) -> dict[str, Any]:
    """The changes of `spec` against the study's stored definition that `spec.allow_changed` accepts
    (the settings a trial records); empty when the spec is the study's own."""
    stored = stored_definition(info or {})
    if stored is None or not spec.allow_changed:
        return {}
    return {k: now for k, (_, now) in differences(stored, spec).items() if _allowed(k, spec.allow_changed)}
