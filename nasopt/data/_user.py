"""`user_task(data, ...)`: the user's own torch datasets as a `Task` (issue 16).

`data` is a `"module:function"` string (the module imported from the current directory or PYTHONPATH), a
callable, or what such a factory returns, the function called with no arguments:

- a pair `(train, val)` or a triple `(train, val, test)`, or a dict with keys `train`, `val` (and `test`);
- a single training set: `val_fraction` of it, drawn with `seed`, becomes val.

Each set is a map-style `torch.utils.data.Dataset` (`len(ds)`, `ds[i]`) or a `DataLoader` over one (its
dataset, `collate_fn` and `num_workers` are kept; nasopt batches and shuffles itself). Without a test set,
test is val: the test split is only for final reports, never for selection.

A sample is a pair `(x, y)` of tensors, numpy arrays or numbers. x is a sequence (C, L) or an image
(C, H, W); a 1-D x (L,) is read as (1, L), and a 2-D x is always (C, L) (give a gray image as (1, H, W)).
`input_shape` reshapes x of any shape with as many values. What the task is, unless `kind` says it, comes from
the first training sample: an integer scalar y is a class ("classify"), an integer y of x's spatial shape
holds one class per position ("dense"), a floating y is a regression target ("regress", `target_shape` =
y's shape, `num_classes` = its number of values). `num_classes` of classify/dense is the largest training
label + 1 unless given; a streamed training set must then state its labels (`.targets`, or a TensorDataset).
Labels outside 0..num_classes-1 are refused wherever they are known without a pass over a stream.

Data whose float32 samples fit in `max_in_memory_bytes` (estimated from the first sample) is read once, with
the sets' collate_fn, into tensors on the device (`MemorySplit`); bigger data is streamed through a DataLoader
per pass (`LoaderSplit`). Samples are used as the dataset returns them: no normalisation. `device` follows
`resolve_device` ("auto" included).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, Subset

from nasopt.data._splits import KINDS, Split, Task
from nasopt.data._tasks import resolve_device
from nasopt.data._user_splits import (
    LoaderSplit,
    MemorySplit,
    SampleSpec,
    Source,
    dataset_targets,
    error_line,
    read_all,
)
from nasopt.errors import UserError
from nasopt.importing import load_object

__all__ = ["user_task"]

_ACCEPTED = "a Dataset or DataLoader, a tuple (train, val) or (train, val, test), or a dict with keys train, val " \
            "and optionally test"


def user_task(data: Any, *, kind: str | None = None, input_shape: Sequence[int] | None = None,
              num_classes: int | None = None, val_fraction: float = 0.2, seed: int = 0,
              device: str | torch.device = "cpu", max_in_memory_bytes: int = 256 * 2**20,
              name: str | None = None) -> Task:
    """The user's datasets (`data`, see the module doc) as a Task whose splits yield batches on `device`.

    `kind`, `input_shape` and `num_classes` override what the first training sample implies. Every mistake
    is a one-line `UserError` naming the problem and the fix.
    """
    _check_args(kind, num_classes, val_fraction, seed, max_in_memory_bytes, name)
    dev = torch.device(resolve_device(str(device)))
    value, label = _produce(data)
    train, val, test = _sources(value, label, float(val_fraction), int(seed))
    x0, y0 = _sample(train, 0)
    spec, kind = _infer(x0, y0, kind, input_shape)
    for src in (train, val, test):
        if src is not None:
            _check_ends(src, x0, y0)
    distinct = [s for s in (train, val, test) if s is not None]
    nbytes = sum(len(s) for s in distinct) * (x0.numel() * 4 + y0.numel() * (4 if kind == "regress" else 8))
    if nbytes <= max_in_memory_bytes:
        splits: list[Split] = [_memory(s, spec, dev) for s in distinct]
        targets: list[Tensor | None] = [s.targets for s in splits]
    else:
        streamed = [LoaderSplit(source=s, spec=spec, device=dev, known_targets=_stated(s, spec)) for s in distinct]
        splits, targets = [*streamed], [s.known_targets for s in streamed]
    if kind == "regress":
        classes = math.prod(spec.target_shape)
        if num_classes is not None and num_classes != classes:
            raise UserError(f"num_classes={num_classes}, but a regression target of shape {spec.target_shape} has "
                            f"{classes} values, which are the network's outputs; leave num_classes out")
    else:
        classes = _num_classes(kind, num_classes, targets, distinct)
    test_split = splits[2] if test is not None else splits[1]
    return Task(name=name or label or "custom", input_shape=spec.input_shape, num_classes=classes,
                train=splits[0], val=splits[1], test=test_split, device=dev, kind=kind,
                target_shape=spec.target_shape)


# ---------------------------------------------------------------------------------------------- arguments

def _a(obj: object) -> str:
    """`a list`, `an int`: the type of what the user gave, for a message."""
    kind = type(obj).__name__
    return f"an {kind}" if kind[:1].lower() in "aeiou" else f"a {kind}"


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_args(kind: str | None, num_classes: int | None, val_fraction: float, seed: int,
                max_in_memory_bytes: int, name: str | None) -> None:
    if kind is not None and kind not in KINDS:
        raise UserError(f"unknown task kind {kind!r}; choose one of {', '.join(KINDS)}, or leave kind out to infer "
                        "it from the first training sample")
    if num_classes is not None and not _is_int(num_classes):
        raise UserError(f"num_classes must be an integer, but got {num_classes=}; pass e.g. num_classes=10")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise UserError(f"`0 < val_fraction < 1` must hold, but got {val_fraction=}; pass e.g. val_fraction=0.2")
    if not _is_int(seed):
        raise UserError(f"seed must be an integer, but got {seed=}; pass e.g. seed=0")
    if not _is_int(max_in_memory_bytes) or max_in_memory_bytes < 0:
        raise UserError(f"`max_in_memory_bytes >= 0` must hold, but got {max_in_memory_bytes=}")
    if name is not None and not isinstance(name, str):
        raise UserError(f"name must be a string, but got {name=}; pass e.g. name='my_data'")


# ---------------------------------------------------------------------------------------------- the factory

def _produce(data: Any) -> tuple[Any, str | None]:
    """What `data` stands for (a factory called) and the factory's name, if there is one."""
    if isinstance(data, str):
        return _call(_import(data), data)
    if isinstance(data, (DataLoader, Mapping, tuple, list)) or _is_dataset(data):
        return data, None
    if callable(data):
        return _call(data, getattr(data, "__qualname__", None) or getattr(type(data), "__qualname__", None))
    return data, None  # refused with what was given by _sources


def _import(spec: str) -> Callable[[], Any]:
    importlib.invalidate_caches()  # a module written after the interpreter started (a test, a notebook)
    obj = load_object(spec.strip(), "data")
    if not callable(obj):
        raise UserError(f"data={spec!r} is {_a(obj)}, not a function; make it a function of no arguments that "
                        "returns the datasets")
    return obj  # type: ignore[no-any-return]


def _call(factory: Callable[[], Any], label: str | None) -> tuple[Any, str | None]:
    try:
        return factory(), label
    except Exception as e:
        raise UserError(f"the data factory {label or repr(factory)} raised {error_line(e)}; fix it (call it "
                        "yourself to see the traceback)") from e


# ---------------------------------------------------------------------------------------------- the sets

def _is_dataset(obj: Any) -> bool:
    """A map-style dataset: len and [i], not a tensor, array, text or mapping, nor an IterableDataset."""
    if isinstance(obj, (Tensor, np.ndarray, str, bytes, Mapping, IterableDataset)):
        return False
    return hasattr(type(obj), "__len__") and hasattr(type(obj), "__getitem__")


def _sources(value: Any, label: str | None, val_fraction: float, seed: int) -> tuple[Source, Source, Source | None]:
    origin = f"the data factory {label} returned" if label else "data is"
    if isinstance(value, Mapping):
        keys = {str(k) for k in value}
        if not {"train", "val"} <= keys <= {"train", "val", "test"}:
            raise UserError(f"{origin} a dict with keys {', '.join(sorted(keys)) or '(none)'}; give keys train and "
                            "val, and optionally test")
        parts = [value["train"], value["val"], value.get("test")]
    elif isinstance(value, (tuple, list)):
        if len(value) not in (2, 3):
            raise UserError(f"{origin} {_a(value)} of {len(value)} items; return (train, val) or "
                            "(train, val, test)")
        parts = [*value, None][:3]
    elif isinstance(value, DataLoader) or _is_dataset(value):
        return _hold_out(_source(value, "train", origin), val_fraction, seed)
    else:
        raise UserError(f"{origin} {_a(value)}; return {_ACCEPTED}")
    train, val = _source(parts[0], "train", origin), _source(parts[1], "val", origin)
    test = None if parts[2] is None else _source(parts[2], "test", origin)
    for src in (train, val, test):
        if src is not None and len(src) == 0:
            raise UserError(f"the {src.what} set is empty; give it samples")
    return train, val, test


def _source(obj: Any, what: str, origin: str) -> Source:
    if isinstance(obj, DataLoader):
        if not _is_dataset(obj.dataset):
            raise UserError(f"the {what} set is a DataLoader over {_a(obj.dataset)}; give a DataLoader "
                            "over a map-style Dataset (len and [i])")
        return Source(obj.dataset, what, int(obj.num_workers), obj.collate_fn)
    arrays = isinstance(obj, (tuple, list)) and len(obj) > 0 and all(isinstance(v, (Tensor, np.ndarray)) for v in obj)
    if arrays or not _is_dataset(obj):  # a sequence of tensors has no (x, y) samples
        tensors = isinstance(obj, (Tensor, np.ndarray)) or arrays
        got = f"{_a(obj)} of tensors" if arrays else _a(obj)
        hint = " (tensors: wrap them as TensorDataset(x, y))" if tensors else ""
        raise UserError(f"the {what} set ({origin} it) is {got}, not a map-style Dataset (len and [i]) or "
                        f"DataLoader{hint}; return {_ACCEPTED}")
    return Source(obj, what)


def _hold_out(train: Source, val_fraction: float, seed: int) -> tuple[Source, Source, None]:
    """val_fraction of a single training set, drawn with seed, as val (both subsets in the set's order)."""
    n = len(train)
    n_val = round(val_fraction * n)
    if n == 0:
        raise UserError("the train set is empty; give it samples")
    if not 0 < n_val < n:
        raise UserError(f"cannot split {n} training samples into train and val with {val_fraction=}; give more "
                        "samples, another val_fraction, or a (train, val) pair")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held, keep = order[:n_val].sort().values.tolist(), order[n_val:].sort().values.tolist()
    return (Source(Subset(train.dataset, keep), "train", train.num_workers, train.collate_fn),
            Source(Subset(train.dataset, held), "val", train.num_workers, train.collate_fn), None)


# ---------------------------------------------------------------------------------------------- the samples

def _sample(src: Source, i: int) -> tuple[Tensor, Tensor]:
    try:
        sample = src.dataset[i]
    except Exception as e:
        raise UserError(f"reading sample {i} of the {src.what} set raised {error_line(e)}; fix the dataset") from e
    if not isinstance(sample, (tuple, list)) or len(sample) != 2:
        size = f" of {len(sample)} items" if isinstance(sample, (tuple, list)) else ""
        raise UserError(f"sample {i} of the {src.what} set is {_a(sample)}{size}, not an (x, y) pair; "
                        "make the dataset's __getitem__ return (x, y)")
    x, y = (_tensor(v, part, i, src.what) for v, part in zip(sample, ("x", "target"), strict=True))
    return x, y


def _tensor(v: Any, part: str, i: int, what: str) -> Tensor:
    try:
        t = torch.as_tensor(v)
    except Exception:
        t = None
    if t is None or t.is_complex() or t.numel() == 0:
        got = "empty" if t is not None and t.numel() == 0 else _a(v)
        raise UserError(f"the {part} of sample {i} of the {what} set is {got}, not numeric; give a number, numpy "
                        f"array or tensor (integer class labels, or floats for a regression target)")
    return t


def _infer(x0: Tensor, y0: Tensor, kind: str | None,
           input_shape: Sequence[int] | None) -> tuple[SampleSpec, str]:
    """The shapes and the kind the first training sample implies, explicit arguments first."""
    if input_shape is not None:
        shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else ()
        if (len(shape) not in (2, 3) or not all(_is_int(n) and n > 0 for n in shape)
                or math.prod(shape) != x0.numel()):
            raise UserError(f"input_shape={input_shape!r} does not fit x of shape {tuple(x0.shape)}; give (C, L) "
                            f"or (C, H, W) with {x0.numel()} values in all")
        shape = tuple(int(n) for n in shape)
    elif x0.ndim == 1:
        shape = (1, int(x0.shape[0]))
    elif x0.ndim in (2, 3):
        shape = tuple(int(n) for n in x0.shape)
    else:
        raise UserError(f"x of the first training sample has shape {tuple(x0.shape)}; give sequences (C, L) or "
                        "images (C, H, W), or pass input_shape=(C, L) or (C, H, W) to reshape x")
    spatial = shape[1:]
    integer = not y0.is_floating_point()
    target = tuple(int(n) for n in y0.shape)
    if kind is None:
        if not integer:
            kind = "regress"
        elif y0.ndim == 0:
            kind = "classify"
        elif target == spatial:
            kind = "dense"
        else:
            raise UserError(f"cannot tell the task's kind: the integer target of the first training sample has "
                            f"shape {target}, neither a class (a scalar) nor one per position of x {spatial}; "
                            "pass kind='regress' for a vector target, or give targets of those shapes")
    if kind == "classify" and (not integer or target != ()):
        raise UserError(f"kind='classify' needs one integer class label per sample, but the first training "
                        f"target is {y0.dtype} of shape {target}; return int labels, or use kind='regress'")
    if kind == "dense" and (not integer or target != spatial):
        raise UserError(f"kind='dense' needs integer targets of x's spatial shape {spatial}, but the first "
                        f"training target is {y0.dtype} of shape {target}; give one class per position of x")
    y_dtype = torch.float32 if kind == "regress" else torch.int64
    return SampleSpec(tuple(int(n) for n in x0.shape), shape, target, y_dtype), kind


def _check_ends(src: Source, x0: Tensor, y0: Tensor) -> None:
    """The first and last samples of a set are shaped like the first training sample."""
    for i in sorted({0, len(src) - 1}):
        x, y = _sample(src, i)
        if x.shape != x0.shape or y.shape != y0.shape or y.is_floating_point() != y0.is_floating_point():
            raise UserError(f"sample {i} of the {src.what} set has x {tuple(x.shape)} and target {tuple(y.shape)} "
                            f"{y.dtype}, but the first training sample has x {tuple(x0.shape)} and target "
                            f"{tuple(y0.shape)} {y0.dtype}; give every sample the same shapes and types")


# ---------------------------------------------------------------------------------------------- splits, classes

def _memory(src: Source, spec: SampleSpec, device: torch.device) -> MemorySplit:
    x, y = read_all(src, spec)
    return MemorySplit(x=x.to(device), y=y.to(device))


def _stated(src: Source, spec: SampleSpec) -> Tensor | None:
    """The targets a streamed set states itself, if they have the right shape."""
    t = dataset_targets(src.dataset)
    if t is None or tuple(t.shape) != (len(src), *spec.target_shape):
        return None
    return t.to(spec.y_dtype)


def _num_classes(kind: str, given: int | None, targets: Sequence[Tensor | None], sources: list[Source]) -> int:
    """The number of classes (given, or the largest training label + 1), every known label within it."""
    if given is None:
        if targets[0] is None:
            raise UserError(f"the train set is streamed (bigger than max_in_memory_bytes) and states no .targets, so "
                            f"the number of classes of this {kind} task is unknown; pass num_classes=K")
        given = int(targets[0].max()) + 1
        how = f"the training labels run up to {given - 1}"
    else:
        how = f"num_classes={given}"
    if given < 2:
        raise UserError(f"a {kind} task needs at least 2 classes, but {how}; pass num_classes=K with K >= 2")
    for t, src in zip(targets, sources, strict=True):
        if t is not None and (int(t.min()) < 0 or int(t.max()) >= given):
            raise UserError(f"the labels of the {src.what} set run from {int(t.min())} to {int(t.max())}, outside "
                            f"0..{given - 1} ({how}); give labels 0..K-1 and pass num_classes=K")
    return int(given)
