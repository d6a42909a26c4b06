"""The DARTS cell space: genotypes, evaluation networks (CIFAR and ImageNet skeletons), supernet, derive."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from nasopt import UserError
from nasopt.ops import build_op
from nasopt.search_spaces.darts_cell import DartsCellSpace
from nasopt.search_spaces.genotypes import (
    GENOTYPES,
    PRIMITIVES,
    PRIMITIVES_WITH_NONE,
    Genotype,
    arch_to_genotype,
    genotype_to_arch,
    parse_genotype,
)
from nasopt.space import fixed, random_arch

pytestmark = pytest.mark.usefixtures("one_thread")

FOUR_NODE = ("DARTS_V1", "DARTS_V2", "PC_DARTS", "PC_DARTS_IMAGENET")


def task(shape, num_classes=10):
    return SimpleNamespace(input_shape=shape, num_classes=num_classes)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------ genotypes

@pytest.mark.parametrize("name", sorted(GENOTYPES))
def test_genotype_string_parses_back_to_the_same_genotype(name):
    g = GENOTYPES[name]
    text = str(g)
    assert text.startswith("Genotype(normal=[(") and "normal_concat=[" in text and "reduce_concat=[" in text
    assert parse_genotype(text) == g
    assert parse_genotype(name) is g


def test_parse_accepts_darts_range_concat_and_double_quotes():
    text = ('Genotype(normal=[("sep_conv_3x3", 1), ("skip_connect", 0)], normal_concat=range(2, 3), '
            "reduce=[('max_pool_3x3', 0), ('dil_conv_5x5', 1)], reduce_concat=range(2, 3))")
    g = parse_genotype(text)
    assert g == Genotype(normal=[("sep_conv_3x3", 1), ("skip_connect", 0)], normal_concat=[2],
                         reduce=[("max_pool_3x3", 0), ("dil_conv_5x5", 1)], reduce_concat=[2])
    assert parse_genotype(str(g)) == g


@pytest.mark.parametrize(("text", "fragment"), [
    ("DARTS_V9", "known genotypes: DARTS_V1"),
    ("Genotype(normal=[('sep_conv_3x3', 0)", "malformed"),
    ("__import__('os').system('true')", "keywords only"),
    ("Genotype(normal=open('x'), normal_concat=[2], reduce=[], reduce_concat=[2])", "not a literal"),
    ("Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 1)], normal_concat=[2])", "lacks reduce"),
    ("Genotype(normal=[('sep_conv_9x9', 0), ('skip_connect', 1)], normal_concat=[2], "
     "reduce=[('skip_connect', 0), ('skip_connect', 1)], reduce_concat=[2])", "unknown op 'sep_conv_9x9'"),
    ("Genotype(normal=[('sep_conv_3x3', 2), ('skip_connect', 1)], normal_concat=[2], "
     "reduce=[('skip_connect', 0), ('skip_connect', 1)], reduce_concat=[2])", "takes input 2"),
    ("Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 1)], normal_concat=[2, 7], "
     "reduce=[('skip_connect', 0), ('skip_connect', 1)], reduce_concat=[2])", "normal_concat"),
    ("Genotype(normal=[('sep_conv_3x3', 0)], normal_concat=[2], "
     "reduce=[('skip_connect', 0), ('skip_connect', 1)], reduce_concat=[2])", "two (op, input) pairs"),
    ("Genotype(normal=[0, 1], normal_concat=[2], reduce=[], reduce_concat=[2])", "(op name, input index)"),
])
def test_bad_genotypes_are_one_line_user_errors(text, fragment):
    with pytest.raises(UserError) as info:
        parse_genotype(text)
    message = str(info.value)
    assert fragment in message and "\n" not in message, message


def test_bad_genotype_names_reach_the_space_as_user_errors():
    with pytest.raises(UserError, match="known genotypes"):
        DartsCellSpace(genotype="DARTS_V3")
    with pytest.raises(UserError, match="known genotypes"):
        DartsCellSpace().build_genotype("darts", task((3, 8, 8)))
    with pytest.raises(UserError, match="sep_conv_9x9"):
        DartsCellSpace(ops=("sep_conv_3x3", "sep_conv_9x9"))
    with pytest.raises(UserError, match="none"):
        DartsCellSpace(ops=("none", "skip_connect"))
    with pytest.raises(UserError, match="conv1d"):
        DartsCellSpace().build(random_arch(DartsCellSpace(), 0), task((1, 40)))


@pytest.mark.parametrize("name", FOUR_NODE)
def test_arch_and_genotype_convert_both_ways(name):
    space = DartsCellSpace()
    arch = space.to_arch(name)
    assert arch == genotype_to_arch(GENOTYPES[name])
    assert set(arch) == set(space.distributions())
    assert space.to_genotype(arch) == GENOTYPES[name]
    assert space.suggest(optuna.trial.FixedTrial(arch)) == arch


def test_sampled_arch_round_trips_through_its_genotype():
    space = DartsCellSpace()
    for seed in range(5):
        arch = random_arch(space, seed)
        g = space.to_genotype(arch)
        assert g.normal_concat == g.reduce_concat == (2, 3, 4, 5)
        assert genotype_to_arch(parse_genotype(str(g))) == arch
    with pytest.raises(UserError, match="normal.n3.in1"):
        arch_to_genotype({k: v for k, v in arch.items() if k != "normal.n3.in1"})


def test_decisions_are_named_per_cell_node_and_input():
    space = DartsCellSpace()
    dists = space.distributions()
    assert len(dists) == 2 * 4 * 2 * 2
    for t in ("normal", "reduce"):
        for k in range(4):
            for j in (0, 1):
                assert dists[f"{t}.n{k}.in{j}"].choices == tuple(range(k + 2))
                assert dists[f"{t}.n{k}.op{j}"].choices == PRIMITIVES
    assert "none" not in PRIMITIVES and PRIMITIVES_WITH_NONE == ("none", *PRIMITIVES) and len(PRIMITIVES) == 7


def test_fixed_genotype_space_records_the_genotype_as_params():
    space = DartsCellSpace(genotype="DARTS_V2", C=4, layers=3)
    arch = random_arch(space, 3)
    assert arch == genotype_to_arch(GENOTYPES["DARTS_V2"])
    assert all(len(d.choices) == 1 for d in space.distributions().values())
    a, b = space.build(arch, task((3, 8, 8))), DartsCellSpace(C=4, layers=3).build_genotype("DARTS_V2", task((3, 8, 8)))
    assert n_params(a) == n_params(b)
    nasnet = DartsCellSpace(genotype="NASNet", C=4, layers=3)
    assert nasnet.to_genotype(random_arch(nasnet, 0)) == GENOTYPES["NASNet"]  # 5 nodes, its own concat lists


# ------------------------------------------------------------------------------------- the DARTS ops

def _layers(module):
    out = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            out.append(("conv", m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0],
                        m.dilation[0], m.groups))
        elif isinstance(m, nn.BatchNorm2d):
            out.append(("bn", m.num_features))
        elif isinstance(m, nn.ReLU):
            out.append(("relu",))
        elif isinstance(m, nn.MaxPool2d | nn.AvgPool2d):
            out.append((type(m).__name__, m.kernel_size, m.stride, m.padding))
    return out


@pytest.mark.parametrize("stride", [1, 2])
def test_darts_primitives_match_the_reference_definitions(stride):
    """The layer sequences of DARTS' operations.py (C -> C), written out here."""
    C, s = 6, stride

    def sep(k, p):
        return [("relu",), ("conv", C, C, k, s, p, 1, C), ("conv", C, C, 1, 1, 0, 1, 1), ("bn", C),
                ("relu",), ("conv", C, C, k, 1, p, 1, C), ("conv", C, C, 1, 1, 0, 1, 1), ("bn", C)]

    def dil(k, p):
        return [("relu",), ("conv", C, C, k, s, p, 2, C), ("conv", C, C, 1, 1, 0, 1, 1), ("bn", C)]

    expected = {
        "max_pool_3x3": [("MaxPool2d", 3, s, 1)], "avg_pool_3x3": [("AvgPool2d", 3, s, 1)],
        "skip_connect": [] if s == 1 else [("relu",), ("conv", C, C // 2, 1, 2, 0, 1, 1),
                                           ("conv", C, C // 2, 1, 2, 0, 1, 1), ("bn", C)],
        "sep_conv_3x3": sep(3, 1), "sep_conv_5x5": sep(5, 2), "dil_conv_3x3": dil(3, 2), "dil_conv_5x5": dil(5, 4),
    }
    for name, layers in expected.items():
        assert _layers(build_op(name, C, C, s)) == layers, name
    avg = [m for m in build_op("avg_pool_3x3", C, C, s).modules() if isinstance(m, nn.AvgPool2d)][0]
    assert avg.count_include_pad is False
    assert isinstance(build_op("skip_connect", C, C, 1), nn.Identity)
    x = torch.randn(2, C, 8, 8)
    assert (build_op("none", C, C, s)(x) == 0).all() and build_op("none", C, C, s)(x).shape[-1] == 8 // s


# -------------------------------------------------------------------------------- evaluation networks

@pytest.mark.parametrize("name", sorted(GENOTYPES))
@pytest.mark.parametrize(("skeleton", "shape"), [("cifar", (3, 8, 8)), ("cifar", (1, 28, 28)),
                                                 ("imagenet", (3, 64, 64))])
def test_every_bundled_genotype_builds_and_runs(name, skeleton, shape):
    space = DartsCellSpace(C=4, layers=3, skeleton=skeleton, auxiliary=True)
    torch.manual_seed(0)
    model = space.build_genotype(name, task(shape, 5))
    assert hasattr(model, "stem0" if skeleton == "imagenet" else "stem")
    x = torch.randn(2, *shape)
    model.train()
    out = model(x)
    assert out.shape == (2, 5) and model.aux_logits is not None and model.aux_logits.shape == (2, 5)
    (out.sum() + model.aux_logits.sum()).backward()
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all() and model.aux_logits is None


def test_auto_skeleton_is_imagenet_for_large_images_only():
    space = DartsCellSpace(C=4, layers=3)
    assert hasattr(space.build_genotype("DARTS_V2", task((3, 32, 32))), "stem")
    model = space.build_genotype("DARTS_V2", task((3, 128, 128)))
    assert hasattr(model, "stem0") and hasattr(model, "stem1")
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 128, 128)).shape == (1, 10)


def conv(k, c_in, c_out, groups=1):
    return k * k * c_in * c_out // groups


def bn(c):
    return 2 * c


def op_params(op, C, stride):
    """Parameters of a DARTS op at C -> C channels, from the op formulas."""
    if op == "sep_conv_3x3":
        return 2 * (conv(3, C, C, C) + conv(1, C, C) + bn(C))
    if op == "sep_conv_5x5":
        return 2 * (conv(5, C, C, C) + conv(1, C, C) + bn(C))
    if op == "dil_conv_3x3":
        return conv(3, C, C, C) + conv(1, C, C) + bn(C)
    if op == "dil_conv_5x5":
        return conv(5, C, C, C) + conv(1, C, C) + bn(C)
    if op == "skip_connect":
        return 0 if stride == 1 else 2 * conv(1, C, C // 2) + bn(C)  # FactorizedReduce
    assert op in ("max_pool_3x3", "avg_pool_3x3")
    return 0


def expected_params(g, C, layers, in_ch, classes, skeleton="cifar", auxiliary=False):
    """DARTS' model.py channel bookkeeping, counted by hand."""
    if skeleton == "cifar":
        total = conv(3, in_ch, 3 * C) + bn(3 * C)
        C_pp = C_p = 3 * C
        reduction_prev = False
    else:
        total = conv(3, in_ch, C // 2) + bn(C // 2) + conv(3, C // 2, C) + bn(C) + conv(3, C, C) + bn(C)
        C_pp = C_p = C
        reduction_prev = True
    C_curr = C
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        C_curr *= 2 if reduction else 1
        pairs, concat = (g.reduce, g.reduce_concat) if reduction else (g.normal, g.normal_concat)
        # preprocess0: FactorizedReduce after a reduction cell (two 1x1 convs to C/2 each), else ReLU-conv1x1-BN
        total += (2 * conv(1, C_pp, C_curr // 2) if reduction_prev else conv(1, C_pp, C_curr)) + bn(C_curr)
        total += conv(1, C_p, C_curr) + bn(C_curr)
        total += sum(op_params(op, C_curr, 2 if reduction and j < 2 else 1) for op, j in pairs)
        C_pp, C_p, reduction_prev = C_p, len(concat) * C_curr, reduction
        if i == 2 * layers // 3:
            C_aux = C_p
    if auxiliary:  # conv1x1 -> 128, BN, conv2x2 -> 768, [BN on CIFAR], linear
        total += conv(1, C_aux, 128) + bn(128) + conv(2, 128, 768) + (bn(768) if skeleton == "cifar" else 0)
        total += 768 * classes + classes
    return total + C_p * classes + classes


SMALL = Genotype(normal=[("sep_conv_5x5", 0), ("dil_conv_5x5", 1), ("skip_connect", 0), ("avg_pool_3x3", 2)],
                 normal_concat=[2, 3],
                 reduce=[("skip_connect", 0), ("sep_conv_3x3", 1), ("max_pool_3x3", 2), ("dil_conv_3x3", 0)],
                 reduce_concat=[2, 3])


def test_darts_v2_parameter_count_by_hand():
    # stem 3*3*3*12 + 24 = 348; cell0 (normal, C=4): preprocess 2 * (12*4 + 8), 5 sep3 of 2*(36+16+8),
    # 1 dil3 of 60, skips free = 772; cell1 (reduce, C=8): preprocess 12*8+16 + 16*8+16 = 256, pools and
    # stride-1 skips free; cell2 (reduce, C=16): FactorizedReduce 16*8*2+32 = 288 + 32*16+32 = 544 = 832;
    # classifier 64*10+10 = 650
    model = DartsCellSpace(C=4, layers=3).build_genotype("DARTS_V2", task((3, 8, 8)))
    assert n_params(model) == 348 + 772 + 256 + 832 + 650 == 2858


@pytest.mark.parametrize("genotype", ["DARTS_V2", "PC_DARTS", "DARTS_V1", SMALL])
@pytest.mark.parametrize(("C", "layers", "skeleton", "auxiliary"), [(4, 3, "cifar", False), (6, 5, "cifar", True),
                                                                    (4, 4, "imagenet", True), (8, 2, "cifar", False)])
def test_parameter_count_matches_the_op_formulas(genotype, C, layers, skeleton, auxiliary):
    space = DartsCellSpace(C=C, layers=layers, skeleton=skeleton, auxiliary=auxiliary)
    model = space.build_genotype(genotype, task((3, 64, 64), 10))
    assert n_params(model) == expected_params(parse_genotype(genotype), C, layers, 3, 10, skeleton, auxiliary)


def test_build_asks_the_chooser_for_every_op_slot():
    calls = []

    def recording(name, candidates, chosen, C_in, C_out, stride, **options):
        calls.append((name, tuple(candidates), chosen, C_in, C_out, stride, options.get("affine")))
        return fixed(name, candidates, chosen, C_in, C_out, stride, **options)

    space = DartsCellSpace(C=4, layers=3)
    arch = space.to_arch("PC_DARTS")
    model = space.build(arch, task((3, 8, 8)), choose=recording)
    assert n_params(model) == n_params(space.build(arch, task((3, 8, 8))))
    assert len(calls) == 3 * 8
    for cell, C in enumerate((4, 8, 16)):  # normal, reduce, reduce
        t = "normal" if cell == 0 else "reduce"
        names = [c[0] for c in calls[8 * cell: 8 * cell + 8]]
        assert names == [f"{t}.n{k}.op{j}" for k in range(4) for j in (0, 1)]
        for name, candidates, chosen, C_in, C_out, stride, affine in calls[8 * cell: 8 * cell + 8]:
            assert candidates == PRIMITIVES and chosen == arch[name] and (C_in, C_out) == (C, C) and affine is True
            assert stride == (2 if t == "reduce" and arch[name.replace(".op", ".in")] < 2 else 1)


def test_a_node_may_read_the_same_state_twice():
    space = DartsCellSpace(C=4, layers=3)
    arch = space.to_arch("DARTS_V2")
    arch.update({"normal.n0.in0": 1, "normal.n0.in1": 1, "reduce.n2.in0": 3, "reduce.n2.in1": 3,
                 "reduce.n2.op0": "sep_conv_3x3", "reduce.n2.op1": "sep_conv_3x3"})
    model = space.build(arch, task((1, 8, 8))).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_unused_cell_input_gets_no_preprocessing():
    g = Genotype(normal=[("sep_conv_3x3", 1), ("skip_connect", 1), ("sep_conv_3x3", 2), ("skip_connect", 2)],
                 normal_concat=[2, 3],
                 reduce=[("max_pool_3x3", 0), ("skip_connect", 1)], reduce_concat=[2])
    model = DartsCellSpace(C=4, layers=3).build_genotype(g, task((1, 8, 8)))
    assert model.cells[0].preprocess0 is None and model.cells[1].preprocess0 is not None
    loss = model(torch.randn(2, 1, 8, 8)).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


# ---------------------------------------------------------------------------- training hooks

def test_aux_logits_only_in_train_mode_with_the_head_on():
    x = torch.randn(2, 3, 32, 32)
    model = DartsCellSpace(C=4, layers=3, auxiliary=True).build_genotype("DARTS_V2", task((3, 32, 32), 7))
    model.train()
    out = model(x)
    assert out.shape == (2, 7) and model.aux_logits.shape == (2, 7)
    model.eval()
    with torch.no_grad():
        model(x)
    assert model.aux_logits is None
    plain = DartsCellSpace(C=4, layers=3).build_genotype("DARTS_V2", task((3, 32, 32), 7)).train()
    plain(x)
    assert plain.aux_logits is None and plain.auxiliary_head is None


def test_drop_path_ramps_per_epoch_and_acts_only_in_training():
    model = DartsCellSpace(C=4, layers=3, drop_path=0.4).build_genotype("DARTS_V2", task((1, 8, 8)))
    assert model.drop_path_prob == 0.0
    model.on_epoch_start(0, 10)
    assert model.drop_path_prob == 0.0
    model.on_epoch_start(5, 10)
    assert model.drop_path_prob == pytest.approx(0.2)
    x = torch.randn(4, 1, 8, 8)
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, model(x))  # different drop masks
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    no_drop = DartsCellSpace(C=4, layers=3).build_genotype("DARTS_V2", task((1, 8, 8))).train()
    no_drop.on_epoch_start(5, 10)
    torch.manual_seed(0)
    a = no_drop(x)
    torch.manual_seed(1)
    assert torch.equal(a, no_drop(x))


def test_drop_path_skips_identity_ops():
    """A cell of stride-1 skips only adds identities, so drop path leaves it alone; other ops are dropped."""
    skips = Genotype(normal=[("skip_connect", 0), ("skip_connect", 1)], normal_concat=[2],
                     reduce=[("skip_connect", 0), ("skip_connect", 1)], reduce_concat=[2])
    convs = Genotype(normal=[("sep_conv_3x3", 0), ("skip_connect", 1)], normal_concat=[2], reduce=skips.reduce,
                     reduce_concat=[2])
    s0, s1 = torch.randn(4, 12, 8, 8), torch.randn(4, 12, 8, 8)
    for genotype, dropped in [(skips, False), (convs, True)]:
        cell = DartsCellSpace(C=4, layers=3).build_genotype(genotype, task((1, 8, 8))).cells[0].train()
        assert not cell.reduction
        torch.manual_seed(0)
        changed = not torch.allclose(cell(s0, s1, 0.0), cell(s0, s1, 0.9))
        assert changed == dropped


# ------------------------------------------------------------------------------- supernet and derive

class EdgeRecorder:
    """Records every `choose` call and returns a plain mixed op (uniform weights over the candidates)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __call__(self, name, candidates, chosen, C_in, C_out, stride, **options):
        self.calls.append((name, tuple(candidates), chosen, C_in, C_out, stride, options.get("affine")))
        ops = nn.ModuleList(build_op(c, C_in, C_out, stride, **options) for c in candidates)

        class Mixed(nn.Module):
            def __init__(self):
                super().__init__()
                self.ops = ops

            def forward(self, x):
                return sum(op(x) for op in self.ops) / len(self.ops)

        return Mixed()


def test_supernet_has_fourteen_edges_per_cell_with_darts_strides():
    space = DartsCellSpace(C=4, layers=5)
    rec = EdgeRecorder()
    net = space.supernet(task((1, 8, 8)), rec)
    assert len(rec.calls) == 5 * 14
    assert len(space.edge_names()) == 28 and len({c[0] for c in rec.calls}) == 28
    widths = [4, 8, 8, 16, 16]  # reductions at cells 1 and 3 double C
    for cell, C in enumerate(widths):
        t = "reduce" if cell in (1, 3) else "normal"
        calls = rec.calls[14 * cell: 14 * cell + 14]
        assert [c[0] for c in calls] == [f"{t}.n{k}.e{i}" for k in range(4) for i in range(k + 2)]
        for name, candidates, chosen, C_in, C_out, stride, affine in calls:
            i = int(name.rsplit(".e", 1)[1])
            assert candidates == PRIMITIVES_WITH_NONE and chosen is None and (C_in, C_out) == (C, C)
            assert affine is False and stride == (2 if t == "reduce" and i < 2 else 1), name
    # preprocessing is affine-free, as in DARTS' search network
    for cell in net.cells:
        assert all(not m.affine for m in cell.modules() if isinstance(m, nn.BatchNorm2d))
    out = net(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 10) and net.aux_logits is None


def test_derive_follows_darts_rule():
    space = DartsCellSpace()
    rng = np.random.default_rng(0)
    weights = {}
    for name in space.edge_names():
        w = rng.random(8) * 0.1
        weights[name] = w / w.sum()
    # normal node 2 (states 0..3): edge 0 is mostly `none` (ignored), edge 3 has the strongest real op,
    # edge 1 the second strongest
    weights["normal.n2.e0"] = np.array([0.9, 0.01, 0.01, 0.02, 0.02, 0.02, 0.01, 0.01])
    weights["normal.n2.e1"] = np.array([0.0, 0.1, 0.1, 0.1, 0.1, 0.4, 0.1, 0.1])  # sep_conv_5x5 at 0.4
    weights["normal.n2.e3"] = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.7, 0.3])  # dil_conv_3x3 at 0.7
    arch = space.derive(weights)
    assert (arch["normal.n2.in0"], arch["normal.n2.op0"]) == (3, "dil_conv_3x3")
    assert (arch["normal.n2.in1"], arch["normal.n2.op1"]) == (1, "sep_conv_5x5")
    assert set(arch) == set(space.distributions())
    assert all(arch[f"{t}.n{k}.in0"] != arch[f"{t}.n{k}.in1"] for t in ("normal", "reduce") for k in range(4))
    assert "none" not in arch.values()
    assert space.suggest(optuna.trial.FixedTrial(arch)) == arch
    assert space.build(arch, task((1, 8, 8)))(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    torch_weights = {k: torch.tensor(v, requires_grad=True) for k, v in weights.items()}
    assert space.derive(torch_weights) == arch


def test_derive_rejects_missing_or_misshaped_weights():
    space = DartsCellSpace()
    weights = {name: [1 / 8] * 8 for name in space.edge_names()}
    space.derive(weights)
    with pytest.raises(ValueError, match="reduce.n3.e4"):
        space.derive({k: v for k, v in weights.items() if k != "reduce.n3.e4"})
    with pytest.raises(ValueError, match="== 8"):
        space.derive({**weights, "normal.n0.e0": [0.5, 0.5]})


def test_papers_settings_are_reachable():
    space = DartsCellSpace(C=36, layers=20, auxiliary=True, drop_path=0.2)
    model = space.build_genotype("DARTS_V2", task((3, 32, 32)))
    assert len(model.cells) == 20 and [i for i, c in enumerate(model.cells) if c.reduction] == [6, 13]
    # the paper's 3.3M for DARTS (second order) on CIFAR-10: its train.py logs "param size = 3.349342MB"
    # (the parameters outside the auxiliary head)
    assert n_params(model) - n_params(model.auxiliary_head) == 3_349_342
    # ImageNet mobile setting (C=48, 14 cells): the paper's 4.7M
    imagenet = DartsCellSpace(C=48, layers=14, auxiliary=True, skeleton="imagenet")
    model = imagenet.build_genotype("DARTS_V2", task((3, 224, 224), 1000))
    assert math.isclose(n_params(model) - n_params(model.auxiliary_head), 4.7e6, rel_tol=0.01)
