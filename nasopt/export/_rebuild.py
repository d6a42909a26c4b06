"""Everything needed to rebuild a trial's network outside the run that trained it.

A study's user attr `nasopt` names its space class and dataset, which is not enough to rebuild a
network: `MobileSpace(stages=2)` and `MobileSpace(stages=3)` build different networks from the same
class. `space_config(space)` captures the constructor arguments of a space as plain JSON
(`{"class": "nasopt.search_spaces.mobile:MobileSpace", "kwargs": {...}}`) and `space_from_config`
builds the same space again. A space whose attributes mirror its keyword arguments (all bundled ones
but the DARTS cells) needs nothing; one that stores them differently defines `config()` returning them.

`study_record(spec, task)` is what a study stores beside its name of the space (`space_config`, the data
settings, input shape, number of classes, task kind and input normalisation), so that export, retraining and
reports can rebuild any trial from the storage alone.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nasopt._json import plain
from nasopt.errors import UserError

__all__ = ["ShapeTask", "task_kind", "kind_record", "space_config", "space_from_config", "study_record", "normalisation", "input_record"]

# only classes from these packages are imported from a config read back from a file or a storage;
# any other space is passed in by the caller (from its study file)
TRUSTED_PREFIXES = ("nasopt.search_spaces.",)


@dataclass(frozen=True)
class ShapeTask:
    """What `space.build` needs of a task when no data is loaded: the input shape, the classes (outputs) and
    what the network outputs (`kind`: classify, regress or dense; `target_shape`: one sample's target)."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    device: str = "cpu"
    kind: str = "classify"
    target_shape: tuple[int, ...] = ()


def task_kind(record: Mapping[str, Any]) -> dict[str, Any]:
    """`kind` and `target_shape` of a stored record (arch.json, a study's record) as ShapeTask arguments:
    a record written before nasopt recorded them is a classification."""
    return {"kind": str(record.get("kind") or "classify"),
            "target_shape": tuple(int(v) for v in record.get("target_shape") or ())}


def kind_record(task: Any) -> dict[str, Any]:
    """What a task's network outputs, as plain JSON for a record: `kind` and `target_shape`."""
    return {"kind": str(getattr(task, "kind", None) or "classify"),
            "target_shape": [int(v) for v in getattr(task, "target_shape", None) or ()]}


def _same_space(a: Any, b: Any) -> bool:
    """Two spaces make the same decisions with the same choices (compared through their repr)."""
    da, db = a.distributions(), b.distributions()
    return list(da) == list(db) and all(repr(da[k]) == repr(db[k]) for k in da)


def space_kwargs(space: Any) -> dict[str, Any] | None:
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
        return plain(kwargs, strict=True)
    except TypeError:
        return None


def space_config(space: Any) -> dict[str, Any] | None:
    """`{"class": "module:Class", "kwargs": {...}}` that rebuilds `space`, or None when it cannot be
    captured (a space defined inside a study file, or arguments that are not plain JSON)."""
    cls = type(space)
    kwargs = space_kwargs(space)
    if kwargs is None:
        return None
    config = {"class": f"{cls.__module__}:{cls.__qualname__}", "kwargs": kwargs}
    try:  # the config must rebuild a space with the same decisions and arguments, or it is no config
        again = space_from_config(config, trusted_only=False)
    except Exception:
        return None
    return config if _same_space(space, again) and space_kwargs(again) == kwargs else None


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


# The raw input of each dataset, as a user holds it outside nasopt: (source, units, range, divide_by).
# `range` is None where the data is not bounded (then the manifest gives the training split's observed
# range); `divide_by` turns raw into the units whose per-channel mean and std the normalisation uses.
_PIXELS = "uint8 pixel intensities, whole numbers 0..255"
_RAW: dict[str, tuple[str, str, list[int] | None, float]] = {
    "digits": ("sklearn.datasets.load_digits().images, as (N, 1, 8, 8): images[:, None]",
               "pixel intensities, whole numbers 0..16 (float64 in sklearn)", [0, 16], 16.0),
    "synthetic": ("the `.x` of nasopt.data.load_task('synthetic')'s splits, (N, 1, 8, 8): generated by nasopt, a "
                  "fixed N(0, 1) prototype per class plus N(0, 1) noise", "float32, unitless and unbounded", None, 1.0),
    "mnist": ("the MNIST IDX image files (torchvision.datasets.MNIST(root).data), as (N, 1, 28, 28)", _PIXELS,
              [0, 255], 255.0),
    "fashion_mnist": ("the Fashion-MNIST IDX image files (torchvision.datasets.FashionMNIST(root).data), as "
                      "(N, 1, 28, 28)", _PIXELS, [0, 255], 255.0),
    "cifar10": ("the CIFAR-10 python batches' `data` rows reshaped to (N, 3, 32, 32), RGB planes (torchvision's "
                "CIFAR10(root).data is (N, 32, 32, 3): transpose it to (N, 3, 32, 32))", _PIXELS, [0, 255], 255.0),
    "cifar100": ("the CIFAR-100 python batches' `data` rows reshaped to (N, 3, 32, 32), RGB planes (torchvision's "
                 "CIFAR100(root).data is (N, 32, 32, 3): transpose it to (N, 3, 32, 32))", _PIXELS, [0, 255], 255.0),
    "imagefolder": ("your image files, decoded by PIL, converted to RGB and resized to {S} x {S} (PIL bilinear), "
                    "as (N, 3, {S}, {S})", _PIXELS, [0, 255], 255.0),
    "mnist1d": ("the mnist1d package's make_dataset(get_dataset_args()) with seed 42: its x and x_test arrays "
                "(N, 40), as (N, 1, 40)", "float32 signal amplitudes as generated, unitless, not rescaled", None, 1.0),
}
_YOURS = "the x_train / x_test arrays of your data file as stored ((N, L) is read as (N, 1, L))"
_NATIVE = {"digits": 8, "synthetic": 8, "mnist": 28, "fashion_mnist": 28, "cifar10": 32, "cifar100": 32}
_RESIZE = ("bilinear, antialiased when shrinking (torch.nn.functional.interpolate(x, size, mode='bilinear', "
           "align_corners=False, antialias=True)), before the normalisation; uint8 images are rounded back to "
           "whole numbers")


def _round(values: Any) -> list[float]:
    return [round(float(v), 8) for v in values]


def input_record(dataset: str, *, uint8: bool, scale: Any, shift: Any, input_shape: Any = None,
                 image_size: int | None = None, observed: Any = None) -> dict[str, Any]:
    """What goes into a network trained on `dataset`, from the raw data a user holds to the input tensor.

    `scale` and `shift` are the task's per-channel affine on its stored data (uint8 pixels 0..255, or
    float32: digits already divided by 16); `observed` is the (min, max) of the training split's raw
    values, given for data without fixed bounds."""
    name = "digits" if dataset == "nanobench" else str(dataset)
    shape = [int(v) for v in input_shape] if input_shape is not None else []
    spatial = shape[1:] if len(shape) == 3 else None  # (H, W) of images; None for sequences
    size = spatial[0] if spatial else None
    if name in _RAW:
        source, units, bounds, divide_by = _RAW[name]
        source = source.replace("{S}", str(size or "S"))
    elif uint8:  # `tensors` and any other source of uint8 pixels
        source, units, bounds, divide_by = (_YOURS, _PIXELS, [0, 255], 255.0)
    else:
        source, units, bounds, divide_by = (_YOURS, "your numbers as stored, cast to float32, not rescaled", None, 1.0)
    unit = 255.0 if uint8 else 1.0  # the task scales its stored data: uint8 by 1/255 inside `scale`
    std = [1.0 / (unit * float(s)) for s in scale]
    mean = [-float(b) * s for b, s in zip(shift, std, strict=True)]
    raw: dict[str, Any] = {"dataset": name, "source": source, "units": units, "range": bounds}
    if bounds is None and observed is not None:
        raw["observed_range"] = _round(observed)  # of the training split: the data has no fixed bounds
    resize = None
    if spatial and name != "imagefolder" and (
            (name in _NATIVE and size != _NATIVE[name]) or (name not in _NATIVE and image_size is not None)):
        resize = {"to": spatial, "when": "the raw images are not that size", "how": _RESIZE}
    steps = f"raw / {divide_by:g}" if divide_by != 1 else "raw"
    resized = f", raw resized to {' x '.join(map(str, spatial))} first" if resize and spatial else ""
    return {
        "feed": f"x = ({steps} - mean) / std per channel, as float32{resized}; raw: {source}; {units}",
        "raw": raw,
        "formula": "x = (raw / divide_by - mean) / std per channel; the same as x = raw * scale + shift",
        "divide_by": divide_by,
        "mean": _round(mean),
        "std": _round(std),
        "scale": _round(1.0 / (divide_by * s) for s in std),
        "shift": _round(-m / s for m, s in zip(mean, std, strict=True)),
        "resize": resize,
    }


def normalisation(task: Any, *, image_size: int | None = None) -> dict[str, Any] | None:
    """How the raw data of `task`'s dataset becomes network input (`input_record`), or None for a task
    whose splits do not normalise (a user's own loader). `image_size` is the study's setting."""
    split = getattr(task, "train", None)
    scale, shift = getattr(split, "scale", None), getattr(split, "shift", None)
    if scale is None or shift is None:
        return None
    x = getattr(split, "x", None)
    uint8 = str(getattr(x, "dtype", "")) == "torch.uint8" or getattr(task, "name", "") == "imagefolder"
    observed = None
    if x is not None and not uint8 and x.numel():
        observed = (float(x.min()), float(x.max()))
    return input_record(str(getattr(task, "name", "")), uint8=uint8, scale=scale.flatten().tolist(),
                        shift=shift.flatten().tolist(), input_shape=getattr(task, "input_shape", None),
                        image_size=image_size, observed=observed)


def _stored_normalisation(norm: Any, data: Mapping[str, Any], shape: Any) -> dict[str, Any] | None:
    """A study's stored normalisation; one stored by an older nasopt (`raw` a phrase, scale and shift
    on the stored data) is restated as `input_record` from its scale and shift."""
    if not isinstance(norm, Mapping) or isinstance(norm.get("raw"), Mapping) or "scale" not in norm:
        return dict(norm) if isinstance(norm, Mapping) else None
    dataset = str(data.get("dataset") or "digits")
    uint8 = str(norm.get("raw", "")).startswith("uint8") or dataset in ("mnist", "fashion_mnist", "cifar10",
                                                                        "cifar100", "imagefolder")
    return input_record(dataset, uint8=uint8, scale=norm["scale"], shift=norm["shift"], input_shape=shape,
                        image_size=data.get("image_size"))


def study_record(spec: Any, task: Any = None) -> dict[str, Any]:
    """What a study should store beside the name of its space class: the space's constructor config,
    the data settings and, when the task is loaded, its input shape, classes, kind (with its target shape)
    and normalisation."""
    record: dict[str, Any] = {
        "space_config": space_config(spec.space),
        "data": {"dataset": spec.dataset, "data_dir": spec.data_dir, "image_size": spec.image_size,
                 "val_fraction": spec.val_fraction, "seed": spec.seed},
        "artifacts": spec.artifacts,
    }
    if getattr(spec, "data", None) is not None:  # the user's own data: its factory's name, to say what to pass
        from nasopt.importing import qualname

        record["data"]["data"] = qualname(spec.data) if isinstance(spec.data, str) or callable(spec.data) else \
            "datasets given as objects"
    if task is not None and hasattr(task, "input_shape"):
        record["input_shape"] = [int(v) for v in task.input_shape]
        record["num_classes"] = int(task.num_classes)
        record.update(kind_record(task))
        norm = normalisation(task, image_size=spec.image_size)
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


def _load(data: Mapping[str, Any], device: str, spec: Any = None) -> Any:
    from nasopt.data import load_task, user_task
    from nasopt.scoring import scored

    if spec is not None and getattr(spec, "data", None) is not None:  # the user's own data, from its factory
        task = user_task(spec.data, kind=spec.kind, input_shape=spec.input_shape, num_classes=spec.num_classes,
                         val_fraction=spec.val_fraction, seed=spec.seed, device=device)
        return scored(task, spec.loss, spec.metrics)
    if data.get("dataset") == "custom":
        raise UserError(f"the study was run on your own data ({data.get('data') or 'data='}); pass its study file "
                        "(--study-file FILE), whose `data` rebuilds it")
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
        task = ShapeTask(str(data.get("dataset")), tuple(int(v) for v in shape), int(classes), **task_kind(info))
        return Rebuilt(space, config, task, data, source, _stored_normalisation(info.get("normalisation"), data, shape))
    task = _load(data, device, spec)
    return Rebuilt(space, config, task, data, source, normalisation(task, image_size=data.get("image_size")))
