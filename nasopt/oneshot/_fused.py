"""The mixed op's weighted sum of batch-normalised candidates, without storing the normalised outputs.

In DARTS' search cell most candidates end in an affine-free BatchNorm (the separable and dilated convs,
the pools' added BN), and the mixed op multiplies each BN output by its weight. Plain autograd keeps every
BN output for the gradient of its weight (d/dw_i = <g, y_i>) while the BN itself keeps its input: two
tensors per candidate. `weighted_bn_sum` computes the same sum_i w_i BN_i(z_i) and keeps only the BN
inputs and statistics; the backward pass recomputes y_i = (z_i - mean_i) * invstd_i (one element-wise pass)
and calls ATen's own batch-norm backward, so the gradients are the ones autograd computes, to float
rounding. The running statistics are updated exactly as `nn.BatchNorm*d.forward` updates them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from nasopt.oneshot._small import (
    FastAvgPool,
    FastPointwise,
    FewChannelBN,
    bn_backward,
    bn_forward,
    few_channel_bn,
    weighted_bn_backward,
)
from nasopt.ops import Pool

__all__ = ["FastDepthwise", "RecomputedMaxPool", "fast_layers", "split_terminal_bn", "weighted_bn_sum"]


def split_terminal_bn(module: nn.Module | None) -> tuple[nn.Module, _BatchNorm] | None:
    """(the layers before it, the BN) when `module` is a plain Sequential ending in an affine-free BatchNorm
    that tracks running statistics; else None. A 2-D max pool among those layers is a `RecomputedMaxPool`."""
    if module is None or type(module).forward is not nn.Sequential.forward or len(module) < 2:  # type: ignore[arg-type]
        return None
    layers = list(module)  # type: ignore[call-overload]
    bn = layers[-1].bn if isinstance(layers[-1], FewChannelBN) else layers[-1]
    if not isinstance(bn, _BatchNorm) or bn.affine or not bn.track_running_stats:
        return None
    return nn.Sequential(*layers[:-1]), bn


def fast_layers(module: nn.Module) -> list[nn.Module]:
    """The layers of a plain Sequential, nested plain Sequentials flattened, each 2-D max pool (bare or the op
    table's pool without projection) as a RecomputedMaxPool and each 2-D depthwise conv as a FastDepthwise;
    [module] itself for anything else. The same modules (parameters) throughout."""
    if type(module).forward is not nn.Sequential.forward:
        return [_fast(module)]
    return [layer for child in module.children() for layer in fast_layers(child)]


def _fast(layer: nn.Module) -> nn.Module:
    pool = layer.pool if isinstance(layer, Pool) and isinstance(layer.proj, nn.Identity) else layer
    if type(pool) is nn.MaxPool2d:
        return RecomputedMaxPool(pool)
    if FastAvgPool.fits(pool):
        return FastAvgPool(pool)  # type: ignore[arg-type]
    if FastPointwise.fits(layer):
        return FastPointwise(layer)  # type: ignore[arg-type]
    if few_channel_bn(layer):
        return FewChannelBN(layer)  # type: ignore[arg-type]
    if type(layer) is nn.Conv2d and layer.groups == layer.in_channels == layer.out_channels > 1 \
            and layer.bias is None and layer.padding_mode == "zeros" and isinstance(layer.padding, tuple):
        return FastDepthwise(layer)
    return layer


class _Depthwise(torch.autograd.Function):
    """A 2-D depthwise conv with 'same'-style padding (2p = d(k-1)) whose backward pass avoids ATen's CPU
    kernels where they are slow (torch 2.14, oneDNN; benchmarks/bench_oneshot_step.py):
    - input gradient: the depthwise conv of the output gradient with the flipped kernel — the fast forward
      kernel, 3-20x faster than ATen's for dilated and 5x5 kernels; at stride 2 the gradient is first spread
      onto the input grid (zeros between), which is what the transposed conv computes. Undilated strided
      convs keep ATen's input gradient (fast there).
    - weight gradient of a dilated kernel over 16 or more channels: k*k shifted products summed per
      channel (1.3-6x faster than ATen's there); undilated kernels and fewer channels (PC-DARTS' quarter
      of them, where the k*k small ops cost more than they save) keep ATen's.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, stride: tuple[int, int],  # type: ignore[override]
                padding: tuple[int, int], dilation: tuple[int, int]) -> torch.Tensor:
        ctx.conv = (stride, padding, dilation)
        ctx.save_for_backward(x, w)
        return torch.nn.functional.conv2d(x, w, None, stride, padding, dilation, x.shape[1])

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        x, w = ctx.saved_tensors
        (sh, sw), padding, (dh, dw) = ctx.conv
        C, (kh, kw) = x.shape[1], w.shape[-2:]
        dilated, strided = (dh, dw) != (1, 1), (sh, sw) != (1, 1)
        grad_x = grad_w = None

        def aten(mask: list[bool]) -> tuple[torch.Tensor, ...]:
            return torch.ops.aten.convolution_backward(g, x, w, None, [sh, sw], list(padding), [dh, dw], False,
                                                       [0, 0], C, mask)  # type: ignore[no-any-return]

        if ctx.needs_input_grad[0]:
            if strided and not dilated:
                grad_x = aten([True, False, False])[0]
            else:
                spread = g
                if strided:
                    spread = torch.zeros_like(x)  # (N, C, H, W), g at every stride-th position
                    spread[:, :, ::sh, ::sw] = g
                grad_x = torch.nn.functional.conv2d(spread, w.flip(-1, -2), None, 1, padding, (dh, dw), C)
        if ctx.needs_input_grad[1]:
            if not dilated or C < 16:
                grad_w = aten([False, True, False])[1]
            else:
                (ph, pw), (Ho, Wo) = padding, g.shape[-2:]
                xp = torch.nn.functional.pad(x, [pw, pw, ph, ph])
                grad_w = torch.empty(C, kh, kw, dtype=w.dtype, device=w.device)
                for i in range(kh):
                    for j in range(kw):
                        window = xp[:, :, i * dh:i * dh + sh * (Ho - 1) + 1:sh, j * dw:j * dw + sw * (Wo - 1) + 1:sw]
                        grad_w[:, i, j] = (window * g).sum((0, 2, 3))
                grad_w = grad_w.view_as(w)
        return grad_x, grad_w, None, None, None


class FastDepthwise(nn.Module):
    """`conv` (a 2-D depthwise nn.Conv2d without bias, padding 2p = d(k-1)) through `_Depthwise` when
    autograd records it on the CPU; else the conv itself."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        k, d, p = conv.kernel_size, conv.dilation, conv.padding
        self.same = all(2 * p[i] == d[i] * (k[i] - 1) for i in range(2))  # type: ignore[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.same or not torch.is_grad_enabled() or x.dim() != 4 or x.device.type != "cpu":
            return self.conv(x)  # (its speed was measured against ATen's CPU kernels only)  # type: ignore[no-any-return]
        c = self.conv
        return _Depthwise.apply(x, c.weight, c.stride, c.padding, c.dilation)  # type: ignore[no-any-return]


class _MaxPool2d(torch.autograd.Function):
    """max_pool2d that keeps its input (which the mixed op holds anyway) instead of an int64 index tensor
    twice the size of a float output, and finds the maxima again in the backward pass — except on fewer
    than 8 channels (PC-DARTS' C/K = 4), where ATen's channels-last pool is slowest per element (1.8 ms for
    32x4x32x32, 3x3, stride 1) and the indices are small (1 MiB there): those it keeps."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, args: tuple[Any, ...]) -> torch.Tensor:  # type: ignore[override]
        out, indices = torch.ops.aten.max_pool2d_with_indices(x, *args)
        ctx.args = args
        ctx.save_for_backward(x, indices if x.shape[1] < 8 else None)
        return out  # type: ignore[no-any-return]

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        x, indices = ctx.saved_tensors
        if indices is None:
            _, indices = torch.ops.aten.max_pool2d_with_indices(x, *ctx.args)
        return torch.ops.aten.max_pool2d_with_indices_backward(g, x, *ctx.args, indices), None


def _pair(v: Any) -> list[int]:
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


class RecomputedMaxPool(nn.Module):
    """The same pooling as `pool` (an nn.MaxPool2d), through `_MaxPool2d` when autograd records it."""

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pool
        if not (torch.is_grad_enabled() and x.requires_grad) or p.return_indices:
            return p(x)  # type: ignore[no-any-return]
        stride = p.stride if p.stride is not None else p.kernel_size
        args = (_pair(p.kernel_size), _pair(stride), _pair(p.padding), _pair(p.dilation), p.ceil_mode)
        return _MaxPool2d.apply(x, args)  # type: ignore[no-any-return]


class _WeightedBNSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, bns: list[_BatchNorm], *zs: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out: torch.Tensor | None = None
        saved: list[torch.Tensor] = []
        ctx.eps = [bn.eps for bn in bns]
        for i, (z, bn) in enumerate(zip(zs, bns, strict=True)):
            y, mean, invstd = bn_forward(z, bn, w[i])  # w_i * BN(z)
            out = y if out is None else out.add_(y)
            saved += [z, mean, invstd]
        ctx.save_for_backward(w, *saved)
        assert out is not None
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        w, *saved = ctx.saved_tensors
        grads_z: list[torch.Tensor | None] = []
        grad_w = torch.zeros_like(w) if ctx.needs_input_grad[0] else None
        for i in range(len(saved) // 3):
            z, mean, invstd = saved[3 * i: 3 * i + 3]
            need_z = ctx.needs_input_grad[2 + i]
            if grad_w is not None:
                grad_w[i], grad_z = weighted_bn_backward(g, w[i], z, mean, invstd, ctx.eps[i], need_z)
            else:
                grad_z = bn_backward(g * w[i], z, mean, invstd, ctx.eps[i]) if need_z else None
            grads_z.append(grad_z)
        return (grad_w, None, *grads_z)


def weighted_bn_sum(w: torch.Tensor, bns: list[_BatchNorm], zs: list[torch.Tensor]) -> torch.Tensor:
    """sum_i w[i] * bns[i](zs[i]) for affine-free BNs in training mode, keeping only the BN inputs."""
    return _WeightedBNSum.apply(w, bns, *zs)  # type: ignore[no-any-return]
