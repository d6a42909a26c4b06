"""Tasks: a dataset cut into train / val / test splits that yield normalised batches on a device.

`load_task(name, ...)` returns a `Task`. Validation always comes out of the training set (stratified,
seeded by `seed`); the test split is the dataset's official one (for `digits`, `synthetic` and an
imagefolder without test/: a fixed stratified 20% drawn with seed 0, so every study shares it). The
test split is for final models only, never for selection.

Data that fits stays in memory as tensors on the task's device (`TensorSplit`): images as uint8, so
CIFAR-10 is 150 MB, normalised per batch in one fused op; batching is index arithmetic, with no
DataLoader and no per-sample Python. An imagefolder too big for `max_in_memory_bytes` streams through a
DataLoader instead (`StreamSplit`). CIFAR is read straight from its python-pickle batches (the format
torchvision downloads); torchvision's own loader checks md5 sums, which only the official files pass.
"""

from __future__ import annotations

import os
import pickle
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from nasopt.errors import UserError

__all__ = ["DATASETS", "Split", "TensorSplit", "StreamSplit", "Task", "load_task"]

DATASETS: tuple[str, ...] = ("digits", "synthetic", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder")
_TEST_FRACTION = 0.2  # held-out share where a dataset has no official test split
_TEST_SEED = 0  # fixed, independent of `seed`: every study sees the same test set
_DOWNLOAD_HINT = "pass download=True (CLI: --set download=true)"
_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# Standard per-channel (mean, std) of the full training sets, in [0, 1] pixel units.
_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
Stats = tuple[tuple[float, ...], tuple[float, ...]]


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
        """Yield x float32 (B, C, H, W) normalised and y int64 (B,), covering the split once.

        `generator` (a CPU generator) makes the shuffle order reproducible; `drop_last` skips a final
        batch smaller than `batch_size` (BatchNorm cannot train on a batch of one).
        """


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"`batch_size >= 1` must hold, but got {batch_size=}; pass a positive integer")


@dataclass(frozen=True, kw_only=True, eq=False)
class TensorSplit(Split):
    """A split held in memory on one device, batched by index.

    `x` (N, C, H, W) holds the raw data (uint8 pixels, or float32 in [0, 1] for digits), the same
    tensor whatever the seed; each batch is normalised as `x * scale + shift` in one fused op. `size`
    resizes each batch when resizing once at load time would not fit in memory.
    """

    x: Tensor = field(repr=False)
    y: Tensor = field(repr=False)  # (N,) int64, same device as x
    scale: Tensor = field(repr=False)  # (1, C, 1, 1) float32 = 1 / (unit * std), unit 255 for uint8
    shift: Tensor = field(repr=False)  # (1, C, 1, 1) float32 = -mean / std
    size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x must be (N, C, H, W) with N == len(y), got {tuple(self.x.shape)} and {len(self.y)}")

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
            x = torch.addcmul(self.shift, x.float(), self.scale)  # (B, C, H, W) float32, always a new tensor
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
    input_shape: tuple[int, ...]  # (C, H, W) of one sample
    num_classes: int
    train: Split
    val: Split
    test: Split  # held out: never used for selection, only to report final models
    device: torch.device
    classes: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------- helpers

def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def _stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices 0..N-1 into sorted (keep, held), held ~ round(fraction * N) spread over the classes.

    Each class gives floor(fraction * n_c); the rest go to the classes with the largest remainders.
    """
    y = np.asarray(y)
    classes, counts = np.unique(y, return_counts=True)
    want = fraction * counts
    take = np.floor(want).astype(np.int64)
    k = min(max(round(fraction * len(y)), 1), len(y) - 1) if len(y) else 0
    for c in np.argsort(-(want - take), kind="stable")[: max(k - int(take.sum()), 0)]:
        take[c] += 1
    rng = np.random.default_rng(seed)
    held = [rng.permutation(np.flatnonzero(y == c))[:t] for c, t in zip(classes, take, strict=True)]
    held_idx = np.sort(np.concatenate(held)) if held else np.empty(0, dtype=np.int64)
    return np.setdiff1d(np.arange(len(y)), held_idx), held_idx


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
    """Per-channel mean and std of (N, C, H, W), in [0, 1] units for uint8."""
    s = torch.zeros(x.shape[1], dtype=torch.float64)
    ss = torch.zeros_like(s)
    for chunk in x.split(4096):
        c = chunk.double()
        s += c.sum((0, 2, 3))
        ss += (c * c).sum((0, 2, 3))
    n = max(x.shape[0] * x.shape[2] * x.shape[3], 1)
    mean = s / n
    std = (ss / n - mean * mean).clamp_min(0).sqrt()
    unit = 255.0 if x.dtype == torch.uint8 else 1.0
    return tuple((mean / unit).tolist()), tuple((std / unit).tolist())


def _affine(stats: Stats, unit: float, device: torch.device) -> tuple[Tensor, Tensor]:
    """(scale, shift) of shape (1, C, 1, 1) that map raw values p to (p / unit - mean) / std."""
    mean = torch.tensor(stats[0], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(stats[1], dtype=torch.float32).view(1, -1, 1, 1).clamp_min(1e-6)
    return (1.0 / (unit * std)).to(device), (-mean / std).to(device)


def _tensor_split(x: Tensor, y: Tensor, stats: Stats, device: torch.device,
                  size: tuple[int, int] | None) -> TensorSplit:
    scale, shift = _affine(stats, 255.0 if x.dtype == torch.uint8 else 1.0, device)
    x = x.to(device) if x.dtype == torch.uint8 else x.to(device, torch.float32)
    return TensorSplit(x=x, y=y.to(device, torch.int64), scale=scale, shift=shift, size=size)


# ---------------------------------------------------------------------------------------------- sources

class _Raw(NamedTuple):
    """A dataset as loaded: official train and test tensors (N, C, H, W) and int64 (N,) labels."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: tuple[str, ...]
    stats: Stats | None  # standard (mean, std) constants, or None: compute from the train split


def _hold_out_test(x: Tensor, y: Tensor, classes: tuple[str, ...]) -> _Raw:
    keep, held = (torch.from_numpy(i) for i in _stratified_split(y.numpy(), _TEST_FRACTION, _TEST_SEED))
    return _Raw(x[keep], y[keep], x[held], y[held], classes, None)


def _digits() -> _Raw:
    from sklearn.datasets import load_digits  # bundled with sklearn: no download

    d = load_digits()
    x = torch.from_numpy(d.images).float().div_(16.0).unsqueeze(1)  # (1797, 1, 8, 8) in [0, 1]
    return _hold_out_test(x, torch.from_numpy(d.target).long(), tuple(str(c) for c in range(10)))


def _synthetic() -> _Raw:
    """600 samples (1, 8, 8) in 10 classes: a fixed random prototype per class plus N(0, 1) noise."""
    g = torch.Generator().manual_seed(_TEST_SEED)  # the data is fixed; `seed` only picks the val split
    prototypes = torch.randn(10, 1, 8, 8, generator=g)
    y = torch.randperm(600, generator=g) % 10
    x = prototypes[y] + torch.randn(600, 1, 8, 8, generator=g)
    return _hold_out_test(x, y, tuple(f"class{c}" for c in range(10)))


def _load_mnist(name: str, root: str, download: bool) -> _Raw:
    from torchvision.datasets import MNIST, FashionMNIST

    cls = MNIST if name == "mnist" else FashionMNIST
    raw = os.path.join(root, cls.__name__, "raw")
    if not download and not all(os.path.isfile(os.path.join(raw, f)) for f in _MNIST_FILES):
        raise UserError(f"{name} not found: expected {', '.join(_MNIST_FILES)} in {raw}; "
                        f"put the gunzipped IDX files there or {_DOWNLOAD_HINT}")
    try:
        train, test = (cls(root, train=t, download=download) for t in (True, False))
    except Exception as e:  # torchvision raises assorted errors for bad files / failed downloads
        raise UserError(f"{name}: cannot load or download the IDX files in {raw} ({_one_line(e)}); "
                        f"replace them with the originals or {_DOWNLOAD_HINT}") from e
    return _Raw(train.data.unsqueeze(1), train.targets.long(), test.data.unsqueeze(1), test.targets.long(),
                tuple(train.classes), _STATS[name])


class _CifarLayout(NamedTuple):
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    expected: str  # the files, as named in messages
    meta: str
    label_key: str
    names_key: str
    num_classes: int
    title: str


_CIFAR = {
    "cifar10": _CifarLayout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                            "data_batch_1..5 and test_batch", "batches.meta", "labels", "label_names", 10,
                            "CIFAR-10"),
    "cifar100": _CifarLayout("cifar-100-python", ("train",), ("test",), "train and test", "meta", "fine_labels",
                             "fine_label_names", 100, "CIFAR-100"),
}


def _read_pickle(name: str, path: str) -> dict[str, object]:
    """A CIFAR pickle as a dict with str keys (python-2 files give str keys, python-3 ones bytes)."""
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="latin1")  # the CIFAR format is pickle, as in torchvision
        return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    except Exception as e:
        raise UserError(f"{name}: cannot read {path} ({_one_line(e)}); it is not a CIFAR python pickle: "
                        f"re-extract the archive or {_DOWNLOAD_HINT}") from e


def _read_cifar(name: str, folder: str, files: Sequence[str], lay: _CifarLayout) -> tuple[Tensor, Tensor]:
    xs, ys = [], []
    for f in files:
        path = os.path.join(folder, f)
        d = _read_pickle(name, path)
        data, labels = np.asarray(d.get("data")), np.asarray(d.get(lay.label_key, []))
        if not (data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072 and labels.ndim == 1
                and labels.dtype.kind in "iu" and len(labels) == len(data)):
            raise UserError(f"{name}: {path} is not a CIFAR batch: need uint8 'data' (N, 3072) and N integer "
                            f"'{lay.label_key}', got data {data.dtype} {data.shape} and labels {labels.shape}; "
                            f"re-extract the archive or {_DOWNLOAD_HINT}")
        labels = labels.astype(np.int64)
        if len(labels) and (labels.min() < 0 or labels.max() >= lay.num_classes):
            raise UserError(f"{name}: {path} has labels outside 0..{lay.num_classes - 1}; "
                            f"re-extract the archive or {_DOWNLOAD_HINT}")
        xs.append(data.reshape(-1, 3, 32, 32))  # rows are R, G, B planes of 32 x 32, row-major
        ys.append(labels)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _load_cifar(name: str, root: str, download: bool) -> _Raw:
    lay = _CIFAR[name]
    folder = os.path.join(root, lay.folder)
    if download:
        from torchvision.datasets import CIFAR10, CIFAR100

        try:  # fetches and md5-checks the archive; we then read the extracted files ourselves
            (CIFAR10 if name == "cifar10" else CIFAR100)(root, train=True, download=True)
        except Exception as e:
            raise UserError(f"{name}: download into {root} failed ({_one_line(e)}); "
                            f"download the {lay.title} python archive by hand and extract it there") from e
    if not all(os.path.isfile(os.path.join(folder, f)) for f in lay.train + lay.test):
        raise UserError(f"{name} not found: expected {folder}/{lay.expected}; extract the {lay.title} python "
                        f"archive there or {_DOWNLOAD_HINT}")
    x_train, y_train = _read_cifar(name, folder, lay.train, lay)
    x_test, y_test = _read_cifar(name, folder, lay.test, lay)
    classes = tuple(str(c) for c in range(lay.num_classes))
    meta = os.path.join(folder, lay.meta)
    if os.path.isfile(meta):  # optional: only the class names
        names = _read_pickle(name, meta).get(lay.names_key)
        if isinstance(names, list) and len(names) == lay.num_classes:
            classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    return _Raw(x_train, y_train, x_test, y_test, classes, _STATS[name])


# ---------------------------------------------------------------------------------------------- imagefolder

def _load_rgb(path: str) -> Image.Image:
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
        raise UserError(f"imagefolder: cannot read image {path} ({_one_line(e)}); delete or re-save it") from e


class _Images(Dataset):
    """(path, label) samples decoded to uint8 (3, size, size) tensors; module-level so workers can pickle it."""

    def __init__(self, samples: list[tuple[str, int]], size: int) -> None:
        self.samples, self.size = samples, size
        self.targets = np.array([label for _, label in samples], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        path, label = self.samples[i]
        img = _load_rgb(path).resize((self.size, self.size), Image.Resampling.BILINEAR)  # antialiased
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous(), label


def _image_folder(root: str, classes: list[str], size: int, allow_empty: bool) -> _Images:
    """The images under root/<class>/ for the train folder's classes, so labels line up across splits."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    try:
        samples = make_dataset(root, {c: i for i, c in enumerate(classes)}, IMG_EXTENSIONS, None, allow_empty)
    except FileNotFoundError as e:
        raise UserError(f"imagefolder: {_one_line(e)} under {root}; put .png/.jpg images in every class "
                        "folder") from e
    return _Images(samples, size)


def _workers() -> int:
    return min(4, os.cpu_count() or 1)


def _decode(ds: _Images, indices: np.ndarray) -> Tensor:
    """Decode samples to one uint8 (N, 3, S, S) tensor on a few threads (PIL releases the GIL)."""
    if len(indices) == 0:
        return torch.empty(0, 3, ds.size, ds.size, dtype=torch.uint8)
    with ThreadPoolExecutor(max_workers=_workers()) as pool:
        return torch.stack(list(pool.map(lambda i: ds[int(i)][0], indices)))


def _load_imagefolder(root: str, *, size: int, val_fraction: float, seed: int, device: torch.device,
                      max_bytes: int) -> Task:
    train_dir = os.path.join(root, "train")
    classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir()) if os.path.isdir(train_dir) else []
    if not classes:
        raise UserError(f"imagefolder not found: expected {train_dir}/<class>/*.png|jpg (optionally also "
                        f"{root}/val/ and {root}/test/); put your images there or point data_dir at the folder "
                        "that holds train/")
    base = _image_folder(train_dir, classes, size, allow_empty=False)
    parts: dict[str, tuple[_Images, np.ndarray]] = {}  # split -> (dataset, indices into it)
    for part in ("val", "test"):
        folder = os.path.join(root, part)
        if os.path.isdir(folder):
            extra = sorted({e.name for e in os.scandir(folder) if e.is_dir()} - set(classes))
            if extra:
                raise UserError(f"imagefolder: {folder} has classes {extra} that {train_dir} lacks; add them "
                                "to train/ or remove them")
            ds = _image_folder(folder, classes, size, allow_empty=True)
            parts[part] = (ds, np.arange(len(ds)))
    rest = np.arange(len(base))
    if "test" not in parts:
        keep, held = _stratified_split(base.targets, _TEST_FRACTION, _TEST_SEED)
        parts["test"], rest = (base, held), keep
    if "val" not in parts:
        keep, held = _stratified_split(base.targets[rest], val_fraction, seed)
        parts["val"], rest = (base, rest[held]), rest[keep]
    parts["train"] = (base, rest)
    for part, (_, idx) in parts.items():
        if len(idx) == 0:
            raise UserError(f"imagefolder: the {part} split is empty ({len(base)} images in {train_dir}); add "
                            f"images or create {os.path.join(root, part)}/<class>/")
    splits: dict[str, Split]
    if sum(len(idx) for _, idx in parts.values()) * 3 * size * size <= max_bytes:
        xs = {p: (_decode(ds, idx), torch.from_numpy(ds.targets[idx])) for p, (ds, idx) in parts.items()}
        stats = _channel_stats(xs["train"][0])
        splits = {p: _tensor_split(x, y, stats, device, None) for p, (x, y) in xs.items()}
    else:  # stream: statistics from a fixed sample of the train split, decoding by DataLoader workers
        ds, idx = parts["train"]
        stats = _channel_stats(_decode(ds, np.random.default_rng(_TEST_SEED).permutation(idx)[:1024]))
        scale, shift = _affine(stats, 255.0, device)
        splits = {p: StreamSplit(dataset=Subset(ds, idx.tolist()), labels=torch.from_numpy(ds.targets[idx]),
                                 scale=scale, shift=shift, device=device, num_workers=_workers())
                  for p, (ds, idx) in parts.items()}
    return Task(name="imagefolder", input_shape=(3, size, size), num_classes=len(classes), train=splits["train"],
                val=splits["val"], test=splits["test"], device=device, classes=tuple(classes))


# ---------------------------------------------------------------------------------------------- load_task

def _tensor_task(name: str, raw: _Raw, *, val_fraction: float, seed: int, device: torch.device,
                 image_size: int | None, max_bytes: int) -> Task:
    x_train, x_test = raw.x_train, raw.x_test
    C, H, W = x_train.shape[1:]
    size = None  # per-batch resize target, when resizing once would not fit in memory
    if image_size is not None and (H, W) != (image_size, image_size):
        nbytes = (len(x_train) + len(x_test)) * C * image_size**2 * x_train.element_size()
        if x_train.is_floating_point() or nbytes <= max_bytes:
            x_train, x_test = _resize(x_train, image_size), _resize(x_test, image_size)
        else:
            size = (image_size, image_size)
        H = W = image_size
    keep, held = (torch.from_numpy(i) for i in _stratified_split(raw.y_train.numpy(), val_fraction, seed))
    if len(keep) == 0 or len(held) == 0:
        raise UserError(f"{name}: cannot split {len(raw.y_train)} training samples into train and val with "
                        f"{val_fraction=}; use a larger training set")
    stats = raw.stats or _channel_stats(x_train[keep])
    train, val, test = (_tensor_split(x, y, stats, device, size) for x, y in (
        (x_train[keep], raw.y_train[keep]), (x_train[held], raw.y_train[held]), (x_test, raw.y_test)))
    return Task(name=name, input_shape=(int(C), int(H), int(W)), num_classes=len(raw.classes), train=train,
                val=val, test=test, device=device, classes=raw.classes)


def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise UserError(f"bad device {device!r} ({_one_line(e)}); pass e.g. device='cpu' or 'cuda'") from e
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

    `data_dir` is needed by all but digits and synthetic; `download=True` fetches mnist, fashion_mnist
    and CIFAR into it (the other datasets ignore it). `val_fraction` of the training set, stratified and drawn with `seed`, becomes the
    validation split. `image_size` resizes to image_size x image_size (imagefolder default 32); data
    whose uint8 size exceeds `max_in_memory_bytes` is streamed (imagefolder) or resized per batch.
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
    if key in ("digits", "synthetic"):
        raw = _digits() if key == "digits" else _synthetic()
    else:
        if data_dir is None:
            raise UserError(f"{key} needs a data folder: pass data_dir=<folder> (CLI: --set data_dir=PATH)")
        root = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
        if key == "imagefolder":
            return _load_imagefolder(root, size=int(image_size or 32), val_fraction=vf, seed=sd, device=dev,
                                     max_bytes=mb)
        raw = _load_mnist(key, root, download) if "mnist" in key else _load_cifar(key, root, download)
    return _tensor_task(key, raw, val_fraction=vf, seed=sd, device=dev, max_bytes=mb,
                        image_size=None if image_size is None else int(image_size))
