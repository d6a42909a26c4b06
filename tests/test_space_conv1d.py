"""The 1-D TinyML space: DARTS cells over (channels, length) signals, and the 1-D forms of the op table."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from nasopt import UserError
from nasopt.ops import ND_OPS, build_op
from nasopt.search_spaces.conv1d import CONV1D_OPS, Conv1dSpace
from nasopt.search_spaces.genotypes import Genotype, parse_genotype
from nasopt.space import random_arch

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = [(1, 40), (3, 64)]


def task(shape, num_classes=4):
    return SimpleNamespace(input_shape=shape, num_classes=num_classes)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------- 1-D ops

@pytest.mark.parametrize("name", ["none", *CONV1D_OPS])
@pytest.mark.parametrize(("C_in", "C_out", "stride"), [(4, 4, 1), (4, 4, 2), (4, 8, 1), (8, 4, 2)])
def test_1d_ops_keep_the_shape_contract(name, C_in, C_out, stride):
    torch.manual_seed(0)
    op = build_op(name, C_in, C_out, stride, dim=1)
    assert not any(isinstance(m, nn.Conv2d | nn.BatchNorm2d | nn.MaxPool2d | nn.AvgPool2d) for m in op.modules())
    for L in (7, 8, 40):
        x = torch.randn(2, C_in, L, requires_grad=True)
        out = op(x)
        assert out.shape == (2, C_out, math.ceil(L / stride)), (name, L)
        if name != "none":
            (out * torch.randn_like(out)).sum().backward()
            assert x.grad is not None and x.grad.abs().sum() > 0


def test_1d_op_kernels_and_dilation_follow_the_name():
    for k in (3, 5, 7):
        convs = [m for m in build_op(f"conv_bn_relu_k{k}", 4, 4, 1, dim=1).modules() if isinstance(m, nn.Conv1d)]
        assert [c.kernel_size for c in convs] == [(k,)]
        dil = [m for m in build_op(f"dil_conv_bn_relu_k{k}", 4, 4, 1, dim=1).modules() if isinstance(m, nn.Conv1d)]
        assert [(c.kernel_size, c.dilation) for c in dil] == [((k,), (2,))]
        sep = [m for m in build_op(f"sep_conv_bn_relu_k{k}", 4, 8, 1, dim=1).modules() if isinstance(m, nn.Conv1d)]
        assert [(c.kernel_size, c.groups) for c in sep] == [((k,), 4), ((1,), 1)]


def test_2d_only_ops_refuse_1d():
    with pytest.raises(UserError, match="2-D only") as info:
        build_op("sep_conv_3x3", 4, 4, 1, dim=1)
    assert "conv_bn_relu_k3" in str(info.value)
    with pytest.raises(ValueError, match="dim in"):
        build_op("conv_bn_relu_k3", 4, 4, 1, dim=3)
    assert set(CONV1D_OPS) <= ND_OPS


# -------------------------------------------------------------------------------------- the space

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("input_bn", [False, True])
def test_forward_shapes_on_signals(shape, input_bn):
    space = Conv1dSpace(input_bn=input_bn)
    for seed in range(3):
        arch = random_arch(space, seed)
        torch.manual_seed(seed)
        model = space.build(arch, task(shape, 5))
        assert isinstance(model.input_bn, nn.BatchNorm1d if input_bn else nn.Identity)
        if input_bn:
            assert model.input_bn.num_features == shape[0]
        assert not any(isinstance(m, nn.Conv2d | nn.BatchNorm2d) for m in model.modules())
        x = torch.randn(2, *shape) * 10 + 3
        out = model.train()(x)
        assert out.shape == (2, 5)
        out.logsumexp(1).sum().backward()
        model.eval()
        with torch.no_grad():
            out = model(x)
        assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_decisions_and_describe():
    space = Conv1dSpace()
    dists = space.distributions()
    assert len(dists) == 32
    assert dists["reduce.n3.in1"].choices == (0, 1, 2, 3, 4)
    assert dists["normal.n0.op0"].choices == CONV1D_OPS
    arch = random_arch(space, 0)
    assert space.describe(arch).startswith("conv1d:n=") and len(space.describe(arch)) <= 120
    assert space.suggest(optuna.trial.FixedTrial(arch)) == arch
    g = space.to_genotype(arch)
    assert parse_genotype(str(g)) == g and space.to_arch(g) == arch


def test_space_arguments_are_checked():
    with pytest.raises(UserError, match="sep_conv_3x3"):
        Conv1dSpace(ops=("conv_bn_relu_k3", "sep_conv_3x3"))
    with pytest.raises(ValueError, match="in_channels >= 1"):
        Conv1dSpace(in_channels=0)
    arch = random_arch(Conv1dSpace(), 0)
    Conv1dSpace(in_channels=3).build(arch, task((3, 40)))
    with pytest.raises(UserError, match="in_channels=3"):
        Conv1dSpace(in_channels=3).build(arch, task((1, 40)))
    with pytest.raises(UserError, match="darts_cell"):
        Conv1dSpace().build(arch, task((1, 8, 8)))


def conv(k, c_in, c_out, groups=1):
    return k * c_in * c_out // groups


def bn(c):
    return 2 * c


def test_parameter_count_matches_the_op_formulas():
    """A 2-node genotype, 3 cells (normal, reduce, reduce), C=4, input BN, counted by hand."""
    g = Genotype(normal=[("conv_bn_relu_k5", 0), ("sep_conv_bn_relu_k3", 1), ("skip_connect", 0),
                         ("dil_conv_bn_relu_k7", 2)], normal_concat=[2, 3],
                 reduce=[("skip_connect", 0), ("max_pool_k3", 1), ("sep_conv_bn_relu_k7", 2), ("avg_pool_k3", 0)],
                 reduce_concat=[2, 3])
    C, in_ch, classes = 4, 3, 5
    model = Conv1dSpace(C=C, layers=3, input_bn=True).build_genotype(g, task((in_ch, 40), classes))

    def ops(pairs, C, reduction):
        total = 0
        for op, i in pairs:
            stride = 2 if reduction and i < 2 else 1
            if op.startswith(("conv_bn_relu", "dil_conv_bn_relu")):
                total += conv(int(op[-1]), C, C) + bn(C)
            elif op.startswith("sep_conv_bn_relu"):
                total += conv(int(op[-1]), C, C, C) + bn(C) + conv(1, C, C) + bn(C)
            elif op == "skip_connect" and stride == 2:
                total += 2 * conv(1, C, C // 2) + bn(C)  # FactorizedReduce
        return total

    expected = bn(in_ch) + conv(3, in_ch, 3 * C) + bn(3 * C)  # input BN, stem
    expected += conv(1, 12, 4) + bn(4) + conv(1, 12, 4) + bn(4) + ops(g.normal, 4, False)  # cell 0 -> 8 ch
    expected += conv(1, 12, 8) + bn(8) + conv(1, 8, 8) + bn(8) + ops(g.reduce, 8, True)  # cell 1 -> 16 ch
    expected += 2 * conv(1, 8, 8) + bn(16) + conv(1, 16, 16) + bn(16) + ops(g.reduce, 16, True)  # cell 2 -> 32
    expected += 32 * classes + classes
    assert n_params(model) == expected


def test_aux_head_and_drop_path_on_signals():
    space = Conv1dSpace(auxiliary=True, drop_path=0.3)
    model = space.build(random_arch(space, 2), task((3, 64), 6))
    model.on_epoch_start(3, 6)
    assert model.drop_path_prob == pytest.approx(0.15)
    out = model.train()(torch.randn(2, 3, 64))
    assert out.shape == (2, 6) and model.aux_logits.shape == (2, 6)
    with torch.no_grad():
        model.eval()(torch.randn(2, 3, 64))
    assert model.aux_logits is None


def test_supernet_and_derive():
    space = Conv1dSpace(C=4)
    calls = []

    def mixed(name, candidates, chosen, C_in, C_out, stride, **options):
        calls.append((name, tuple(candidates), chosen, C_in, C_out, stride, options))
        return build_op("conv_bn_relu_k3", C_in, C_out, stride, **options)

    net = space.supernet(task((3, 40)), mixed)
    assert len(calls) == 3 * 14 and len({c[0] for c in calls}) == 28
    for cell, (t, C) in enumerate([("normal", 4), ("reduce", 8), ("reduce", 16)]):
        for name, candidates, chosen, C_in, C_out, stride, options in calls[14 * cell: 14 * cell + 14]:
            assert name.startswith(f"{t}.n") and candidates == ("none", *CONV1D_OPS) and chosen is None
            assert (C_in, C_out) == (C, C) and options == {"affine": False, "dim": 1}
            assert stride == (2 if t == "reduce" and int(name.rsplit(".e", 1)[1]) < 2 else 1)
    assert net(torch.randn(2, 3, 40)).shape == (2, 4)
    rng = np.random.default_rng(1)
    arch = space.derive({name: rng.dirichlet(np.ones(13)) for name in space.edge_names()})
    assert space.suggest(optuna.trial.FixedTrial(arch)) == arch
    assert space.build(arch, task((3, 40)))(torch.randn(2, 3, 40)).shape == (2, 4)
