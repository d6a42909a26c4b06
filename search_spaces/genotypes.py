"""DARTS genotypes: the printable form of a cell architecture, its parser and the published ones.

A genotype lists, per cell type, two `(op, input)` pairs for each intermediate node in node order:
entries `2k` and `2k + 1` feed node `k`, inputs `0` and `1` are the cell's two inputs (the outputs
of the cells two and one back) and input `i >= 2` is node `i - 2`. `*_concat` lists the states whose
concatenation is the cell's output. The discrete decisions of the cell spaces are the same data as
trial params: `{t}.n{k}.in{j}` (the input index) and `{t}.n{k}.op{j}` (the op) for cell type
`t in ("normal", "reduce")`, node `k`, input `j in (0, 1)`.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from nasopt.errors import UserError
from nasopt.ops import OPS

__all__ = ["Genotype", "GENOTYPES", "PRIMITIVES", "PRIMITIVES_WITH_NONE", "CELL_TYPES", "parse_genotype",
           "genotype_to_arch", "arch_to_genotype"]

# DARTS' candidate ops (its search-space order); `none` is a candidate of the supernet's edges only
PRIMITIVES = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
              "dil_conv_3x3", "dil_conv_5x5")
PRIMITIVES_WITH_NONE = ("none", *PRIMITIVES)
CELL_TYPES = ("normal", "reduce")

Edge = tuple[str, int]


@dataclasses.dataclass(frozen=True)
class Genotype:
    """A normal and a reduction cell: `(op, input)` pairs, two per node, and the concatenated states."""

    normal: tuple[Edge, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Edge, ...]
    reduce_concat: tuple[int, ...]

    def __post_init__(self) -> None:  # accept lists and ranges, store tuples (hashable, comparable)
        for field in ("normal", "reduce"):
            object.__setattr__(self, field, tuple((str(op), int(i)) for op, i in getattr(self, field)))
        for field in ("normal_concat", "reduce_concat"):
            object.__setattr__(self, field, tuple(int(i) for i in getattr(self, field)))

    def nodes(self, cell: str) -> int:
        """The number of intermediate nodes of cell type `cell`."""
        return len(getattr(self, cell)) // 2

    def __str__(self) -> str:
        return (f"Genotype(normal={list(self.normal)}, normal_concat={list(self.normal_concat)}, "
                f"reduce={list(self.reduce)}, reduce_concat={list(self.reduce_concat)})")


def _cell(*pairs: Edge) -> tuple[Edge, ...]:
    return tuple(pairs)


# Published cells, transcribed from the papers' released genotypes. NASNet and AmoebaNet have 5 nodes
# and use ops outside DARTS' search space (sep_conv_7x7, conv_7x1_1x7).
GENOTYPES: dict[str, Genotype] = {
    # DARTS (Liu et al., 2019), first-order search
    "DARTS_V1": Genotype(
        normal=_cell(("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
                     ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)),
        normal_concat=(2, 3, 4, 5),
        reduce=_cell(("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
                     ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)),
        reduce_concat=(2, 3, 4, 5)),
    # DARTS, second-order search: the cell of the paper's CIFAR-10 and ImageNet results
    "DARTS_V2": Genotype(
        normal=_cell(("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
                     ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)),
        normal_concat=(2, 3, 4, 5),
        reduce=_cell(("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
                     ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)),
        reduce_concat=(2, 3, 4, 5)),
    # PC-DARTS (Xu et al., 2020), searched on CIFAR-10
    "PC_DARTS": Genotype(
        normal=_cell(("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 0), ("dil_conv_3x3", 1),
                     ("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("avg_pool_3x3", 0), ("dil_conv_3x3", 1)),
        normal_concat=(2, 3, 4, 5),
        reduce=_cell(("sep_conv_5x5", 1), ("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_5x5", 2),
                     ("sep_conv_3x3", 0), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2)),
        reduce_concat=(2, 3, 4, 5)),
    # PC-DARTS, searched directly on ImageNet
    "PC_DARTS_IMAGENET": Genotype(
        normal=_cell(("skip_connect", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 0), ("skip_connect", 1),
                     ("sep_conv_3x3", 1), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("dil_conv_5x5", 4)),
        normal_concat=(2, 3, 4, 5),
        reduce=_cell(("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_5x5", 2), ("max_pool_3x3", 1),
                     ("sep_conv_3x3", 2), ("sep_conv_3x3", 1), ("sep_conv_5x5", 0), ("sep_conv_3x3", 3)),
        reduce_concat=(2, 3, 4, 5)),
    # NASNet-A (Zoph et al., 2018) in DARTS' notation
    "NASNet": Genotype(
        normal=_cell(("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 0), ("sep_conv_3x3", 0),
                     ("avg_pool_3x3", 1), ("skip_connect", 0), ("avg_pool_3x3", 0), ("avg_pool_3x3", 0),
                     ("sep_conv_3x3", 1), ("skip_connect", 1)),
        normal_concat=(2, 3, 4, 5, 6),
        reduce=_cell(("sep_conv_5x5", 1), ("sep_conv_7x7", 0), ("max_pool_3x3", 1), ("sep_conv_7x7", 0),
                     ("avg_pool_3x3", 1), ("sep_conv_5x5", 0), ("skip_connect", 3), ("avg_pool_3x3", 2),
                     ("sep_conv_3x3", 2), ("max_pool_3x3", 1)),
        reduce_concat=(4, 5, 6)),
    # AmoebaNet-A (Real et al., 2019) in DARTS' notation
    "AmoebaNet": Genotype(
        normal=_cell(("avg_pool_3x3", 0), ("max_pool_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 2),
                     ("sep_conv_3x3", 0), ("avg_pool_3x3", 3), ("sep_conv_3x3", 1), ("skip_connect", 1),
                     ("skip_connect", 0), ("avg_pool_3x3", 1)),
        normal_concat=(4, 5, 6),
        reduce=_cell(("avg_pool_3x3", 0), ("sep_conv_3x3", 1), ("max_pool_3x3", 0), ("sep_conv_7x7", 2),
                     ("sep_conv_7x7", 0), ("avg_pool_3x3", 1), ("max_pool_3x3", 0), ("max_pool_3x3", 1),
                     ("conv_7x1_1x7", 0), ("sep_conv_3x3", 5)),
        reduce_concat=(3, 4, 6)),
}

_FIELDS = tuple(f.name for f in dataclasses.fields(Genotype))
_HINT = "give a bundled name or a string like 'Genotype(normal=[(\"sep_conv_3x3\", 0), ...], normal_concat=[2, 3, 4, 5], ...)'"


def _literal(node: ast.expr, field: str) -> Any:
    """A literal field value, or `range(a, b)` as DARTS prints its concat lists (no eval)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
        args = [a.value for a in node.args if isinstance(a, ast.Constant) and type(a.value) is int]
        if len(args) == len(node.args) and 1 <= len(args) <= 3 and not node.keywords:
            return list(range(*args))
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise UserError(f"genotype field {field!r} is not a literal ({ast.unparse(node)}); {_HINT}") from None


def parse_genotype(text: str | Genotype) -> Genotype:
    """A `Genotype` from a bundled name, its printed form (`str(genotype)`) or a `Genotype`, validated."""
    if isinstance(text, Genotype):
        return validate(text)
    if not isinstance(text, str):
        raise UserError(f"a genotype must be a name or a string, but got {type(text).__name__}; {_HINT}")
    if text.strip() in GENOTYPES:
        return GENOTYPES[text.strip()]
    if "(" not in text:
        raise UserError(f"unknown genotype {text!r}; known genotypes: {', '.join(GENOTYPES)}")
    try:
        call = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as e:
        raise UserError(f"malformed genotype string ({e.msg} at column {e.offset}); {_HINT}") from None
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Genotype"
            and not call.args and all(k.arg in _FIELDS for k in call.keywords)):
        raise UserError(f"a genotype string must be Genotype(normal=..., normal_concat=..., reduce=..., "
                        f"reduce_concat=...) with keywords only; {_HINT}")
    values = {str(k.arg): _literal(k.value, str(k.arg)) for k in call.keywords}
    missing = [f for f in _FIELDS if f not in values]
    if missing:
        raise UserError(f"genotype string lacks {', '.join(missing)}; {_HINT}")
    for field in ("normal", "reduce"):
        pairs = values[field]
        if not isinstance(pairs, list | tuple) or not all(
                isinstance(p, list | tuple) and len(p) == 2 and isinstance(p[0], str) and type(p[1]) is int
                for p in pairs):
            raise UserError(f"genotype field {field!r} must be a list of (op name, input index) pairs; {_HINT}")
    for field in ("normal_concat", "reduce_concat"):
        if not isinstance(values[field], list | tuple) or not all(type(i) is int for i in values[field]):
            raise UserError(f"genotype field {field!r} must be a list of state indices; {_HINT}")
    return validate(Genotype(**values))


def validate(genotype: Genotype) -> Genotype:
    """Check ops, node inputs and concat indices; every mistake is a one-line `UserError`."""
    for cell in CELL_TYPES:
        pairs, concat = getattr(genotype, cell), getattr(genotype, f"{cell}_concat")
        if not pairs or len(pairs) % 2:
            raise UserError(f"genotype {cell} cell needs two (op, input) pairs per node, but has {len(pairs)} pairs")
        for e, (op, i) in enumerate(pairs):
            if op not in OPS:
                raise UserError(f"unknown op {op!r} in the genotype's {cell} cell; known ops: {', '.join(sorted(OPS))}")
            if not 0 <= i < 2 + e // 2:
                raise UserError(f"genotype {cell} node {e // 2} takes input {i}, but only states 0..{1 + e // 2} "
                                "exist before it (0, 1: the cell inputs; 2 + k: node k)")
        states = 2 + len(pairs) // 2
        if not concat or any(not 0 <= i < states for i in concat):
            raise UserError(f"genotype {cell}_concat {list(concat)} must be non-empty with states in 0..{states - 1}")
    return genotype


def genotype_to_arch(genotype: Genotype | str) -> dict[str, Any]:
    """The discrete decisions (`{t}.n{k}.in{j}`, `{t}.n{k}.op{j}`) of a genotype; concat is not a decision."""
    genotype = parse_genotype(genotype)
    arch: dict[str, Any] = {}
    for cell in CELL_TYPES:
        for e, (op, i) in enumerate(getattr(genotype, cell)):
            k, j = divmod(e, 2)
            arch[f"{cell}.n{k}.in{j}"] = i
            arch[f"{cell}.n{k}.op{j}"] = op
    return arch


def arch_to_genotype(arch: Mapping[str, Any], nodes: int | Mapping[str, int] = 4,
                     concat: Sequence[int] | Mapping[str, Sequence[int]] | None = None) -> Genotype:
    """The genotype of an arch dict with `nodes` nodes per cell; `concat` defaults to every node."""
    fields: dict[str, Any] = {}
    for cell in CELL_TYPES:
        n = nodes[cell] if isinstance(nodes, Mapping) else nodes
        missing = [f"{cell}.n{k}.{d}{j}" for k in range(n) for j in (0, 1) for d in ("in", "op")
                   if f"{cell}.n{k}.{d}{j}" not in arch]
        if missing:
            raise UserError(f"arch lacks the decision {missing[0]!r} of a {n}-node cell; "
                            "give in/op decisions for every node and input")
        fields[cell] = [(arch[f"{cell}.n{k}.op{j}"], int(arch[f"{cell}.n{k}.in{j}"])) for k in range(n) for j in (0, 1)]
        c = concat[cell] if isinstance(concat, Mapping) else concat
        fields[f"{cell}_concat"] = range(2, 2 + n) if c is None else c
    return validate(Genotype(**fields))
