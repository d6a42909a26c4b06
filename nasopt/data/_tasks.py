"""`load_task(name, ...)`: a dataset by name as a `Task` (see the package doc)."""

from __future__ import annotations

import os

import numpy as np
import torch

from nasopt.data import _datasets
from nasopt.data._datasets import Raw, one_line, stratified_split
from nasopt.data._splits import Task, channel_stats, resize, tensor_split
from nasopt.errors import UserError

__all__ = ["DATASETS", "DATASET_NOTES", "load_task", "resolve_device"]

DATASETS: tuple[str, ...] = ("digits", "synthetic", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder",
                             "mnist1d", "tensors")
# one line per dataset, for `nasopt list datasets`
DATASET_NOTES: dict[str, str] = {
    "digits": "scikit-learn's 8x8 handwritten digits (1, 8, 8), 10 classes, shipped: no download",
    "synthetic": "600 noisy class prototypes (1, 8, 8), 10 classes, generated: for tests and demos",
    "mnist": "MNIST (1, 28, 28), 10 classes; data_dir= (download=True fetches it)",
    "fashion_mnist": "Fashion-MNIST (1, 28, 28), 10 classes; data_dir= (download=True fetches it)",
    "cifar10": "CIFAR-10 (3, 32, 32), 10 classes; data_dir= (download=True fetches it)",
    "cifar100": "CIFAR-100 (3, 32, 32), 100 classes; data_dir= (download=True fetches it)",
    "imagefolder": "your images in data_dir/train/<class>/*.png|jpg (val/, test/ optional), resized to image_size",
    "mnist1d": "MNIST-1D signals (1, 40), 10 classes, generated and cached: TinyML-sized",
    "tensors": "your own arrays: one .npz or .pt file with x_train, y_train, x_test, y_test (data_dir=FILE)",
}


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
            x_train, x_test = resize(x_train, image_size), resize(x_test, image_size)
        else:
            size = (image_size, image_size)
        spatial = [image_size, image_size]
    keep, held = (torch.from_numpy(i) for i in stratified_split(raw.y_train.numpy(), val_fraction, seed))
    if len(keep) == 0 or len(held) == 0:
        raise UserError(f"{name}: cannot split {len(raw.y_train)} training samples into train and val with "
                        f"{val_fraction=}; use a larger training set")
    stats = raw.stats or channel_stats(x_train[keep])
    train, val, test = (tensor_split(x, y, stats, device, size) for x, y in (
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


def resolve_device(name: str) -> str:
    """The device a study or command runs on: "auto" is CUDA when present, else the CPU; a CUDA device that
    this machine does not have is refused with the fix. The one rule for every command and the runner."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but no CUDA device is available; use --device cpu")
    return str(_device(name))


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
        from nasopt.data._imagefolder import load_imagefolder  # PIL: imported only for image folders

        return load_imagefolder(root, size=int(image_size or 32), val_fraction=vf, seed=sd, device=dev,
                                max_bytes=mb)
    elif key in ("mnist", "fashion_mnist"):
        raw = _datasets.load_mnist(key, root, download)
    else:
        raw = _datasets.load_cifar(key, root, download)
    return _tensor_task(key, raw, val_fraction=vf, seed=sd, device=dev, max_bytes=mb,
                        image_size=None if image_size is None else int(image_size))

