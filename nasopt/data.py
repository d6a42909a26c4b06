"""Tasks: a dataset cut into train / val / test splits that yield normalised batches on a device.

`load_task(name, ...)` returns a `Task`. Validation always comes out of the training set (stratified,
seeded by `seed`); the test split is the dataset's official one (for `digits`, `synthetic` and an
imagefolder without test/: a fixed stratified 20% drawn with seed 0, so every study shares it). The
test split is for final models only, never for selection.

Data that fits stays in memory as tensors on the task's device (`TensorSplit`): images as uint8, so
CIFAR-10 is 150 MB, normalised per batch in one fused op; batching is index arithmetic, with no
DataLoader and no per-sample Python. An imagefolder too big for `max_in_memory_bytes` streams through a
DataLoader instead (`StreamSplit`). Samples are images (C, H, W) or sequences (C, L) (`mnist1d`, or a
user's own 1-D tensors). The readers of the individual datasets live in `nasopt._datasets` (and
`nasopt._imagefolder`).

Your own tensors: save `x_train, y_train, x_test, y_test` to one file and load it as dataset `tensors`,

    np.savez("my.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)   # or torch.save({...}, "my.pt")
    task = load_task("tensors", data_dir="my.npz")   # StudySpec(dataset="tensors", data_dir="my.npz")

with x as (N, L) or (N, C, L) sequences or (N, C, H, W) images (uint8 pixels or floats) and y integer
labels 0..K-1; an optional `classes` entry names the classes.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from nasopt import _datasets
from nasopt._datasets import Raw, Stats, one_line, stratified_split
from nasopt.errors import UserError

__all__ = ["DATASETS", "Split", "TensorSplit", "StreamSplit", "Task", "load_task"]

DATASETS: tuple[str, ...] = ("digits", "synthetic", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder",
                             "mnist1d", "tensors")


class Split(ABC):
    """One split of a task: `len(split)` samples, iterated as `(x, y)` batches on the task's device."""

    @abstractmethod
    def __len__(self) -> int: ...

    @property
    @abstractmethod
    def targets(self) -> Tensor:
        """All labels of the split in storage order, int64 (N,) on CPU."""

    @abstractmethod
    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield x float32 (B, C, H, W) or (B, C, L) normalised and y int64 (B,), covering the split once.

        `generator` (a CPU generator) makes the shuffle order reproducible; `drop_last` skips a final
        batch smaller than `batch_size` (BatchNorm cannot train on a batch of one).
        """


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"`batch_size >= 1` must hold, but got {batch_size=}; pass a positive integer")


@dataclass(frozen=True, kw_only=True, eq=False)
class TensorSplit(Split):
    """A split held in memory on one device, batched by index.

    `x` (N, C, H, W) or (N, C, L) holds the raw data (uint8 pixels, or float32: digits in [0, 1], 1-D
    signals), the same tensor whatever the seed; each batch is normalised as `x * scale + shift` in one
    fused op. `size` resizes each (image) batch when resizing once at load time would not fit in memory.
    """

    x: Tensor = field(repr=False)
    y: Tensor = field(repr=False)  # (N,) int64, same device as x
    scale: Tensor = field(repr=False)  # (1, C, 1, 1) or (1, C, 1) float32 = 1 / (unit * std), unit 255 for uint8
    shift: Tensor = field(repr=False)  # same shape, float32 = -mean / std
    size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.x.ndim not in (3, 4) or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x must be (N, C, H, W) or (N, C, L) with N == len(y), got {tuple(self.x.shape)} "
                             f"and {len(self.y)}")
        if self.size is not None and self.x.ndim != 4:
            raise ValueError(f"size={self.size} resizes images, but x is {tuple(self.x.shape)}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        return f"TensorSplit(n={len(self)}, x={tuple(self.x.shape)} {self.x.dtype}, device={self.x.device})"

    @property
    def targets(self) -> Tensor:
        return self.y.cpu()

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        _check_batch_size(batch_size)
        order = None
        if shuffle:  # permute where the generator lives, then index on the data's device
            where = generator.device if generator is not None else torch.device("cpu")
            order = torch.randperm(len(self), generator=generator, device=where).to(self.x.device)
        return self._iterate(batch_size, order, drop_last)

    def _iterate(self, batch_size: int, order: Tensor | None, drop_last: bool) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            if order is None:  # slices are views: copy y so a caller's in-place op cannot touch the data
                x, y = self.x[start:start + batch_size], self.y[start:start + batch_size].clone()
            else:
                idx = order[start:start + batch_size]
                x, y = self.x.index_select(0, idx), self.y.index_select(0, idx)  # faster than x[idx]
            x = torch.addcmul(self.shift, x.float(), self.scale)  # (B, C, ...) float32, always a new tensor
            if self.size is not None:
                x = _interpolate(x, self.size)
            yield x, y


@dataclass(frozen=True, kw_only=True, eq=False)
class StreamSplit(Split):
    """A split decoded on the fly by DataLoader workers (for image folders too big for memory)."""

    dataset: Dataset = field(repr=False)  # yields (uint8 (C, H, W) tensor, int label)
    labels: Tensor = field(repr=False)  # (N,) int64 on CPU, in dataset order
    scale: Tensor = field(repr=False)  # (1, C, 1, 1) on device, as in TensorSplit
    shift: Tensor = field(repr=False)
    device: torch.device
    num_workers: int = 0

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def targets(self) -> Tensor:
        return self.labels

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        _check_batch_size(batch_size)
        loader = DataLoader(self.dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                            num_workers=self.num_workers, drop_last=drop_last,
                            pin_memory=self.device.type == "cuda")
        return ((torch.addcmul(self.shift, x.to(self.device, non_blocking=True).float(), self.scale),
                 y.to(self.device, non_blocking=True)) for x, y in loader)


@dataclass(frozen=True, kw_only=True)
class Task:
    """What a search needs to know about the data: the shape of one sample, the classes, the splits."""

    name: str
    input_shape: tuple[int, ...]  # (C, H, W) of one image, (C, L) of one sequence
    num_classes: int
    train: Split
    val: Split
    test: Split  # held out: never used for selection, only to report final models
    device: torch.device
    classes: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------- helpers

def _interpolate(x: Tensor, size: tuple[int, int]) -> Tensor:
    down = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=down)


def _resize(x: Tensor, size: int) -> Tensor:
    """Resize (N, C, H, W) to size x size in chunks, keeping the dtype (uint8 is rounded)."""
    out = [_interpolate(chunk.float(), (size, size)) for chunk in x.split(2048)]
    if x.dtype == torch.uint8:
        out = [o.round_().clamp_(0, 255).to(torch.uint8) for o in out]
    return torch.cat(out) if out else x.new_empty((0, x.shape[1], size, size))


def _channel_stats(x: Tensor) -> Stats:
    """Per-channel mean and std of (N, C, H, W) or (N, C, L), in [0, 1] units for uint8."""
    s = torch.zeros(x.shape[1], dtype=torch.float64)
    ss = torch.zeros_like(s)
    dims = (0, *range(2, x.ndim))  # all but the channel axis
    for chunk in x.split(4096):
        c = chunk.double()
        s += c.sum(dims)
        ss += (c * c).sum(dims)
    n = max(x.numel() // max(x.shape[1], 1), 1)
    mean = s / n
    std = (ss / n - mean * mean).clamp_min(0).sqrt()
    unit = 255.0 if x.dtype == torch.uint8 else 1.0
    return tuple((mean / unit).tolist()), tuple((std / unit).tolist())


def _affine(stats: Stats, unit: float, device: torch.device, ndim: int = 4) -> tuple[Tensor, Tensor]:
    """(scale, shift) of shape (1, C, 1, 1) (or (1, C, 1) for ndim 3) mapping raw p to (p / unit - mean) / std."""
    shape = (1, -1) + (1,) * (ndim - 2)
    mean = torch.tensor(stats[0], dtype=torch.float32).view(shape)
    std = torch.tensor(stats[1], dtype=torch.float32).view(shape).clamp_min(1e-6)
    return (1.0 / (unit * std)).to(device), (-mean / std).to(device)


def _tensor_split(x: Tensor, y: Tensor, stats: Stats, device: torch.device,
                  size: tuple[int, int] | None) -> TensorSplit:
    scale, shift = _affine(stats, 255.0 if x.dtype == torch.uint8 else 1.0, device, x.ndim)
    x = x.to(device) if x.dtype == torch.uint8 else x.to(device, torch.float32)
    return TensorSplit(x=x, y=y.to(device, torch.int64), scale=scale, shift=shift, size=size)



# ---------------------------------------------------------------------------------------------- load_task

def _tensor_task(name: str, raw: Raw, *, val_fraction: float, seed: int, device: torch.device,
                 image_size: int | None, max_bytes: int) -> Task:
    x_train, x_test = raw.x_train, raw.x_test
    C, *spatial = (int(n) for n in x_train.shape[1:])
    size = None  # per-batch resize target, when resizing once would not fit in memory
    if image_size is not None and len(spatial) != 2:
        raise UserError(f"{name}: image_size={image_size} resizes images, but {name} holds sequences of length "
                        f"{spatial[0]}; drop image_size")
    if image_size is not None and tuple(spatial) != (image_size, image_size):
        nbytes = (len(x_train) + len(x_test)) * C * image_size**2 * x_train.element_size()
        if x_train.is_floating_point() or nbytes <= max_bytes:
            x_train, x_test = _resize(x_train, image_size), _resize(x_test, image_size)
        else:
            size = (image_size, image_size)
        spatial = [image_size, image_size]
    keep, held = (torch.from_numpy(i) for i in stratified_split(raw.y_train.numpy(), val_fraction, seed))
    if len(keep) == 0 or len(held) == 0:
        raise UserError(f"{name}: cannot split {len(raw.y_train)} training samples into train and val with "
                        f"{val_fraction=}; use a larger training set")
    stats = raw.stats or _channel_stats(x_train[keep])
    train, val, test = (_tensor_split(x, y, stats, device, size) for x, y in (
        (x_train[keep], raw.y_train[keep]), (x_train[held], raw.y_train[held]), (x_test, raw.y_test)))
    return Task(name=name, input_shape=(C, *spatial), num_classes=len(raw.classes), train=train,
                val=val, test=test, device=device, classes=raw.classes)


def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise UserError(f"bad device {device!r} ({one_line(e)}); pass e.g. device='cpu' or 'cuda'") from e
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if dev.type == "cuda" and (dev.index or 0) >= n_gpus:
        raise UserError(f"device={str(dev)!r} but this machine has {n_gpus} usable CUDA devices; pass "
                        "device='cpu' or an existing 'cuda:N'")
    return dev


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def load_task(name: str, *, data_dir: str | os.PathLike[str] | None = None, download: bool = False,
              val_fraction: float = 0.2, seed: int = 0, device: str | torch.device = "cpu",
              image_size: int | None = None, max_in_memory_bytes: int = 2 * 2**30) -> Task:
    """Load dataset `name` (one of DATASETS) as a Task whose splits yield batches on `device`.

    `data_dir` is the data folder of mnist, fashion_mnist, CIFAR and imagefolder; for `tensors` it is
    the .npz/.pt file (see the module doc); mnist1d caches its generated data under it (default
    ~/.cache/nasopt); digits and synthetic ignore it. `download=True` fetches mnist, fashion_mnist and
    CIFAR into it (the other datasets ignore it). `val_fraction` of the training set, stratified and
    drawn with `seed`, becomes the validation split. `image_size` resizes images to image_size x
    image_size (imagefolder default 32); data whose uint8 size exceeds `max_in_memory_bytes` is streamed
    (imagefolder) or resized per batch.
    """
    key = str(name).strip().lower().replace("-", "_")
    if key not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise UserError(f"`0 < val_fraction < 1` must hold, but got {val_fraction=}; pass e.g. val_fraction=0.2")
    if not _is_int(seed):
        raise UserError(f"seed must be an integer, but got {seed=}; pass e.g. seed=0")
    if image_size is not None and (not _is_int(image_size) or image_size < 1):
        raise UserError(f"`image_size >= 1` must hold, but got {image_size=}; pass e.g. image_size=32 or None")
    if not _is_int(max_in_memory_bytes) or max_in_memory_bytes < 0:
        raise UserError(f"`max_in_memory_bytes >= 0` must hold, but got {max_in_memory_bytes=}")
    dev, vf, sd, mb = _device(device), float(val_fraction), int(seed), int(max_in_memory_bytes)
    root = None if data_dir is None else os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
    if key == "digits":
        raw = _datasets.digits()
    elif key == "synthetic":
        raw = _datasets.synthetic()
    elif key == "mnist1d":
        raw = _datasets.load_mnist1d(root)
    elif root is None:
        what = "file: pass data_dir=<file.npz or file.pt>" if key == "tensors" else "folder: pass data_dir=<folder>"
        raise UserError(f"{key} needs a data {what} (CLI: --set data_dir=PATH)")
    elif key == "tensors":
        raw = _datasets.load_tensors(root)
    elif key == "imagefolder":
        from nasopt._imagefolder import load_imagefolder  # it builds on this module's splits

        return load_imagefolder(root, size=int(image_size or 32), val_fraction=vf, seed=sd, device=dev,
                                max_bytes=mb)
    elif key in ("mnist", "fashion_mnist"):
        raw = _datasets.load_mnist(key, root, download)
    else:
        raw = _datasets.load_cifar(key, root, download)
    return _tensor_task(key, raw, val_fraction=vf, seed=sd, device=dev, max_bytes=mb,
                        image_size=None if image_size is None else int(image_size))

