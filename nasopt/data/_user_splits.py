"""The splits of a user's own datasets (`user_task`): every sample loaded once into tensors on the device
(`MemorySplit`), or streamed through a DataLoader per pass (`LoaderSplit`). Neither normalises: the user's
dataset already transforms its samples."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from nasopt.data._splits import Split
from nasopt.errors import UserError

__all__ = ["Source", "SampleSpec", "MemorySplit", "LoaderSplit", "error_line", "read_all", "stream",
           "dataset_targets", "check_batch_size"]


def error_line(e: BaseException) -> str:
    """`Type: the first line of the message`, for a one-line UserError about the user's own code."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"`batch_size >= 1` must hold, but got {batch_size=}; pass a positive integer")


@dataclass(frozen=True)
class Source:
    """One of the user's sets: a map-style dataset and how its samples are collated (kept from a DataLoader)."""

    dataset: Dataset[Any]
    what: str  # "train", "val" or "test", for the messages
    num_workers: int = 0
    collate_fn: Callable[[list[Any]], Any] | None = None  # None: torch's default_collate

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]


@dataclass(frozen=True)
class SampleSpec:
    """The shape of every sample: x as the dataset gives it, as the network sees it, and the target."""

    x_shape: tuple[int, ...]  # x of one sample as the dataset returns it
    input_shape: tuple[int, ...]  # (C, L) or (C, H, W): x reshaped to it
    target_shape: tuple[int, ...]  # y of one sample: () for a class, the spatial shape for dense
    y_dtype: torch.dtype  # int64 (classify, dense) or float32 (regress)


def _as_batch(raw: Any, spec: SampleSpec, device: torch.device, what: str) -> tuple[Tensor, Tensor]:
    """A collated batch as x float32 (B, *input_shape) and y (B, *target_shape) on `device`, shapes checked."""
    if not isinstance(raw, (tuple, list)) or len(raw) != 2:
        raise UserError(f"a batch of the {what} set is a {type(raw).__name__}, not an (x, y) pair; make the "
                        "dataset return (x, y) samples (and a collate_fn return (x, y) batches)")
    try:
        x, y = torch.as_tensor(raw[0]), torch.as_tensor(raw[1])
    except Exception as e:
        raise UserError(f"a batch of the {what} set is not a pair of tensors ({error_line(e)}); return "
                        "numbers, numpy arrays or tensors as x and y") from e
    n = int(x.shape[0]) if x.ndim else -1
    if tuple(x.shape[1:]) != spec.x_shape or tuple(y.shape) != (n, *spec.target_shape):
        raise UserError(f"a batch of the {what} set holds x {tuple(x.shape)} and y {tuple(y.shape)}, but every "
                        f"sample must be x {spec.x_shape} and y {spec.target_shape} like the first training "
                        "sample; give all samples one shape")
    return (x.reshape(n, *spec.input_shape).to(device, torch.float32, non_blocking=True),
            y.to(device, spec.y_dtype, non_blocking=True))


def stream(source: Source, spec: SampleSpec, device: torch.device, batch_size: int, *, shuffle: bool = False,
           generator: torch.Generator | None = None, drop_last: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
    """One pass over `source` through a fresh DataLoader, batches checked and moved to `device`; an error of
    the user's dataset becomes a one-line UserError naming the set."""
    if generator is not None and generator.device.type != "cpu":  # a DataLoader shuffles with a CPU generator
        seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
        generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(source.dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                        drop_last=drop_last, num_workers=source.num_workers, collate_fn=source.collate_fn,
                        pin_memory=device.type == "cuda")
    batches = iter(loader)
    while True:
        try:
            raw = next(batches)
        except StopIteration:
            return
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"reading the {source.what} set failed ({error_line(e)}); fix its dataset "
                            "(or collate_fn): every sample must be an (x, y) pair of one shape") from e
        yield _as_batch(raw, spec, device, source.what)


def read_all(source: Source, spec: SampleSpec) -> tuple[Tensor, Tensor]:
    """Every sample of `source` once, in order: x float32 (N, *input_shape) and y (N, *target_shape), on CPU."""
    xs, ys = [], []
    for x, y in stream(source, spec, torch.device("cpu"), 256):
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def dataset_targets(dataset: Any) -> Tensor | None:
    """The targets a dataset states without being read: its `.targets` (torchvision's datasets), the second
    tensor of a TensorDataset, through Subsets; None when it states none."""
    if isinstance(dataset, Subset):
        base = dataset_targets(dataset.dataset)
        return None if base is None else base[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        found: Any = dataset.tensors[1]
    else:
        found = getattr(dataset, "targets", None)
    if found is None:
        return None
    try:
        t = torch.as_tensor(found)
    except Exception:  # targets of another sort (names, paths): not usable as labels
        return None
    return t if t.ndim >= 1 and len(t) == len(dataset) else None


@dataclass(frozen=True, kw_only=True, eq=False)
class MemorySplit(Split):
    """A user's set held in memory on one device, batched by index (no normalisation, no DataLoader)."""

    x: Tensor = field(repr=False)  # (N, *input_shape) float32
    y: Tensor = field(repr=False)  # (N, *target_shape) int64 or float32, same device as x

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x and y hold different numbers of samples: {self.x.shape[0]} and {self.y.shape[0]}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        return f"MemorySplit(n={len(self)}, x={tuple(self.x.shape)}, y={tuple(self.y.shape)} {self.y.dtype}, " \
               f"device={self.x.device})"

    @property
    def targets(self) -> Tensor:
        return self.y.cpu()

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        check_batch_size(batch_size)
        order = None
        if shuffle:  # permute where the generator lives, then index on the data's device
            where = generator.device if generator is not None else torch.device("cpu")
            order = torch.randperm(len(self), generator=generator, device=where).to(self.x.device)
        return self._iterate(batch_size, order, drop_last)

    def _iterate(self, batch_size: int, order: Tensor | None, drop_last: bool) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            if order is None:  # slices are views: copy them so a caller's in-place op cannot touch the data
                yield self.x[start:start + batch_size].clone(), self.y[start:start + batch_size].clone()
            else:
                idx = order[start:start + batch_size]
                yield self.x.index_select(0, idx), self.y.index_select(0, idx)


@dataclass(frozen=True, kw_only=True, eq=False)
class LoaderSplit(Split):
    """A user's set streamed through a DataLoader built per `batches()` call (its collate_fn and num_workers
    kept), batches moved to the device with x as float32.

    `targets` are the dataset's own (`dataset_targets`) when it states them; otherwise the first call reads
    the whole set once (every sample, x included) and keeps the result.
    """

    source: Source
    spec: SampleSpec
    device: torch.device
    known_targets: Tensor | None = field(default=None, repr=False)  # (N, *target_shape) on CPU
    cache: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.source)

    @property
    def targets(self) -> Tensor:
        if self.known_targets is not None:
            return self.known_targets
        if "targets" not in self.cache:
            ys = [y for _, y in stream(self.source, self.spec, torch.device("cpu"), 256)]
            self.cache["targets"] = torch.cat(ys)
        return self.cache["targets"]

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        check_batch_size(batch_size)
        return stream(self.source, self.spec, self.device, batch_size, shuffle=shuffle, generator=generator,
                      drop_last=drop_last)
