"""The 1-D TinyML space: DARTS cells on signals `(channels, length)` (sensor windows, audio frames).

The same decisions, cells, networks, supernet and `derive` as `darts_cell.DartsCellSpace`, built
with `dim=1` (Conv1d, BatchNorm1d, 1-D pools): `{t}.n{k}.in{j}` picks a node's input state and
`{t}.n{k}.op{j}` its op among conv-BN-ReLU with kernels 3/5/7, their dilated (dilation 2) and
depthwise-separable forms, max/avg pool (window 3) and skip. The CIFAR skeleton is used: stem conv
(kernel 3) -> `layers` cells, reductions at layers//3 and 2*layers//3 -> global average -> linear,
with an optional BatchNorm1d on the raw input (signals are rarely normalised upstream); a dense task gets
per-step outputs (N, K, L) from a 1x1 conv upsampled linearly from L/4. Small defaults
(C=8, 3 cells) train on 40-sample signals in seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nasopt.errors import UserError
from nasopt.search_spaces.darts_cell import DartsCellSpace
from nasopt.search_spaces.genotypes import Genotype

__all__ = ["Conv1dSpace", "CONV1D_OPS"]

CONV1D_OPS = ("max_pool_k3", "avg_pool_k3", "skip_connect",
              "conv_bn_relu_k3", "conv_bn_relu_k5", "conv_bn_relu_k7",
              "dil_conv_bn_relu_k3", "dil_conv_bn_relu_k5", "dil_conv_bn_relu_k7",
              "sep_conv_bn_relu_k3", "sep_conv_bn_relu_k5", "sep_conv_bn_relu_k7")


class Conv1dSpace(DartsCellSpace):
    """DARTS cells over 1-D signals; `in_channels` (if given) must match the task's signal channels."""

    dim = 1
    prefix = "conv1d"

    def __init__(self, *, in_channels: int | None = None, C: int = 8, layers: int = 3, nodes: int = 4,
                 multiplier: int | None = None, stem_multiplier: int = 3, input_bn: bool = False,
                 auxiliary: bool = False, drop_path: float = 0.0, genotype: str | Genotype | None = None,
                 ops: Sequence[str] = CONV1D_OPS, search_C: int | None = None,
                 search_layers: int | None = None) -> None:
        if in_channels is not None and in_channels < 1:
            raise ValueError(f"`in_channels >= 1` must hold, but got {in_channels=}")
        super().__init__(C=C, layers=layers, nodes=nodes, multiplier=multiplier, stem_multiplier=stem_multiplier,
                         auxiliary=auxiliary, drop_path=drop_path, skeleton="cifar", genotype=genotype, ops=ops,
                         input_bn=input_bn, search_C=search_C, search_layers=search_layers)
        self.in_channels = in_channels

    def config(self) -> dict[str, Any]:
        out = {k: v for k, v in super().config().items() if k != "skeleton"}
        return {**out, "in_channels": self.in_channels}

    def _in_channels(self, task: Any) -> int:
        channels = int(task.input_shape[0])
        if self.in_channels is not None and self.in_channels != channels:
            raise UserError(f"Conv1dSpace(in_channels={self.in_channels}) does not match the task's "
                            f"{channels}-channel signals (input_shape={tuple(task.input_shape)}); "
                            "drop in_channels or set it to the task's channel count")
        return channels
