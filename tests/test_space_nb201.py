"""The NAS-Bench-201 space: all 15,625 cells, NB201's string notation, the benchmark's parameter counts,
the cell and op semantics, shapes on small inputs, and the chooser contract. The generic space contract
runs over it in test_spaces.py."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nasopt import UserError
from nasopt.ops import build_op
from nasopt.search_spaces import make_space
from nasopt.search_spaces.nb201 import EDGES, NB201_OPS, NB201Cell, NB201Space, format_arch, parse_arch
from nasopt.space import fixed

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["edge.1<-0", "edge.2<-0", "edge.2<-1", "edge.3<-0", "edge.3<-1", "edge.3<-2"]
# Strings as NB201 writes them: the brief's example, the benchmark's best CIFAR-10 cell, its ResNet cell.
KNOWN = [
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
    "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|none~2|",
]


def task(shape, num_classes=10):
    return SimpleNamespace(input_shape=shape, num_classes=num_classes)


def uniform(op: str) -> dict[str, str]:
    return dict.fromkeys(NAMES, op)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def all_archs() -> list[dict[str, str]]:
    dists = NB201Space().distributions()
    return [dict(zip(dists, ops, strict=True)) for ops in itertools.product(*(d.choices for d in dists.values()))]


# ------------------------------------------------------------------------------------------- the space

def test_distributions_span_15625_cells_named_by_edge():
    space = NB201Space()
    dists = space.distributions()
    assert list(dists) == NAMES
    assert [f"edge.{i}<-{j}" for i, j in EDGES] == NAMES
    assert all(d.choices == NB201_OPS for d in dists.values())
    assert NB201_OPS == ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
    assert math.prod(len(d.choices) for d in dists.values()) == 15_625


def test_every_cell_prints_distinctly_and_parses_back():
    space = NB201Space()
    archs = all_archs()
    strings = [space.describe(a) for a in archs]
    assert len(archs) == len(set(strings)) == 15_625
    assert all(parse_arch(s) == a for s, a in zip(strings, archs, strict=True))
    assert len({space.encode(a).tobytes() for a in archs[::97]}) == len(archs[::97])


@pytest.mark.parametrize("text", KNOWN)
def test_known_strings_round_trip(text):
    arch = parse_arch(text)
    assert list(arch) == NAMES and set(arch.values()) <= set(NB201_OPS)
    assert NB201Space.from_string(text) == arch
    assert format_arch(arch) == NB201Space().describe(arch) == text
    assert parse_arch(f"  {text}\n") == arch  # surrounding whitespace is ignored


def test_parse_reads_the_edges_by_source_node():
    arch = parse_arch(KNOWN[0])
    assert arch == {"edge.1<-0": "nor_conv_3x3", "edge.2<-0": "nor_conv_3x3", "edge.2<-1": "avg_pool_3x3",
                    "edge.3<-0": "skip_connect", "edge.3<-1": "nor_conv_3x3", "edge.3<-2": "skip_connect"}
    # inputs listed in another order name the same cell
    assert parse_arch("|none~0|+|skip_connect~1|nor_conv_1x1~0|+|none~2|none~0|avg_pool_3x3~1|") == {
        "edge.1<-0": "none", "edge.2<-0": "nor_conv_1x1", "edge.2<-1": "skip_connect",
        "edge.3<-0": "none", "edge.3<-1": "avg_pool_3x3", "edge.3<-2": "none"}


@pytest.mark.parametrize(("text", "problem"), [
    ("", "1 node"),
    ("|nor_conv_3x3~0|+|none~0|none~1|", "2 node"),
    ("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|+|none~0|", "4 node"),
    ("none~0|+|none~0|none~1|+|none~0|none~1|none~2|", "enclosed in '|'"),
    ("|none~0|+|none~0|+|none~0|none~1|none~2|", "node 2 has 1 input"),
    ("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|none~3|", "node 3 has 4 input"),
    ("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "'none~1' in node 1"),
    ("|none|+|none~0|none~1|+|none~0|none~1|none~2|", "'none' in node 1"),
    ("|none~0|+|none~0|none~x|+|none~0|none~1|none~2|", "'none~x' in node 2"),
    ("|conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown op 'conv_3x3'"),
    ("|none~0|+|none~0|none~0|+|none~0|none~1|none~2|", "input 0 twice"),
])
def test_bad_strings_are_one_line_user_errors(text, problem):
    with pytest.raises(UserError, match="NB201 architecture") as e:
        parse_arch(text)
    message = str(e.value)
    assert problem in message and "\n" not in message
    assert "e.g. |" in message or "the ops are" in message or "give each" in message  # says how to fix it


def test_bad_archs_and_arguments():
    space = NB201Space(C=4, N=1)
    with pytest.raises(UserError, match=r"misses decision 'edge.3<-2'"):
        space.describe({k: "none" for k in NAMES[:-1]})
    with pytest.raises(UserError, match="conv9x9"):
        space.build({**uniform("none"), "edge.2<-1": "conv9x9"}, task((3, 8, 8)))
    with pytest.raises(UserError, match="image inputs"):
        space.build(uniform("none"), task((1, 40)))
    with pytest.raises(UserError, match="string"):
        parse_arch(None)
    with pytest.raises(ValueError, match="C >= 1"):
        NB201Space(C=0)
    with pytest.raises(ValueError, match="N >= 1"):
        NB201Space(N=True)


def test_registered_under_nb201_with_the_benchmark_defaults():
    space = make_space("nb201")
    assert isinstance(space, NB201Space) and (space.C, space.N) == (16, 5)


# ------------------------------------------------------------------------------- parameter counts

# NB201's API reports `params` in MB (= 1e6 parameters) per dataset; the minimum over the 15,625 cells is
# the parameter-free cell, the maximum the all-nor_conv_3x3 cell (paper: "0.073 to 1.531 MB" on CIFAR-10).
@pytest.mark.parametrize(("dataset", "shape", "num_classes", "low", "high"), [
    ("cifar10", (3, 32, 32), 10, 0.073306, 1.531546),
    ("cifar100", (3, 32, 32), 100, 0.079156, 1.537396),
    ("ImageNet16-120", (3, 16, 16), 120, 0.080456, 1.538696),
])
def test_benchmark_parameter_counts(dataset, shape, num_classes, low, high):
    space = NB201Space()  # C=16, N=5: the benchmark's skeleton
    t = task(shape, num_classes)
    for op in ("none", "skip_connect", "avg_pool_3x3"):
        assert n_params(space.build(uniform(op), t)) == round(low * 1e6), (dataset, op)
    assert n_params(space.build(uniform("nor_conv_3x3"), t)) == round(high * 1e6), dataset


def test_parameter_count_from_the_op_formulas():
    C, N, C_in, k = 4, 2, 1, 3
    arch = parse_arch("|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|none~2|")
    per_op = {"nor_conv_3x3": lambda c: 9 * c * c + 2 * c, "nor_conv_1x1": lambda c: c * c + 2 * c}
    cell = lambda c: sum(per_op.get(op, lambda _: 0)(c) for op in arch.values())  # noqa: E731
    residual = lambda a, b: (9 * a * b + 2 * b) + (9 * b * b + 2 * b) + a * b  # noqa: E731 (2 ReLUConvBN + 1x1)
    expected = (
        9 * C_in * C + 2 * C  # stem conv (no bias) + BN
        + N * (cell(C) + cell(2 * C) + cell(4 * C))
        + residual(C, 2 * C) + residual(2 * C, 4 * C)
        + 2 * 4 * C  # lastact BN
        + 4 * C * k + k  # classifier
    )
    assert n_params(NB201Space(C=C, N=N).build(arch, task((C_in, 8, 8), k))) == expected


# ---------------------------------------------------------------------------------- ops and shapes

def test_ops_are_nb201s_definitions():
    C = 6
    x = torch.randn(2, C, 7, 7)
    pool = build_op("avg_pool_3x3", C, C, 1)
    assert n_params(pool) == 0
    assert torch.allclose(pool(x), F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
    assert not torch.allclose(pool(x), F.avg_pool2d(x, 3, 1, 1))  # corners average 4 values, not 9
    skip = build_op("skip_connect", C, C, 1)
    assert isinstance(skip, nn.Identity) and skip(x) is x
    assert (build_op("none", C, C, 1)(x) == 0).all()
    for name, kernel in (("nor_conv_1x1", 1), ("nor_conv_3x3", 3)):
        op = build_op(name, C, C, 1)
        assert [type(m) for m in op] == [nn.ReLU, nn.Conv2d, nn.BatchNorm2d]
        assert op[1].kernel_size == (kernel, kernel) and op[1].bias is None and op(x).shape == x.shape
        assert n_params(op) == kernel * kernel * C * C + 2 * C
        assert n_params(build_op(name, C, C, 1, affine=False)) == kernel * kernel * C * C


def test_cell_sums_its_edges_node_by_node():
    x = torch.randn(2, 3, 5, 5)

    def cell(text):
        arch = parse_arch(text)
        return NB201Cell([fixed(n, NB201_OPS, arch[n], 3, 3, 1) for n in NAMES]).eval()

    assert torch.equal(cell("|skip_connect~0|+|none~0|none~1|+|none~0|skip_connect~1|none~2|")(x), x)
    assert (cell("|skip_connect~0|+|none~0|none~1|+|none~0|none~1|skip_connect~2|")(x) == 0).all()  # 2 is cut
    pooled = cell("|avg_pool_3x3~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|none~1|skip_connect~2|")(x)
    p = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    assert torch.allclose(pooled, x + (x + p))  # node3 = node0 + node2, node2 = node0 + pool(node0)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 15, 15)])
def test_forward_shapes_and_resolution(shape):
    space = NB201Space(C=4, N=1)
    sizes: list[tuple[int, ...]] = []
    torch.manual_seed(0)
    model = space.build(parse_arch(KNOWN[0]), task(shape, 7)).eval()
    for m in model.cells:
        m.register_forward_hook(lambda mod, i, o: sizes.append(tuple(o.shape[1:])))
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    H = shape[1]
    h1, h2 = math.ceil(H / 2), math.ceil(math.ceil(H / 2) / 2)
    assert sizes == [(4, H, H), (8, h1, h1), (8, h1, h1), (16, h2, h2), (16, h2, h2)]


def test_build_asks_the_chooser_once_per_edge_per_cell():
    calls = []

    def recording(name, candidates, chosen, C_in, C_out, stride, **options):
        calls.append((name, tuple(candidates), chosen, C_in, C_out, stride, options))
        return fixed(name, candidates, chosen, C_in, C_out, stride, **options)

    arch = parse_arch(KNOWN[1])
    space = NB201Space(C=4, N=2)
    model = space.build(arch, task((3, 8, 8)), choose=recording)
    assert len(calls) == 6 * 3 * 2
    assert [c[0] for c in calls] == NAMES * 6  # the same 6 names in every cell: shared one-shot weights
    assert all(c[1] == NB201_OPS and c[2] == arch[c[0]] and c[5] == 1 and c[6] == {"affine": True} for c in calls)
    assert [c[3] for c in calls[::6]] == [4, 4, 8, 8, 16, 16] and all(c[3] == c[4] for c in calls)
    assert n_params(model) == n_params(space.build(arch, task((3, 8, 8))))
