"""The layers space: the variable-length layer genome of "NAS from scratch" (evolutionary NAS).

input -> `n_layers` layers -> global average pool -> [dense + ReLU] -> linear classifier (a dense task: the
same head as 1x1 convs on the last map, upsampled bilinearly to the input's size).
Decisions (parameter names; a name always has the same distribution):

- `n_layers`          number of layers, 1..max_layers
- `layer{i}.type`     conv | maxpool | avgpool | batchnorm | dropout   (for i < n_layers)
- `layer{i}.filters`  output channels of a conv layer, one of `filters`
- `layer{i}.kernel`   kernel size of a conv layer, one of `kernels`
- `layer{i}.skip`     residual add from the conv layer's input (a 1x1 projection when channels change)
- `layer{i}.rate`     drop probability of a dropout layer, one of `rates`
- `dense.units`       hidden units of the dense head, one of `dense_units` (0 = no dense layer)

A conv layer is conv-BN-ReLU with stride 1 from the op table (`conv3x3`, `conv5x5`, ...); the pools
(3x3) do the downsampling. A pool strides 2 only while the result keeps at least `min_resolution`
pixels on its shorter side, and strides 1 past that, so any genome fits any input from 8x8 up:
8x8 with three pools ends at 2x2 (8 -> 4 -> 2 -> 2). batchnorm and dropout keep the shape.

`build` asks the chooser once per layer (`layer{i}`, candidates = the slot's op names) and once per
conv layer's skip (`layer{i}.skip`, candidates `zero`/`skip`), so one-shot methods can reuse it.
Every layer, batchnorm and dropout included, comes from the op table through the chooser.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from torch import nn

from nasopt.errors import UserError
from nasopt.ops import OPS, Zero
from nasopt.space import Chooser, DenseHead, encode_params, fixed, head_kind

__all__ = ["LayersSpace", "LAYER_TYPES"]

LAYER_TYPES = ("conv", "maxpool", "avgpool", "batchnorm", "dropout")
_POOL_OPS = {"maxpool": "maxpool3x3", "avgpool": "avgpool3x3"}
_SHORT = {"maxpool": "mp", "avgpool": "ap", "batchnorm": "bn"}


class Layer(nn.Module):
    """One gene: `op(x)`, plus `branch(x)` when the layer has a skip connection."""

    def __init__(self, op: nn.Module, branch: nn.Module | None = None) -> None:
        super().__init__()
        self.op, self.branch = op, branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.op(x)
        return out if self.branch is None else out + self.branch(x)


class LayersNet(nn.Module):
    """`kind` "dense": the head is `DenseHead` (the dense layer as a 1x1 conv of `units` channels), upsampled
    back to the input's size where the pools strided, (N, K, H, W)."""

    def __init__(self, layers: Sequence[nn.Module], C_last: int, units: int, num_classes: int,
                 kind: str = "classify") -> None:
        super().__init__()
        self.layers = nn.Sequential(*layers)
        self.dense = kind == "dense"
        self.head: nn.Module
        if self.dense:
            self.head = DenseHead(C_last, num_classes, hidden=units)
        else:
            self.head = (nn.Sequential(nn.Linear(C_last, units), nn.ReLU(), nn.Linear(units, num_classes)) if units
                         else nn.Linear(C_last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.layers(x)  # (N, C_last, h, w)
        if self.dense:
            return self.head(features, x.shape[2:])  # (N, num_classes, H, W)
        return self.head(features.mean((2, 3)))  # global average pool -> (N, num_classes)


class LayersSpace:
    """A sequence of 1..max_layers layer genes with conditional hyperparameters and optional skips."""

    def __init__(self, *, max_layers: int = 8, filters: Sequence[int] = (16, 32, 64),
                 kernels: Sequence[int] = (3, 5), rates: Sequence[float] = (0.1, 0.25, 0.5),
                 dense_units: Sequence[int] = (0, 64, 128), min_resolution: int = 2) -> None:
        if max_layers < 1:
            raise ValueError(f"`max_layers >= 1` must hold, but got {max_layers=}")
        if min_resolution < 1:
            raise ValueError(f"`min_resolution >= 1` must hold, but got {min_resolution=}")
        bad_kernels = [k for k in kernels if f"conv{k}x{k}" not in OPS]
        if not kernels or bad_kernels:
            raise UserError(f"LayersSpace kernels must be a non-empty subset of (1, 3, 5, 7), but got "
                            f"kernels={tuple(kernels)}")
        if not filters or any(int(f) != f or f < 1 for f in filters):
            raise UserError(f"LayersSpace filters must be positive channel counts, but got {tuple(filters)}")
        if not rates or any(not 0.0 <= r < 1.0 for r in rates):
            raise UserError(f"LayersSpace rates must be drop probabilities in [0, 1), but got {tuple(rates)}")
        if not dense_units or any(int(u) != u or u < 0 for u in dense_units):
            raise UserError(f"LayersSpace dense_units must be unit counts >= 0 (0 = no dense layer), but got "
                            f"{tuple(dense_units)}")
        self.max_layers, self.min_resolution = max_layers, min_resolution
        self.filters, self.kernels = tuple(filters), tuple(kernels)
        self.rates, self.dense_units = tuple(rates), tuple(dense_units)
        self.candidates = [f"conv{k}x{k}" for k in self.kernels] + ["maxpool3x3", "avgpool3x3", "batchnorm",
                                                                   "dropout"]

    # -- decisions ---------------------------------------------------------------------------
    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        n = trial.suggest_int("n_layers", 1, self.max_layers)
        arch: dict[str, Any] = {"n_layers": n}
        for i in range(n):
            kind = arch[f"layer{i}.type"] = trial.suggest_categorical(f"layer{i}.type", LAYER_TYPES)
            if kind == "conv":
                arch[f"layer{i}.filters"] = trial.suggest_categorical(f"layer{i}.filters", self.filters)
                arch[f"layer{i}.kernel"] = trial.suggest_categorical(f"layer{i}.kernel", self.kernels)
                arch[f"layer{i}.skip"] = trial.suggest_categorical(f"layer{i}.skip", (False, True))
            elif kind == "dropout":
                arch[f"layer{i}.rate"] = trial.suggest_categorical(f"layer{i}.rate", self.rates)
        arch["dense.units"] = trial.suggest_categorical("dense.units", self.dense_units)
        return arch

    def distributions(self) -> dict[str, BaseDistribution]:
        out: dict[str, BaseDistribution] = {"n_layers": IntDistribution(1, self.max_layers)}
        for i in range(self.max_layers):
            out[f"layer{i}.type"] = CategoricalDistribution(LAYER_TYPES)
            out[f"layer{i}.filters"] = CategoricalDistribution(self.filters)
            out[f"layer{i}.kernel"] = CategoricalDistribution(self.kernels)
            out[f"layer{i}.skip"] = CategoricalDistribution((False, True))
            out[f"layer{i}.rate"] = CategoricalDistribution(self.rates)
        out["dense.units"] = CategoricalDistribution(self.dense_units)
        return out

    # -- network -----------------------------------------------------------------------------
    def build(self, arch: Mapping[str, Any], task: Any, choose: Chooser = fixed) -> nn.Module:
        C, size = task.input_shape[0], min(task.input_shape[1:])
        layers: list[nn.Module] = []
        for i in range(int(arch["n_layers"])):
            kind = arch[f"layer{i}.type"]
            C_out, stride = C, 1
            options: dict[str, Any] = {}
            if kind == "conv":
                k, C_out = int(arch[f"layer{i}.kernel"]), int(arch[f"layer{i}.filters"])
                chosen = f"conv{k}x{k}"
            elif kind in _POOL_OPS:
                chosen = _POOL_OPS[kind]
                stride = 2 if math.ceil(size / 2) >= self.min_resolution else 1
            else:
                chosen = kind
                if kind == "dropout":
                    options = {"rate": float(arch[f"layer{i}.rate"])}
            op = choose(f"layer{i}", self.candidates, chosen, C, C_out, stride, **options)
            branch = None
            if kind == "conv":
                skip = "skip" if arch[f"layer{i}.skip"] else "zero"
                branch = choose(f"layer{i}.skip", ("zero", "skip"), skip, C, C_out, 1)
                branch = None if isinstance(branch, Zero) else branch  # no skip: no branch to run
            layers.append(Layer(op, branch))
            C, size = C_out, math.ceil(size / stride)
        return LayersNet(layers, C, int(arch["dense.units"]), task.num_classes, head_kind(task))

    def encode(self, arch: Mapping[str, Any]) -> np.ndarray:
        return encode_params(arch, self.distributions())

    def describe(self, arch: Mapping[str, Any]) -> str:
        genes = []
        for i in range(int(arch["n_layers"])):
            kind = arch[f"layer{i}.type"]
            if kind == "conv":
                genes.append(f"c{arch[f'layer{i}.filters']}k{arch[f'layer{i}.kernel']}"
                             + ("+s" if arch[f"layer{i}.skip"] else ""))
            elif kind == "dropout":
                genes.append(f"do{float(arch[f'layer{i}.rate']):g}")
            else:
                genes.append(_SHORT[kind])
        return "layers:" + "-".join(genes) + f"|d{arch['dense.units']}"
