"""Mixed ops and the supernet: one-shot search through the space's own chooser.

`MixedChooser` is a `nasopt.space.Chooser`: at every decision of `space.build` (or `space.supernet`)
it returns a `MixedOp` holding every candidate op from the op table, and registers the decision's
architecture weights (alphas). `Supernet` wraps the resulting network with those weights as
`nn.Parameter`s, so the supernet IS the evaluation network with mixed ops in its slots.

PC-DARTS is an option of the mixed op, not a copy: with `partial_channels=K` only C/K channels go
through the candidates, the rest bypass them (max-pooled at stride 2), and the channels are shuffled;
with K = 1 this is exactly DARTS' mixed op. Edges named `<node>.e<i>` (DARTS cells) belong to `<node>`;
with `edge_normalization` each edge's whole output — the candidates' channels and the bypassing ones — is
scaled by its edge weight, a softmax over its node's edges (betas), as PC-DARTS (Xu et al. 2020, eq. 4)
defines it: x_j = sum_i beta_ij * f_ij(x_i). The edge weight is folded into the candidates' weights (the
same product, one multiply fewer) and multiplies the bypassing channels itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nasopt.errors import UserError
from nasopt.oneshot._fused import fast_layers, split_terminal_bn, weighted_bn_sum
from nasopt.oneshot._shared import EDGE
from nasopt.oneshot._small import channel_slice, merge_shuffled
from nasopt.ops import OPS, Zero, build_op, layers_nd

__all__ = ["MixedOp", "MixedChooser", "Supernet", "channel_shuffle", "param_key"]



def param_key(name: str) -> str:
    """A decision name as a ParameterDict key ('.' is not allowed there)."""
    return name.replace(".", "__")


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, C, ...) -> the channels interleaved across `groups` (ShuffleNet), any spatial rank, keeping x's memory
    format (a channels-last tensor stays channels-last)."""
    if groups == 1:
        return x
    n, c = x.shape[:2]
    out = torch.empty_like(x)
    out.view(n, c // groups, groups, *x.shape[2:]).copy_(x.view(n, groups, c // groups, *x.shape[2:]).transpose(1, 2))
    return out


def _after_relu(module: nn.Module) -> nn.Module:
    """The layers of `module` after its leading non-inplace ReLU, flattened and with the fast max pool and
    depthwise conv (`fast_layers`), as one Sequential of the same modules; None when the module does not
    begin with such a ReLU (DARTS' ReLUConvBN, DilConv and SepConv do)."""
    layers = fast_layers(module)
    if layers and isinstance(layers[0], nn.ReLU) and not layers[0].inplace:
        return nn.Sequential(*layers[1:])
    return None  # type: ignore[return-value]


def _stateless(module: nn.Module) -> bool:
    """No parameters or buffers: what it computes depends on its input and configuration (`repr`) alone."""
    return next(module.parameters(), None) is None and next(module.buffers(), None) is None


def _plain_fast(module: nn.Module) -> nn.Module:
    """`module` as `fast_layers` in one Sequential (itself when that changes nothing)."""
    layers = fast_layers(module)
    return module if layers == [module] else nn.Sequential(*layers)


class MixedOp(nn.Module):
    """sum_i w_i op_i(x) over the candidates of one decision, `w` given at forward time.

    With `partial` = K > 1: op_i sees the first C/K channels only; the other channels pass by
    (max-pooled when the op strides) and are shuffled back in (PC-DARTS).
    """

    def __init__(self, name: str, candidates: Sequence[str], C_in: int, C_out: int, stride: int,
                 partial: int = 1, **options: Any) -> None:
        super().__init__()
        if partial > 1 and (C_in != C_out or C_in % partial):
            raise UserError(f"partial_channels={partial} needs equal input/output channels divisible by it, but "
                            f"decision {name!r} maps {C_in} -> {C_out}; use partial_channels=1 or a wider space")
        self.name, self.candidates, self.stride, self.partial = name, tuple(candidates), stride, partial
        c_in, c_out = C_in // partial, C_out // partial
        self.ops = nn.ModuleList(self._candidate(op, c_in, c_out, stride, **options) for op in self.candidates)
        self.weights: torch.Tensor | None = None  # set by the Supernet before every forward pass
        # the edge weight beta already folded into `weights`, which the bypassing channels take too
        self.edge_weight: torch.Tensor | None = None
        # single-path mode (ENAS): the indices of the candidates a controller picked, their outputs summed;
        # only those run, so each step trains only its path's share of the weights
        self.path: tuple[int, ...] | None = None
        # the fast weighted sum (`_mix`): what each candidate needs — skipped (a zero op), the shared ReLU of
        # the input then the rest of its layers (ops that begin with a non-inplace ReLU), or the input itself
        self.fast = True
        self._zero = [isinstance(op, Zero) for op in self.ops]
        # plain lists: the same modules, not re-registered. Per candidate: its layers after the shared ReLU
        # (None: no leading ReLU), what runs instead of it (`_fast`), and for candidates ending in an
        # affine-free BN, (the layers before it, the BN)
        self._after_relu = [_after_relu(op) for op in self.ops]
        self._fast = [tail if tail is not None else _plain_fast(op) for op, tail in zip(self.ops, self._after_relu,
                                                                                           strict=True)]
        self._bn_split = [split_terminal_bn(f) for f in self._fast]
        self._merge: dict[Any, Any] = {}  # merge_shuffled's 0/1 matrices
        # what this op computes from its input exactly as every other edge from the same node does: the
        # parameter-free layers before a candidate's affine-free BN (the pools), keyed by their configuration
        self._same = [repr(split[0]) if split is not None and _stateless(split[0]) else None
                      for split in self._bn_split]
        # set by the Supernet during its forward pass: one dict shared by all its mixed ops (see `_once`)
        self.shared: dict[tuple[int, Any], tuple[torch.Tensor, torch.Tensor]] | None = None

    @staticmethod
    def _candidate(op: str, C_in: int, C_out: int, stride: int, **options: Any) -> nn.Module:
        """The op from the table; in an affine-free (search) cell a pool gets an affine-free BatchNorm
        after it, as in DARTS' search network, so its scale matches the parametric ops'."""
        module = build_op(op, C_in, C_out, stride, **options)
        if "pool" in op and options.get("affine") is False:
            module = nn.Sequential(module, layers_nd(int(options.get("dim", 2))).bn(C_out, affine=False))
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.path is not None:
            outs = [self.ops[i](x) for i in self.path]
            return outs[0] if len(outs) == 1 else torch.stack(outs).sum(0)
        w = self.weights
        assert w is not None, "MixedOp used outside its Supernet"
        if self.partial == 1:
            return self._mix(x, w)
        k, c = x.shape[1] // self.partial, x.shape[1]

        def part(t: torch.Tensor, start: int, stop: int) -> torch.Tensor:
            return channel_slice(t, start, stop) if self.fast else t[:, start:stop]  # (a channels-last gradient)

        head = self._once(x, ("head", k), lambda t: part(t, 0, k))
        out = self._mix(head, w)
        rest: torch.Tensor | None = None
        if self.stride > 1:
            pool = F.max_pool2d if x.dim() == 4 else F.max_pool1d
            rest = self._once(x, ("rest", k), lambda t: pool(part(t, k, c), 2, 2, ceil_mode=True))
        if self.fast:  # as below, in two matrix products (stride 1: on the whole input, no slice of it)
            merged = merge_shuffled(out, rest if rest is not None else x, self.partial, self.edge_weight,
                                    0 if self.stride > 1 else k, self._merge)
            if merged is not None:
                return merged
        if rest is None:
            rest = part(x, k, c)
        if self.edge_weight is not None:
            rest = self.edge_weight * rest
        return channel_shuffle(torch.cat([out, rest], dim=1), self.partial)

    def _once(self, x: torch.Tensor, key: Any, compute: Any) -> torch.Tensor:
        """compute(x), computed once per forward pass of the supernet for all its mixed ops that get this same
        tensor `x` (the edges leaving one node of a cell: the node's ReLU, PC-DARTS' slice of its channels, the
        pools): the same values, and autograd adds the edges' gradients before the one backward pass through it."""
        shared = self.shared
        if shared is None:
            return compute(x)  # type: ignore[no-any-return]
        hit = shared.get((id(x), key))
        if hit is not None and hit[0] is x:  # (x itself is held: its id is not reused meanwhile)
            return hit[1]
        y = compute(x)
        shared[(id(x), key)] = (x, y)
        return y  # type: ignore[no-any-return]

    def _mix(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """sum_i w_i op_i(x). The fast form computes the same sum with less work: a zero op adds nothing
        (its weight still enters every other weight through the softmax), ops that begin with ReLU share
        one ReLU of the input instead of one each (DARTS' four separable/dilated convs) — and with every edge
        from the same node (`_once`), as the pools do — and the terms accumulate in place into the first one."""
        if not self.fast or all(self._zero):
            return sum(wi * op(x) for wi, op in zip(w, self.ops, strict=True))  # type: ignore[return-value]
        relu: torch.Tensor | None = None
        out: torch.Tensor | None = None
        fused: list[tuple[int, Any, torch.Tensor]] = []  # (candidate, its BN, the BN's input)
        fuse = torch.is_grad_enabled() and self.training
        for i, (wi, tail, fast, split, zero) in enumerate(
                zip(w, self._after_relu, self._fast, self._bn_split, self._zero, strict=True)):
            if zero:
                continue
            if tail is not None:
                relu = self._once(x, "relu", F.relu) if relu is None else relu
            source = relu if tail is not None else x
            if fuse and split is not None and split[1].training:
                same = self._same[i]
                z = split[0](source) if same is None else self._once(source, same, split[0])
                fused.append((i, split[1], z))
                continue
            y = fast(source)
            out = wi * y if out is None else out.addcmul_(y, wi)
        if fused:  # sum_i w_i BN_i(z_i) keeping only the z_i (nasopt.oneshot._fused)
            mixed = weighted_bn_sum(w[[i for i, _, _ in fused]], [bn for _, bn, _ in fused], [z for _, _, z in fused])
            out = mixed if out is None else mixed.add_(out)
        assert out is not None
        return out


class MixedChooser:
    """A Chooser that builds a MixedOp per call and records each decision's candidates.

    Calls with the same `name` (e.g. the same edge in every cell of a type) share one set of alphas.
    A subclass may set `op_class` to a MixedOp subclass (ProxylessNAS' binary-gated op).
    """

    op_class: type[MixedOp] = MixedOp

    def __init__(self, partial_channels: int = 1) -> None:
        if not isinstance(partial_channels, int) or partial_channels < 1:
            raise UserError(f"`partial_channels >= 1` must hold, but got {partial_channels!r}")
        self.partial = partial_channels
        self.decisions: dict[str, tuple[str, ...]] = {}
        self.ops: list[MixedOp] = []
        self.full_width: dict[str, list[tuple[int, int, int, dict[str, Any]]]] = {}

    def __call__(self, name: str, candidates: Sequence[str], chosen: Any, C_in: int, C_out: int, stride: int,
                 **options: Any) -> nn.Module:
        unknown = [op for op in candidates if op not in OPS]
        if unknown:
            raise UserError(f"op {unknown[0]!r} of decision {name!r} is not in the op table; known ops: "
                            f"{', '.join(sorted(OPS))}")
        previous = self.decisions.setdefault(name, tuple(candidates))
        if previous != tuple(candidates):
            raise UserError(f"decision {name!r} offers different candidates in different places: {previous} "
                            f"and {tuple(candidates)}; a one-shot search needs one candidate list per name")
        op = self.op_class(name, candidates, C_in, C_out, stride, self.partial, **options)
        self.ops.append(op)
        self.full_width.setdefault(name, []).append((C_in, C_out, stride, options))
        return op


class Supernet(nn.Module):
    """The space's network with mixed ops, plus its architecture weights.

    `alphas[param_key(name)]` holds one logit per candidate of decision `name`; `betas[param_key(node)]`
    one logit per edge into `node` when edge normalisation is on. Both are `nn.Parameter`s in the state
    dict; `arch_parameters()` and `weight_parameters()` split the two groups for their optimisers.
    """

    def __init__(self, net: nn.Module, chooser: MixedChooser, *, edge_normalization: bool = False,
                 init_scale: float = 1e-3, fast: bool = True) -> None:
        super().__init__()
        self.net = net
        self.fast = fast
        self._layout: str | None = None  # the memory format chosen at the first forward pass (see `forward`)
        self.decisions = dict(chooser.decisions)
        self.alphas = nn.ParameterDict({param_key(n): nn.Parameter(init_scale * torch.randn(len(c)))
                                        for n, c in self.decisions.items()})
        self.edges: dict[str, tuple[str, int]] = {}  # decision -> (node, index among the node's edges)
        if edge_normalization:
            nodes: dict[str, list[str]] = {}
            for name in self.decisions:
                match = EDGE.match(name)
                if match:
                    nodes.setdefault(match["node"], []).append(name)
            for node, names in nodes.items():
                for i, name in enumerate(names):
                    self.edges[name] = (node, i)
            self.betas = nn.ParameterDict({param_key(node): nn.Parameter(init_scale * torch.randn(len(names)))
                                           for node, names in nodes.items()})
        else:
            self.betas = nn.ParameterDict()
        self._mixed = list(chooser.ops)
        for op in self._mixed:
            op.fast = fast

    def arch_parameters(self) -> list[nn.Parameter]:
        return [*self.alphas.values(), *self.betas.values()]

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.net.parameters())

    def op_weights(self) -> dict[str, torch.Tensor]:
        """softmax(alpha) per decision (times the edge's softmax(beta) under edge normalisation)."""
        out = {n: F.softmax(self.alphas[param_key(n)], dim=-1) for n in self.decisions}
        for name, (node, i) in self.edges.items():
            out[name] = out[name] * F.softmax(self.betas[param_key(node)], dim=-1)[i]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast and x.dim() == 4 and x.device.type == "cpu":
            # images on the CPU run channels-last: the depthwise convs and pools of the candidate ops are
            # about twice as fast in NHWC with oneDNN (benchmarks/bench_oneshot.py). The parameters change
            # layout in place once (same Parameter objects, so optimisers are unaffected); values are equal.
            if self._layout is None:
                self.net.to(memory_format=torch.channels_last)
                self._layout = "channels_last"
            x = x.contiguous(memory_format=torch.channels_last)
        weights = self.op_weights()
        edge = {name: F.softmax(self.betas[param_key(node)], dim=-1)[i] for name, (node, i) in self.edges.items()}
        shared: dict[tuple[int, Any], tuple[torch.Tensor, torch.Tensor]] = {}
        for op in self._mixed:
            op.weights = weights[op.name]
            op.edge_weight = edge.get(op.name) if op.partial > 1 else None
            op.shared = shared if self.fast else None
        try:
            return self.net(x)
        finally:
            for op in self._mixed:
                op.weights = op.edge_weight = op.shared = None

    @torch.no_grad()
    def probabilities(self) -> dict[str, list[float]]:
        """The current softmax weights per decision, as plain lists in candidate order (for derive/history)."""
        return {n: [round(float(v), 6) for v in w] for n, w in self.op_weights().items()}

    @torch.no_grad()
    def entropy(self) -> float:
        """Mean entropy (nats) of softmax(alpha) over the decisions: ~log(#ops) at the start, 0 when decided."""
        values = []
        for n in self.decisions:
            p = F.softmax(self.alphas[param_key(n)], dim=-1)
            values.append(float(-(p * p.clamp_min(1e-12).log()).sum()))
        return sum(values) / max(len(values), 1)


def expected_cost(supernet: Supernet, costs: Mapping[str, Sequence[float]]) -> torch.Tensor:
    """sum over decisions of E_softmax(alpha)[cost of the candidate], normalised by the largest choice's sum.

    `costs[name][i]` is the cost (params or MACs) of candidate i of decision `name`, summed over every
    place the decision is used. The result is in [0, 1]: the TinyML seed's resource-aware penalty.
    """
    total = sum(max(c) for c in costs.values()) or 1.0
    terms = [(F.softmax(supernet.alphas[param_key(n)], dim=-1) * torch.tensor(c, dtype=torch.float32)).sum()
             for n, c in costs.items()]
    return torch.stack(terms).sum() / total if terms else torch.zeros(())


def candidate_costs(chooser: MixedChooser, kind: str,
                    spatial: Mapping[str, Sequence[tuple[int, ...]]] | None = None) -> dict[str, list[float]]:
    """Per decision and candidate: parameters ("memory") or MACs ("compute") of the full-width op.

    MACs need the input's spatial size at each place (`spatial[name]`, recorded during one forward pass
    by `record_spatial`); both sum over every place the decision is used.
    """
    from nasopt.measure._metrics import count_params, flop_counter_macs

    out: dict[str, list[float]] = {}
    for name, places in chooser.full_width.items():
        costs = [0.0] * len(chooser.decisions[name])
        for place, (C_in, C_out, stride, options) in enumerate(places):
            for i, op_name in enumerate(chooser.decisions[name]):
                op = build_op(op_name, C_in, C_out, stride, **options)
                if kind == "memory":
                    costs[i] += count_params(op)
                else:
                    size = (spatial or {}).get(name, [])
                    shape = (C_in, *size[place]) if place < len(size) else None
                    costs[i] += flop_counter_macs(op, shape) if shape else 0.0
        out[name] = costs
    return out


def record_spatial(supernet: Supernet, example: torch.Tensor) -> dict[str, list[tuple[int, ...]]]:
    """Spatial input size of every MixedOp, per decision in build order, from one no-grad forward pass."""
    sizes: dict[str, list[tuple[int, ...]]] = {}
    hooks = [op.register_forward_pre_hook(
        lambda m, args: sizes.setdefault(m.name, []).append(tuple(args[0].shape[2:]))) for op in supernet._mixed]
    try:
        with torch.no_grad():
            was = supernet.training
            supernet.eval()
            supernet(example)
            supernet.train(was)
    finally:
        for h in hooks:
            h.remove()
    return sizes


def uniform_entropy(supernet: Supernet) -> float:
    """The entropy of uniform weights, for scale: mean log(#candidates)."""
    return sum(math.log(len(c)) for c in supernet.decisions.values()) / max(len(supernet.decisions), 1)
