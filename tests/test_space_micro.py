"""The micro space (issue 17, item 5): tiny CNNs for microcontrollers on signals and images, through the public
API and the real CLI.

- the parameter range spans about a hundred to tens of thousands; 1-D and 2-D networks from the task's shape;
- the decisions and their names (residual only where shapes match), `describe`, a hand count of a network;
- issue 17's hand-designed 1,582-parameter CNN (BN, dilation 2/4/8, global pooling) trains on MNIST-1D;
- flash and SRAM budgets counted by hand; `check_reachable` finds the smallest networks and names them;
- DARTS, PC-DARTS, ProxylessNAS and ENAS trials through the supernet and chooser protocol;
- `nasopt run` on a YAML study with `space: micro` and `dataset: mnist1d`; bad settings are one-line errors.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch import nn
from torch.utils.data import TensorDataset

import nasopt
from nasopt.data import load_task
from nasopt.measure._budgets import flash_bytes, sram_bytes
from nasopt.oneshot import DARTS, ENAS, MixedChooser, ProxylessNAS, Supernet
from nasopt.scoring import evaluate
from nasopt.search_spaces import DENSE_SPACES, SPACES, make_space
from nasopt.search_spaces.micro import MICRO_OPS, MicroSpace
from nasopt.space import fixed, random_arch
from nasopt.study._limits import check_reachable

pytestmark = pytest.mark.usefixtures("one_thread")

SIGNAL = (1, 40)  # MNIST-1D
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
SMALL = dict(max_depth=3, widths=(8, 12), ops=("conv_bn_relu_k3", "dil4_conv_bn_relu_k3", "sep_conv_bn_relu_k5"))


def task(shape=SIGNAL, num_classes=10, kind=None) -> SimpleNamespace:
    out = SimpleNamespace(input_shape=shape, num_classes=num_classes)
    if kind is not None:
        out.kind = kind
    return out


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def arch(stem: int, *blocks: tuple) -> dict:
    """An architecture from (op, width, stride[, residual]) per block."""
    out: dict = {"stem.width": stem, "depth": len(blocks)}
    for b, (op, width, stride, *residual) in enumerate(blocks, 1):
        out.update({f"block{b}.op": op, f"block{b}.width": width, f"block{b}.stride": stride})
        out.update({f"block{b}.residual": residual[0]} if residual else {})
    return out


# issue 17's hand-designed CNN: stem 12 (kernel 5), three 3-tap convs at dilation 2, 4, 8, BN, global pooling
HAND = arch(12, ("dil_conv_bn_relu_k3", 12, 1, False), ("dil4_conv_bn_relu_k3", 12, 1, False),
            ("dil8_conv_bn_relu_k3", 12, 1, False))


def replays(space: MicroSpace, a: dict) -> bool:
    """`a` is an architecture of the space: its own `suggest` gives it back from a FixedTrial."""
    return space.suggest(optuna.trial.FixedTrial(a)) == a


# ------------------------------------------------------------------------------------------ the space

def test_registered_with_a_dense_head():
    assert SPACES["micro"] == "nasopt.search_spaces.micro:MicroSpace" and "micro" in DENSE_SPACES
    assert isinstance(make_space("micro", max_depth=2), MicroSpace)


def test_parameters_span_about_a_hundred_to_tens_of_thousands():
    space = MicroSpace()
    smallest = arch(4, ("sep_conv_bn_relu_k3", 4, 2))
    largest = arch(32, *[("conv_bn_relu_k7", 32, 1, True)] * 6)
    assert replays(space, smallest) and replays(space, largest)
    # stem 1*4*5 + BN 8; depthwise 4*3 + BN 8, pointwise 4*4 + BN 8; linear 4*10 + 10
    assert n_params(space.build(smallest, task())) == 28 + 44 + 50 == 122
    assert n_params(space.build(largest, task())) > 40_000
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    counts = [n_params(space.build(space.suggest(study.ask()), task())) for _ in range(100)]
    assert min(counts) < 500 and max(counts) > 5_000 and 0.2 < sum(c <= 2000 for c in counts) / 100 < 0.8


def test_hand_designed_cnn_is_in_the_space_with_its_hand_count():
    space = MicroSpace()
    assert replays(space, HAND)
    assert space.describe(HAND) == "micro:12|c3d2x12|c3d4x12|c3d8x12"
    model = space.build(HAND, task())
    # stem 1*12*5 + BN 24; three 12*12*3 convs + BN 24; linear 12*10 + 10
    assert n_params(model) == 84 + 3 * 456 + 130 == 1582
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    assert [c.dilation[0] for c in convs] == [1, 2, 4, 8]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == 4
    assert not any(isinstance(m, nn.Conv2d | nn.BatchNorm2d) for m in model.modules())


def test_decision_names_are_stable_and_residual_is_asked_where_shapes_match():
    space = MicroSpace(max_depth=3)
    expected = ["stem.width", "depth"] + [f"block{b}.{k}" for b in (1, 2, 3)
                                          for k in ("op", "width", "stride", "residual")]
    assert list(space.distributions()) == expected
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen = set()
    for _ in range(60):
        a = space.suggest(study.ask())
        C = a["stem.width"]
        for b in range(1, a["depth"] + 1):
            match = a[f"block{b}.stride"] == 1 and a[f"block{b}.width"] == C
            assert (f"block{b}.residual" in a) == match
            seen.add(a.get(f"block{b}.residual"))
            C = a[f"block{b}.width"]
        assert not any(k.startswith(f"block{a['depth'] + 1}.") for k in a)
        assert re.fullmatch(r"micro:\d+(\|[cs]\d(d\d)?x\d+(/2)?(\+r)?)+", space.describe(a)), space.describe(a)
    assert seen == {None, False, True}
    assert space.describe(arch(8, ("dil4_sep_conv_bn_relu_k5", 8, 1, True), ("conv_bn_relu_k3", 16, 2))) == \
        "micro:8|s5d4x8+r|c3x16/2"


@pytest.mark.parametrize("shape", [(1, 40), (3, 64), (1, 8, 8), (3, 32, 32), (1, 28, 28)])
def test_builds_1d_for_signals_and_2d_for_images_with_strides(shape):
    space = MicroSpace()
    a = arch(8, ("conv_bn_relu_k5", 8, 1, True), ("dil_conv_bn_relu_k3", 16, 2), ("sep_conv_bn_relu_k3", 16, 2))
    sizes = []
    model = space.build(a, task(shape, 5))
    for block in model.blocks:
        block.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[2:])))
    dim = len(shape) - 1
    conv, other = (nn.Conv1d, nn.Conv2d) if dim == 1 else (nn.Conv2d, nn.Conv1d)
    assert any(isinstance(m, conv) for m in model.modules()) and not any(isinstance(m, other) for m in model.modules())
    out = model.train()(torch.randn(2, *shape))
    assert out.shape == (2, 5)
    out.logsumexp(1).sum().backward()
    side = [-(-s // 4) for s in shape[1:]]  # two stride-2 blocks: ceil(size / 4)
    assert sizes[-1] == tuple(side)
    dense = space.build(a, task(shape, 3, kind="dense")).eval()
    assert dense(torch.randn(2, *shape)).shape == (2, 3, *shape[1:])  # upsampled back to every position
    regress = space.build(a, task(shape, 2, kind="regress")).eval()
    assert regress(torch.randn(2, *shape)).shape == (2, 2)


def test_every_block_asks_the_chooser_and_drops_what_it_skips():
    calls = []

    def recording(name, candidates, chosen, C_in, C_out, stride, **options):
        calls.append((name, tuple(candidates), chosen, C_in, C_out, stride, options))
        return fixed(name, candidates, chosen, C_in, C_out, stride, **options)

    space = MicroSpace(max_depth=3)
    a = arch(8, ("conv_bn_relu_k3", 8, 1, True), ("conv_bn_relu_k5", 12, 2))
    model = space.build(a, task(), recording)
    ops = MICRO_OPS
    assert calls == [
        ("block1.op", ops, "conv_bn_relu_k3", 8, 8, 1, {"dim": 1}),
        ("block1.residual", ("zero", "skip_connect"), "skip_connect", 8, 8, 1, {"dim": 1}),
        ("block2.op", (*ops, "skip_connect"), "conv_bn_relu_k5", 8, 12, 2, {"dim": 1}),
        ("block3.op", (*ops, "skip_connect"), "skip_connect", 12, 12, 1, {"dim": 1}),  # past the depth
        ("block3.residual", ("zero", "skip_connect"), "zero", 12, 12, 1, {"dim": 1}),
    ]
    assert len(model.blocks) == 2 and isinstance(model.blocks[0].branch, nn.Identity)
    assert model.blocks[1].branch is None


def test_picture_draws_blocks_and_residual_adds():
    from nasopt.artifacts import arch_graph
    from nasopt.artifacts._pictures import picture_svg

    a = arch(8, ("dil4_sep_conv_bn_relu_k5", 8, 1, True), ("conv_bn_relu_k3", 16, 2))
    g = arch_graph(a, MicroSpace(), input_shape=SIGNAL)
    assert [g.nodes[n]["label"] for n in g.nodes] == ["input", "stem k5, 8", "sep k5 d4, 8", "+", "conv k3, 16 /2",
                                                      "pool + linear"]
    assert g.has_edge("stem", "block1.add") and g.edges["stem", "block1.add"]["skip"]
    assert "sep k5 d4, 8" in picture_svg(a, MicroSpace(), input_shape=SIGNAL)


# --------------------------------------------------------------------------------------------- training

def test_hand_designed_cnn_trains_on_mnist1d_far_above_chance():
    data = load_task("mnist1d")
    torch.manual_seed(0)
    model = MicroSpace().build(HAND, data)
    result = nasopt.train.train(model, data, nasopt.TrainConfig(epochs=8, batch_size=64, lr=0.05), seed=0)
    assert result.val_acc > 0.85, result.curve  # chance is 0.10; 8 epochs reach 0.93-0.95, 60 about 0.98
    assert evaluate(model, data.test)["acc"] > 0.85


# ---------------------------------------------------------------------------------------------- budgets

def test_flash_and_sram_by_hand():
    space = MicroSpace()
    plain = arch(4, ("conv_bn_relu_k3", 4, 1, False))
    residual = arch(4, ("conv_bn_relu_k3", 4, 1, True))
    strided = arch(4, ("conv_bn_relu_k3", 8, 2))
    # flash: weights 1 byte + 9 bytes per output channel: stem 20 + 36, block 48 + 36, linear 40 + 90
    assert flash_bytes(space.build(plain, task())) == flash_bytes(space.build(residual, task())) == 270
    assert flash_bytes(space.build(strided, task())) == 20 + 36 + 96 + 72 + 80 + 90
    # SRAM, int8 at batch 1: the stem's 4 x 40 output (160 B) and the block's output (160 B) alive together;
    # a residual holds the block's input until the add writes a third 160 B; stride 2 halves the output
    assert sram_bytes(space.build(plain, task()), SIGNAL) == 320
    assert sram_bytes(space.build(residual, task()), SIGNAL) == 480
    assert sram_bytes(space.build(strided, task()), SIGNAL) == 160 + 8 * 20
    for seed in range(5):  # every BN follows its conv: flash is the closed form of the weights on any network
        net = space.build(random_arch(space, seed), task())
        assert flash_bytes(net) == sum(p.numel() + 9 * p.shape[0] for p in net.parameters() if p.dim() >= 2)


def test_check_reachable_finds_small_networks_and_names_the_smallest():
    space = MicroSpace()
    for limits in ({"params": 2000}, {"params": 130}, {"flash_kb": 0.5}, {"params": 500, "sram_kb": 0.3}):
        check_reachable(space, task(), limits)  # found: no error
    with pytest.raises(nasopt.UserError, match=r"params <= 100, but the smallest network found has 122 "
                                               r"parameters; raise the limit \(constraints=\{'params': 122\}"):
        check_reachable(space, task(), {"params": 100})


# --------------------------------------------------------------------------------------- one-shot methods

def tiny_mnist1d():
    """320 training and 64 test signals of MNIST-1D (a study's `data` factory)."""
    data = load_task("mnist1d")
    x, y = next(iter(data.train.batches(320)))
    xt, yt = next(iter(data.test.batches(64)))
    return TensorDataset(x, y), TensorDataset(xt, yt)


def test_supernet_at_one_width_and_derive():
    space = MicroSpace(**SMALL)
    chooser = MixedChooser()
    net = space.supernet(task(), chooser)
    ops = SMALL["ops"]
    assert chooser.decisions == {"block1.op": ops, "block1.residual": ("zero", "skip_connect"),
                                 **{f"block{b}.{k}": c for b in (2, 3) for k, c in
                                    (("op", (*ops, "skip_connect")), ("residual", ("zero", "skip_connect")))}}
    places = [p for ps in chooser.full_width.values() for p in ps]  # (C_in, C_out, stride, options)
    assert {(C_in, C_out, stride) for C_in, C_out, stride, _ in places} == {(12, 12, 1)}  # the largest width
    assert Supernet(net, chooser)(torch.randn(2, *SIGNAL)).shape == (2, 10)
    weights = {"block1.op": [0, 1, 0], "block1.residual": [1, 0], "block2.op": [0, 0, 0, 1],
               "block2.residual": [0, 1], "block3.op": [0, 0, 1, 0], "block3.residual": [0, 1]}
    derived = space.derive(weights)
    assert derived == arch(12, ("dil4_conv_bn_relu_k3", 12, 1, False), ("sep_conv_bn_relu_k5", 12, 1, True))
    assert replays(space, derived)
    assert space.derive(weights, width=8)["stem.width"] == 8
    with pytest.raises(nasopt.UserError, match="width 16 is not one of the space's widths"):
        space.derive(weights, width=16)
    with pytest.raises(nasopt.UserError, match="include 1 in strides"):
        MicroSpace(strides=(2,)).supernet(task(), chooser)


METHODS = {
    "darts": (SMALL, lambda: DARTS(epochs=1, batch_size=32)),
    "pc_darts": (SMALL, lambda: DARTS(epochs=1, batch_size=32, partial_channels=2)),
    "proxyless": (SMALL, lambda: ProxylessNAS(epochs=1, batch_size=32, width=8)),
    # ENAS shares one network between architectures: the shape-changing decisions fixed
    "enas": ({**SMALL, "widths": (8,), "strides": (1,)},
             lambda: ENAS(epochs=1, batch_size=16, controller_steps=2, controller_batch=2, derive_samples=2)),
}


@pytest.mark.parametrize("method", list(METHODS))
def test_one_shot_trial_on_mnist1d(method, tmp_path):
    settings, strategy = METHODS[method]
    space = MicroSpace(**settings)
    spec = nasopt.StudySpec(name=method, space=space, data=tiny_mnist1d, strategy=strategy(), n_trials=1,
                            train=nasopt.TrainConfig(epochs=1, batch_size=32))
    study = nasopt.run(spec, storage=f"sqlite:///{tmp_path / 's.db'}", progress=False)
    (trial,) = study.get_trials()
    assert trial.state == TrialState.COMPLETE, trial.user_attrs
    dists = space.distributions()
    assert all(trial.distributions[n] == dists[n] for n in trial.params)  # the samplers' names and choices
    assert replays(space, dict(trial.params))
    width = {"proxyless": 8, "enas": 8}.get(method, 12)  # searched at one width: the largest, or the asked one
    assert trial.params["stem.width"] == width
    assert all(trial.params[f"block{b}.width"] == width for b in range(1, trial.params["depth"] + 1))
    assert trial.user_attrs["arch"] == space.describe(trial.params) and trial.user_attrs["params"] > 0


def test_enas_names_the_decisions_it_cannot_share():
    strategy = METHODS["enas"][1]()
    with pytest.raises(nasopt.UserError, match=r"ENAS trains one shared network.*change the network's shape"):
        strategy.check(MicroSpace(**SMALL), nasopt.data.user_task(tiny_mnist1d()))


# ------------------------------------------------------------------------------------------ bad settings

@pytest.mark.parametrize(("kwargs", "words"), [
    ({"max_depth": 0}, ["max_depth >= 1", "max_depth=6"]),
    ({"min_depth": 4, "max_depth": 3}, ["0 <= min_depth <= max_depth", "min_depth=1"]),
    ({"widths": ()}, ["channel counts", "widths=(4, 8"]),
    ({"widths": (8, 0)}, ["channel counts", "widths=(8, 0)"]),
    ({"widths": (8, 8)}, ["distinct channel counts", "widths=(8, 8)"]),
    ({"ops": ("conv_bn_relu_k3", "conv_bn_relu_k3")}, ["distinct block ops", "list each op once"]),
    ({"ops": ("conv_bn_relu_k3", "conv9")}, ["'conv9' is not in the op table"]),
    ({"ops": ("skip_connect",)}, ["`depth` decides how many blocks"]),
    ({"strides": (3,)}, ["strides from (1, 2)", "strides=(1, 2)"]),
    ({"stem_kernel": 4}, ["stem_kernel in (3, 5, 7)", "stem_kernel=5"]),
    ({"search_width": 10}, ["search_width among the widths", "None for the largest"]),
])
def test_bad_settings_are_one_line_user_errors_naming_the_fix(kwargs, words):
    with pytest.raises(nasopt.UserError) as info:
        MicroSpace(**kwargs)
    message = str(info.value)
    assert message.startswith("MicroSpace needs ") and "\n" not in message
    assert all(w in message for w in words), message


def test_bad_inputs_at_build_are_one_line_user_errors():
    space = MicroSpace()
    with pytest.raises(nasopt.UserError, match=r"builds for signals .* input shape is \(1, 2, 8, 8\)"):
        space.build(HAND, task((1, 2, 8, 8)))
    with pytest.raises(nasopt.UserError, match=r"depth=7 is outside the space's 1\.\.6"):
        space.build({**HAND, "depth": 7}, task())
    with pytest.raises(nasopt.UserError, match="2-D only"):
        MicroSpace(ops=("conv3x3",)).build(random_arch(MicroSpace(ops=("conv3x3",)), 0), task())


# --------------------------------------------------------------------------------------------------- CLI

STUDY = """\
name: micro_cli
space:
  name: micro
  max_depth: 3
  widths: [4, 8, 12]
dataset: mnist1d
objectives:
  accuracy: maximize
  flash_kb: minimize
constraints:
  params: {limit}
sampler:
  name: tpe
  seed: 0
n_trials: 3
train:
  epochs: 2
  batch_size: 64
measure:
  warmup: 0
  repeats: 3
"""


def nasopt_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "nasopt.cli", *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=600)


def test_cli_runs_a_yaml_study_and_refuses_an_unreachable_limit(tmp_path):
    (tmp_path / "micro.yaml").write_text(STUDY.format(limit=2000))
    out = nasopt_cli("run", "micro.yaml", "-q", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    study = optuna.load_study(study_name="micro_cli", storage=f"sqlite:///{tmp_path / 'nasopt.db'}")
    trials = study.get_trials()
    assert len(trials) == 3 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    for t in trials:
        assert t.user_attrs["params"] <= 2000 or "constraint violated" in t.user_attrs["pruned_reason"]
        assert t.user_attrs["flash_kb"] > 0 and t.user_attrs["arch"].startswith("micro:")
    assert any(t.state == TrialState.COMPLETE and t.values[0] > 0.1 for t in trials)
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.values[0])
    out = nasopt_cli("export", "micro_cli", "--trial", str(best.number), "-o", "exp", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    model = nasopt.load_model(tmp_path / "exp").eval()
    assert type(model).__name__ == "MicroNet" and n_params(model) == best.user_attrs["params"]
    with torch.no_grad():
        assert model(torch.randn(3, *SIGNAL)).shape == (3, 10)

    other = tmp_path / "other"
    other.mkdir()
    (other / "micro.yaml").write_text(STUDY.format(limit=100))
    out = nasopt_cli("run", "micro.yaml", "-q", cwd=other)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "MicroSpace" in out.stderr and "smallest network found has 122 parameters" in out.stderr
    assert not (other / "nasopt.db").exists()

    bad = textwrap.dedent(STUDY.format(limit=2000)).replace("widths: [4, 8, 12]", "widths: []")
    (other / "micro.yaml").write_text(bad)
    out = nasopt_cli("run", "micro.yaml", "-q", cwd=other)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "MicroSpace needs widths as distinct channel counts" in out.stderr and not (other / "nasopt.db").exists()
