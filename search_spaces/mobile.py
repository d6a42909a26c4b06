"""The mobile space: a MobileNetV2 / ProxylessNAS-style macro space.

stem conv3x3 -> `stages` stages of inverted-residual blocks -> global pool -> linear.
Decisions (parameter names):

- `width`                    channel multiplier, one of `widths`
- `stage{s}.depth`           blocks in stage s, 1..max_depth
- `stage{s}.block{b}.kernel` depthwise kernel of block b (only for b < depth), one of `kernels`
- `stage{s}.block{b}.expand` expansion ratio of block b (only for b < depth), one of `expands`

A stage's first block changes channels and may stride; blocks past the depth are identities (the
`skip` candidate of their slot), which is how a supernet expresses the same depth choice:
`supernet(task, choose)` builds every block with all candidates (at one width) and `derive(weights)`
maps per-block weights back to these decisions (ProxylessNAS).
The stem and stage strides adapt to the input size: an 8x8 digit ends at 2x2, a 32x32 CIFAR image
at 4x4 and a 224x224 image at 7x7 (with enough stages), which is too coarse for a dense (per-position)
task: `build` refuses one.

Signals `(channels, length)` (MNIST-1D, sensor windows) get the same decisions and blocks in their 1-D
form (Conv1d, BatchNorm1d, a length-k depthwise conv): a 40-sample MNIST-1D signal ends at 5 positions.
Image networks are unchanged by this: the same modules, parameters and initialisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import optuna
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from torch import nn

from nasopt.errors import UserError
from nasopt.ops import ACTIVATIONS, OPS, ConvBNAct
from nasopt.space import Chooser, encode_params, fixed, head_kind

__all__ = ["MobileSpace", "strides_for"]

_CHANNELS = (16, 24, 32, 64, 96, 160, 320)


def _round8(c: float) -> int:
    return max(8, int(c + 4) // 8 * 8)


def strides_for(size: int, stages: int) -> tuple[int, list[int]]:
    """(stem stride, per-stage strides) that bring `size` down to about 4 (small) or 7 (large inputs)."""
    target = 2 if size < 16 else 4 if size < 64 else 7
    downs = max(0, min(stages + 1, round(math.log2(max(size, 1) / target))))
    stem = 2 if size >= 64 and downs > 0 else 1
    stage_downs = downs - (stem == 2)
    # downsample the last stages first so small inputs keep their resolution early on
    return stem, [2 if s >= stages - stage_downs else 1 for s in range(stages)]


class MobileNet(nn.Module):
    def __init__(self, stem: nn.Module, blocks: Sequence[nn.Module], C_last: int, num_classes: int,
                 dropout: float) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(C_last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))  # (N, C_last, h, w) or (N, C_last, l)
        return self.classifier(self.dropout(x.mean(tuple(range(2, x.dim())))))


class MobileSpace:
    """Stages of MBConv blocks with a depth, kernel, expansion and width choice."""

    def __init__(self, *, stages: int = 3, max_depth: int = 3, channels: Sequence[int] | None = None,
                 kernels: Sequence[int] = (3, 5, 7), expands: Sequence[int] = (1, 3, 6),
                 widths: Sequence[float] = (0.5, 0.75, 1.0), stem_channels: int = 16, act: str = "relu6",
                 se: bool = False, dropout: float = 0.0) -> None:
        if not 1 <= stages <= len(_CHANNELS):
            raise ValueError(f"`1 <= stages <= {len(_CHANNELS)}` must hold, but got {stages=}")
        if max_depth < 1:
            raise ValueError(f"`max_depth >= 1` must hold, but got {max_depth=}")
        bad_kernels = [k for k in kernels if f"mbconv_k{k}_e1" not in OPS]
        bad_expands = [e for e in expands if f"mbconv_k3_e{e}" not in OPS]
        if bad_kernels or bad_expands or not kernels or not expands:
            raise UserError(f"MobileSpace takes non-empty kernels from (3, 5, 7) and expands from (1, 3, 4, 6), but "
                            f"got kernels={tuple(kernels)}, expands={tuple(expands)}")
        if act not in ACTIVATIONS:
            raise UserError(f"unknown activation {act!r}; choose one of {sorted(ACTIVATIONS)}")
        if not widths or any(w <= 0 for w in widths):
            raise UserError(f"widths must be positive multipliers, but got {tuple(widths)}")
        channels = tuple(channels) if channels is not None else _CHANNELS[:stages]
        if len(channels) != stages:
            raise ValueError(f"`len(channels) == stages` must hold, but got {len(channels)=} and {stages=}")
        self.stages, self.max_depth, self.channels = stages, max_depth, channels
        self.kernels, self.expands, self.widths = tuple(kernels), tuple(expands), tuple(widths)
        self.stem_channels, self.act, self.se, self.dropout = stem_channels, act, se, dropout
        self.candidates = [f"mbconv_k{k}_e{e}" for k in self.kernels for e in self.expands]

    # -- decisions ---------------------------------------------------------------------------
    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        arch: dict[str, Any] = {"width": trial.suggest_categorical("width", self.widths)}
        for s in range(1, self.stages + 1):
            depth = arch[f"stage{s}.depth"] = trial.suggest_int(f"stage{s}.depth", 1, self.max_depth)
            for b in range(depth):
                name = f"stage{s}.block{b}"
                arch[f"{name}.kernel"] = trial.suggest_categorical(f"{name}.kernel", self.kernels)
                arch[f"{name}.expand"] = trial.suggest_categorical(f"{name}.expand", self.expands)
        return arch

    def distributions(self) -> dict[str, BaseDistribution]:
        out: dict[str, BaseDistribution] = {"width": CategoricalDistribution(self.widths)}
        for s in range(1, self.stages + 1):
            out[f"stage{s}.depth"] = IntDistribution(1, self.max_depth)
            for b in range(self.max_depth):
                out[f"stage{s}.block{b}.kernel"] = CategoricalDistribution(self.kernels)
                out[f"stage{s}.block{b}.expand"] = CategoricalDistribution(self.expands)
        return out

    # -- network -----------------------------------------------------------------------------
    def build(self, arch: Mapping[str, Any], task: Any, choose: Chooser = fixed) -> nn.Module:
        def chosen(s: int, b: int) -> str:
            name = f"stage{s}.block{b}"
            if b >= int(arch[f"stage{s}.depth"]):
                return "skip"
            return f"mbconv_k{arch[f'{name}.kernel']}_e{arch[f'{name}.expand']}"

        return self._network(task, float(arch["width"]), choose, chosen)

    def supernet(self, task: Any, choose: Chooser, *, width: float | None = None) -> nn.Module:
        """Every block up to `max_depth`, one `choose(f"stage{s}.block{b}", candidates, None, ...)` each:
        the mbconv candidates, plus `skip` for the blocks a shallower stage drops (b >= 1). The width is not
        relaxed: the supernet is built at one `width` (default the largest of `widths`)."""
        return self._network(task, self._search_width(width), choose, lambda s, b: None)

    def derive(self, weights: Mapping[str, Sequence[float]], *, width: float | None = None) -> dict[str, Any]:
        """The architecture of the most probable candidate per block of `supernet`: a stage keeps its
        non-`skip` blocks in order (dropping a block is the identity), so its depth is their number."""
        ops = {f"mbconv_k{k}_e{e}": (k, e) for k in self.kernels for e in self.expands}
        arch: dict[str, Any] = {"width": self._search_width(width)}
        for s in range(1, self.stages + 1):
            kept = []
            for b in range(self.max_depth):
                name = f"stage{s}.block{b}"
                candidates = self.candidates + (["skip"] if b > 0 else [])
                if name not in weights or len(weights[name]) != len(candidates):
                    raise ValueError(f"`derive` needs {len(candidates)} weights for {name!r} (candidates "
                                     f"{candidates}), but got {weights.get(name)!r}")
                best = candidates[int(np.argmax(np.asarray(weights[name], dtype=np.float64)))]
                if best != "skip":
                    kept.append(ops[best])
            arch[f"stage{s}.depth"] = len(kept)
            for b, (k, e) in enumerate(kept):
                arch[f"stage{s}.block{b}.kernel"], arch[f"stage{s}.block{b}.expand"] = k, e
        return arch

    def _search_width(self, width: float | None) -> float:
        """`width` as the space's own choice (the largest when None)."""
        if width is None:
            return max(self.widths)
        if width not in self.widths:
            raise UserError(f"width {width} is not one of the space's widths {self.widths}; pick one of them")
        return self.widths[self.widths.index(width)]

    def _network(self, task: Any, width: float, choose: Chooser,
                 chosen: Callable[[int, int], str | None]) -> nn.Module:
        """stem -> stages of `choose`n blocks -> head; `chosen(s, b)` names block b's op (None: supernet)."""
        shape = tuple(task.input_shape)
        if len(shape) not in (2, 3):
            raise UserError(f"space mobile builds for images (channels, height, width) and signals (channels, "
                            f"length), but the task's input shape is {shape}")
        in_channels, size, dim = shape[0], min(shape[1:]), len(shape) - 1
        nd = {} if dim == 2 else {"dim": dim}  # an image's op options stay as they were (latency-table keys)
        stem_stride, strides = strides_for(size, self.stages)
        if head_kind(task) == "dense":
            from nasopt.search_spaces import DENSE_SPACES

            raise UserError(f"space mobile cannot produce a dense (per-position) output: its stages stride every "
                            f"input down to about 2 to 7 positions a side (here {size} -> "
                            f"{math.ceil(size / 2 ** (strides.count(2) + (stem_stride == 2)))}); "
                            f"use {', '.join(DENSE_SPACES[:-1])} or {DENSE_SPACES[-1]}")
        C_in = _round8(self.stem_channels * width)
        stem = ConvBNAct(in_channels, C_in, 3, stem_stride, act=self.act, dim=dim)
        blocks: list[nn.Module] = []
        for s in range(1, self.stages + 1):
            C_out = _round8(self.channels[s - 1] * width)
            for b in range(self.max_depth):
                name = f"stage{s}.block{b}"
                candidates = self.candidates + (["skip"] if b > 0 else [])
                stride = strides[s - 1] if b == 0 else 1
                op = choose(name, candidates, chosen(s, b), C_in, C_out, stride, act=self.act, se=self.se, **nd)
                if not isinstance(op, nn.Identity):
                    blocks.append(op)
                C_in = C_out
        return MobileNet(stem, blocks, C_in, task.num_classes, self.dropout)

    def encode(self, arch: Mapping[str, Any]) -> np.ndarray:
        return encode_params(arch, self.distributions())

    def describe(self, arch: Mapping[str, Any]) -> str:
        stages = []
        for s in range(1, self.stages + 1):
            blocks = [f"k{arch[f'stage{s}.block{b}.kernel']}e{arch[f'stage{s}.block{b}.expand']}"
                      for b in range(int(arch[f"stage{s}.depth"]))]
            stages.append(f"s{s}:" + "-".join(blocks))
        return f"mobile:w{float(arch['width']):g}|" + "|".join(stages)
