"""The DARTS cell space (Liu et al., 2019): a normal and a reduction cell, stacked into a network.

Decisions, for cell type `t in (normal, reduce)`, node `k in 0..nodes-1` and input `j in (0, 1)`:

- `{t}.n{k}.in{j}`  the state the node reads: 0, 1 the cell inputs, 2 + i node i (one of 0..k+1)
- `{t}.n{k}.op{j}`  the op applied to it, one of `ops` (DARTS' 7 primitives without `none`)

`build` gives the evaluation network of DARTS' model.py: the CIFAR skeleton (stem conv3x3 -> 3C,
reduction cells at layers//3 and 2*layers//3 doubling C, cell inputs preprocessed by FactorizedReduce
after a reduction else ReLU-conv1x1-BN, output C * len(concat), auxiliary head after cell
2*layers//3, drop path on the non-identity ops while training, global pool + linear) or the ImageNet
one (two stems striding 8x in all, aux head of ImageNet form). `supernet` gives the search network of
model_search.py from the same `Cell` (every node reads all its predecessors, one `choose` per edge),
`derive` maps its edge weights back to decisions by DARTS' rule. The cell and network code is
dimension-generic (`dim`); `conv1d.Conv1dSpace` is this space on 1-D signals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna
import torch
import torch.nn.functional as F
from optuna.distributions import BaseDistribution, CategoricalDistribution
from torch import nn

from nasopt.errors import UserError
from nasopt.ops import ND_OPS, OPS, FactorizedReduce, ReLUConvBN, layers_nd
from nasopt.search_spaces.genotypes import (
    CELL_TYPES,
    GENOTYPES,
    PRIMITIVES,
    Genotype,
    arch_to_genotype,
    genotype_to_arch,
    parse_genotype,
)
from nasopt.space import Chooser, DenseHead, encode_params, fixed, head_kind

__all__ = ["DartsCellSpace", "DartsNetwork", "Cell", "AuxiliaryHead", "drop_path", "GENOTYPES", "Genotype"]

_SHORT = {"none": "0", "max_pool_3x3": "mp", "avg_pool_3x3": "ap", "skip_connect": "sk", "sep_conv_3x3": "s3",
          "sep_conv_5x5": "s5", "sep_conv_7x7": "s7", "dil_conv_3x3": "d3", "dil_conv_5x5": "d5",
          "conv_7x1_1x7": "c71", "max_pool_k3": "m3", "avg_pool_k3": "a3"}
_SHORT.update({f"{kind}_k{k}": f"{code}{k}" for kind, code in [("conv_bn_relu", "c"), ("dil_conv_bn_relu", "dc"),
                                                                 ("sep_conv_bn_relu", "sc")] for k in (3, 5, 7)})


def drop_path(x: torch.Tensor, prob: float) -> torch.Tensor:
    """Zero whole samples with probability `prob` and scale the others by 1 / (1 - prob) (DARTS)."""
    keep = 1.0 - prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)  # (N, 1, 1[, 1])
    return x / keep * mask


class Cell(nn.Module):
    """Preprocess both inputs to C channels; each node sums its edges; output = concat of `concat` states.

    `edges` are `(node, input, module)`: two per node in an evaluation cell, one per predecessor in the
    search cell. An input that no edge reads gets no preprocessing (the reference would hold dead weights).
    """

    def __init__(self, edges: Sequence[tuple[int, int, nn.Module]], concat: Sequence[int], C_pp: int, C_p: int,
                 C: int, reduction: bool, reduction_prev: bool, affine: bool = True, dim: int = 2) -> None:
        super().__init__()
        self.reduction, self.concat, self.multiplier = reduction, list(concat), len(concat)
        used = {i for _, i, _ in edges} | set(self.concat)
        self.preprocess0 = None if 0 not in used else (
            FactorizedReduce(C_pp, C, affine, dim) if reduction_prev else ReLUConvBN(C_pp, C, 1, 1, 0, affine, dim))
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0, affine, dim) if 1 in used else None
        self.nodes = max(k for k, _, _ in edges) + 1
        self.inputs = [i for _, i, _ in edges]
        self.by_node = [[e for e, (k, _, _) in enumerate(edges) if k == node] for node in range(self.nodes)]
        self.ops = nn.ModuleList(m for _, _, m in edges)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        states: list[Any] = [None if self.preprocess0 is None else self.preprocess0(s0),
                             None if self.preprocess1 is None else self.preprocess1(s1)]  # (N, C, H, W) each
        for edge_ids in self.by_node:
            total = None
            for e in edge_ids:
                op = self.ops[e]
                h = op(states[self.inputs[e]])
                if self.training and drop_prob > 0.0 and not isinstance(op, nn.Identity):
                    h = drop_path(h, drop_prob)
                total = h if total is None else total + h
            states.append(total)
        return torch.cat([states[i] for i in self.concat], dim=1)  # (N, C * multiplier, H', W')


class AuxiliaryHead(nn.Module):
    """DARTS' auxiliary classifier: ReLU -> avgpool 5 -> conv1x1 128 -> BN-ReLU -> conv2x2 768 [-> BN] -> ReLU -> linear.

    The reference assumes the map after cell 2*layers//3 is 8x8 (CIFAR, pool stride 3) or 7x7 to 14x14
    (ImageNet, stride 2, no BN after the 2x2 conv), pooled to 2x2. Here the 5-window pool is used where it
    gives at least 2 per side; smaller maps (8x8 digits reach 2x2 there) are pooled adaptively to 2 per
    side instead, and anything the 2x2 conv leaves above 1 per side is averaged. So the head works at
    every resolution and equals the reference at the reference sizes.
    """

    def __init__(self, C: int, num_classes: int, stride: int, bn: bool, dim: int = 2) -> None:
        super().__init__()
        nd = layers_nd(dim)
        self.stride, self.dim = stride, dim
        self.features = nn.Sequential(nd.conv(C, 128, 1, bias=False), nd.bn(128), nn.ReLU(inplace=False),
                                      nd.conv(128, 768, 2, bias=False), *([nd.bn(768)] if bn else []),
                                      nn.ReLU(inplace=False))
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        if all((size - 5) // self.stride + 1 >= 2 for size in x.shape[2:]):
            pool = F.avg_pool1d if self.dim == 1 else F.avg_pool2d
            x = pool(x, 5, self.stride, 0, False, False)  # no padding: count_include_pad has no effect
        else:
            x = (F.adaptive_avg_pool1d if self.dim == 1 else F.adaptive_avg_pool2d)(x, 2)
        return self.classifier(self.features(x).flatten(2).mean(-1))  # (N, 768) -> (N, num_classes)


class DartsNetwork(nn.Module):
    """[input BN] -> stem(s) -> `layers` cells -> global average pool -> linear; forward returns the logits.
    With `kind` "dense" the head is a 1x1 conv on the last cell's map, upsampled (bi)linearly to the input's
    size (`DenseHead`): (N, num_classes, *spatial); there is no auxiliary head then.

    `make_cell(reduction, C_pp, C_p, C, reduction_prev)` builds one cell. In training mode with the
    auxiliary head, the aux logits are left in `self.aux_logits` (else None). `drop_path_prob` is the
    drop-path probability of the cells, set per epoch by `on_epoch_start` like DARTS' train.py.
    """

    def __init__(self, *, in_channels: int, num_classes: int, C: int, layers: int, make_cell: Any,
                 skeleton: str = "cifar", stem_multiplier: int = 3, auxiliary: bool = False,
                 drop_path: float = 0.0, input_bn: bool = False, dim: int = 2, kind: str = "classify") -> None:
        super().__init__()
        nd = layers_nd(dim)
        self.skeleton, self.drop_path, self.drop_path_prob = skeleton, drop_path, 0.0
        self.aux_logits: torch.Tensor | None = None
        self.input_bn = nd.bn(in_channels) if input_bn else nn.Identity()
        if skeleton == "cifar":
            C_p = stem_multiplier * C
            self.stem = nn.Sequential(nd.conv(in_channels, C_p, 3, padding=1, bias=False), nd.bn(C_p))
            C_pp, reduction_prev = C_p, False
        else:  # ImageNet mobile setting: /4 in stem0, /2 in stem1; the first cell reduces stem0's output
            self.stem0 = nn.Sequential(nd.conv(in_channels, C // 2, 3, 2, 1, bias=False), nd.bn(C // 2),
                                       nn.ReLU(inplace=False), nd.conv(C // 2, C, 3, 2, 1, bias=False), nd.bn(C))
            self.stem1 = nn.Sequential(nn.ReLU(inplace=False), nd.conv(C, C, 3, 2, 1, bias=False), nd.bn(C))
            C_pp, C_p, reduction_prev = C, C, True
        self.aux_index = 2 * layers // 3
        cells, C_curr, C_aux = [], C, C_p
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            C_curr *= 2 if reduction else 1
            cells.append(make_cell(reduction, C_pp, C_p, C_curr, reduction_prev))
            reduction_prev = reduction
            C_pp, C_p = C_p, cells[-1].multiplier * C_curr
            C_aux = C_p if i == self.aux_index else C_aux
        self.cells = nn.ModuleList(cells)
        self.auxiliary_head = (AuxiliaryHead(C_aux, num_classes, 3 if skeleton == "cifar" else 2,
                                             bn=skeleton == "cifar", dim=dim) if auxiliary else None)
        self.dense = kind == "dense"
        self.classifier = DenseHead(C_p, num_classes, dim) if self.dense else nn.Linear(C_p, num_classes)

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Ramp drop path linearly: `drop_path * epoch / epochs` for the 0-based `epoch`."""
        self.drop_path_prob = self.drop_path * epoch / epochs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        x = self.input_bn(x)
        if self.skeleton == "cifar":
            s0 = s1 = self.stem(x)
        else:
            s0 = self.stem0(x)
            s1 = self.stem1(s0)
        self.aux_logits = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_index and self.auxiliary_head is not None and self.training:
                self.aux_logits = self.auxiliary_head(s1)
        if self.dense:
            return self.classifier(s1, size)  # (N, num_classes, *spatial)
        return self.classifier(s1.flatten(2).mean(-1))  # global average pool -> (N, num_classes)


class DartsCellSpace:
    """DARTS' cell space: `nodes` nodes per cell, `layers` cells of `C` initial channels.

    Small defaults train on 8x8 digits in seconds; the paper's evaluation network is
    `DartsCellSpace(C=36, layers=20, auxiliary=True, drop_path=0.2)`, its search network
    `supernet` of `DartsCellSpace(C=16, layers=8)`; `search_C`/`search_layers` give the supernet its own
    size, so one space serves both: `DartsCellSpace(C=36, layers=20, search_C=16, search_layers=8, ...)`. `genotype` (a bundled name such as "DARTS_V2", a
    printed Genotype or a Genotype) fixes the cells: every decision then has the genotype's value as its
    one choice, and nodes and concat come from the genotype. `skeleton` "auto" takes the ImageNet
    skeleton for 2-D inputs of at least 128 pixels a side, else the CIFAR one.
    """

    dim = 2
    prefix = "darts"

    def __init__(self, *, C: int = 8, layers: int = 5, nodes: int = 4, multiplier: int | None = None,
                 stem_multiplier: int = 3, auxiliary: bool = False, drop_path: float = 0.0, skeleton: str = "auto",
                 genotype: str | Genotype | None = None, ops: Sequence[str] = PRIMITIVES, input_bn: bool = False,
                 search_C: int | None = None, search_layers: int | None = None) -> None:
        multiplier = nodes if multiplier is None else multiplier
        for rule, ok in [("C >= 1", C >= 1), ("layers >= 1", layers >= 1), ("nodes >= 1", nodes >= 1),
                         ("1 <= multiplier <= nodes", 1 <= multiplier <= nodes),
                         ("0 <= drop_path < 1", 0 <= drop_path < 1)]:
            if not ok:
                raise ValueError(f"`{rule}` must hold, but got {C=}, {layers=}, {nodes=}, {multiplier=}, {drop_path=}")
        if skeleton not in ("auto", "cifar", "imagenet"):
            raise UserError(f"unknown skeleton {skeleton!r}; choose 'auto', 'cifar' or 'imagenet'")
        bad = [op for op in ops if op not in OPS or op == "none" or (self.dim == 1 and op not in ND_OPS)]
        if bad or not ops:
            known = sorted(ND_OPS - {"none", "zero"}) if self.dim == 1 else sorted(OPS)
            raise UserError(f"{type(self).__name__}(ops=...) cannot use {bad[0] if bad else 'no ops'!r}; "
                            f"choose among: {', '.join(known)}")
        self.C, self.layers, self.stem_multiplier, self.ops = C, layers, stem_multiplier, tuple(ops)
        # the supernet may be smaller than the evaluation network (DARTS: 8 cells of C=16 vs 20 of C=36)
        self.search_C, self.search_layers = search_C or C, search_layers or layers
        self.auxiliary, self.drop_path, self.skeleton, self.input_bn = auxiliary, drop_path, skeleton, input_bn
        self.candidates = ("none", *self.ops)  # the supernet's per-edge candidates, in `derive`'s order
        self.genotype = None if genotype is None else parse_genotype(genotype)
        if self.genotype is None:
            self.nodes = {t: nodes for t in CELL_TYPES}
            self.concat = {t: tuple(range(2 + nodes - multiplier, 2 + nodes)) for t in CELL_TYPES}
        else:
            self.nodes = {t: self.genotype.nodes(t) for t in CELL_TYPES}
            self.concat = {t: getattr(self.genotype, f"{t}_concat") for t in CELL_TYPES}

    def config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this space (`nasopt.export._rebuild.space_config`)."""
        out: dict[str, Any] = {"C": self.C, "layers": self.layers, "stem_multiplier": self.stem_multiplier,
                               "auxiliary": self.auxiliary, "drop_path": self.drop_path, "skeleton": self.skeleton,
                               "ops": list(self.ops), "input_bn": self.input_bn, "search_C": self.search_C,
                               "search_layers": self.search_layers}
        if self.genotype is None:
            out.update(nodes=self.nodes["normal"], multiplier=len(self.concat["normal"]))
        else:
            out["genotype"] = str(self.genotype)
        return out

    # -- decisions ---------------------------------------------------------------------------
    def _choices(self) -> dict[str, tuple[Any, ...]]:
        fixed_arch = None if self.genotype is None else genotype_to_arch(self.genotype)
        out: dict[str, tuple[Any, ...]] = {}
        for t in CELL_TYPES:
            for k in range(self.nodes[t]):
                for j in (0, 1):
                    for name, choices in [(f"{t}.n{k}.in{j}", tuple(range(k + 2))), (f"{t}.n{k}.op{j}", self.ops)]:
                        out[name] = choices if fixed_arch is None else (fixed_arch[name],)
        return out

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        return {name: trial.suggest_categorical(name, choices) for name, choices in self._choices().items()}

    def distributions(self) -> dict[str, BaseDistribution]:
        return {name: CategoricalDistribution(choices) for name, choices in self._choices().items()}

    def encode(self, arch: Mapping[str, Any]) -> np.ndarray:
        return encode_params(arch, self.distributions())

    def to_genotype(self, arch: Mapping[str, Any]) -> Genotype:
        return arch_to_genotype(arch, self.nodes, self.concat)

    def to_arch(self, genotype: str | Genotype) -> dict[str, Any]:
        return genotype_to_arch(genotype)

    def describe(self, arch: Mapping[str, Any]) -> str:
        """Compact genotype: `darts:n=s3@0+s3@1,...;r=mp@0+mp@1,...` (op code @ input, nodes by commas)."""
        cells = []
        for t in CELL_TYPES:
            nodes = [f"{_SHORT.get(arch[f'{t}.n{k}.op0'], arch[f'{t}.n{k}.op0'])}@{arch[f'{t}.n{k}.in0']}+"
                     f"{_SHORT.get(arch[f'{t}.n{k}.op1'], arch[f'{t}.n{k}.op1'])}@{arch[f'{t}.n{k}.in1']}"
                     for k in range(self.nodes[t])]
            cells.append(f"{t[0]}=" + ",".join(nodes))
        return f"{self.prefix}:" + ";".join(cells)

    # -- networks ----------------------------------------------------------------------------
    def _network(self, task: Any, make_cell: Any, auxiliary: bool, drop_path: float,
                 size: tuple[int, int] | None = None) -> DartsNetwork:
        C, layers = size or (self.C, self.layers)
        shape = tuple(task.input_shape)
        if len(shape) != 1 + self.dim:
            want = "(channels, length) signals" if self.dim == 1 else "(channels, height, width) images"
            raise UserError(f"{type(self).__name__} needs {want}, but the task has input_shape={shape}; "
                            f"use the {'darts_cell' if self.dim == 1 else 'conv1d'} space for that data")
        kind = head_kind(task)
        if kind == "dense" and auxiliary:
            raise UserError(f"{type(self).__name__}(auxiliary=True) cannot serve a dense (per-position) task: its "
                            "auxiliary head classifies whole samples; set auxiliary=False")
        skeleton = self.skeleton
        if skeleton == "auto":
            skeleton = "imagenet" if self.dim == 2 and min(shape[1:]) >= 128 else "cifar"
        return DartsNetwork(in_channels=self._in_channels(task), num_classes=task.num_classes, C=C,
                            layers=layers, make_cell=make_cell, skeleton=skeleton,
                            stem_multiplier=self.stem_multiplier, auxiliary=auxiliary, drop_path=drop_path,
                            input_bn=self.input_bn, dim=self.dim, kind=kind)

    def _in_channels(self, task: Any) -> int:
        return int(task.input_shape[0])

    def build(self, arch: Mapping[str, Any], task: Any, choose: Chooser = fixed) -> nn.Module:
        """The evaluation network of `arch` (with the fixed genotype's concat when there is one)."""
        return self.build_genotype(self.to_genotype(arch), task, choose)

    def build_genotype(self, genotype: str | Genotype, task: Any, choose: Chooser = fixed) -> DartsNetwork:
        """The evaluation network of any genotype (a bundled name, a printed Genotype or a Genotype)."""
        genotype = parse_genotype(genotype)

        def make_cell(reduction: bool, C_pp: int, C_p: int, C: int, reduction_prev: bool) -> Cell:
            t = "reduce" if reduction else "normal"
            edges = []
            for e, (op, i) in enumerate(getattr(genotype, t)):
                k, j = divmod(e, 2)
                candidates = self.ops if op in self.ops else (*self.ops, op)
                stride = 2 if reduction and i < 2 else 1
                edges.append((k, i, choose(f"{t}.n{k}.op{j}", candidates, op, C, C, stride, affine=True, dim=self.dim)))
            return Cell(edges, getattr(genotype, f"{t}_concat"), C_pp, C_p, C, reduction, reduction_prev, True, self.dim)

        return self._network(task, make_cell, self.auxiliary, self.drop_path)

    def edge_names(self) -> list[str]:
        """The supernet's edges `{t}.n{k}.e{i}` (node k reads state i), one weight vector each in `derive`."""
        return [f"{t}.n{k}.e{i}" for t in CELL_TYPES for k in range(self.nodes[t]) for i in range(k + 2)]

    def supernet(self, task: Any, choose: Chooser) -> DartsNetwork:
        """DARTS' search network: every node reads all predecessors; one `choose` per edge and cell.

        Each edge asks `choose(f"{t}.n{k}.e{i}", self.candidates, None, C, C, stride, affine=False, dim=...)`;
        cells of one type repeat the same edge names (one set of architecture weights per cell type).
        """

        def make_cell(reduction: bool, C_pp: int, C_p: int, C: int, reduction_prev: bool) -> Cell:
            t = "reduce" if reduction else "normal"
            edges = [(k, i, choose(f"{t}.n{k}.e{i}", self.candidates, None,  # no choice yet
                                   C, C, 2 if reduction and i < 2 else 1, affine=False, dim=self.dim))
                     for k in range(self.nodes[t]) for i in range(k + 2)]
            return Cell(edges, self.concat[t], C_pp, C_p, C, reduction, reduction_prev, False, self.dim)

        return self._network(task, make_cell, auxiliary=False, drop_path=0.0,
                             size=(self.search_C, self.search_layers))

    def derive(self, weights: Mapping[str, Sequence[float]]) -> dict[str, Any]:
        """Decisions from per-edge weights over `self.candidates` (DARTS' rule): each node keeps the two
        edges with the largest non-`none` weight, each with its largest non-`none` op."""
        arch: dict[str, Any] = {}
        for t in CELL_TYPES:
            for k in range(self.nodes[t]):
                rows = [self._edge_weights(weights, f"{t}.n{k}.e{i}") for i in range(k + 2)]
                best = [1 + int(np.argmax(w[1:])) for w in rows]  # candidate 0 is `none`; first maximum on ties
                top = sorted(range(k + 2), key=lambda i: -rows[i][best[i]])[:2]  # stable: ties keep the lower input
                for j, i in enumerate(top):
                    arch[f"{t}.n{k}.in{j}"], arch[f"{t}.n{k}.op{j}"] = i, self.candidates[best[i]]
        return arch

    def _edge_weights(self, weights: Mapping[str, Any], name: str) -> np.ndarray:
        if name not in weights:
            raise ValueError(f"`derive` needs weights for every edge of `edge_names()`, but {name!r} is missing")
        w = weights[name]
        w = np.asarray(w.detach().cpu() if isinstance(w, torch.Tensor) else w, dtype=np.float64).reshape(-1)
        if len(w) != len(self.candidates):
            raise ValueError(f"`len(weights[{name!r}]) == {len(self.candidates)}` (one per candidate in "
                             f"{self.candidates}) must hold, but got {len(w)}")
        return w
