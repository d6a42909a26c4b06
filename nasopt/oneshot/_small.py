"""Kernels for the few channels of PC-DARTS' candidates (C/K = 4-16) on channels-last CPU tensors.

With K = 4 the candidate ops of DARTS' search network run on 4, 8 or 16 channels, where some of oneDNN's
and ATen's channels-last CPU kernels are far slower per element than with many channels (torch 2.14,
benchmarks/bench_oneshot_step.py; 32x4x32x32): BatchNorm 0.55 ms forward and 0.63 ms backward (NCHW
backward: 0.05 ms), a 1x1 conv 0.11/0.22 ms (a matrix product over the pixels: 0.06/0.13 ms), a 3x3
average pool 1.05 ms (a depthwise conv with a ones kernel: 0.16 ms). Each replacement computes the same
values to float rounding:
- `bn_forward` / `bn_backward`: training-mode batch norm without affine parameters; on 4 or fewer channels
  channels-last, elementwise on a wide (pixels / r, r * channels) view of the tensor (0.26/0.35 ms; the
  per-op overhead makes it slower than ATen's from 8 channels on), else ATen's own kernels. Running
  statistics as `nn.BatchNorm2d`.
- `FewChannelBN`: an affine-free training BN module through those two (the separable convs' middle BN).
- `FastPointwise`: a 1x1 conv (stride 1, no bias, no groups) as one matrix product; on 4 or 8 channels four
  or two pixels a row against as many copies of the weight on a block diagonal (16 wide: on AMD EPYC the
  (M, 4) x (4, 4) product took 0.33 ms for M = 32768, the (M/4, 16) x (16, 16) one 0.07 ms).
- `FastAvgPool`: a 3x3 average pool without the padding in the count, as a depthwise sum / count.
- `channel_slice`: x[:, start:stop] whose gradient is channels-last like x (autograd's slice backward fills an
  NCHW tensor, and ATen's BN backward with an NCHW gradient of a channels-last input takes 21 ms against 2 ms
  for 32x32x32x32; every element-wise op mixing the two layouts is slow too).
- `merge_shuffled`: PC-DARTS' concatenation of the candidates' and the bypassing channels, edge weight and
  channel shuffle as two matrix products with 0/1 matrices (0.18 ms for 32x16x32x32; the strided copy of
  `channel_shuffle` alone 0.58 ms).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["FastAvgPool", "FastPointwise", "FewChannelBN", "bn_backward", "bn_forward", "bn_momentum",
           "channel_slice", "few_channel_bn", "merge_shuffled", "normalized", "small", "weighted_bn_backward"]

FEW = 4  # up to this many channels the elementwise BN below beats ATen's channels-last kernels (8: 1.8x slower)


def _few(z: torch.Tensor) -> bool:
    return (z.dim() == 4 and z.shape[1] <= FEW and z.device.type == "cpu"
            and z.is_contiguous(memory_format=torch.channels_last) and not z.is_contiguous())


def _wide(z: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A channels-last (N, C, H, W) tensor as a (N*H*W / r, r*C) matrix (a view) with r*C >= 64 where the
    pixels divide: a per-channel vector repeated r times then broadcasts along a long row, which ATen
    vectorises (6x faster than along rows of 4)."""
    c = z.shape[1]
    m = z.numel() // c
    r = max(1, 64 // c)
    while m % r:
        r //= 2
    return z.permute(0, 2, 3, 1).reshape(m // r, r * c), r


def _fold(v: torch.Tensor, r: int) -> torch.Tensor:
    """Per-channel sums from the column sums of a `_wide` matrix."""
    return v.view(r, -1).sum(0)


def small(x: torch.Tensor) -> bool:
    """Whether a CPU image tensor is one of PC-DARTS' few-channel ones (at most 16 channels and 4096 values
    per sample: 4x32x32, 8x16x16, 16x8x8 with K = 4), where the stand-ins below were measured faster; DARTS'
    own (16x32x32, 32x16x16, 64x8x8) keep oneDNN's kernels."""
    return (x.dim() == 4 and x.device.type == "cpu" and x.shape[1] <= 16
            and x.shape[1] * x.shape[2] * x.shape[3] <= 4096)


def _pair(v: Any) -> tuple[int, int]:
    return (v[0], v[1]) if isinstance(v, (tuple, list)) else (v, v)


def _rows(z: torch.Tensor) -> torch.Tensor:
    """A channels-last (N, C, H, W) tensor as its (N*H*W, C) matrix (a view)."""
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def _image(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    n, _, h, w = like.shape
    return rows.view(n, h, w, rows.shape[1]).permute(0, 3, 1, 2)


def bn_momentum(bn: _BatchNorm) -> float:
    """What `_BatchNorm.forward` uses as the running-average factor in training, counting the batch."""
    assert bn.num_batches_tracked is not None
    bn.num_batches_tracked.add_(1)
    return 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum


def bn_forward(z: torch.Tensor, bn: _BatchNorm,
               scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, mean, invstd) of `bn` (affine-free, training) on `z`, updating its running statistics; y times
    `scale` (a 0-dim tensor) when given."""
    momentum = bn_momentum(bn)
    if not _few(z):
        y, mean, invstd = torch.ops.aten.native_batch_norm(
            z, None, None, bn.running_mean, bn.running_var, True, momentum, bn.eps)
        return (y if scale is None else y.mul_(scale)), mean, invstd
    rows, r = _wide(z)
    m = z.numel() // z.shape[1]
    mean = _fold(rows.sum(0), r).div_(m)
    y = torch.empty_like(z)  # channels-last like z; its matrix view takes z - mean, then y
    centred = torch.sub(rows, mean.repeat(r), out=_wide(y)[0])
    var = _fold(centred.square().sum(0), r).div_(m)
    invstd = (var + bn.eps).rsqrt_()
    if bn.running_mean is not None and bn.running_var is not None:
        with torch.no_grad():
            bn.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
            bn.running_var.mul_(1 - momentum).add_(var, alpha=momentum * m / max(m - 1, 1))
    centred.mul_((invstd if scale is None else invstd * scale).repeat(r))
    return y, mean, invstd


def normalized(z: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor) -> torch.Tensor:
    """(z - mean) * invstd per channel: the BN output again from its input and statistics."""
    if _few(z):
        rows, r = _wide(z)
        y = torch.empty_like(z)
        torch.addcmul((-mean * invstd).repeat(r), rows, invstd.repeat(r), out=_wide(y)[0])
        return y
    shape = (1, -1) + (1,) * (z.dim() - 2)
    return (z - mean.view(shape)) * invstd.view(shape)


def bn_backward(g: torch.Tensor, z: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor,
                eps: float) -> torch.Tensor:
    """The input gradient of training-mode, affine-free batch norm: ATen's kernel, or for few channels
    invstd * (g - mean(g) - y * mean(g * y)) with y = (z - mean) * invstd, as ATen computes it."""
    if not _few(z):
        return torch.ops.aten.native_batch_norm_backward(  # type: ignore[no-any-return]
            g, z, None, None, None, mean, invstd, True, eps, [True, False, False])[0]
    grows, r = _wide(g.contiguous(memory_format=torch.channels_last))
    zrows = _wide(z)[0]
    m = z.numel() // z.shape[1]
    centred = zrows - mean.repeat(r)
    sum_g, sum_gz = _fold(grows.sum(0), r), _fold((grows * centred).sum(0), r)
    # g * invstd - centred * invstd^3 * sum_gz / m - invstd * sum_g / m
    scale = invstd.pow(3).mul_(sum_gz).div_(-m)
    grad = torch.empty_like(z)
    out = torch.addcmul((invstd * sum_g).div_(-m).repeat(r), centred, scale.repeat(r), out=_wide(grad)[0])
    out.addcmul_(grows, invstd.repeat(r))
    return grad


def weighted_bn_backward(g: torch.Tensor, wi: torch.Tensor, z: torch.Tensor, mean: torch.Tensor,
                         invstd: torch.Tensor, eps: float, need_z: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """For out = wi * BN(z) (affine-free, training) and its gradient g: (d/dwi = sum(g * BN(z)), d/dz or None).
    On few channels both come from the same two per-channel sums of g (sum g, sum g * (z - mean))."""
    if not _few(z):  # one ATen call: wi as the per-channel weight, whose gradient sums to d/dwi
        weight = wi.detach().reshape(1).expand(z.shape[1]).contiguous()
        grad_z, grad_weight, _ = torch.ops.aten.native_batch_norm_backward(
            g, z, weight, None, None, mean, invstd, True, eps, [need_z, True, False])
        return grad_weight.sum(), grad_z
    grows, r = _wide(g.contiguous(memory_format=torch.channels_last))
    m = z.numel() // z.shape[1]
    centred = _wide(z)[0] - mean.repeat(r)
    sum_g, sum_gz = _fold(grows.sum(0), r), _fold((grows * centred).sum(0), r)
    grad_w = (invstd * sum_gz).sum()
    if not need_z:
        return grad_w, None
    # wi * (g * invstd - centred * invstd^3 * sum_gz / m - invstd * sum_g / m)
    scaled = invstd * wi
    grad = torch.empty_like(z)
    out = torch.addcmul((scaled * sum_g).div_(-m).repeat(r), centred,
                        (scaled * invstd.square() * sum_gz).div_(-m).repeat(r), out=_wide(grad)[0])
    out.addcmul_(grows, scaled.repeat(r))
    return grad_w, grad


class _BN(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, bn: _BatchNorm) -> torch.Tensor:  # type: ignore[override]
        y, mean, invstd = bn_forward(z, bn)
        ctx.eps = bn.eps
        ctx.save_for_backward(z, mean, invstd)
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        z, mean, invstd = ctx.saved_tensors
        return bn_backward(g, z, mean, invstd, ctx.eps), None


class FewChannelBN(nn.Module):
    """`bn` (a 2-D affine-free BN tracking running statistics) through `bn_forward`/`bn_backward` in
    training on a few-channel channels-last CPU tensor; else `bn` itself."""

    def __init__(self, bn: _BatchNorm) -> None:
        super().__init__()
        self.bn = bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.bn.training and _few(x)):
            return self.bn(x)  # type: ignore[no-any-return]
        return _BN.apply(x, self.bn)  # type: ignore[no-any-return]


def few_channel_bn(layer: nn.Module) -> bool:
    """Whether `layer` is a BN that `FewChannelBN` may stand in for."""
    return (type(layer) is nn.BatchNorm2d and not layer.affine and layer.track_running_stats  # type: ignore[union-attr]
            and layer.num_features <= FEW)


class FastPointwise(nn.Module):
    """`conv` (a 2-D 1x1 conv, stride 1, no padding, bias or groups) as a matrix product over the pixels of a
    `small` channels-last CPU tensor; else the conv itself."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    @staticmethod
    def fits(conv: nn.Module) -> bool:
        return (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
                and conv.padding == (0, 0) and conv.groups == 1 and conv.bias is None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        if not small(x) or not x.is_contiguous(memory_format=torch.channels_last):
            return c(x)  # type: ignore[no-any-return]
        w = c.weight.view(c.out_channels, c.in_channels).t()
        pixels = x.permute(0, 2, 3, 1)  # (N, H, W, C_in), contiguous
        r = 16 // c.in_channels if c.in_channels == c.out_channels and c.in_channels in (4, 8) else 1
        if r == 1 or x.numel() % (16 * x.shape[0]):
            return pixels.matmul(w).permute(0, 3, 1, 2)
        # r pixels a row against r copies of the weight on the diagonal: a (M/r, 16) x (16, 16) product, 4x
        # (4 channels) and 2x (8) faster than the (M, C) x (C, C) one, forward and backward
        rows = pixels.reshape(-1, 16).mm(torch.block_diag(*[w] * r))
        return rows.view(pixels.shape).permute(0, 3, 1, 2)


class FastAvgPool(nn.Module):
    """`pool` (nn.AvgPool2d, count_include_pad=False, no ceil mode or divisor) on a `small` channels-last CPU
    tensor as a depthwise conv with a ones kernel divided by the number of input pixels in each window."""

    def __init__(self, pool: nn.AvgPool2d) -> None:
        super().__init__()
        self.pool = pool
        self._cache: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    @staticmethod
    def fits(pool: nn.Module) -> bool:
        return (type(pool) is nn.AvgPool2d and not pool.count_include_pad and not pool.ceil_mode
                and pool.divisor_override is None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not small(x) or x.stride(1) != 1:
            return self.pool(x)  # type: ignore[no-any-return]
        x = x.contiguous(memory_format=torch.channels_last)  # (a slice of channels, in PC-DARTS)
        p = self.pool
        k, s, pad = (_pair(v) for v in (p.kernel_size, p.stride if p.stride else p.kernel_size, p.padding))
        key = (x.shape[1], *x.shape[2:], x.dtype)
        if key not in self._cache:
            ones = torch.ones(x.shape[1], 1, *k, dtype=x.dtype).contiguous(memory_format=torch.channels_last)
            count = F.conv2d(torch.ones(1, 1, *x.shape[2:], dtype=x.dtype), ones[:1], None, s, pad)
            self._cache[key] = ones, count
        ones, count = self._cache[key]
        return F.conv2d(x, ones, None, s, pad, 1, x.shape[1]) / count


def _merge_matrices(c_out: int, c_rest: int, skip: int, groups: int,
                    dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """0/1 matrices that put `out`'s channels and `rest`'s (after its first `skip`) where
    channel_shuffle(cat([out, rest]), groups) puts them."""
    C = c_out + c_rest
    per = C // groups
    new = [(i % per) * groups + i // per for i in range(C)]  # old channel g*per + j -> j*groups + g
    p_out = torch.zeros(c_out, C, dtype=dtype)
    p_rest = torch.zeros(skip + c_rest, C, dtype=dtype)
    for i in range(C):
        if i < c_out:
            p_out[i, new[i]] = 1
        else:
            p_rest[skip + i - c_out, new[i]] = 1
    return p_out, p_rest


def merge_shuffled(out: torch.Tensor, rest: torch.Tensor, groups: int, scale: torch.Tensor | None,
                   skip: int, cache: dict[Any, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor | None:
    """channel_shuffle(cat([out, scale * rest[:, skip:]]), groups) for channels-last CPU tensors, as two matrix
    products of their (pixels, channels) views with 0/1 matrices (each entry of the result is one input
    times 1, plus zeros): no slice, concatenation or strided copy, forward or backward. `rest` may be the
    whole input of a stride-1 edge (`skip` = the channels that went through the candidates), which then
    needs no slicing. None where this does not apply (then the caller does it step by step)."""
    if not (out.dim() == 4 and out.device.type == "cpu" and rest.device.type == "cpu"
            and out.shape[2:] == rest.shape[2:] and out.dtype == rest.dtype):
        return None
    out = out.contiguous(memory_format=torch.channels_last)
    rest = rest.contiguous(memory_format=torch.channels_last)
    key = (out.shape[1], rest.shape[1] - skip, skip, groups, out.dtype)
    if key not in cache:
        cache[key] = _merge_matrices(*key)
    p_out, p_rest = cache[key]
    if scale is not None:
        p_rest = p_rest * scale
    return _image(torch.addmm(_rows(out).mm(p_out), _rows(rest), p_rest), out)


class _ChannelSlice(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:  # type: ignore[override]
        ctx.span, ctx.like = (start, stop), (x.shape, x.dtype)
        return x[:, start:stop]

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        (start, stop), (shape, dtype) = ctx.span, ctx.like
        grad = torch.empty(shape, dtype=dtype, memory_format=torch.channels_last)
        grad[:, :start].zero_()
        grad[:, stop:].zero_()
        grad[:, start:stop] = g
        return grad, None, None


def channel_slice(x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """x[:, start:stop]; on a channels-last 4-D CPU tensor that autograd records, with a channels-last gradient."""
    if not (x.dim() == 4 and x.device.type == "cpu" and x.requires_grad and torch.is_grad_enabled()
            and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()):
        return x[:, start:stop]
    return _ChannelSlice.apply(x, start, stop)  # type: ignore[no-any-return]
