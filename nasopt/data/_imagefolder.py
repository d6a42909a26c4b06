"""The `imagefolder` dataset: a user's images in root/train/<class>/ (and optionally val/, test/).

Decoded once into memory as uint8 tensors when they fit in `max_in_memory_bytes`, else streamed by
DataLoader workers (`StreamSplit`). Imported by `nasopt.data.load_task` when the dataset is asked for.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Subset

from nasopt.data._datasets import TEST_FRACTION, TEST_SEED, one_line, stratified_split
from nasopt.data._splits import Split, StreamSplit, Task, affine, channel_stats, tensor_split
from nasopt.errors import UserError


def _load_rgb(path: str) -> Image.Image:
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
        raise UserError(f"imagefolder: cannot read image {path} ({one_line(e)}); delete or re-save it") from e


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
        raise UserError(f"imagefolder: {one_line(e)} under {root}; put .png/.jpg images in every class "
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


def load_imagefolder(root: str, *, size: int, val_fraction: float, seed: int, device: torch.device,
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
        keep, held = stratified_split(base.targets, TEST_FRACTION, TEST_SEED)
        parts["test"], rest = (base, held), keep
    if "val" not in parts:
        keep, held = stratified_split(base.targets[rest], val_fraction, seed)
        parts["val"], rest = (base, rest[held]), rest[keep]
    parts["train"] = (base, rest)
    for part, (_, idx) in parts.items():
        if len(idx) == 0:
            raise UserError(f"imagefolder: the {part} split is empty ({len(base)} images in {train_dir}); add "
                            f"images or create {os.path.join(root, part)}/<class>/")
    splits: dict[str, Split]
    if sum(len(idx) for _, idx in parts.values()) * 3 * size * size <= max_bytes:
        xs = {p: (_decode(ds, idx), torch.from_numpy(ds.targets[idx])) for p, (ds, idx) in parts.items()}
        stats = channel_stats(xs["train"][0])
        splits = {p: tensor_split(x, y, stats, device, None) for p, (x, y) in xs.items()}
    else:  # stream: statistics from a fixed sample of the train split, decoding by DataLoader workers
        ds, idx = parts["train"]
        stats = channel_stats(_decode(ds, np.random.default_rng(TEST_SEED).permutation(idx)[:1024]))
        scale, shift = affine(stats, 255.0, device)
        splits = {p: StreamSplit(dataset=Subset(ds, idx.tolist()), labels=torch.from_numpy(ds.targets[idx]),
                                 scale=scale, shift=shift, device=device, num_workers=_workers())
                  for p, (ds, idx) in parts.items()}
    return Task(name="imagefolder", input_shape=(3, size, size), num_classes=len(classes), train=splits["train"],
                val=splits["val"], test=splits["test"], device=device, classes=tuple(classes))
