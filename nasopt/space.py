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
from optuna.distributions import BaseDistribution, CategoricalDistribution
from torch import nn

from nasopt.ops import build_op

__all__ = ["SearchSpace", "Chooser", "fixed", "arch_key", "encode_params", "random_arch"]


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
