"""The op table: every op keeps the shape contract (N, C_in, H, W) -> (N, C_out, ceil(H/s), ceil(W/s))."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nasopt import UserError
from nasopt.ops import ACTIVATIONS, OPS, SqueezeExcite, activation, build_op

pytestmark = pytest.mark.usefixtures("one_thread")

SLOTS = [(8, 8, 1), (8, 16, 1), (8, 8, 2), (8, 16, 2), (16, 8, 1), (16, 8, 2)]
# square, odd and non-square inputs: strided ops must give ceil(H/2) x ceil(W/2) for all of them
SIZES = [(8, 8), (7, 7), (7, 8), (8, 7), (5, 5)]
ZERO_OPS = ("zero", "none")


def slot_id(slot: tuple[int, int, int]) -> str:
    return "in{}-out{}-s{}".format(*slot)


@pytest.mark.parametrize("slot", SLOTS, ids=slot_id)
@pytest.mark.parametrize("name", sorted(OPS))
def test_op_keeps_the_shape_contract(name, slot):
    C_in, C_out, stride = slot
    torch.manual_seed(0)
    op = build_op(name, C_in, C_out, stride)
    assert isinstance(op, nn.Module)
    for mode in ("train", "eval"):
        op.train(mode == "train")
        for H, W in SIZES:
            out = op(torch.randn(2, C_in, H, W))
            expected = (2, C_out, math.ceil(H / stride), math.ceil(W / stride))
            assert tuple(out.shape) == expected, f"{name} {slot} on {H}x{W} ({mode})"
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("slot", SLOTS, ids=slot_id)
@pytest.mark.parametrize("name", sorted(set(OPS) - set(ZERO_OPS)))
def test_gradients_reach_input_and_every_weight(name, slot):
    C_in, C_out, stride = slot
    torch.manual_seed(0)
    op = build_op(name, C_in, C_out, stride)
    x = torch.randn(2, C_in, 8, 8, requires_grad=True)
    out = op(x)
    # a random projection, not out.sum(): the sum of a BatchNorm output has zero gradient
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in op.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all()
    if any(True for _ in op.parameters()):
        assert sum(float(p.grad.abs().sum()) for p in op.parameters()) > 0


@pytest.mark.parametrize("slot", SLOTS, ids=slot_id)
@pytest.mark.parametrize("name", ZERO_OPS)
def test_zero_gives_zeros(name, slot):
    C_in, C_out, stride = slot
    op = build_op(name, C_in, C_out, stride)
    assert not list(op.parameters())
    for H, W in SIZES:
        out = op(torch.randn(2, C_in, H, W) + 1.0)
        assert tuple(out.shape) == (2, C_out, math.ceil(H / stride), math.ceil(W / stride))
        assert (out == 0).all()


@pytest.mark.parametrize("name", ["skip", "skip_connect"])
def test_skip_is_the_identity_when_shapes_match(name):
    op = build_op(name, 8, 8, 1)
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(op(x), x)
    assert not list(op.parameters())


@pytest.mark.parametrize("name", ["skip", "skip_connect"])
def test_skip_that_changes_shape_does_not_stride_by_accident(name):
    """A stride-1 channel change keeps the resolution; a stride-2 one halves it."""
    x = torch.randn(2, 8, 6, 6)
    assert build_op(name, 8, 16, 1)(x).shape == (2, 16, 6, 6)
    assert build_op(name, 8, 16, 2)(x).shape == (2, 16, 3, 3)


@pytest.mark.parametrize(("name", "reduce"), [("maxpool3x3", torch.amax), ("max_pool_3x3", torch.amax),
                                              ("avgpool3x3", torch.mean), ("avg_pool_3x3", torch.mean)])
def test_pools_pool_a_3x3_window_without_weights(name, reduce):
    op = build_op(name, 4, 4, 1)
    assert not list(op.parameters())
    x = torch.randn(1, 4, 6, 6)
    out = op(x)
    # interior position (2, 3): the 3x3 window around it
    assert torch.allclose(out[0, :, 2, 3], reduce(x[0, :, 1:4, 2:5], dim=(1, 2)))
    # border (0, 0): max/avg over the 2x2 window inside the image (avg excludes the padding)
    assert torch.allclose(out[0, :, 0, 0], reduce(x[0, :, 0:2, 0:2], dim=(1, 2)))


def test_unknown_op_is_a_user_error_listing_the_known_ops():
    with pytest.raises(UserError) as info:
        build_op("conv9x9", 8, 8, 1)
    message = str(info.value)
    assert "conv9x9" in message
    for known in ("conv3x3", "skip", "zero", "sep_conv_3x3", "mbconv_k3_e6"):
        assert known in message


def test_stride_outside_one_or_two_names_the_rule():
    with pytest.raises(ValueError, match="stride in"):
        build_op("conv3x3", 8, 8, 3)


def test_options_are_ignored_by_ops_that_do_not_take_them():
    op = build_op("maxpool3x3", 8, 8, 1, act="silu", se=True, affine=False)
    assert op(torch.randn(1, 8, 4, 4)).shape == (1, 8, 4, 4)


REFERENCE = {"relu": F.relu, "relu6": F.relu6, "silu": F.silu, "gelu": F.gelu, "hswish": F.hardswish}


def test_activation_table_is_the_documented_one():
    assert set(ACTIVATIONS) == set(REFERENCE)


@pytest.mark.parametrize("act", sorted(REFERENCE))
def test_activations_compute_their_function(act):
    x = torch.linspace(-8, 8, 101)
    assert torch.allclose(activation(act)(x), REFERENCE[act](x))
    assert activation(act) is not activation(act)  # a fresh module each time (no shared state)


@pytest.mark.parametrize("act", sorted(REFERENCE))
@pytest.mark.parametrize("name", ["conv3x3", "mbconv_k3_e3"])
def test_ops_use_the_requested_activation(name, act):
    op = build_op(name, 8, 8, 1, act=act)
    kinds = [type(m) for m in op.modules()]
    expected = type(activation(act))
    assert expected in kinds
    others = {type(activation(a)) for a in REFERENCE if type(activation(a)) is not expected}
    assert not others & set(kinds), (name, act, kinds)


def test_unknown_activation_is_a_user_error():
    with pytest.raises(UserError, match="tanh"):
        activation("tanh")
    with pytest.raises(UserError, match="unknown activation"):
        build_op("mbconv_k3_e3", 8, 8, 1, act="tanh")


@pytest.mark.parametrize("slot", SLOTS, ids=slot_id)
def test_mbconv_squeeze_excite_option(slot):
    C_in, C_out, stride = slot
    torch.manual_seed(0)
    plain = build_op("mbconv_k5_e6", C_in, C_out, stride)
    torch.manual_seed(0)
    gated = build_op("mbconv_k5_e6", C_in, C_out, stride, se=True)
    assert not any(isinstance(m, SqueezeExcite) for m in plain.modules())
    assert sum(isinstance(m, SqueezeExcite) for m in gated.modules()) == 1
    assert sum(p.numel() for p in gated.parameters()) > sum(p.numel() for p in plain.parameters())
    x = torch.randn(2, C_in, 8, 8)
    plain.eval()
    gated.eval()
    out = gated(x)
    assert out.shape == plain(x).shape
    assert not torch.allclose(out, plain(x))  # the gate does act


def test_mbconv_kernel_and_expansion_follow_the_name():
    for k in (3, 5, 7):
        for e in (1, 3, 4, 6):
            op = build_op(f"mbconv_k{k}_e{e}", 8, 16, 1)
            convs = [m for m in op.modules() if isinstance(m, nn.Conv2d)]
            depthwise = [c for c in convs if c.groups > 1]
            assert len(depthwise) == 1 and depthwise[0].kernel_size == (k, k)
            assert depthwise[0].in_channels == 8 * e
            assert len(convs) == (2 if e == 1 else 3)  # expand=1 has no expansion conv


def test_mbconv_is_residual_only_when_shapes_match():
    x = torch.randn(2, 8, 6, 6)
    for slot, residual in [((8, 8, 1), True), ((8, 16, 1), False), ((8, 8, 2), False)]:
        op = build_op("mbconv_k3_e3", *slot).eval()
        last_bn = [m for m in op.modules() if isinstance(m, nn.BatchNorm2d)][-1]
        with torch.no_grad():
            last_bn.weight.zero_()
            last_bn.bias.zero_()  # the block's branch now outputs zeros
            out = op(x)
        if residual:
            assert torch.equal(out, x)
        else:
            assert (out == 0).all()


@pytest.mark.parametrize("name", ["sep_conv_3x3", "dil_conv_5x5", "skip_connect"])
def test_darts_ops_honour_affine(name):
    for affine in (True, False):
        op = build_op(name, 8, 16, 2, affine=affine)
        bns = [m for m in op.modules() if isinstance(m, nn.BatchNorm2d)]
        assert bns and all(bn.affine == affine for bn in bns)


def test_dil_conv_is_dilated():
    op = build_op("dil_conv_3x3", 8, 8, 1)
    depthwise = [m for m in op.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise[0].dilation == (2, 2)


FACTORIZED_REDUCE_CHECK = """
import torch
from nasopt.ops import FactorizedReduce, build_op
torch.manual_seed(0)
for c in range(1, 9):
    for size in (16, 15):
        for op in (FactorizedReduce(c, 2 * c, affine=False), build_op("conv1x1", c, c, 2)):
            x = torch.randn(6, c, size, size)
            grads = []
            for fmt in (torch.contiguous_format, torch.channels_last):
                op.zero_grad()
                xi = x.clone(memory_format=fmt).requires_grad_(True)
                out = op.to(memory_format=fmt)(xi)
                (out * torch.arange(out.numel()).view_as(out).sin()).sum().backward()
                grads.append((out.detach(), xi.grad, *(p.grad.clone() for p in op.parameters())))
            for a, b in zip(*grads, strict=True):
                assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (type(op), c, size, float((a - b).abs().max()))
print("ok")
"""


def test_strided_1x1_convs_train_channels_last_on_few_channels_without_corrupting_memory(tmp_path):
    """ATen's weight gradient of a 1x1 stride-2 conv on a channels-last CPU input of 2-7 channels writes past
    its buffer (torch 2.14.1, AMD EPYC): PC-DARTS' 4-channel reductions aborted the process. FactorizedReduce
    and the strided conv1x1 op compute those convs another way there; values and gradients equal the NCHW ones. Run in a fresh process
    under glibc's malloc checks where the system has them, so a write past a buffer fails here, not later."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ)
    debug = Path("/lib/x86_64-linux-gnu/libc_malloc_debug.so.0")
    if debug.exists():
        env.update(LD_PRELOAD=str(debug), MALLOC_CHECK_="3")
    try:  # (a corrupted heap can also hang the process in its abort)
        done = subprocess.run([sys.executable, "-c", FACTORIZED_REDUCE_CHECK], env=env, capture_output=True,
                              text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("FactorizedReduce's channels-last check hung (a corrupted heap)")
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stderr[-2000:])
