"""The nano space: the educational space of nanoNAS.

stem conv3x3 -> 4 positions, each one of {conv3x3, conv5x5, maxpool3x3, skip, zero} -> head.
Position i maps node i-1 to node i (node 0 is the stem output); the head sees the sum of all five
nodes, so `zero` at position i cuts the chain there while the earlier nodes still count. 5^4 = 625
architectures, all with a different network. The head pools and classifies, or for a dense task classifies
every pixel of the full-resolution sum (a 1x1 conv).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution
from torch import nn

from nasopt.errors import UserError
from nasopt.ops import OPS, ConvBNAct
from nasopt.space import Chooser, DenseHead, encode_params, fixed, head_kind

__all__ = ["NanoSpace", "NANO_OPS"]

NANO_OPS = ("conv3x3", "conv5x5", "maxpool3x3", "skip", "zero")
_SHORT = {"conv3x3": "c3", "conv5x5": "c5", "maxpool3x3": "mp", "skip": "sk", "zero": "0"}


class NanoNet(nn.Module):
    """`kind` "dense": the head is a 1x1 conv on the full-resolution sum (`DenseHead`), (N, K, H, W)."""

    def __init__(self, in_channels: int, C: int, num_classes: int, positions: Sequence[nn.Module],
                 kind: str = "classify") -> None:
        super().__init__()
        self.stem = ConvBNAct(in_channels, C, 3)
        self.positions = nn.ModuleList(positions)
        self.dense = kind == "dense"
        self.classifier = DenseHead(C, num_classes) if self.dense else nn.Linear(C, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        node = self.stem(x)  # (N, C, H, W)
        total = node
        for op in self.positions:
            node = op(node)
            total = total + node
        if self.dense:
            return self.classifier(total, x.shape[2:])  # (N, num_classes, H, W)
        return self.classifier(total.mean((2, 3)))  # global average pool -> (N, num_classes)


class NanoSpace:
    """4 positions x 5 ops on a fixed-width chain; `C` channels throughout."""

    def __init__(self, *, positions: int = 4, C: int = 32, ops: Sequence[str] = NANO_OPS) -> None:
        if positions < 1:
            raise ValueError(f"`positions >= 1` must hold, but got {positions=}")
        if isinstance(ops, str) or not ops:
            raise UserError(f"NanoSpace(ops=...) needs a non-empty list of op names, but got ops={ops!r}; e.g. "
                            f"ops={list(NANO_OPS)!r}")
        unknown = [op for op in ops if op not in OPS]
        if unknown:
            raise UserError(f"unknown op {unknown[0]!r} in NanoSpace(ops=...); known ops: {', '.join(sorted(OPS))}")
        self.positions, self.C, self.ops = positions, C, tuple(ops)

    def _names(self) -> list[str]:
        return [f"pos{i}.op" for i in range(self.positions)]

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        return {name: trial.suggest_categorical(name, self.ops) for name in self._names()}

    def distributions(self) -> dict[str, BaseDistribution]:
        return {name: CategoricalDistribution(self.ops) for name in self._names()}

    def build(self, arch: Mapping[str, Any], task: Any, choose: Chooser = fixed) -> nn.Module:
        C = self.C
        ops = [choose(name, self.ops, arch[name], C, C, 1) for name in self._names()]
        return NanoNet(task.input_shape[0], C, task.num_classes, ops, head_kind(task))

    def encode(self, arch: Mapping[str, Any]) -> np.ndarray:
        return encode_params(arch, self.distributions())

    def describe(self, arch: Mapping[str, Any]) -> str:
        return "nano:" + "-".join(_SHORT.get(arch[n], arch[n]) for n in self._names())
