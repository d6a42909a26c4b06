"""The search-space protocol and the helpers every space shares.

An architecture is a plain dict of decisions (`trial.params`). A space is a small object that
suggests those decisions through an Optuna trial and builds a network from them. At every decision
`build` asks a `Chooser` for the module; the default `fixed` chooser builds the chosen op from the op
table, a one-shot method passes a chooser that returns a mixed op, so one network definition serves
the discrete and the gradient paths.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import optuna
import torch
import torch.nn.functional as F
from optuna.distributions import BaseDistribution, CategoricalDistribution
from torch import nn

from nasopt.errors import UserError
from nasopt.ops import build_op, layers_nd

__all__ = ["SearchSpace", "Chooser", "fixed", "arch_key", "encode_params", "random_arch", "HEAD_KINDS", "head_kind",
           "DenseHead"]

HEAD_KINDS = ("classify", "regress", "dense")  # what a network outputs (nasopt.data.Task.kind)


class Chooser(Protocol):
    """Returns the module for one decision of a network.

    `name` is the decision's parameter name, `candidates` the op names it can take, `chosen` the
    op the architecture picked (None when a supernet builds every candidate edge), `(C_in, C_out,
    stride)` the shape contract of the slot.
    """

    def __call__(self, name: str, candidates: Sequence[str], chosen: str | None, C_in: int, C_out: int,
                 stride: int, **options: Any) -> nn.Module: ...


def fixed(name: str, candidates: Sequence[str], chosen: str | None, C_in: int, C_out: int, stride: int,
          **options: Any) -> nn.Module:
    """The default chooser: build exactly the chosen op."""
    if chosen is None:
        raise ValueError(f"decision {name!r} has no chosen op; the fixed chooser builds architectures, not supernets")
    return build_op(chosen, C_in, C_out, stride, **options)


@runtime_checkable
class SearchSpace(Protocol):
    """What every space provides (no base class: any object with these methods is a space)."""

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]: ...

    def build(self, arch: Mapping[str, Any], task: Any, choose: Chooser = fixed) -> nn.Module: ...

    def distributions(self) -> dict[str, BaseDistribution]: ...

    def encode(self, arch: Mapping[str, Any]) -> np.ndarray: ...

    def describe(self, arch: Mapping[str, Any]) -> str: ...


def head_kind(task: Any) -> str:
    """What the network built for `task` outputs: its `kind` ("classify" and "regress": `num_classes` values
    per sample, (N, K), from a pooled head; "dense": `num_classes` per position, (N, K, *input_shape[1:]));
    "classify" for a task object without one (a ShapeTask of an old export, a SimpleNamespace)."""
    kind = getattr(task, "kind", None) or "classify"
    if kind not in HEAD_KINDS:
        raise UserError(f"unknown task kind {kind!r}; choose one of {', '.join(HEAD_KINDS)}")
    return str(kind)


class DenseHead(nn.Module):
    """The head of a dense task (FCN-style): a 1x1 conv to `num_classes` channels on the body's last feature
    map (with `hidden` > 0: a 1x1 conv to `hidden` channels and a ReLU first, the per-position form of a
    dense hidden layer), then, where the body downsampled, (bi)linear upsampling back to the input's
    spatial size. `forward(features, size)` returns (N, num_classes, *size)."""

    def __init__(self, C_in: int, num_classes: int, dim: int = 2, hidden: int = 0) -> None:
        super().__init__()
        conv = layers_nd(dim).conv
        self.mode = "linear" if dim == 1 else "bilinear"
        self.classifier: nn.Module = (nn.Sequential(conv(C_in, hidden, 1), nn.ReLU(), conv(hidden, num_classes, 1))
                                      if hidden else conv(C_in, num_classes, 1))

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        out = self.classifier(x)  # (N, K, h, w) or (N, K, l)
        if tuple(out.shape[2:]) != tuple(size):
            out = F.interpolate(out, size=tuple(size), mode=self.mode, align_corners=False)
        return out  # (N, K, *size)


def arch_key(arch: Mapping[str, Any]) -> str:
    """A canonical string of an architecture: equal architectures give equal keys."""
    return json.dumps({k: arch[k] for k in sorted(arch)}, separators=(",", ":"), default=str)


def encode_params(arch: Mapping[str, Any], distributions: Mapping[str, BaseDistribution]) -> np.ndarray:
    """One-hot for categorical decisions, [0, 1]-scaled numbers otherwise; absent decisions are zeros.

    The vector has the same length for every architecture of the space, so conditional (variable
    depth) architectures can be compared by predictors.
    """
    parts: list[np.ndarray] = []
    for name in sorted(distributions):
        dist = distributions[name]
        if isinstance(dist, CategoricalDistribution):
            one_hot = np.zeros(len(dist.choices), dtype=np.float32)
            if name in arch:
                one_hot[dist.choices.index(arch[name])] = 1.0
            parts.append(one_hot)
        else:
            low, high = float(dist.low), float(dist.high)  # type: ignore[attr-defined]
            value = (float(arch[name]) - low) / (high - low or 1.0) if name in arch else 0.0
            parts.append(np.array([value], dtype=np.float32))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def random_arch(space: SearchSpace, seed: int | None = None) -> dict[str, Any]:
    """Draw one architecture uniformly through the space's own `suggest` (RandomSampler)."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" line
    try:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    finally:
        optuna.logging.set_verbosity(level)
    return dict(space.suggest(study.ask()))
