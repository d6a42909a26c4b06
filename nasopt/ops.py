"""THE op table: every candidate operation of every space, built by name.

`build_op(name, C_in, C_out, stride)` returns an `nn.Module` mapping `(N, C_in, H, W)` to
`(N, C_out, ceil(H / stride), ceil(W / stride))`. Discrete trials, supernets and exported models
all build their ops here, so an op means the same thing on every path. Nothing here touches a
device: modules are created on the CPU and moved with `.to(device)` by the caller.

The ops in `ND_OPS` also build for 1-D signals: `build_op(name, C_in, C_out, stride, dim=1)` maps
`(N, C_in, L)` to `(N, C_out, ceil(L / stride))` with the same layers in their 1-D form (the 1-D
TinyML space and the mobile space on signals use them); every other op is 2-D only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from nasopt.errors import UserError

__all__ = ["OPS", "ND_OPS", "ACTIVATIONS", "build_op", "activation", "layers_nd", "InvertedResidual",
           "SqueezeExcite", "Pool"]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=False),
    "relu6": lambda: nn.ReLU6(inplace=False),
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "hswish": nn.Hardswish,
}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise UserError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _pad(kernel: int, dilation: int = 1) -> int:
    return dilation * (kernel - 1) // 2


class NdLayers(NamedTuple):
    conv: type[nn.Module]
    bn: type[nn.Module]
    max_pool: type[nn.Module]
    avg_pool: type[nn.Module]


_LAYERS = {1: NdLayers(nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AvgPool1d),
           2: NdLayers(nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d)}


def layers_nd(dim: int) -> NdLayers:
    """The torch layer classes of a `dim`-D network (1: signals (N, C, L), 2: images (N, C, H, W))."""
    if dim not in _LAYERS:
        raise ValueError(f"`dim in (1, 2)` must hold, but got {dim=}")
    return _LAYERS[dim]


class StridedPointwise(nn.Conv2d):
    """A 2-D 1x1 conv of stride 2 without padding (nn.Conv2d's parameters and state dict). On the CPU, where
    autograd wants the weight's gradient of a channels-last input with fewer than 8 channels, it computes the same
    values as a stride-1 conv of every second pixel: ATen's (oneDNN's) weight gradient of the strided conv
    there writes past its buffer with 2-7 channels and is wrong with 1 (torch 2.14.1, AMD EPYC: a heap corruption that aborted PC-DARTS' 4-channel
    reductions; no other kernel size, stride, dilation or depthwise conv did, checked under glibc's malloc
    checks)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (x.dim() == 4 and x.device.type == "cpu" and x.shape[1] < 8 and x.stride(1) == 1
                and torch.is_grad_enabled() and self.weight.requires_grad and self.groups == 1
                and self.kernel_size == (1, 1) and self.padding == (0, 0) and self.dilation == (1, 1)):
            return super().forward(x)
        s, t = self.stride
        sub = x[:, :, ::s, ::t].contiguous(memory_format=torch.channels_last)
        return F.conv2d(sub, self.weight, self.bias)


class ConvBNAct(nn.Sequential):
    """conv -> BN -> activation (the nano/mobile ordering)."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int = 1, groups: int = 1,
                 dilation: int = 1, act: str | None = "relu", dim: int = 2) -> None:
        nd = layers_nd(dim)
        conv = StridedPointwise if dim == 2 and kernel == 1 and stride > 1 and groups == 1 else nd.conv
        layers: list[nn.Module] = [
            conv(C_in, C_out, kernel, stride, _pad(kernel, dilation), dilation, groups, bias=False),
            nd.bn(C_out),
        ]
        if act is not None:
            layers.append(activation(act))
        super().__init__(*layers)


class ReLUConvBN(nn.Sequential):
    """ReLU -> conv -> BN (the DARTS ordering, used by its cell preprocessing)."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, affine: bool = True,
                 dim: int = 2) -> None:
        nd = layers_nd(dim)
        super().__init__(nn.ReLU(inplace=False), nd.conv(C_in, C_out, kernel, stride, padding, bias=False),
                         nd.bn(C_out, affine=affine))


class DilConv(nn.Sequential):
    """ReLU -> depthwise (dilated) conv -> pointwise conv -> BN, as in DARTS."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, dilation: int,
                 affine: bool = True, dim: int = 2) -> None:
        nd = layers_nd(dim)
        super().__init__(
            nn.ReLU(inplace=False),
            nd.conv(C_in, C_in, kernel, stride, padding, dilation=dilation, groups=C_in, bias=False),
            nd.conv(C_in, C_out, 1, bias=False),
            nd.bn(C_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked DilConvs with dilation 1 (DARTS' separable conv); only the first one strides."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, affine: bool = True,
                 dim: int = 2) -> None:
        super().__init__(DilConv(C_in, C_in, kernel, stride, padding, 1, affine, dim),
                         DilConv(C_in, C_out, kernel, 1, padding, 1, affine, dim))


class Conv7x1_1x7(nn.Sequential):
    """ReLU -> 1x7 conv -> 7x1 conv -> BN: the factorized 7x7 of AmoebaNet's reduction cell (DARTS' table)."""

    def __init__(self, C_in: int, C_out: int, stride: int, affine: bool = True) -> None:
        super().__init__(nn.ReLU(inplace=False),
                         nn.Conv2d(C_in, C_out, (1, 7), (1, stride), (0, 3), bias=False),
                         nn.Conv2d(C_out, C_out, (7, 1), (stride, 1), (3, 0), bias=False),
                         nn.BatchNorm2d(C_out, affine=affine))


class Zero(nn.Module):
    """The 'no connection' op: zeros of the output shape (C_out channels, strided)."""

    def __init__(self, C_in: int, C_out: int, stride: int) -> None:
        super().__init__()
        self.C_out, self.stride = C_out, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[(slice(None), slice(None)) + (slice(None, None, self.stride),) * (x.dim() - 2)]  # every spatial dim
        if x.shape[1] != self.C_out:
            x = x.new_zeros(x.shape[0], self.C_out, *x.shape[2:])
        return x.mul(0.0)


class FactorizedReduce(nn.Module):
    """Stride-2 'identity': two offset 1x1 convs with stride 2 concatenated (DARTS)."""

    def __init__(self, C_in: int, C_out: int, affine: bool = True, dim: int = 2) -> None:
        super().__init__()
        nd = layers_nd(dim)
        self.relu = nn.ReLU(inplace=False)
        conv = StridedPointwise if dim == 2 else nd.conv
        self.conv_1 = conv(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = conv(C_in, C_out - C_out // 2, 1, stride=2, bias=False)
        self.bn = nd.bn(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        # the second branch starts one position in; odd sizes are padded at the far end so both branches
        # give ceil(size/2): (N, C/2, ceil(H/2), ceil(W/2)). Even sizes need no pad: a view, no copy.
        pad: list[int] = []
        for size in reversed(x.shape[2:]):
            pad += [0, size % 2]
        y = (F.pad(x, pad) if any(pad) else x)[(slice(None), slice(None)) + (slice(1, None),) * (x.dim() - 2)]
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(y)], dim=1))


def _identity(C_in: int, C_out: int, stride: int, dim: int = 2) -> nn.Module:
    if stride == 1 and C_in == C_out:
        return nn.Identity()
    if stride == 1:
        return ConvBNAct(C_in, C_out, 1, act=None, dim=dim)
    return FactorizedReduce(C_in, C_out, dim=dim)


def _skip_connect(C_in: int, C_out: int, stride: int, affine: bool = True, dim: int = 2) -> nn.Module:
    """DARTS' skip: the identity, a 1x1 ReLU-conv-BN for a channel change, FactorizedReduce when strided."""
    if stride == 1 and C_in == C_out:
        return nn.Identity()
    if stride == 1:
        return ReLUConvBN(C_in, C_out, 1, 1, 0, affine, dim)
    return FactorizedReduce(C_in, C_out, affine, dim)


class Pool(nn.Module):
    """A 3x3 pool, followed by a 1x1 conv-BN when the channel count changes."""

    def __init__(self, kind: str, C_in: int, C_out: int, stride: int, kernel: int = 3, dim: int = 2) -> None:
        super().__init__()
        nd = layers_nd(dim)
        self.pool: nn.Module = (nd.max_pool(kernel, stride, kernel // 2) if kind == "max"
                                else nd.avg_pool(kernel, stride, kernel // 2, count_include_pad=False))
        self.proj = nn.Identity() if C_in == C_out else ConvBNAct(C_in, C_out, 1, act=None, dim=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(x))


class SqueezeExcite(nn.Module):
    """Channel attention: global pool -> reduce -> act -> expand -> sigmoid gate."""

    def __init__(self, C: int, reduction: int = 4, act: str = "relu", dim: int = 2) -> None:
        super().__init__()
        hidden, conv = max(8, C // reduction), layers_nd(dim).conv
        self.fc1, self.act, self.fc2 = conv(C, hidden, 1), activation(act), conv(hidden, C, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(tuple(range(2, x.dim())), keepdim=True)  # (N, C, 1, 1) or (N, C, 1)
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(s))))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> kxk depthwise -> [SE] -> 1x1 project, residual when shapes match.

    With `expand == 1` the expansion conv is left out, as in MobileNetV2's first block. `dim=1` builds the
    same block for signals (N, C, L): Conv1d, BatchNorm1d, a length-`kernel` depthwise conv.
    """

    def __init__(self, C_in: int, C_out: int, stride: int, kernel: int, expand: int, act: str = "relu6",
                 se: bool = False, dim: int = 2) -> None:
        super().__init__()
        hidden = C_in * expand
        layers: list[nn.Module] = [] if expand == 1 else [ConvBNAct(C_in, hidden, 1, act=act, dim=dim)]
        layers.append(ConvBNAct(hidden, hidden, kernel, stride, groups=hidden, act=act, dim=dim))
        if se:
            layers.append(SqueezeExcite(hidden, act=act, dim=dim))
        layers.append(ConvBNAct(hidden, C_out, 1, act=None, dim=dim))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and C_in == C_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class SelfAttention2d(nn.Module):
    """A small pre-norm multi-head self-attention block over the H*W positions, with a residual.

    Strided or channel-changing use goes through the identity/reduction op first.
    """

    def __init__(self, C_in: int, C_out: int, stride: int, heads: int = 4) -> None:
        super().__init__()
        self.reduce = _identity(C_in, C_out, stride)
        heads = heads if C_out % heads == 0 else 1
        self.norm = nn.LayerNorm(C_out)
        self.attn = nn.MultiheadAttention(C_out, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        n, c, h, w = x.shape
        seq = x.flatten(2).transpose(1, 2)  # (N, H*W, C)
        q = self.norm(seq)
        out, _ = self.attn(q, q, q, need_weights=False)
        return x + out.transpose(1, 2).reshape(n, c, h, w)


OpFactory = Callable[..., nn.Module]

OPS: dict[str, OpFactory] = {
    # the nano ops (conv-BN-ReLU ordering)
    "conv1x1": lambda C_in, C_out, stride, act="relu", **_: ConvBNAct(C_in, C_out, 1, stride, act=act),
    "conv3x3": lambda C_in, C_out, stride, act="relu", **_: ConvBNAct(C_in, C_out, 3, stride, act=act),
    "conv5x5": lambda C_in, C_out, stride, act="relu", **_: ConvBNAct(C_in, C_out, 5, stride, act=act),
    "conv7x7": lambda C_in, C_out, stride, act="relu", **_: ConvBNAct(C_in, C_out, 7, stride, act=act),
    "maxpool3x3": lambda C_in, C_out, stride, **_: Pool("max", C_in, C_out, stride),
    "avgpool3x3": lambda C_in, C_out, stride, **_: Pool("avg", C_in, C_out, stride),
    "skip": lambda C_in, C_out, stride, dim=2, **_: _identity(C_in, C_out, stride, dim),
    "zero": lambda C_in, C_out, stride, **_: Zero(C_in, C_out, stride),
    # DARTS' primitives under their paper names (ReLU-conv-BN ordering, affine switchable)
    "none": lambda C_in, C_out, stride, **_: Zero(C_in, C_out, stride),
    "skip_connect": lambda C_in, C_out, stride, affine=True, dim=2, **_: _skip_connect(C_in, C_out, stride,
                                                                                      affine, dim),
    "max_pool_3x3": lambda C_in, C_out, stride, **_: Pool("max", C_in, C_out, stride),
    "avg_pool_3x3": lambda C_in, C_out, stride, **_: Pool("avg", C_in, C_out, stride),
    "sep_conv_3x3": lambda C_in, C_out, stride, affine=True, **_: SepConv(C_in, C_out, 3, stride, 1, affine),
    "sep_conv_5x5": lambda C_in, C_out, stride, affine=True, **_: SepConv(C_in, C_out, 5, stride, 2, affine),
    "sep_conv_7x7": lambda C_in, C_out, stride, affine=True, **_: SepConv(C_in, C_out, 7, stride, 3, affine),
    "dil_conv_3x3": lambda C_in, C_out, stride, affine=True, **_: DilConv(C_in, C_out, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda C_in, C_out, stride, affine=True, **_: DilConv(C_in, C_out, 5, stride, 4, 2, affine),
    "conv_7x1_1x7": lambda C_in, C_out, stride, affine=True, **_: Conv7x1_1x7(C_in, C_out, stride, affine),
    # plain layers of the layer-genome space (shape-preserving; a channel change gets a 1x1 projection)
    "batchnorm": lambda C_in, C_out, stride, **_: nn.Sequential(_identity(C_in, C_out, stride), nn.BatchNorm2d(C_out)),
    "dropout": lambda C_in, C_out, stride, rate=0.5, **_: nn.Sequential(_identity(C_in, C_out, stride),
                                                                         nn.Dropout(float(rate))),
    # modern options for richer spaces
    "se": lambda C_in, C_out, stride, act="relu", **_: nn.Sequential(
        _identity(C_in, C_out, stride), SqueezeExcite(C_out, act=act)),
    "attention": lambda C_in, C_out, stride, **_: SelfAttention2d(C_in, C_out, stride),
}
# Dimension-generic ops (1-D TinyML signals and 2-D images) for the conv1d space, named by their kernel
# length: conv-BN-ReLU (the TinyML ordering), its dilated (dilation 2) and depthwise-separable
# (depthwise conv-BN-ReLU -> pointwise conv-BN-ReLU) forms, and the pools.
for _k in (3, 5, 7):
    OPS[f"conv_bn_relu_k{_k}"] = lambda C_in, C_out, stride, dim=2, _k=_k, **_: ConvBNAct(
        C_in, C_out, _k, stride, dim=dim)
    OPS[f"dil_conv_bn_relu_k{_k}"] = lambda C_in, C_out, stride, dim=2, _k=_k, **_: ConvBNAct(
        C_in, C_out, _k, stride, dilation=2, dim=dim)
    OPS[f"sep_conv_bn_relu_k{_k}"] = lambda C_in, C_out, stride, dim=2, _k=_k, **_: nn.Sequential(
        ConvBNAct(C_in, C_in, _k, stride, groups=C_in, dim=dim), ConvBNAct(C_in, C_out, 1, dim=dim))
OPS["max_pool_k3"] = lambda C_in, C_out, stride, dim=2, **_: Pool("max", C_in, C_out, stride, dim=dim)
OPS["avg_pool_k3"] = lambda C_in, C_out, stride, dim=2, **_: Pool("avg", C_in, C_out, stride, dim=dim)
# MobileNetV2 / ProxylessNAS inverted-residual blocks: mbconv_k{kernel}_e{expand}
for _k in (3, 5, 7):
    for _e in (1, 3, 4, 6):
        OPS[f"mbconv_k{_k}_e{_e}"] = (
            lambda C_in, C_out, stride, act="relu6", se=False, dim=2, _k=_k, _e=_e, **_: InvertedResidual(
                C_in, C_out, stride, _k, _e, act=act, se=se, dim=dim))
# the ops that take `dim`: the ones above, the zero, DARTS' skip (which the cell spaces share) and the plain
# skip and MBConv blocks (the mobile space on signals)
ND_OPS = frozenset({"none", "zero", "skip_connect", "skip", "max_pool_k3", "avg_pool_k3"} | {
    f"{kind}_k{k}" for kind in ("conv_bn_relu", "dil_conv_bn_relu", "sep_conv_bn_relu") for k in (3, 5, 7)} | {
    f"mbconv_k{k}_e{e}" for k in (3, 5, 7) for e in (1, 3, 4, 6)})
# Wider-reach dilations for the micro space (tiny TinyML CNNs): a stack of dilations 2, 4, 8 spans a
# 40-sample signal with no downsampling. conv-BN-ReLU at dilation 4 and 8, the depthwise-separable form
# (depthwise conv-BN-ReLU -> pointwise conv-BN-ReLU) at dilation 2 and 4; all of them take `dim`.
for _k in (3, 5):
    for _d in (4, 8):
        OPS[f"dil{_d}_conv_bn_relu_k{_k}"] = lambda C_in, C_out, stride, dim=2, _k=_k, _d=_d, **_: ConvBNAct(
            C_in, C_out, _k, stride, dilation=_d, dim=dim)
    for _d in (2, 4):
        OPS[f"dil{_d}_sep_conv_bn_relu_k{_k}"] = (
            lambda C_in, C_out, stride, dim=2, _k=_k, _d=_d, **_: nn.Sequential(
                ConvBNAct(C_in, C_in, _k, stride, groups=C_in, dilation=_d, dim=dim),
                ConvBNAct(C_in, C_out, 1, dim=dim)))
ND_OPS = ND_OPS | {f"dil{d}_conv_bn_relu_k{k}" for k in (3, 5) for d in (4, 8)} | {
    f"dil{d}_sep_conv_bn_relu_k{k}" for k in (3, 5) for d in (2, 4)}


def build_op(name: str, C_in: int, C_out: int, stride: int = 1, **options: object) -> nn.Module:
    """Build op `name` for `(N, C_in, H, W) -> (N, C_out, H/stride, W/stride)`.

    `options` are passed to ops that take them (`act`, `se`, `affine`) and ignored by the others;
    `dim=1` builds an op of `ND_OPS` for signals `(N, C_in, L) -> (N, C_out, L/stride)`.
    """
    if name not in OPS:
        raise UserError(f"unknown op {name!r}; known ops: {', '.join(sorted(OPS))}")
    if stride not in (1, 2):
        raise ValueError(f"`stride in (1, 2)` must hold, but got {stride=}")
    dim = options.pop("dim", 2)
    if dim != 2:
        if dim != 1:
            raise ValueError(f"`dim in (1, 2)` must hold, but got {dim=}")
        if name not in ND_OPS:
            raise UserError(f"op {name!r} is 2-D only and cannot run on 1-D signals; "
                            f"ops with a 1-D form: {', '.join(sorted(ND_OPS))}")
        options["dim"] = dim
    return OPS[name](C_in, C_out, stride, **options)


# NAS-Bench-201's cell ops (Dong & Yang, 2020): ReLU-conv-BN under its names. Its other three ops are the
# entries above, which on NB201's C -> C stride-1 edges are exactly NB201's: `none` (x * 0), `skip_connect`
# (identity) and `avg_pool_3x3` (3x3 average, stride 1, padding 1, count_include_pad=False).
OPS.update({
    "nor_conv_1x1": lambda C_in, C_out, stride, affine=True, **_: ReLUConvBN(C_in, C_out, 1, stride, 0, affine),
    "nor_conv_3x3": lambda C_in, C_out, stride, affine=True, **_: ReLUConvBN(C_in, C_out, 3, stride, 1, affine),
})
