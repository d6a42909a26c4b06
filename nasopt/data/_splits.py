"""The splits of a task: in-memory tensors normalised per batch (`TensorSplit`) or a stream through a
DataLoader (`StreamSplit`), and the `Task` that holds them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from nasopt.data._datasets import Stats
from nasopt.errors import UserError

__all__ = ["KINDS", "Split", "TensorSplit", "StreamSplit", "Task", "resize", "channel_stats", "affine", "tensor_split"]


KINDS = ("classify", "regress", "dense")  # what a network outputs (Task.kind)


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
    """What a search needs to know about the data: the shape of one sample, the classes (or outputs), the
    splits, and how the network's output is scored (`kind`, `loss`, `metrics`)."""

    name: str
    input_shape: tuple[int, ...]  # (C, H, W) of one image, (C, L) of one sequence
    num_classes: int
    train: Split
    val: Split
    test: Split  # held out: never used for selection, only to report final models
    device: torch.device
    classes: tuple[str, ...] = ()
    # What the network outputs, and so its head (see nasopt.space.head_kind):
    #   "classify": `num_classes` logits per sample; targets int64 (N,)
    #   "regress":  `num_classes` = prod(target_shape) values per sample, reshaped to (N, *target_shape) for the
    #               loss and the metrics; targets float32 (N, *target_shape)
    #   "dense":    `num_classes` logits per position, output (N, num_classes, *input_shape[1:]); targets int64
    #               (N, *input_shape[1:]) (e.g. per-pixel classes of a segmentation)
    kind: str = "classify"
    target_shape: tuple[int, ...] = ()  # one sample's target: () for a class, the regression target's shape,
    #                                     the spatial shape for dense
    # the user's loss `(output, target) -> scalar tensor` (None: cross-entropy for classify/dense, MSE for
    # regress) and metrics `{name: fn}` computed on the validation split after every epoch (nasopt.train)
    loss: Callable[[Tensor, Tensor], Tensor] | None = field(default=None, repr=False)
    metrics: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"unknown task kind {self.kind!r}; choose one of {', '.join(KINDS)}")


# ---------------------------------------------------------------------------------------------- helpers

def _interpolate(x: Tensor, size: tuple[int, int]) -> Tensor:
    down = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=down)


def resize(x: Tensor, size: int) -> Tensor:
    """Resize (N, C, H, W) to size x size in chunks, keeping the dtype (uint8 is rounded)."""
    out = [_interpolate(chunk.float(), (size, size)) for chunk in x.split(2048)]
    if x.dtype == torch.uint8:
        out = [o.round_().clamp_(0, 255).to(torch.uint8) for o in out]
    return torch.cat(out) if out else x.new_empty((0, x.shape[1], size, size))


def channel_stats(x: Tensor) -> Stats:
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


def affine(stats: Stats, unit: float, device: torch.device, ndim: int = 4) -> tuple[Tensor, Tensor]:
    """(scale, shift) of shape (1, C, 1, 1) (or (1, C, 1) for ndim 3) mapping raw p to (p / unit - mean) / std."""
    shape = (1, -1) + (1,) * (ndim - 2)
    mean = torch.tensor(stats[0], dtype=torch.float32).view(shape)
    std = torch.tensor(stats[1], dtype=torch.float32).view(shape).clamp_min(1e-6)
    return (1.0 / (unit * std)).to(device), (-mean / std).to(device)


def tensor_split(x: Tensor, y: Tensor, stats: Stats, device: torch.device,
                  size: tuple[int, int] | None) -> TensorSplit:
    scale, shift = affine(stats, 255.0 if x.dtype == torch.uint8 else 1.0, device, x.ndim)
    x = x.to(device) if x.dtype == torch.uint8 else x.to(device, torch.float32)
    return TensorSplit(x=x, y=y.to(device, torch.int64), scale=scale, shift=shift, size=size)
