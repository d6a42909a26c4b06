"""Everything needed to rebuild a trial's network outside the run that trained it.

A study's user attr `nasopt` names its space class and dataset, which is not enough to rebuild a
network: `MobileSpace(stages=2)` and `MobileSpace(stages=3)` build different networks from the same
class. `space_config(space)` captures the constructor arguments of a space as plain JSON
(`{"class": "nasopt.search_spaces.mobile:MobileSpace", "kwargs": {...}}`) and `space_from_config`
builds the same space again. A space whose attributes mirror its keyword arguments (all bundled ones
but the DARTS cells) needs nothing; one that stores them differently defines `config()` returning them.

`study_record(spec, task)` is what a study stores beside its name of the space (`space_config`, the data
settings, input shape, number of classes and input normalisation), so that export, retraining and
reports can rebuild any trial from the storage alone.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nasopt.errors import UserError

__all__ = ["ShapeTask", "space_config", "space_from_config", "study_record", "normalisation"]

# only classes from these packages are imported from a config read back from a file or a storage;
# any other space is passed in by the caller (from its study file)
TRUSTED_PREFIXES = ("nasopt.search_spaces.",)


@dataclass(frozen=True)
class ShapeTask:
    """What `space.build` needs of a task when no data is loaded: the input shape and the classes."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    device: str = "cpu"


def _jsonable(value: Any) -> Any:
    """Tuples to lists, recursively; anything that is not plain JSON raises TypeError."""
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{type(value).__name__} is not plain JSON")


def _same_space(a: Any, b: Any) -> bool:
    """Two spaces make the same decisions with the same choices (compared through their repr)."""
    da, db = a.distributions(), b.distributions()
    return list(da) == list(db) and all(repr(da[k]) == repr(db[k]) for k in da)


def _kwargs(space: Any) -> dict[str, Any] | None:
    """The constructor arguments of `space` as plain JSON: its `config()`, else the attributes named like
    the arguments of its `__init__`; None when an argument is not kept or is not plain JSON."""
    if callable(getattr(space, "config", None)):
        kwargs = dict(space.config())
    else:
        params = [p for p in inspect.signature(type(space).__init__).parameters.values()
                  if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if any(not hasattr(space, p.name) for p in params):
            return None  # an argument the space does not keep: it could not be rebuilt faithfully
        kwargs = {p.name: getattr(space, p.name) for p in params}
    try:
        return _jsonable(kwargs)
    except TypeError:
        return None


def space_config(space: Any) -> dict[str, Any] | None:
    """`{"class": "module:Class", "kwargs": {...}}` that rebuilds `space`, or None when it cannot be
    captured (a space defined inside a study file, or arguments that are not plain JSON)."""
    cls = type(space)
    kwargs = _kwargs(space)
    if kwargs is None:
        return None
    config = {"class": f"{cls.__module__}:{cls.__qualname__}", "kwargs": kwargs}
    try:  # the config must rebuild a space with the same decisions and arguments, or it is no config
        again = space_from_config(config, trusted_only=False)
    except Exception:
        return None
    return config if _same_space(space, again) and _kwargs(again) == kwargs else None


def space_from_config(config: Mapping[str, Any], *, trusted_only: bool = True) -> Any:
    """The space described by `space_config`'s output. With `trusted_only`, only classes of nasopt's
    own search spaces are imported (a config may come from a shared file or database)."""
    try:
        path, kwargs = str(config["class"]), dict(config.get("kwargs") or {})
        module_name, _, qualname = path.partition(":")
    except (KeyError, TypeError, AttributeError):
        raise UserError(f"bad space config {dict(config) if isinstance(config, Mapping) else config!r}; "
                        "expected {'class': 'module:Class', 'kwargs': {...}}") from None
    if trusted_only and not module_name.startswith(TRUSTED_PREFIXES):
        raise UserError(f"space {path} is not one of nasopt's search spaces; pass the space object itself "
                        "(load_model(DIR, space=...)) or its study file (--study-file FILE)")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        raise UserError(f"cannot import space {path}; pass its study file (--study-file FILE)") from None
    try:
        return obj(**kwargs)
    except UserError:
        raise
    except (TypeError, ValueError) as e:
        raise UserError(f"cannot rebuild {qualname}(**{kwargs}): {e}") from None


def normalisation(task: Any) -> dict[str, Any] | None:
    """How raw inputs become network inputs: `x = raw * scale + shift` per channel (raw = uint8 pixels
    0..255 for images stored as bytes, else the stored floats), and the resize applied first."""
    split = getattr(task, "train", None)
    scale, shift = getattr(split, "scale", None), getattr(split, "shift", None)
    if scale is None or shift is None:
        return None
    out: dict[str, Any] = {"formula": "x = raw * scale + shift (per channel)",
                           "scale": [round(float(v), 8) for v in scale.flatten().tolist()],
                           "shift": [round(float(v), 8) for v in shift.flatten().tolist()]}
    x = getattr(split, "x", None)
    if x is not None:
        out["raw"] = "uint8 pixels 0..255" if str(x.dtype) == "torch.uint8" else "float32 values as stored"
    return out


def study_record(spec: Any, task: Any = None) -> dict[str, Any]:
    """What a study should store beside the name of its space class: the space's constructor config,
    the data settings and, when the task is loaded, its input shape, classes and normalisation."""
    record: dict[str, Any] = {
        "space_config": space_config(spec.space),
        "data": {"dataset": spec.dataset, "data_dir": spec.data_dir, "image_size": spec.image_size,
                 "val_fraction": spec.val_fraction, "seed": spec.seed},
        "artifacts": spec.artifacts,
    }
    if task is not None and hasattr(task, "input_shape"):
        record["input_shape"] = [int(v) for v in task.input_shape]
        record["num_classes"] = int(task.num_classes)
        norm = normalisation(task)
        if norm is not None:
            record["normalisation"] = norm
    return record


@dataclass(frozen=True)
class Rebuilt:
    """A study's space and data, resolved: enough to build any of its trials again."""

    space: Any
    space_config: dict[str, Any] | None
    task: Any  # a loaded Task, or a ShapeTask when only the shape is known
    data: dict[str, Any]  # dataset, data_dir, image_size, val_fraction, seed
    source: str  # where the space came from: "study file", "study record" or "space defaults"
    normalisation: dict[str, Any] | None = None


def _load(data: Mapping[str, Any], device: str) -> Any:
    from nasopt.data import load_task

    name = str(data.get("dataset") or "digits")
    name = "digits" if name == "nanobench" else name  # nano-bench's table was trained on digits
    return load_task(name, data_dir=data.get("data_dir"), image_size=data.get("image_size"),
                     val_fraction=float(data.get("val_fraction") or 0.2), seed=int(data.get("seed") or 0),
                     device=device)


def from_study(study: Any, *, spec: Any = None, default_space: Any = None, load_data: bool = False,
               device: str = "cpu") -> Rebuilt:
    """Resolve the space and data of `study` (an Optuna study run by nasopt).

    `spec` (a StudySpec from the study file) wins; else the study's stored `space_config`; else
    `default_space(class_name)` (e.g. the CLI's table of spaces at their default settings), which the
    caller must check against the trial's recorded parameter count. The data is loaded when
    `load_data` is set or the study did not record its input shape."""
    info = dict(study.user_attrs.get("nasopt") or {})
    stored_class = info.get("space")
    data = dict(info.get("data") or {"dataset": info.get("dataset", "digits")})
    if spec is not None:
        if stored_class and type(spec.space).__name__ != stored_class:
            raise UserError(f"the study file's space is {type(spec.space).__name__}, but study {study.study_name!r} "
                            f"was run with {stored_class}; pass the study file that ran it")
        space, config, source = spec.space, space_config(spec.space), "study file"
        data = {"dataset": spec.dataset, "data_dir": spec.data_dir, "image_size": spec.image_size,
                "val_fraction": spec.val_fraction, "seed": spec.seed}
    elif info.get("space_config"):
        config = dict(info["space_config"])
        space, source = space_from_config(config), "study record"
    elif default_space is not None and stored_class:
        space = default_space(stored_class)
        config, source = space_config(space), "space defaults"
    else:
        raise UserError(f"study {study.study_name!r} does not record its space's settings; pass its study file "
                        "(--study-file FILE)")
    shape, classes = info.get("input_shape"), info.get("num_classes")
    if spec is None and not load_data and shape and classes:
        return Rebuilt(space, config, ShapeTask(str(data.get("dataset")), tuple(int(v) for v in shape), int(classes)),
                       data, source, info.get("normalisation"))
    task = _load(data, device)
    return Rebuilt(space, config, task, data, source, normalisation(task))
