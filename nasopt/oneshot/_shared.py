"""Helpers that several gradient methods share (DARTS, PC-DARTS, ProxylessNAS, ENAS), in one module
rather than imported from one algorithm's privates: the training split's halves (any split), the RNG
state of a checkpoint, and how a search scores its supernet on the task (`search_loss`, `hits`,
`validation`, `path_score`: the task's loss, and its first per-epoch objective where it is no
classification)."""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from nasopt.data import LoaderSplit, Split, StreamSplit
from nasopt.errors import UserError
from nasopt.scoring import epoch_record, evaluate, kind_of, scalar_loss, shaped, task_loss

__all__ = ["SKIP_OPS", "EDGE", "LossFn", "Signal", "DEFAULT_SIGNAL", "split_half", "HalfSplit", "rng_state",
           "set_rng_state", "skip_count", "search_loss", "hits", "score", "valid_entries", "validation",
           "path_score", "check_output"]

SKIP_OPS = ("skip_connect", "skip")
EDGE = re.compile(r"^(?P<node>.+)\.e(?P<index>\d+)$")  # an edge decision's name: "<node>.e<index>"

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Signal = tuple[str, float]  # the study's first per-epoch objective as a curve entry, and its sign (+1: maximize)
DEFAULT_SIGNAL: Signal = ("val_acc", 1.0)


# ------------------------------------------------------------------------------------------------ halves

def split_half(split: Any, seed: int) -> tuple[Any, Any]:
    """Two disjoint random halves of a split (weights train on one, alphas on the other): in-memory tensors
    indexed (TensorSplit, MemorySplit), a dataset behind a DataLoader taken as Subsets (LoaderSplit,
    StreamSplit), any other split as a `HalfSplit` of its stream."""
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    half = len(split) // 2
    a, b = order[:half], order[half:]
    if hasattr(split, "x"):
        a, b = a.to(split.x.device), b.to(split.x.device)
        return (dataclasses.replace(split, x=split.x.index_select(0, a), y=split.y.index_select(0, a)),
                dataclasses.replace(split, x=split.x.index_select(0, b), y=split.y.index_select(0, b)))
    if isinstance(split, LoaderSplit):
        known = split.known_targets
        return tuple(dataclasses.replace(  # type: ignore[return-value]
            split, source=dataclasses.replace(split.source, dataset=Subset(split.source.dataset, idx.tolist())),
            known_targets=None if known is None else known[idx], cache={}) for idx in (a, b))
    if isinstance(split, StreamSplit):
        return tuple(dataclasses.replace(split, dataset=Subset(split.dataset, idx.tolist()),  # type: ignore[return-value]
                                         labels=split.labels[idx]) for idx in (a, b))
    if not isinstance(split, Split):
        raise UserError(f"one-shot search needs a nasopt.data.Split as training data, but got {type(split).__name__}; "
                        "build the task with nasopt.data.user_task or load_task")
    return tuple(HalfSplit(base=split, keep=torch.zeros(len(split), dtype=torch.bool).index_fill_(0, idx, True))
                 for idx in (a, b))  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class HalfSplit(Split):
    """The samples of `base` marked in `keep` (by position in its storage order), for a split that can only be
    streamed: a pass streams `base` in order and keeps these samples; a shuffled pass shuffles within windows
    of `window` batches (a stream has no random access)."""

    base: Split
    keep: torch.Tensor = dataclasses.field(repr=False)  # bool (len(base),) on CPU
    window: int = 16

    def __len__(self) -> int:
        return int(self.keep.sum())

    @property
    def targets(self) -> torch.Tensor:
        return self.base.targets[self.keep]

    def _chunks(self, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This half's samples in storage order, `size` at a time (the last chunk may be smaller)."""
        xs: list[torch.Tensor] = []
        ys: list[torch.Tensor] = []
        held, pos = 0, 0
        for x, y in self.base.batches(size):
            mask = self.keep[pos:pos + len(y)].to(y.device)
            pos += len(y)
            xs.append(x[mask])
            ys.append(y[mask])
            held += int(mask.sum())
            if held >= size:
                x_all, y_all = torch.cat(xs), torch.cat(ys)
                yield x_all[:size], y_all[:size]
                xs, ys, held = [x_all[size:]], [y_all[size:]], held - size
        if held:
            yield torch.cat(xs), torch.cat(ys)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self._chunks(batch_size * (self.window if shuffle else 1)):
            if shuffle:
                order = torch.randperm(len(y), generator=generator).to(y.device)
                x, y = x.index_select(0, order), y.index_select(0, order)
            for start in range(0, len(y), batch_size):
                if not (drop_last and len(y) - start < batch_size):
                    yield x[start:start + batch_size], y[start:start + batch_size]


# --------------------------------------------------------------------------------------------------- RNG

def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
            "numpy": [kind, torch.from_numpy(np.asarray(keys).astype(np.int64)), pos, has_gauss, cached]}


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))


def skip_count(arch: Mapping[str, Any]) -> int:
    """Skip-connections in the derived normal cell (all decisions for spaces without cell types)."""
    normal = {k: v for k, v in arch.items() if k.startswith("normal.")}
    return sum(1 for v in (normal or arch).values() if v in SKIP_OPS)


# ------------------------------------------------------------------------------------------ task scoring

def search_loss(task: Any) -> LossFn:
    """The loss of every search step, `(supernet output, target) -> scalar`: plain cross-entropy for a
    classification without the user's loss (what the methods always computed), else the task's loss
    (`nasopt.scoring.task_loss`) on the shaped output, checked to be a scalar."""
    if kind_of(task) == "classify" and getattr(task, "loss", None) is None:
        return F.cross_entropy
    fn = task_loss(task)

    def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return scalar_loss(fn(shaped(output, task), target), "in a step of the one-shot search")

    return loss


def hits(output: torch.Tensor, target: torch.Tensor, kind: str) -> tuple[int, int]:
    """(correct, counted) of a training batch: per sample for classify, per position for dense, (0, 0)
    for a regression (no accuracy)."""
    if kind == "regress":
        return 0, 0
    return int((output.detach().argmax(1) == target).sum()), int(target.numel())


def score(val: Mapping[str, float], task: Any, signal: Signal = DEFAULT_SIGNAL) -> float:
    """An evaluation record as one number, higher is better: a classification's accuracy; for other kinds
    the signal's entry times its sign, else (not measured on this task) minus the validation loss."""
    if kind_of(task) == "classify":
        return float(val["acc"])
    curve = epoch_record(dict(val))
    key, sign = signal
    return float(sign) * curve[key] if key in curve else -curve["val_loss"]


def valid_entries(val: Mapping[str, float], task: Any, signal: Signal = DEFAULT_SIGNAL) -> dict[str, float]:
    """An evaluation record as the validation entries of an epoch record: `valid_acc` for a classification
    (as always); for other kinds `valid_<entry>` per curve entry (loss, dense accuracy, the user's metrics)
    and `valid_score` (`score`)."""
    if kind_of(task) == "classify":
        return {"valid_acc": round(val["acc"], 6)}
    out = {"valid_" + k.removeprefix("val_"): round(v, 6) for k, v in epoch_record(dict(val)).items()}
    return {**out, "valid_score": round(score(val, task, signal), 6)}


def validation(model: nn.Module, split: Any, task: Any, signal: Signal = DEFAULT_SIGNAL,
               batch_size: int = 512) -> dict[str, float]:
    """`valid_entries` of the model on `split`: for a classification its accuracy (`evaluate` as always),
    for other kinds the task's evaluation (its loss and metrics)."""
    classify = kind_of(task) == "classify"
    return valid_entries(evaluate(model, split, batch_size, task=None if classify else task), task, signal)


class _BatchStats(nn.Module):
    """`net` kept in training mode (batch statistics) whatever `train()`/`eval()` ask of this wrapper."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def train(self, mode: bool = True) -> _BatchStats:
        self.net.train()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@torch.no_grad()
def path_score(net: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], task: Any) -> dict[str, float]:
    """The evaluation record of `net` on `batches` with batch statistics (ENAS' single paths through shared
    weights): a classification's accuracy (`acc`), else the task's evaluation (`nasopt.scoring.evaluate`)."""
    net.train()
    if kind_of(task) != "classify":
        return evaluate(_BatchStats(net), SimpleNamespace(batches=lambda *args, **kwargs: iter(batches)), task=task)
    correct = seen = 0
    for x, y in batches:
        correct += int((net(x).argmax(1) == y).sum())
        seen += len(y)
    return {"acc": correct / max(seen, 1)}


def check_output(net: nn.Module, task: Any, method: str, space: Any) -> None:
    """One small batch of training data through a (non-classification) supernet: its output must be what the
    task's kind needs, else a one-line UserError before anything is written."""
    kind = kind_of(task)
    if kind == "classify":
        return
    x, _ = next(iter(task.train.batches(2)))
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net.to(x.device)(x)
    finally:
        net.train(was)
    k = int(task.num_classes)
    want = (len(x), k, *tuple(task.input_shape[1:])) if kind == "dense" else (len(x), k)
    if tuple(out.shape) != want:
        fix = ("use a space whose networks have a dense head (e.g. nano or nb201)" if kind == "dense"
               else "check num_classes, or use another space")
        raise UserError(f"{method} cannot search {type(space).__name__} on this {kind} task: its supernet gives "
                        f"outputs of shape {tuple(out.shape)[1:]} per sample, not {want[1:]}; {fix}")
