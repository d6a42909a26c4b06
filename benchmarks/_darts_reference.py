"""The 2018/2020 reference search step, rebuilt from the published definitions to time nasopt against.

DARTS (Liu et al., ICLR 2019, sec. 2 and appendix A.1) and PC-DARTS (Xu et al., ICLR 2020, sec. 3),
written the way their reference code computes them: every candidate op of every edge runs on its own input
(each separable/dilated conv with its own ReLU, the `none` op as a zero tensor), the mixed op is the plain
sum `sum_o w_o * o(x)`, NCHW tensors, no recomputation. The search network: a 3x3 stem to 3C channels, `layers`
cells (reductions at 1/3 and 2/3 of the depth, channels doubled there), each cell preprocesses its two inputs
to C channels (a factorized reduction after a reduction cell), 4 nodes each summing a mixed op over every
earlier state, the 4 nodes concatenated; global average pooling and a linear classifier. One search step:
the architecture step (Adam, lr 3e-4, betas (0.5, 0.999), weight decay 1e-3) on the validation batch —
first order: the gradient of the validation loss; second order: the unrolled gradient with the finite-
difference Hessian-vector product (eps = 0.01 / |dw'|) — then the weight step (SGD, momentum 0.9, weight
decay 3e-4, gradient norm clipped at 5) on the training batch.

This is a benchmark baseline, not part of nasopt; written from the papers, not copied.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PRIMITIVES = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
              "dil_conv_3x3", "dil_conv_5x5")


class ReLUConvBN(nn.Sequential):
    def __init__(self, C_in: int, C_out: int, k: int, stride: int, pad: int, affine: bool) -> None:
        super().__init__(nn.ReLU(inplace=False), nn.Conv2d(C_in, C_out, k, stride, pad, bias=False),
                         nn.BatchNorm2d(C_out, affine=affine))


class DilConv(nn.Sequential):
    def __init__(self, C_in: int, C_out: int, k: int, stride: int, pad: int, dil: int, affine: bool) -> None:
        super().__init__(nn.ReLU(inplace=False),
                         nn.Conv2d(C_in, C_in, k, stride, pad, dilation=dil, groups=C_in, bias=False),
                         nn.Conv2d(C_in, C_out, 1, bias=False), nn.BatchNorm2d(C_out, affine=affine))


class SepConv(nn.Sequential):
    def __init__(self, C_in: int, C_out: int, k: int, stride: int, pad: int, affine: bool) -> None:
        super().__init__(DilConv(C_in, C_in, k, stride, pad, 1, affine), DilConv(C_in, C_out, k, 1, pad, 1, affine))


class Zero(nn.Module):
    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0) if self.stride == 1 else x[:, :, ::self.stride, ::self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    def __init__(self, C_in: int, C_out: int, affine: bool) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


def make_op(name: str, C: int, stride: int) -> nn.Module:
    if name == "none":
        return Zero(stride)
    if name == "max_pool_3x3":
        return nn.Sequential(nn.MaxPool2d(3, stride, 1), nn.BatchNorm2d(C, affine=False))
    if name == "avg_pool_3x3":
        return nn.Sequential(nn.AvgPool2d(3, stride, 1, count_include_pad=False), nn.BatchNorm2d(C, affine=False))
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(C, C, affine=False)
    k = int(name[-1])
    if name.startswith("sep"):
        return SepConv(C, C, k, stride, k // 2, affine=False)
    return DilConv(C, C, k, stride, k - 1, 2, affine=False)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class MixedOp(nn.Module):
    """DARTS: sum_o w_o o(x). PC-DARTS (K > 1): the ops see the first C/K channels, the rest bypass them
    (max-pooled 2x2 when the edge reduces), concatenated and channel-shuffled."""

    def __init__(self, C: int, stride: int, K: int = 1) -> None:
        super().__init__()
        self.K = K
        self.ops = nn.ModuleList(make_op(p, C // K, stride) for p in PRIMITIVES)
        self.mp = nn.MaxPool2d(2, 2)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.K == 1:
            return sum(w * op(x) for w, op in zip(weights, self.ops, strict=True))  # type: ignore[return-value]
        c = x.shape[1] // self.K
        head, rest = x[:, :c], x[:, c:]
        out = sum(w * op(head) for w, op in zip(weights, self.ops, strict=True))
        if out.shape[2] != x.shape[2]:  # type: ignore[union-attr]
            rest = self.mp(rest)
        return channel_shuffle(torch.cat([out, rest], dim=1), self.K)  # type: ignore[list-item]


class Cell(nn.Module):
    def __init__(self, C_pp: int, C_p: int, C: int, reduction: bool, reduction_prev: bool, K: int,
                 steps: int = 4) -> None:
        super().__init__()
        self.reduction, self.steps = reduction, steps
        self.preprocess0 = (FactorizedReduce(C_pp, C, affine=False) if reduction_prev
                            else ReLUConvBN(C_pp, C, 1, 1, 0, affine=False))
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0, affine=False)
        self.ops = nn.ModuleList(MixedOp(C, 2 if reduction and j < 2 else 1, K)
                                 for i in range(steps) for j in range(2 + i))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
                edge_weights: torch.Tensor | None) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self.steps):
            if edge_weights is None:
                s = sum(self.ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            else:
                s = sum(edge_weights[offset + j] * self.ops[offset + j](h, weights[offset + j])
                        for j, h in enumerate(states))
            offset += len(states)
            states.append(s)  # type: ignore[arg-type]
        return torch.cat(states[-self.steps:], dim=1)


class Network(nn.Module):
    """The search network; `K` > 1 makes it PC-DARTS' (partial channels and edge normalisation)."""

    def __init__(self, C: int = 16, num_classes: int = 10, layers: int = 8, K: int = 1, steps: int = 4,
                 stem_multiplier: int = 3) -> None:
        super().__init__()
        self.K, self.steps = K, steps
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(3, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_pp, C_p, C_curr = C_curr, C_curr, C
        cells, reduction_prev = [], False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            C_curr *= 2 if reduction else 1
            cells.append(Cell(C_pp, C_p, C_curr, reduction, reduction_prev, K, steps))
            reduction_prev = reduction
            C_pp, C_p = C_p, steps * C_curr
        self.cells = nn.ModuleList(cells)
        self.classifier = nn.Linear(C_p, num_classes)
        edges = sum(2 + i for i in range(steps))
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(edges, len(PRIMITIVES)))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(edges, len(PRIMITIVES)))
        self.betas_normal = nn.Parameter(1e-3 * torch.randn(edges))
        self.betas_reduce = nn.Parameter(1e-3 * torch.randn(edges))

    def arch_parameters(self) -> list[nn.Parameter]:
        if self.K == 1:
            return [self.alphas_normal, self.alphas_reduce]
        return [self.alphas_normal, self.alphas_reduce, self.betas_normal, self.betas_reduce]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in (self.alphas_normal, self.alphas_reduce, self.betas_normal, self.betas_reduce)}
        return [p for p in self.parameters() if id(p) not in arch]

    def _edge_weights(self, betas: torch.Tensor) -> torch.Tensor:
        """A softmax over the edges into each node (PC-DARTS' edge normalisation)."""
        parts, start = [], 0
        for i in range(self.steps):
            parts.append(F.softmax(betas[start:start + 2 + i], dim=-1))
            start += 2 + i
        return torch.cat(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            alphas, betas = ((self.alphas_reduce, self.betas_reduce) if cell.reduction
                             else (self.alphas_normal, self.betas_normal))
            edge = self._edge_weights(betas) if self.K > 1 else None
            s0, s1 = s1, cell(s0, s1, F.softmax(alphas, dim=-1), edge)
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))


class Search:
    """The reference search step: architecture update (first or second order), then weight update."""

    def __init__(self, net: Network, unrolled: bool = False, lr: float = 0.025, momentum: float = 0.9,
                 weight_decay: float = 3e-4, arch_lr: float = 3e-4, arch_weight_decay: float = 1e-3,
                 grad_clip: float = 5.0) -> None:
        self.net, self.unrolled, self.grad_clip = net, unrolled, grad_clip
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.w_opt = torch.optim.SGD(net.weight_parameters(), lr, momentum=momentum, weight_decay=weight_decay)
        self.a_opt = torch.optim.Adam(net.arch_parameters(), lr=arch_lr, betas=(0.5, 0.999),
                                      weight_decay=arch_weight_decay)

    def step(self, train: tuple[torch.Tensor, torch.Tensor], valid: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.a_opt.zero_grad()
        if self.unrolled:
            self._unrolled_backward(train, valid)
        else:
            F.cross_entropy(self.net(valid[0]), valid[1]).backward()
        self.a_opt.step()
        self.w_opt.zero_grad()
        F.cross_entropy(self.net(train[0]), train[1]).backward()
        nn.utils.clip_grad_norm_(self.net.weight_parameters(), self.grad_clip)
        self.w_opt.step()

    def _unrolled_backward(self, train: tuple[torch.Tensor, torch.Tensor],
                           valid: tuple[torch.Tensor, torch.Tensor]) -> None:
        weights, alphas = self.net.weight_parameters(), self.net.arch_parameters()
        grads = torch.autograd.grad(F.cross_entropy(self.net(train[0]), train[1]), weights)
        backup = [w.detach().clone() for w in weights]
        with torch.no_grad():  # w' = w - eta * (momentum * buffer + dw + wd * w)
            for w, g in zip(weights, grads, strict=True):
                buf = self.w_opt.state.get(w, {}).get("momentum_buffer")
                step = g + self.weight_decay * w + (self.momentum * buf if buf is not None else 0.0)
                w.sub_(self.lr * step)
        out = torch.autograd.grad(F.cross_entropy(self.net(valid[0]), valid[1]), alphas + weights)
        d_alpha, v = out[:len(alphas)], out[len(alphas):]
        eps = 0.01 / float(torch.sqrt(sum((g * g).sum() for g in v)))  # type: ignore[arg-type]

        def alpha_grad(sign: float) -> tuple[torch.Tensor, ...]:
            with torch.no_grad():
                for w, b, g in zip(weights, backup, v, strict=True):
                    w.copy_(b + sign * eps * g)
            return torch.autograd.grad(F.cross_entropy(self.net(train[0]), train[1]), alphas)

        plus, minus = alpha_grad(1.0), alpha_grad(-1.0)
        with torch.no_grad():
            for w, b in zip(weights, backup, strict=True):
                w.copy_(b)
        for a, d, p, m in zip(alphas, d_alpha, plus, minus, strict=True):
            a.grad = d - self.lr * (p - m) / (2 * eps)
