"""The mobile space on 1-D signals (channels, length): the same decisions and MBConv blocks in their 1-D form,
what uses the space (latency tables, pictures, ProxylessNAS, export) on them, and image networks unchanged."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nasopt import UserError
from nasopt.artifacts._graph import arch_graph
from nasopt.export import describe_export, load_model, space_config, write_export
from nasopt.export._rebuild import ShapeTask
from nasopt.measure import _latency_build as latency_build
from nasopt.measure._latency_build import build_table
from nasopt.measure._metrics import flop_counter_macs
from nasopt.oneshot import ProxylessNAS
from nasopt.ops import ND_OPS, build_op
from nasopt.search_spaces.mobile import MobileSpace
from nasopt.space import random_arch

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(stages=2, max_depth=2, kernels=(3, 5), expands=(1, 3), widths=(0.5, 1.0))
_2D = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d)


def task(shape, num_classes=10, kind="classify"):
    return SimpleNamespace(input_shape=shape, num_classes=num_classes, kind=kind, name="signals")


@pytest.mark.parametrize("shape", [(1, 40), (3, 64), (2, 17)])
@pytest.mark.parametrize("se", [False, True])
def test_1d_builds_give_logits_and_train_a_step(shape, se):
    space = MobileSpace(stages=3, max_depth=3, se=se)
    for seed in range(4):
        torch.manual_seed(seed)
        model = space.build(random_arch(space, seed=seed), task(shape, 7))
        assert not any(isinstance(m, _2D) for m in model.modules())
        assert any(isinstance(m, nn.Conv1d) and m.groups > 1 for m in model.modules())  # the depthwise convs
        x, y = torch.randn(8, *shape), torch.randint(0, 7, (8,))
        out = model(x)
        assert out.shape == (8, 7)
        before = [p.detach().clone() for p in model.parameters()]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        F.cross_entropy(out, y).backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        optimizer.step()
        assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_1d_blocks_follow_the_decisions_and_mirror_the_image_network():
    """Kernel k is a length-k depthwise conv, expand e a 1x1 to e*C (none for e=1); a 40-sample signal
    strides to 5 positions; the module tree (state-dict names) is the image network's."""
    space = MobileSpace(stages=3, max_depth=3)
    for seed in range(6):
        arch = random_arch(space, seed=seed)
        model = space.build(arch, task((1, 40)))
        images = space.build(arch, task((1, 8, 8)))
        assert list(model.state_dict()) == list(images.state_dict())
        assert model.blocks(model.stem(torch.zeros(1, 1, 40))).shape[-1] == 5
        blocks = iter(model.blocks)
        for s in range(1, 4):
            for b in range(int(arch[f"stage{s}.depth"])):
                k, e = arch[f"stage{s}.block{b}.kernel"], arch[f"stage{s}.block{b}.expand"]
                convs = [m for m in next(blocks).modules() if isinstance(m, nn.Conv1d)]
                depthwise = [c for c in convs if c.groups > 1]
                assert len(depthwise) == 1 and depthwise[0].kernel_size == (k,)
                assert len(convs) == (2 if e == 1 else 3)
                assert depthwise[0].in_channels == convs[0].in_channels * e


def test_mbconv_and_skip_have_1d_forms_in_the_op_table():
    assert {"skip", "mbconv_k7_e6", "mbconv_k3_e4"} <= ND_OPS
    for name, (C_in, C_out, stride) in [("skip", (4, 8, 2)), ("skip", (4, 8, 1)), ("mbconv_k5_e4", (4, 8, 2))]:
        op = build_op(name, C_in, C_out, stride, dim=1, se=True)
        assert not any(isinstance(m, _2D) for m in op.modules())
        assert op(torch.randn(2, C_in, 9)).shape == (2, C_out, 5 if stride == 2 else 9)


def test_2d_builds_are_unchanged():
    """The image networks of before signals were supported: parameters, state-dict names and shapes, initial
    values and the random numbers the build uses (pinned from the 2-D-only implementation)."""
    pinned = [
        (dict(stages=3, max_depth=3), (1, 8, 8), 0,
         "mobile:w0.75|s1:k5e3-k3e1|s2:k7e1|s3:k5e1-k5e6-k7e1", 18802, "2ebc135c6a4e9a4d", 2730.82853, 0.520531),
        (dict(stages=3, max_depth=3), (1, 8, 8), 1,
         "mobile:w0.75|s1:k7e6|s2:k7e3-k3e3|s3:k5e6-k7e3-k5e3", 34506, "6e7ce065a3c0163e", 4732.187526, 0.108185),
        (dict(stages=4, max_depth=2, se=True, act="hswish"), (3, 32, 32), 2,
         "mobile:w1|s1:k3e1|s2:k3e6-k5e1|s3:k5e6|s4:k5e6", 79062, "f6322a2b0899d9df", 7353.77207, 0.728283),
    ]
    for kwargs, shape, seed, described, n_params, names, magnitude, next_random in pinned:
        space = MobileSpace(**kwargs)
        arch = random_arch(space, seed=seed)
        torch.manual_seed(0)
        model = space.build(arch, task(shape))
        after = torch.rand(1).item()
        state = model.state_dict()
        digest = hashlib.sha256(";".join(f"{k}:{tuple(v.shape)}" for k, v in state.items()).encode()).hexdigest()
        assert space.describe(arch) == described
        assert sum(p.numel() for p in model.parameters()) == n_params
        assert digest[:16] == names
        total = sum(float(v.double().abs().sum()) for v in state.values() if v.is_floating_point())
        assert total == pytest.approx(magnitude, rel=1e-7)
        assert after == pytest.approx(next_random, abs=1e-6)
        assert not any(isinstance(m, nn.Conv1d | nn.BatchNorm1d) for m in model.modules())


@pytest.mark.parametrize(("shape", "kind", "words"), [
    ((40,), "classify", ["images (channels, height, width) and signals (channels, length)", "(40,)"]),
    ((1, 4, 8, 8), "classify", ["(1, 4, 8, 8)"]),
    ((1, 40), "dense", ["dense (per-position)", "40 -> 5"]),
])
def test_other_inputs_are_one_line_user_errors(shape, kind, words):
    with pytest.raises(UserError) as info:
        MobileSpace().build(random_arch(MobileSpace(), seed=0), task(shape, kind=kind))
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_latency_table_predicts_1d_networks_and_proxyless_searches_them(tmp_path, monkeypatch):
    """A table built on signals keys its entries by the 1-D option; with multiply-adds in place of times its
    prediction is the network's own count, and ProxylessNAS builds, runs and prices the 1-D supernet."""
    monkeypatch.setattr(latency_build, "_measure", lambda jobs, *a, **k: [
        (flop_counter_macs(module, tuple(x.shape[1:])) / 1e6, 0.0) for module, x in jobs])
    space, signals = MobileSpace(**TINY), ShapeTask("mnist1d", (1, 40), 10)
    table = build_table(space, signals, repeats=1, warmup=0)
    assert all("dim=1" in key for shapes in table.ops.values() for key in shapes)
    path = table.save(tmp_path / "latency_mobile_cpu.json")
    for seed in range(5):
        arch = random_arch(space, seed=seed)
        macs = flop_counter_macs(space.build(arch, signals).eval(), (1, 40)) / 1e6
        assert table.predict(space, arch, signals) == pytest.approx(macs, abs=1e-3)
    with pytest.raises(UserError, match="input shape"):
        table.check(space, ShapeTask("digits", (1, 8, 8), 10), "cpu")

    strategy = ProxylessNAS(latency_table=str(path), latency_target_ms=1.0)
    supernet, _ = strategy.supernet(space, SimpleNamespace(input_shape=(1, 40), num_classes=10, device="cpu"))
    assert supernet(torch.randn(4, 1, 40)).shape == (4, 10)
    model = strategy.latency_model(space, SimpleNamespace(input_shape=(1, 40), num_classes=10, device="cpu",
                                                          kind="classify"))
    assert model is not None and 0 < model.minimum_ms


def test_pictures_and_export_of_a_1d_network(tmp_path):
    space = MobileSpace(**TINY)
    arch = random_arch(space, seed=1)
    graph = arch_graph(arch, space, input_shape=(1, 40))
    shapes = {n: d["shape"] for n, d in graph.nodes(data=True)}
    assert shapes["input"] == (1, 40) and shapes["head"] == (10,)
    assert all(len(s) == 2 for n, s in shapes.items() if n.startswith("stage"))
    assert any(d.get("stride") == 2 for _, d in graph.nodes(data=True))

    target = ShapeTask("mnist1d", (1, 40), 10)
    torch.manual_seed(0)
    model = space.build(arch, target).eval()
    record, manifest = describe_export(model, space, arch, space_config(space), target,
                                       weights={"source": "initialised", "trained": False})
    folder = write_export(tmp_path / "export", {"": (model, record, manifest)})
    x = torch.randn(3, 1, 40)
    with torch.no_grad():
        torch.testing.assert_close(load_model(folder)(x), model(x), atol=0, rtol=0)
