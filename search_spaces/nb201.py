"""The NAS-Bench-201 space (Dong & Yang, ICLR 2020): one 4-node cell, 5 ops on its 6 edges, 15,625 cells.

Node 0 is the cell input; node i (1..3) is the sum of one op on every edge j -> i from an earlier node;
node 3 is the cell output. Each edge takes one of

    none          zeros (cuts the edge)
    skip_connect  identity
    nor_conv_1x1  ReLU -> conv 1x1 -> BN
    nor_conv_3x3  ReLU -> conv 3x3 -> BN
    avg_pool_3x3  3x3 average pool, stride 1, padding not counted

and the cell is repeated in the benchmark's fixed skeleton:

    stem conv3x3 + BN (-> C)
    N cells at C  -> residual block /2 -> N cells at 2C -> residual block /2 -> N cells at 4C
    BN + ReLU -> global average pool -> linear   (a dense task: 1x1 conv, upsampled to the input's size)

The residual block is NB201's ResNet basic block: ReLU-conv3x3-BN (stride 2), ReLU-conv3x3-BN, plus a
shortcut avgpool 2x2 -> conv 1x1. With the benchmark's C=16, N=5 on CIFAR-10 the network has exactly
NB201's parameter counts (73,306 to 1,531,546). Only the two residual blocks change the resolution, so
any input of 2+ pixels a side works (8x8 digits, 28x28 MNIST, 32x32 CIFAR; odd sizes round up).

Decisions are named `edge.{i}<-{j}` (the op on edge j -> i), and an architecture prints in NB201's own
notation `|op~0|+|op~0|op~1|+|op~0|op~1|op~2|` (`describe`; `parse_arch` reads it back), so it can be
looked up in the benchmark's tables. `build` asks the chooser once per edge per cell, with the same name
in all 3N cells: a one-shot method's mixed ops then share one set of architecture weights per edge,
as DARTS on NB201 does.
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
from nasopt.ops import ReLUConvBN
from nasopt.space import Chooser, DenseHead, encode_params, fixed, head_kind

__all__ = ["NB201Space", "NB201_OPS", "EDGES", "parse_arch", "format_arch"]

NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
EDGES: tuple[tuple[int, int], ...] = tuple((i, j) for i in range(1, 4) for j in range(i))  # (to, from)
_NAMES = tuple(f"edge.{i}<-{j}" for i, j in EDGES)
_EXAMPLE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


def format_arch(arch: Mapping[str, Any]) -> str:
    """The architecture in NB201's notation: node by node, `|op~from|` for each incoming edge."""
    _check_arch(arch)
    return "+".join("|" + "|".join(f"{arch[f'edge.{i}<-{j}']}~{j}" for j in range(i)) + "|" for i in range(1, 4))


def parse_arch(text: str) -> dict[str, str]:
    """Read an NB201 string such as `|nor_conv_3x3~0|+|none~0|skip_connect~1|+|...|` into the arch dict."""
    fix = f"write it as NB201 does, e.g. {_EXAMPLE}"
    if not isinstance(text, str):
        raise UserError(f"an NB201 architecture is a string, but got {type(text).__name__}; {fix}")
    s = text.strip()
    nodes = s.split("+")
    if len(nodes) != 3:
        raise UserError(f"bad NB201 architecture {text!r}: it has {len(nodes)} node(s) separated by '+', "
                        f"needs 3; {fix}")
    arch: dict[str, str] = {}
    for i, node in enumerate(nodes, start=1):
        if len(node) < 2 or not (node.startswith("|") and node.endswith("|")):
            raise UserError(f"bad NB201 architecture {text!r}: node {i} {node!r} must be enclosed in '|'; {fix}")
        tokens = node[1:-1].split("|")
        if len(tokens) != i:
            raise UserError(f"bad NB201 architecture {text!r}: node {i} has {len(tokens)} input(s), needs {i} "
                            f"(one op~j for each j < {i}); {fix}")
        for token in tokens:
            op, sep, src = token.partition("~")
            if not sep or not src.isdigit() or int(src) >= i:
                raise UserError(f"bad NB201 architecture {text!r}: {token!r} in node {i} is not op~j with "
                                f"j in 0..{i - 1}; {fix}")
            if op not in NB201_OPS:
                raise UserError(f"bad NB201 architecture {text!r}: unknown op {op!r}; the ops are "
                                f"{', '.join(NB201_OPS)}")
            name = f"edge.{i}<-{int(src)}"
            if name in arch:
                raise UserError(f"bad NB201 architecture {text!r}: node {i} takes input {src} twice; "
                                f"give each j < {i} once")
            arch[name] = op
    return {name: arch[name] for name in _NAMES}


def _check_arch(arch: Mapping[str, Any]) -> None:
    for name in _NAMES:
        if name not in arch:
            raise UserError(f"NB201 architecture misses decision {name!r}; give all of {', '.join(_NAMES)}")
        if arch[name] not in NB201_OPS:
            raise UserError(f"NB201 decision {name}={arch[name]!r} is not an op; choose one of "
                            f"{', '.join(NB201_OPS)}")


class NB201Cell(nn.Module):
    """The 4-node cell: node i = sum over j < i of edge_op[i<-j](node j); the output is node 3."""

    def __init__(self, ops: Sequence[nn.Module]) -> None:
        super().__init__()
        self.edges = nn.ModuleList(ops)  # in EDGES order: 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        ops = iter(self.edges)
        for i in range(1, 4):
            nodes.append(sum(next(ops)(nodes[j]) for j in range(i)))  # (N, C, H, W) each
        return nodes[3]


class ResidualBlock(nn.Module):
    """NB201's reduction: ReLU-conv3x3-BN /2 -> ReLU-conv3x3-BN, plus avgpool 2x2 -> conv1x1 shortcut.

    The shortcut pool rounds up (ceil_mode), so odd sizes give ceil(H/2) on both paths; on even sizes
    it is the benchmark's pool.
    """

    def __init__(self, C_in: int, C_out: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, 2, 1)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2, ceil_mode=True),
                                      nn.Conv2d(C_in, C_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.conv_b(self.conv_a(x))  # (N, C_out, ceil(H/2), ceil(W/2))


class NB201Net(nn.Module):
    """`kind` "dense": the head is a 1x1 conv on the last (H/4, W/4) map, upsampled bilinearly to (H, W)."""

    def __init__(self, in_channels: int, C: int, num_classes: int, cells: Sequence[nn.Module],
                 kind: str = "classify") -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        self.cells = nn.Sequential(*cells)
        C_last = 4 * C
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_last), nn.ReLU(inplace=False))
        self.dense = kind == "dense"
        self.classifier = DenseHead(C_last, num_classes) if self.dense else nn.Linear(C_last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.lastact(self.cells(self.stem(x)))  # (N, 4C, H/4, W/4)
        if self.dense:
            return self.classifier(features, x.shape[2:])  # (N, num_classes, H, W)
        return self.classifier(features.mean((2, 3)))  # global average pool -> (N, num_classes)


class NB201Space:
    """NAS-Bench-201: one cell of 6 edges x 5 ops in the benchmark's skeleton (C=16, N=5 by default).

    `C` (channels of the first stage) and `N` (cells per stage) may be made smaller for tests and tiny
    tasks, e.g. `NB201Space(C=8, N=1)`; the benchmark's numbers hold only for C=16, N=5.
    """

    def __init__(self, *, C: int = 16, N: int = 5) -> None:
        for key, value in (("C", C), ("N", N)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{key} >= 1` must hold, but got {key}={value!r}")
        self.C, self.N, self.ops = C, N, NB201_OPS

    @staticmethod
    def from_string(text: str) -> dict[str, str]:
        """The arch dict of an NB201 string (same as `parse_arch`)."""
        return parse_arch(text)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        return {name: trial.suggest_categorical(name, self.ops) for name in _NAMES}

    def distributions(self) -> dict[str, BaseDistribution]:
        return {name: CategoricalDistribution(self.ops) for name in _NAMES}

    def build(self, arch: Mapping[str, Any], task: Any, choose: Chooser = fixed) -> nn.Module:
        _check_arch(arch)
        shape = tuple(task.input_shape)
        if len(shape) != 3:
            raise UserError(f"the nb201 space needs image inputs (C, H, W), but the task's input shape is "
                            f"{shape}; use a 1-D space (e.g. conv1d) for sequences")
        cells: list[nn.Module] = []
        for stage in range(3):
            C = self.C * 2**stage
            if stage > 0:
                cells.append(ResidualBlock(C // 2, C))
            for _ in range(self.N):
                # one call per edge per cell, the same name in every cell: one-shot weights are shared per edge
                ops = [choose(name, self.ops, arch[name], C, C, 1, affine=True) for name in _NAMES]
                cells.append(NB201Cell(ops))
        return NB201Net(shape[0], self.C, task.num_classes, cells, head_kind(task))

    def encode(self, arch: Mapping[str, Any]) -> np.ndarray:
        return encode_params(arch, self.distributions())

    def describe(self, arch: Mapping[str, Any]) -> str:
        return format_arch(arch)
