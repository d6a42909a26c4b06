"""The micro space: tiny CNNs for microcontrollers (TinyML), from about a hundred to tens of thousands of
parameters, on signals `(channels, length)` and images `(channels, height, width)`.

stem conv-BN-ReLU (kernel `stem_kernel`) -> `depth` blocks -> global average pool -> linear. A dense
(per-position) task gets `nasopt.space.DenseHead` instead: a 1x1 conv upsampled to the input's size.
Decisions (parameter names):

- `stem.width`        the stem's channels, one of `widths`
- `depth`             the number of blocks, min_depth..max_depth
- `block{b}.op`       block b's op (b = 1..depth), one of `ops`: conv-BN-ReLU with kernel 3/5/7, its dilated
                      forms (dilation 2, 4, 8) and depthwise-separable forms (`nasopt.ops`)
- `block{b}.width`    its output channels, one of `widths`
- `block{b}.stride`   1, or 2 to halve the length (each side of an image), one of `strides`
- `block{b}.residual` whether the block adds its input to its output, asked only where the shapes match
                      (stride 1 and the previous width)

The network is 1-D (Conv1d, BatchNorm1d) for a task whose input shape is (C, L) and 2-D for (C, H, W).
Every block asks the chooser twice: `block{b}.op` for its op (blocks past min_depth offer `skip_connect`,
which is how a supernet expresses the depth, as in the mobile space), and, where the shapes match,
`block{b}.residual` for its residual branch (`zero` or `skip_connect`, as the layers space does), so a
one-shot method searches ops, depth and residuals. Width and stride change shapes: `supernet` builds
every block at one width (`search_width`, default the largest) and stride 1, and `derive` maps its
weights back to these decisions. ENAS shares one network between all architectures and needs the
shape-changing decisions fixed: `MicroSpace(widths=(16,), strides=(1,))`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import optuna
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from torch import nn

from nasopt.errors import UserError
from nasopt.ops import OPS, Zero, build_op
from nasopt.space import Chooser, DenseHead, encode_params, fixed, head_kind

__all__ = ["MicroSpace", "MICRO_OPS"]

MICRO_OPS = ("conv_bn_relu_k3", "conv_bn_relu_k5", "conv_bn_relu_k7",
             "dil_conv_bn_relu_k3", "dil_conv_bn_relu_k5", "dil4_conv_bn_relu_k3", "dil4_conv_bn_relu_k5",
             "dil8_conv_bn_relu_k3",
             "sep_conv_bn_relu_k3", "sep_conv_bn_relu_k5", "sep_conv_bn_relu_k7",
             "dil2_sep_conv_bn_relu_k5", "dil4_sep_conv_bn_relu_k5")
SKIP = "skip_connect"  # a dropped block (the identity on its C -> C, stride-1 slot)
RESIDUAL = ("zero", SKIP)  # a block's residual branch: none, or its input
_NOT_BLOCKS = ("skip", "skip_connect", "none", "zero")
_SHORT = re.compile(r"^(?:dil(?P<d>\d*)_)?(?P<sep>sep_)?conv_bn_relu_k(?P<k>\d+)$")


def _short(op: str) -> str:
    """`dil4_sep_conv_bn_relu_k5` -> `s5d4`, `conv_bn_relu_k3` -> `c3` (other op names as they are)."""
    m = _SHORT.match(op)
    if m is None:
        return op
    dilation = 1 if m["d"] is None else int(m["d"] or 2)
    return ("s" if m["sep"] else "c") + m["k"] + (f"d{dilation}" if dilation > 1 else "")


class _Block(NamedTuple):
    chosen: str | None  # the op (None: every candidate, a supernet)
    width: int
    stride: int
    residual: bool | None  # None: a supernet's residual decision


class MicroBlock(nn.Module):
    """op(x), plus x where the block has a residual branch (`branch`: the identity, or a mixed op)."""

    def __init__(self, op: nn.Module, branch: nn.Module | None) -> None:
        super().__init__()
        self.op, self.branch = op, branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.op(x)
        return out if self.branch is None else out + self.branch(x)


class MicroNet(nn.Module):
    """stem -> blocks -> global average pool -> linear (N, K); dense: a DenseHead (N, K, *input_shape[1:])."""

    def __init__(self, stem: nn.Module, blocks: Sequence[nn.Module], C_last: int, num_classes: int, kind: str,
                 dim: int) -> None:
        super().__init__()
        self.stem, self.blocks = stem, nn.Sequential(*blocks)
        self.dense = kind == "dense"
        self.classifier: nn.Module = (DenseHead(C_last, num_classes, dim) if self.dense
                                      else nn.Linear(C_last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.blocks(self.stem(x))  # (N, C_last, l) or (N, C_last, h, w)
        if self.dense:
            return self.classifier(features, x.shape[2:])  # type: ignore[no-any-return]
        return self.classifier(features.mean(tuple(range(2, features.dim()))))  # type: ignore[no-any-return]


class MicroSpace:
    """A stem and 1..max_depth blocks, each with its op, width, stride and (where shapes match) residual."""

    def __init__(self, *, max_depth: int = 6, min_depth: int = 1, widths: Sequence[int] = (4, 8, 12, 16, 24, 32),
                 ops: Sequence[str] = MICRO_OPS, strides: Sequence[int] = (1, 2), stem_kernel: int = 5,
                 search_width: int | None = None) -> None:
        def bad(rule: str, fix: str) -> UserError:
            return UserError(f"MicroSpace needs {rule}; {fix}")

        if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 1:
            raise bad(f"max_depth >= 1, but got {max_depth=}", "pass e.g. max_depth=6")
        if isinstance(min_depth, bool) or not isinstance(min_depth, int) or not 0 <= min_depth <= max_depth:
            raise bad(f"0 <= min_depth <= max_depth, but got {min_depth=}, {max_depth=}", "pass e.g. min_depth=1")
        if (not widths or len(set(widths)) < len(widths)
                or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths)):
            raise bad(f"widths as distinct channel counts >= 1, but got widths={tuple(widths)}",
                      "pass e.g. widths=(4, 8, 12, 16, 24, 32)")
        unknown = [op for op in ops if op not in OPS]
        if not ops or unknown or len(set(ops)) < len(ops) or any(op in _NOT_BLOCKS for op in ops):
            fix = (f"{unknown[0]!r} is not in the op table (nasopt.ops.OPS)" if unknown
                   else "`depth` decides how many blocks there are, so skip/zero/none are no block ops"
                   if any(op in _NOT_BLOCKS for op in ops) else "list each op once" if ops else "give one or more")
            raise bad(f"a non-empty list of distinct block ops, but got ops={tuple(ops)}",
                      f"{fix}; e.g. {MICRO_OPS[:3]}")
        if not strides or len(set(strides)) < len(strides) or any(s not in (1, 2) or isinstance(s, bool)
                                                                 for s in strides):
            raise bad(f"distinct strides from (1, 2), but got strides={tuple(strides)}",
                      "pass strides=(1, 2) or (1,)")
        if stem_kernel not in (3, 5, 7) or isinstance(stem_kernel, bool):
            raise bad(f"stem_kernel in (3, 5, 7), but got {stem_kernel=}", "pass e.g. stem_kernel=5")
        if search_width is not None and search_width not in widths:
            raise bad(f"search_width among the widths {tuple(widths)}, but got {search_width=}",
                      "pass one of them, or None for the largest")
        self.max_depth, self.min_depth, self.stem_kernel = max_depth, min_depth, stem_kernel
        self.widths, self.ops, self.strides = tuple(widths), tuple(ops), tuple(strides)
        self.search_width = search_width

    # -- decisions ---------------------------------------------------------------------------
    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        arch: dict[str, Any] = {"stem.width": trial.suggest_categorical("stem.width", self.widths)}
        depth = arch["depth"] = trial.suggest_int("depth", self.min_depth, self.max_depth)
        C = arch["stem.width"]
        for b in range(1, depth + 1):
            arch[f"block{b}.op"] = trial.suggest_categorical(f"block{b}.op", self.ops)
            width = arch[f"block{b}.width"] = trial.suggest_categorical(f"block{b}.width", self.widths)
            stride = arch[f"block{b}.stride"] = trial.suggest_categorical(f"block{b}.stride", self.strides)
            if stride == 1 and width == C:
                arch[f"block{b}.residual"] = trial.suggest_categorical(f"block{b}.residual", (False, True))
            C = width
        return arch

    def distributions(self) -> dict[str, BaseDistribution]:
        out: dict[str, BaseDistribution] = {"stem.width": CategoricalDistribution(self.widths),
                                            "depth": IntDistribution(self.min_depth, self.max_depth)}
        for b in range(1, self.max_depth + 1):
            out[f"block{b}.op"] = CategoricalDistribution(self.ops)
            out[f"block{b}.width"] = CategoricalDistribution(self.widths)
            out[f"block{b}.stride"] = CategoricalDistribution(self.strides)
            out[f"block{b}.residual"] = CategoricalDistribution((False, True))
        return out

    # -- network -----------------------------------------------------------------------------
    def build(self, arch: Mapping[str, Any], task: Any, choose: Chooser = fixed) -> nn.Module:
        """The network of `arch`; blocks past its depth are `skip_connect` slots (dropped by the default chooser).
        A hand-written arch may leave out `block{b}.residual` (no residual)."""
        C = int(arch["stem.width"])
        depth = int(arch["depth"])
        if not self.min_depth <= depth <= self.max_depth:
            raise UserError(f"depth={depth} is outside the space's {self.min_depth}..{self.max_depth}; "
                            "pick a depth in that range or widen min_depth/max_depth")
        blocks = []
        for b in range(1, depth + 1):
            blocks.append(_Block(str(arch[f"block{b}.op"]), int(arch[f"block{b}.width"]),
                                 int(arch[f"block{b}.stride"]), bool(arch.get(f"block{b}.residual", False))))
        last = blocks[-1].width if blocks else C
        blocks += [_Block(SKIP, last, 1, False)] * (self.max_depth - depth)
        return self._network(task, C, blocks, choose)

    def supernet(self, task: Any, choose: Chooser, *, width: int | None = None) -> nn.Module:
        """Every block up to max_depth at one width (`width`, default `search_width` or the largest) and stride
        1, one `choose("block{b}.op", ops [+ skip_connect past min_depth], None, ...)` and one
        `choose("block{b}.residual", ("zero", "skip_connect"), None, ...)` each."""
        if 1 not in self.strides:
            raise UserError(f"a one-shot search builds every block at stride 1, but MicroSpace(strides="
                            f"{self.strides}) has none; include 1 in strides")
        W = self._search_width(width)
        return self._network(task, W, [_Block(None, W, 1, None)] * self.max_depth, choose)

    def derive(self, weights: Mapping[str, Sequence[float]], *, width: int | None = None) -> dict[str, Any]:
        """The architecture of the most probable candidates of `supernet`: the blocks whose op is not
        `skip_connect`, in order, at the supernet's width and stride 1, each with its residual decision."""
        W = self._search_width(width)
        arch: dict[str, Any] = {"stem.width": W}
        kept: list[tuple[str, bool]] = []
        for b in range(1, self.max_depth + 1):
            op = self._best(weights, f"block{b}.op", self._candidates(b))
            residual = self._best(weights, f"block{b}.residual", RESIDUAL) == SKIP
            if op != SKIP:
                kept.append((op, residual))
        arch["depth"] = len(kept)
        for b, (op, residual) in enumerate(kept, 1):
            arch.update({f"block{b}.op": op, f"block{b}.width": W, f"block{b}.stride": 1,
                         f"block{b}.residual": residual})
        return arch

    @staticmethod
    def _best(weights: Mapping[str, Sequence[float]], name: str, candidates: Sequence[str]) -> str:
        if name not in weights or len(weights[name]) != len(candidates):
            raise ValueError(f"`derive` needs {len(candidates)} weights for {name!r} (candidates "
                             f"{list(candidates)}), but got {weights.get(name)!r}")
        return candidates[int(np.argmax(np.asarray(weights[name], dtype=np.float64)))]

    def _candidates(self, b: int) -> tuple[str, ...]:
        return self.ops + ((SKIP,) if b > self.min_depth else ())

    def _search_width(self, width: int | float | None) -> int:
        """`width` as one of the space's widths (None: `search_width`, else the largest)."""
        if width is None:
            return self.search_width if self.search_width is not None else max(self.widths)
        if width not in self.widths:
            raise UserError(f"width {width} is not one of the space's widths {self.widths}; pick one of them")
        return self.widths[self.widths.index(width)]  # type: ignore[arg-type]

    def _network(self, task: Any, C: int, blocks: Sequence[_Block], choose: Chooser) -> nn.Module:
        """stem (C channels) -> the blocks through `choose` -> head."""
        shape = tuple(task.input_shape)
        if len(shape) not in (2, 3):
            raise UserError(f"space micro builds for signals (channels, length) and images (channels, height, "
                            f"width), but the task's input shape is {shape}")
        dim = len(shape) - 1
        nd: dict[str, Any] = {} if dim == 2 else {"dim": dim}
        stem = build_op(f"conv_bn_relu_k{self.stem_kernel}", int(shape[0]), C, 1, **nd)
        layers: list[nn.Module] = []
        for b, block in enumerate(blocks, 1):
            op = choose(f"block{b}.op", self._candidates(b), block.chosen, C, block.width, block.stride, **nd)
            branch = None
            if block.stride == 1 and block.width == C:  # shapes match: a residual decision
                chosen = None if block.residual is None else RESIDUAL[int(block.residual)]
                branch = choose(f"block{b}.residual", RESIDUAL, chosen, C, C, 1, **nd)
                branch = None if isinstance(branch, Zero) else branch  # no residual: no branch to run
            if not (isinstance(op, nn.Identity) and branch is None):
                layers.append(MicroBlock(op, branch))
            C = block.width
        return MicroNet(stem, layers, C, task.num_classes, head_kind(task), dim)

    def graph(self, arch: Mapping[str, Any]) -> Any:
        """The DAG the pictures draw (`nasopt.artifacts.arch_graph`): input -> stem -> blocks, an `add` where a
        block adds its input -> pool + linear; labels name kernel, dilation, width and stride (no shapes)."""
        import networkx as nx  # the pictures' dependency, imported only to draw

        g = nx.DiGraph(layout="chain")

        def node(name: str, op: str, kind: str, label: str, decision: str | None = None) -> str:
            g.add_node(name, op=op, kind=kind, label=label, decision=decision, shape=None, group=None)
            return name

        prev = node("input", "input", "input", "input")
        stem = f"stem k{self.stem_kernel}, {arch['stem.width']}"
        g.add_edge(prev, node("stem", "stem", "stem", stem, "stem.width"))
        prev = "stem"
        for b in range(1, int(arch["depth"]) + 1):
            op, m = str(arch[f"block{b}.op"]), _SHORT.match(str(arch[f"block{b}.op"]))
            kind = op if m is None else ("sep" if m["sep"] else "conv") + f" k{m['k']}" + (
                "" if m["d"] is None else f" d{m['d'] or 2}")
            stride = " /2" if int(arch[f"block{b}.stride"]) == 2 else ""
            name = node(f"block{b}", op, "op", f"{kind}, {arch[f'block{b}.width']}{stride}", f"block{b}.op")
            g.add_edge(prev, name)
            if arch.get(f"block{b}.residual"):
                g.add_edge(name, node(f"block{b}.add", "add", "state", "+", f"block{b}.residual"))
                g.add_edge(prev, f"block{b}.add", skip=True)
                name = f"block{b}.add"
            prev = name
        g.add_edge(prev, node("head", "head", "head", "pool + linear"))
        g.graph["title"] = self.describe(arch)
        return g

    def encode(self, arch: Mapping[str, Any]) -> np.ndarray:
        return encode_params(arch, self.distributions())

    def describe(self, arch: Mapping[str, Any]) -> str:
        """`micro:8|c5x8|c3d4x12+r|s5x16/2`: the stem's width, then per block op, width, /2 when it strides
        and +r with a residual."""
        parts = [f"micro:{arch['stem.width']}"]
        for b in range(1, int(arch["depth"]) + 1):
            parts.append(f"{_short(str(arch[f'block{b}.op']))}x{arch[f'block{b}.width']}"
                         + ("/2" if int(arch[f"block{b}.stride"]) == 2 else "")
                         + ("+r" if arch.get(f"block{b}.residual") else ""))
        return "|".join(parts)
