"""The dataset readers behind `nasopt.data.load_task`: each returns a dataset's train and test tensors.

A reader returns a `Raw`: the official train and test splits as tensors (N, C, H, W) for images or
(N, C, L) for sequences, int64 labels, class names and, where a dataset has standard normalisation
constants, those. `nasopt.data` cuts the validation split out of train and puts the splits on a device.

- digits, synthetic   in memory, no files (a fixed stratified 20% is the test split)
- mnist, fashion_mnist, cifar10, cifar100   read from their standard files under a data folder
- mnist1d             generated offline by the `mnist1d` package, cached on disk after the first time
- tensors             a user's own `.npz` / `.pt` file of x_train, y_train, x_test, y_test
"""

from __future__ import annotations

import os
import pickle
import random
import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from nasopt.errors import UserError

TEST_FRACTION = 0.2  # held-out share where a dataset has no official test split
TEST_SEED = 0  # fixed, independent of `seed`: every study sees the same test set
_DOWNLOAD_HINT = "pass download=True (CLI: --set download=true)"
_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
Stats = tuple[tuple[float, ...], tuple[float, ...]]
# Standard per-channel (mean, std) of the full training sets, in [0, 1] pixel units.
_STATS: dict[str, Stats] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
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


class Raw(NamedTuple):
    """A dataset as loaded: train and test tensors (N, C, H, W) or (N, C, L), and int64 (N,) labels.

    x is uint8 (pixels, unit 255) or float32 (unit 1), the same tensor whatever the seed.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: tuple[str, ...]
    stats: Stats | None  # standard (mean, std) constants, or None: compute from the train split


def hold_out_test(x: Tensor, y: Tensor, classes: tuple[str, ...]) -> Raw:
    keep, held = (torch.from_numpy(i) for i in stratified_split(y.numpy(), TEST_FRACTION, TEST_SEED))
    return Raw(x[keep], y[keep], x[held], y[held], classes, None)


def digits() -> Raw:
    from sklearn.datasets import load_digits  # bundled with sklearn: no download

    d = load_digits()
    x = torch.from_numpy(d.images).float().div_(16.0).unsqueeze(1)  # (1797, 1, 8, 8) in [0, 1]
    return hold_out_test(x, torch.from_numpy(d.target).long(), tuple(str(c) for c in range(10)))


def synthetic() -> Raw:
    """600 samples (1, 8, 8) in 10 classes: a fixed random prototype per class plus N(0, 1) noise."""
    g = torch.Generator().manual_seed(TEST_SEED)  # the data is fixed; `seed` only picks the val split
    prototypes = torch.randn(10, 1, 8, 8, generator=g)
    y = torch.randperm(600, generator=g) % 10
    x = prototypes[y] + torch.randn(600, 1, 8, 8, generator=g)
    return hold_out_test(x, y, tuple(f"class{c}" for c in range(10)))


def load_mnist(name: str, root: str, download: bool) -> Raw:
    from torchvision.datasets import MNIST, FashionMNIST

    cls = MNIST if name == "mnist" else FashionMNIST
    raw = os.path.join(root, cls.__name__, "raw")
    if not download and not all(os.path.isfile(os.path.join(raw, f)) for f in _MNIST_FILES):
        raise UserError(f"{name} not found: expected {', '.join(_MNIST_FILES)} in {raw}; "
                        f"put the gunzipped IDX files there or {_DOWNLOAD_HINT}")
    try:
        train, test = (cls(root, train=t, download=download) for t in (True, False))
    except Exception as e:  # torchvision raises assorted errors for bad files / failed downloads
        raise UserError(f"{name}: cannot load or download the IDX files in {raw} ({one_line(e)}); "
                        f"replace them with the originals or {_DOWNLOAD_HINT}") from e
    return Raw(train.data.unsqueeze(1), train.targets.long(), test.data.unsqueeze(1), test.targets.long(),
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
        raise UserError(f"{name}: cannot read {path} ({one_line(e)}); it is not a CIFAR python pickle: "
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


def load_cifar(name: str, root: str, download: bool) -> Raw:
    lay = _CIFAR[name]
    folder = os.path.join(root, lay.folder)
    if download:
        from torchvision.datasets import CIFAR10, CIFAR100

        try:  # fetches and md5-checks the archive; we then read the extracted files ourselves
            (CIFAR10 if name == "cifar10" else CIFAR100)(root, train=True, download=True)
        except Exception as e:
            raise UserError(f"{name}: download into {root} failed ({one_line(e)}); "
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
    return Raw(x_train, y_train, x_test, y_test, classes, _STATS[name])


# ---------------------------------------------------------------------------------------------- mnist1d

MNIST1D_SEED = 42  # the mnist1d package's default seed (`get_dataset_args().seed`)
_MNIST1D_FILE = f"mnist1d_4000_1000_len40_seed{MNIST1D_SEED}.npz"
_KEYS = ("x_train", "y_train", "x_test", "y_test")


def mnist1d_cache_dir(root: str | None) -> str:
    """Where the generated MNIST-1D lives: <data_dir>/mnist1d, else ~/.cache/nasopt/mnist1d."""
    if root is not None:
        return os.path.join(root, "mnist1d")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "nasopt", "mnist1d")


def load_mnist1d(root: str | None) -> Raw:
    """MNIST-1D (Greydanus & Kobak, 2020): 10 classes of 1-D signals of length 40, 4000 train / 1000 test.

    Generated offline by the package's `make_dataset` (its `get_dataset` would download), the same data
    for every call, and cached as an .npz so that it is generated once (a few seconds).
    """
    path = os.path.join(mnist1d_cache_dir(root), _MNIST1D_FILE)
    arrays = _read_cache(path)
    if arrays is None:
        arrays = _generate_mnist1d()
        _write_cache(path, arrays)
    x_train, x_test = (torch.from_numpy(arrays[k]).float().unsqueeze(1) for k in ("x_train", "x_test"))
    y_train, y_test = (torch.from_numpy(arrays[k]).long() for k in ("y_train", "y_test"))
    return Raw(x_train, y_train, x_test, y_test, tuple(str(c) for c in range(10)), None)  # x (N, 1, 40)


def _generate_mnist1d() -> dict[str, np.ndarray]:
    # make_dataset reseeds and draws from the global `random` and numpy generators: give the caller's
    # streams back untouched, whatever happens in between
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        try:
            from mnist1d.data import get_dataset_args, make_dataset
        except ImportError as e:
            raise UserError(f"the mnist1d dataset needs the mnist1d package ({one_line(e)}); "
                            "install it with: pip install mnist1d") from e
        args = get_dataset_args()  # 5000 samples, 80% train, length 40
        args.seed = MNIST1D_SEED
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {"x_train": np.asarray(data["x"], np.float32), "y_train": np.asarray(data["y"], np.int64),
            "x_test": np.asarray(data["x_test"], np.float32), "y_test": np.asarray(data["y_test"], np.int64)}


def _read_cache(path: str) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when the file is missing or unreadable (then it is made again)."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in _KEYS}
    except (OSError, ValueError, KeyError, EOFError):
        return None
    ok = all(arrays[f"x_{s}"].ndim == 2 and len(arrays[f"x_{s}"]) == len(arrays[f"y_{s}"]) for s in ("train", "test"))
    return arrays if ok else None


def _write_cache(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, x_train=arrays["x_train"], y_train=arrays["y_train"], x_test=arrays["x_test"],
                     y_test=arrays["y_test"])
        os.replace(tmp, path)  # atomic: a concurrent reader sees the whole file or none
    except OSError as e:
        warnings.warn(f"mnist1d: cannot cache the generated data at {path} ({one_line(e)}); it will be "
                      "generated again next time", RuntimeWarning, stacklevel=2)
        if os.path.exists(tmp):
            os.remove(tmp)


# ---------------------------------------------------------------------------------------------- tensors

_TENSORS_FIX = ("save a dict with x_train, y_train, x_test, y_test (optional: classes) by "
                "np.savez(path, x_train=..., ...) or torch.save({...}, path)")


def load_tensors(path: str) -> Raw:
    """A user's own dataset from one `.npz` (numpy) or `.pt` (torch.save of a dict) file.

    Keys `x_train`, `y_train`, `x_test`, `y_test`, optionally `classes` (class names). x is (N, L) or
    (N, C, L) for sequences, (N, C, H, W) for images: uint8 is read as pixels 0..255, any other number
    type as float32. y holds integer labels 0..K-1 (K = len(classes), else the largest label + 1).
    """
    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "does not exist"
        raise UserError(f"tensors: {path} {what}; pass data_dir=<file.npz or file.pt> and {_TENSORS_FIX}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".npz", ".pt", ".pth"):
        raise UserError(f"tensors: {path} is neither .npz nor .pt; {_TENSORS_FIX}")
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                data: object = {k: f[k] for k in f.files}
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # numpy and torch raise assorted errors for a broken file
        raise UserError(f"tensors: cannot read {path} ({one_line(e)}); {_TENSORS_FIX}") from e
    if not isinstance(data, Mapping):
        raise UserError(f"tensors: {path} holds a {type(data).__name__}, not a dict; {_TENSORS_FIX}")
    missing = [k for k in _KEYS if k not in data]
    if missing:
        has = ", ".join(map(str, data)) or "no keys"
        raise UserError(f"tensors: {path} lacks {', '.join(missing)} (it has {has}); {_TENSORS_FIX}")
    x_train, x_test = (_samples(path, k, data[k]) for k in ("x_train", "x_test"))
    y_train, y_test = (_labels(path, k, data[k]) for k in ("y_train", "y_test"))
    for part, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if len(x) != len(y) or len(x) == 0:
            raise UserError(f"tensors: {path}: x_{part} has {len(x)} samples and y_{part} {len(y)} labels; give "
                            "one label per sample, and at least one sample")
    if x_train.shape[1:] != x_test.shape[1:] or x_train.dtype != x_test.dtype:
        raise UserError(f"tensors: {path}: x_train samples are {tuple(x_train.shape[1:])} {x_train.dtype} but "
                        f"x_test samples {tuple(x_test.shape[1:])} {x_test.dtype}; give both the same shape and type")
    names = data.get("classes")
    largest = int(max(y_train.max(), y_test.max()))
    classes = (tuple(str(c) for c in np.asarray(names).ravel()) if names is not None
               else tuple(str(c) for c in range(largest + 1)))
    if largest >= len(classes):
        raise UserError(f"tensors: {path}: label {largest} but only {len(classes)} classes are named; give "
                        "labels 0..len(classes)-1")
    return Raw(x_train, y_train, x_test, y_test, classes, None)


def _numpy(path: str, key: str, value: object) -> np.ndarray:
    a = value.numpy(force=True) if isinstance(value, Tensor) else np.asarray(value)
    if a.dtype.kind not in "uif":
        raise UserError(f"tensors: {path}: {key} has dtype {a.dtype}; give numbers")
    return a


def _samples(path: str, key: str, value: object) -> Tensor:
    a = _numpy(path, key, value)
    if a.ndim == 2:
        a = a[:, None, :]  # (N, L) -> (N, 1, L): one channel
    if a.ndim not in (3, 4) or 0 in a.shape[1:]:
        raise UserError(f"tensors: {path}: {key} has shape {a.shape}; give (N, L) or (N, C, L) sequences or "
                        "(N, C, H, W) images")
    x = torch.from_numpy(np.ascontiguousarray(a))
    x = x if x.dtype == torch.uint8 else x.float()
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise UserError(f"tensors: {path}: {key} holds NaN or infinite values; clean the data")
    return x


def _labels(path: str, key: str, value: object) -> Tensor:
    a = _numpy(path, key, value)
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise UserError(f"tensors: {path}: {key} must be a 1-D array of integer labels, but has shape "
                        f"{a.shape} and dtype {a.dtype}; give class indices, e.g. y.astype('int64')")
    if len(a) and a.min() < 0:
        raise UserError(f"tensors: {path}: {key} has the negative label {a.min()}; give labels 0..K-1")
    return torch.from_numpy(a.astype(np.int64))
