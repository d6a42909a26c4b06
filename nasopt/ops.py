"""THE op table: every candidate operation of every space, built by name.

`build_op(name, C_in, C_out, stride)` returns an `nn.Module` mapping `(N, C_in, H, W)` to
`(N, C_out, ceil(H / stride), ceil(W / stride))`. Discrete trials, supernets and exported models
all build their ops here, so an op means the same thing on every path. Nothing here touches a
device: modules are created on the CPU and moved with `.to(device)` by the caller.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nasopt.errors import UserError

__all__ = ["OPS", "ACTIVATIONS", "build_op", "activation", "InvertedResidual", "SqueezeExcite"]

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


class ConvBNAct(nn.Sequential):
    """conv -> BN -> activation (the nano/mobile ordering)."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int = 1, groups: int = 1,
                 dilation: int = 1, act: str | None = "relu") -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(C_in, C_out, kernel, stride, _pad(kernel, dilation), dilation, groups, bias=False),
            nn.BatchNorm2d(C_out),
        ]
        if act is not None:
            layers.append(activation(act))
        super().__init__(*layers)


class ReLUConvBN(nn.Sequential):
    """ReLU -> conv -> BN (the DARTS ordering, used by its cell preprocessing)."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, affine: bool = True) -> None:
        super().__init__(nn.ReLU(inplace=False), nn.Conv2d(C_in, C_out, kernel, stride, padding, bias=False),
                         nn.BatchNorm2d(C_out, affine=affine))


class DilConv(nn.Sequential):
    """ReLU -> depthwise (dilated) conv -> pointwise conv -> BN, as in DARTS."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, dilation: int,
                 affine: bool = True) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel, stride, padding, dilation=dilation, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked DilConvs with dilation 1 (DARTS' separable conv); only the first one strides."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, affine: bool = True) -> None:
        super().__init__(DilConv(C_in, C_in, kernel, stride, padding, 1, affine),
                         DilConv(C_in, C_out, kernel, 1, padding, 1, affine))


class Zero(nn.Module):
    """The 'no connection' op: zeros of the output shape (C_out channels, strided)."""

    def __init__(self, C_in: int, C_out: int, stride: int) -> None:
        super().__init__()
        self.C_out, self.stride = C_out, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[..., :: self.stride, :: self.stride]
        if x.shape[1] != self.C_out:
            x = x.new_zeros(x.shape[0], self.C_out, *x.shape[2:])
        return x.mul(0.0)


class FactorizedReduce(nn.Module):
    """Stride-2 'identity': two offset 1x1 convs with stride 2 concatenated (DARTS)."""

    def __init__(self, C_in: int, C_out: int, affine: bool = True) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out - C_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        # pad so odd sizes give ceil(H/2) from both branches: shapes (N, C/2, ceil(H/2), ceil(W/2))
        y = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
        out = torch.cat([self.conv_1(x), self.conv_2(y[:, :, 1:, 1:])], dim=1)
        return self.bn(out)


def _identity(C_in: int, C_out: int, stride: int) -> nn.Module:
    if stride == 1 and C_in == C_out:
        return nn.Identity()
    if stride == 1:
        return ConvBNAct(C_in, C_out, 1, act=None)
    return FactorizedReduce(C_in, C_out)


class _Pool(nn.Module):
    """A 3x3 pool, followed by a 1x1 conv-BN when the channel count changes."""

    def __init__(self, kind: str, C_in: int, C_out: int, stride: int, kernel: int = 3) -> None:
        super().__init__()
        self.pool: nn.Module = (nn.MaxPool2d(kernel, stride, kernel // 2) if kind == "max"
                                else nn.AvgPool2d(kernel, stride, kernel // 2, count_include_pad=False))
        self.proj = nn.Identity() if C_in == C_out else ConvBNAct(C_in, C_out, 1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(x))


class SqueezeExcite(nn.Module):
    """Channel attention: global pool -> reduce -> act -> expand -> sigmoid gate."""

    def __init__(self, C: int, reduction: int = 4, act: str = "relu") -> None:
        super().__init__()
        hidden = max(8, C // reduction)
        self.fc1, self.act, self.fc2 = nn.Conv2d(C, hidden, 1), activation(act), nn.Conv2d(hidden, C, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)  # (N, C, 1, 1)
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(s))))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> kxk depthwise -> [SE] -> 1x1 project, residual when shapes match.

    With `expand == 1` the expansion conv is left out, as in MobileNetV2's first block.
    """

    def __init__(self, C_in: int, C_out: int, stride: int, kernel: int, expand: int, act: str = "relu6",
                 se: bool = False) -> None:
        super().__init__()
        hidden = C_in * expand
        layers: list[nn.Module] = [] if expand == 1 else [ConvBNAct(C_in, hidden, 1, act=act)]
        layers.append(ConvBNAct(hidden, hidden, kernel, stride, groups=hidden, act=act))
        if se:
            layers.append(SqueezeExcite(hidden, act=act))
        layers.append(ConvBNAct(hidden, C_out, 1, act=None))
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
    "maxpool3x3": lambda C_in, C_out, stride, **_: _Pool("max", C_in, C_out, stride),
    "avgpool3x3": lambda C_in, C_out, stride, **_: _Pool("avg", C_in, C_out, stride),
    "skip": lambda C_in, C_out, stride, **_: _identity(C_in, C_out, stride),
    "zero": lambda C_in, C_out, stride, **_: Zero(C_in, C_out, stride),
    # DARTS' primitives under their paper names (ReLU-conv-BN ordering, affine switchable)
    "none": lambda C_in, C_out, stride, **_: Zero(C_in, C_out, stride),
    "skip_connect": lambda C_in, C_out, stride, affine=True, **_: (
        nn.Identity() if stride == 1 and C_in == C_out
        else ReLUConvBN(C_in, C_out, 1, 1, 0, affine) if stride == 1 else FactorizedReduce(C_in, C_out, affine)),
    "max_pool_3x3": lambda C_in, C_out, stride, **_: _Pool("max", C_in, C_out, stride),
    "avg_pool_3x3": lambda C_in, C_out, stride, **_: _Pool("avg", C_in, C_out, stride),
    "sep_conv_3x3": lambda C_in, C_out, stride, affine=True, **_: SepConv(C_in, C_out, 3, stride, 1, affine),
    "sep_conv_5x5": lambda C_in, C_out, stride, affine=True, **_: SepConv(C_in, C_out, 5, stride, 2, affine),
    "sep_conv_7x7": lambda C_in, C_out, stride, affine=True, **_: SepConv(C_in, C_out, 7, stride, 3, affine),
    "dil_conv_3x3": lambda C_in, C_out, stride, affine=True, **_: DilConv(C_in, C_out, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda C_in, C_out, stride, affine=True, **_: DilConv(C_in, C_out, 5, stride, 4, 2, affine),
    # plain layers of the layer-genome space (shape-preserving; a channel change gets a 1x1 projection)
    "batchnorm": lambda C_in, C_out, stride, **_: nn.Sequential(_identity(C_in, C_out, stride), nn.BatchNorm2d(C_out)),
    "dropout": lambda C_in, C_out, stride, rate=0.5, **_: nn.Sequential(_identity(C_in, C_out, stride),
                                                                         nn.Dropout(float(rate))),
    # modern options for richer spaces
    "se": lambda C_in, C_out, stride, act="relu", **_: nn.Sequential(
        _identity(C_in, C_out, stride), SqueezeExcite(C_out, act=act)),
    "attention": lambda C_in, C_out, stride, **_: SelfAttention2d(C_in, C_out, stride),
}
# MobileNetV2 / ProxylessNAS inverted-residual blocks: mbconv_k{kernel}_e{expand}
for _k in (3, 5, 7):
    for _e in (1, 3, 4, 6):
        OPS[f"mbconv_k{_k}_e{_e}"] = (
            lambda C_in, C_out, stride, act="relu6", se=False, _k=_k, _e=_e, **_: InvertedResidual(
                C_in, C_out, stride, _k, _e, act=act, se=se))


def build_op(name: str, C_in: int, C_out: int, stride: int = 1, **options: object) -> nn.Module:
    """Build op `name` for `(N, C_in, H, W) -> (N, C_out, H/stride, W/stride)`.

    `options` are passed to ops that take them (`act`, `se`, `affine`) and ignored by the others.
    """
    if name not in OPS:
        raise UserError(f"unknown op {name!r}; known ops: {', '.join(sorted(OPS))}")
    if stride not in (1, 2):
        raise ValueError(f"`stride in (1, 2)` must hold, but got {stride=}")
    return OPS[name](C_in, C_out, stride, **options)
