"""The search-space contract, run over every space the CLI registers, plus space-specific rules.

A new entry in `nasopt.search_spaces.SPACES` is covered by the contract tests without editing this file.
"""

from __future__ import annotations

import itertools
import math
import re
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution
from torch import nn

from nasopt import UserError
from nasopt.search_spaces import SPACES, make_space
from nasopt.search_spaces.mobile import MobileSpace, strides_for
from nasopt.search_spaces.nano import NanoSpace
from nasopt.space import SearchSpace, arch_key, fixed

pytestmark = pytest.mark.usefixtures("one_thread")

SEEDS = (0, 1, 2)
SHAPES = [(1, 8, 8), (3, 32, 32), (1, 28, 28)]
# spaces over other data than (C, H, W) images: their own input shapes (conv1d: (channels, length) signals;
# micro: signals and images)
SPACE_SHAPES = {"conv1d": [(1, 40), (3, 64)], "micro": [(1, 40), (3, 64), (1, 8, 8), (3, 32, 32)]}
# large inputs only for spaces that downsample (nano keeps full resolution, which is slow at 224x224)
LARGE_SHAPES = {"mobile": [(3, 64, 64), (3, 224, 224)]}
CASES = [pytest.param(name, shape, id=f"{name}-{'x'.join(map(str, shape))}")
         for name in SPACES for shape in SPACE_SHAPES.get(name, SHAPES) + LARGE_SHAPES.get(name, [])]


def small(shape: tuple[int, ...]) -> bool:
    """At most a 32x32 image's positions per channel (CIFAR-sized or smaller, any signal up to 1024)."""
    return math.prod(shape[1:]) <= 32 * 32


def tiny_task(shape: tuple[int, ...], num_classes: int = 10) -> SimpleNamespace:
    return SimpleNamespace(input_shape=shape, num_classes=num_classes)


def sample(space, seed: int) -> tuple[dict, optuna.trial.FrozenTrial]:
    """One architecture drawn by the space's own `suggest` under RandomSampler, with its trial."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    trial = study.ask()
    arch = space.suggest(trial)
    study.tell(trial, 0.0)
    return arch, study.trials[-1]


def many_archs(space, n: int = 20) -> list[dict]:
    """`n` random architectures from one study (one sampler stream, so draws differ)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=123))
    return [space.suggest(study.ask()) for _ in range(n)]


# ------------------------------------------------------------------------------------------- contract

@pytest.mark.parametrize("name", list(SPACES))
def test_registry_builds_space_objects(name):
    space = make_space(name)
    assert isinstance(space, SearchSpace)


def test_unknown_space_name_is_a_user_error():
    with pytest.raises(UserError, match="known spaces"):
        make_space("no_such_space")


@pytest.mark.parametrize("name", list(SPACES))
@pytest.mark.parametrize("seed", range(5))
def test_suggest_returns_trial_params(name, seed):
    arch, trial = sample(make_space(name), seed)
    assert isinstance(arch, dict) and arch
    assert arch == trial.params


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_build_maps_input_to_logits(name, shape):
    space = make_space(name)
    task = tiny_task(shape, num_classes=7)
    for seed in SEEDS[: 1 if math.prod(shape[1:]) > 64 * 64 else None]:
        arch, _ = sample(space, seed)
        torch.manual_seed(seed)
        model = space.build(arch, task)
        assert isinstance(model, nn.Module)
        model.eval()
        with torch.no_grad():
            out = model(torch.randn(2, *shape))
        assert out.shape == (2, 7), space.describe(arch)
        assert torch.isfinite(out).all(), space.describe(arch)


@pytest.mark.parametrize(("name", "shape"), [c for c in CASES if small(c.values[1])])
def test_built_model_trains_one_step(name, shape):
    """Train-mode forward + backward works and reaches the weights of every built network."""
    space = make_space(name)
    arch, _ = sample(space, 0)
    torch.manual_seed(0)
    model = space.build(arch, tiny_task(shape, 3))
    loss = nn.functional.cross_entropy(model(torch.randn(4, *shape)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_fixed_trial_replays_the_architecture(name, shape):
    space = make_space(name)
    task = tiny_task(shape)
    for seed in SEEDS[: 1 if math.prod(shape[1:]) > 64 * 64 else None]:
        arch, trial = sample(space, seed)
        replayed = space.suggest(optuna.trial.FixedTrial(trial.params))
        assert replayed == arch
        assert space.describe(replayed) == space.describe(arch)
        a, b = space.build(arch, task).state_dict(), space.build(replayed, task).state_dict()
        assert {k: tuple(v.shape) for k, v in a.items()} == {k: tuple(v.shape) for k, v in b.items()}
        assert sum(v.numel() for v in a.values()) == sum(v.numel() for v in b.values())


@pytest.mark.parametrize("name", list(SPACES))
def test_distributions_cover_every_suggested_value(name):
    space = make_space(name)
    dists = space.distributions()
    for arch in many_archs(space):
        for param, value in arch.items():
            assert param in dists, f"{param} is suggested but missing from distributions()"
            dist = dists[param]
            assert dist._contains(dist.to_internal_repr(value)), (param, value, dist)


@pytest.mark.parametrize("name", list(SPACES))
def test_distributions_match_what_the_trial_records(name):
    space = make_space(name)
    dists = space.distributions()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=7))
    for _ in range(10):
        space.suggest(study.ask())
    for trial in study.trials:
        for param, dist in trial.distributions.items():
            assert dists[param] == dist, param


@pytest.mark.parametrize("name", list(SPACES))
def test_encode_is_fixed_length_and_injective(name):
    space = make_space(name)
    archs = many_archs(space)
    codes = [space.encode(a) for a in archs]
    lengths = {c.shape for c in codes}
    assert len(lengths) == 1 and len(next(iter(lengths))) == 1, lengths
    assert len(codes[0]) > 0
    for c in codes:
        assert np.issubdtype(c.dtype, np.floating)
        assert np.isfinite(c).all()
        assert ((c >= 0) & (c <= 1)).all()
    distinct_archs = {arch_key(a) for a in archs}
    distinct_codes = {c.tobytes() for c in codes}
    assert len(distinct_codes) == len(distinct_archs)


@pytest.mark.parametrize("name", list(SPACES))
def test_describe_is_short_and_distinct(name):
    space = make_space(name)
    archs = many_archs(space)
    strings = {arch_key(a): space.describe(a) for a in archs}
    for s in strings.values():
        assert isinstance(s, str) and 0 < len(s) <= 120 and "\n" not in s, s
    assert len(set(strings.values())) == len(strings), strings
    assert len(strings) >= 10  # the sample did explore the space
    assert space.describe(dict(archs[0])) == space.describe(archs[0])


# ------------------------------------------------------------------------------------------------ nano

def test_nano_has_625_architectures_over_four_named_positions():
    space = NanoSpace()
    dists = space.distributions()
    assert list(dists) == ["pos0.op", "pos1.op", "pos2.op", "pos3.op"]
    assert all(isinstance(d, CategoricalDistribution) for d in dists.values())
    assert math.prod(len(d.choices) for d in dists.values()) == 625
    archs = [dict(zip(dists, ops, strict=True)) for ops in itertools.product(*(d.choices for d in dists.values()))]
    assert len({space.describe(a) for a in archs}) == 625
    assert len({space.encode(a).tobytes() for a in archs}) == 625


def test_nano_build_asks_the_chooser_at_every_position():
    calls = []

    def recording(name, candidates, chosen, C_in, C_out, stride, **options):
        calls.append((name, tuple(candidates), chosen, C_in, C_out, stride))
        return fixed(name, candidates, chosen, C_in, C_out, stride, **options)

    space = NanoSpace(C=8)
    arch = {"pos0.op": "conv3x3", "pos1.op": "zero", "pos2.op": "skip", "pos3.op": "maxpool3x3"}
    space.build(arch, tiny_task((1, 8, 8)), choose=recording)
    assert [c[0] for c in calls] == list(arch)
    assert [c[2] for c in calls] == list(arch.values())
    assert all(c[1] == space.ops and c[3:] == (8, 8, 1) for c in calls)


def test_nano_zero_position_cuts_the_chain():
    """`zero` at position 1 feeds zeros to every later position, whatever their ops."""
    outputs: dict[str, torch.Tensor] = {}

    def recording(name, candidates, chosen, C_in, C_out, stride, **options):
        module = fixed(name, candidates, chosen, C_in, C_out, stride, **options)
        module.register_forward_hook(lambda m, i, o: outputs.__setitem__(name, o))
        return module

    space = NanoSpace(C=8)
    arch = {"pos0.op": "conv3x3", "pos1.op": "zero", "pos2.op": "maxpool3x3", "pos3.op": "skip"}
    torch.manual_seed(0)
    model = space.build(arch, tiny_task((1, 8, 8)), choose=recording).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 1, 8, 8))
    assert out.shape == (3, 10)
    assert outputs["pos0.op"].abs().sum() > 0
    for name in ("pos1.op", "pos2.op", "pos3.op"):
        assert outputs[name].shape == (3, 8, 8, 8)
        assert (outputs[name] == 0).all(), name


def test_nano_bad_arguments_name_the_rule():
    with pytest.raises(ValueError, match="positions >= 1"):
        NanoSpace(positions=0)
    with pytest.raises(UserError, match="conv9x9"):
        NanoSpace(ops=("conv3x3", "conv9x9"))


# ---------------------------------------------------------------------------------------------- mobile

def test_mobile_conditional_names_follow_depth():
    space = MobileSpace(stages=3, max_depth=3)
    seen_depths = set()
    for arch in many_archs(space, 30):
        expected = {"width"}
        for s in range(1, 4):
            depth = arch[f"stage{s}.depth"]
            seen_depths.add(depth)
            expected.add(f"stage{s}.depth")
            expected |= {f"stage{s}.block{b}.{k}" for b in range(depth) for k in ("kernel", "expand")}
        assert set(arch) == expected
    assert seen_depths == {1, 2, 3}


def test_mobile_fixed_trial_with_short_depth_needs_no_deeper_blocks():
    space = MobileSpace(stages=2, max_depth=3)
    params = {"width": 1.0, "stage1.depth": 1, "stage1.block0.kernel": 5, "stage1.block0.expand": 3,
              "stage2.depth": 2, "stage2.block0.kernel": 3, "stage2.block0.expand": 1,
              "stage2.block1.kernel": 7, "stage2.block1.expand": 6}
    assert space.suggest(optuna.trial.FixedTrial(params)) == params
    assert space.describe(params) == "mobile:w1|s1:k5e3|s2:k3e1-k7e6"


def test_mobile_distribution_names_are_unique_and_readable():
    space = MobileSpace(stages=2, max_depth=2)
    names = list(space.distributions())
    assert len(names) == len(set(names)) == 1 + 2 * (1 + 2 * 2)
    pattern = re.compile(r"^(width|stage\d+\.depth|stage\d+\.block\d+\.(kernel|expand))$")
    assert all(pattern.match(n) for n in names), names


@pytest.mark.parametrize(("size", "stages", "final"), [
    (8, 2, 2), (8, 3, 2), (8, 5, 2),
    (32, 3, 4), (32, 5, 4), (28, 3, 4),
    (224, 4, 7), (224, 5, 7), (224, 7, 7),
])
def test_strides_for_reaches_the_target_resolution(size, stages, final):
    stem, strides = strides_for(size, stages)
    assert len(strides) == stages
    assert stem in (1, 2) and set(strides) <= {1, 2}
    res = math.ceil(size / stem)
    for s in strides:
        res = math.ceil(res / s)
    assert res == final
    # downsampling happens in the last stages: once a stage strides, every later stage strides too
    assert strides == sorted(strides)


class Recorder:
    """A chooser that records every decision and the output resolution of each op it returns."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.out_sizes: list[tuple[int, int]] = []

    def __call__(self, name, candidates, chosen, C_in, C_out, stride, **options):
        self.calls.append((name, tuple(candidates), chosen, C_in, C_out, stride))
        module = fixed(name, candidates, chosen, C_in, C_out, stride, **options)
        module.register_forward_hook(lambda m, i, o: self.out_sizes.append(tuple(o.shape[-2:])))
        return module


@pytest.mark.parametrize(("shape", "stages", "final"), [((1, 8, 8), 3, 2), ((3, 32, 32), 3, 4),
                                                         ((3, 224, 224), 4, 7)])
def test_mobile_build_sees_every_decision_slot(shape, stages, final):
    space = MobileSpace(stages=stages, max_depth=2, widths=(0.5,))
    arch, _ = sample(space, 0)
    arch = {k: v for k, v in arch.items() if ".block" not in k}
    for s in range(1, stages + 1):  # stage s has depth 1 + s % 2: both the deep and the skipped slot occur
        arch[f"stage{s}.depth"] = depth = 1 + s % 2
        for b in range(depth):
            arch[f"stage{s}.block{b}.kernel"], arch[f"stage{s}.block{b}.expand"] = 3, 3
    rec = Recorder()
    model = space.build(arch, tiny_task(shape), choose=rec)

    assert [c[0] for c in rec.calls] == [f"stage{s}.block{b}" for s in range(1, stages + 1) for b in range(2)]
    stem_stride, strides = strides_for(shape[1], stages)
    C_prev = None
    for name, candidates, chosen, C_in, C_out, stride in rec.calls:
        s, b = (int(x) for x in re.findall(r"\d+", name))
        assert chosen in candidates
        assert ("skip" in candidates) == (b > 0), name
        assert all(c.startswith("mbconv_") for c in candidates if c != "skip")
        depth = arch[f"stage{s}.depth"]
        assert (chosen == "skip") == (b >= depth), name
        if b < depth:
            assert chosen == f"mbconv_k{arch[f'{name}.kernel']}_e{arch[f'{name}.expand']}"
        assert stride == (strides[s - 1] if b == 0 else 1), name
        if b > 0:
            assert C_in == C_out, name
        if C_prev is not None:
            assert C_in == C_prev, name
        C_prev = C_out

    # the default chooser gives the same network
    default = space.build(arch, tiny_task(shape))
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in default.parameters())
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, *shape))
    assert rec.out_sizes[-1] == (final, final)


def test_mobile_se_and_activation_reach_the_blocks():
    space = MobileSpace(stages=1, max_depth=1, se=True, act="hswish")
    arch = {"width": 1.0, "stage1.depth": 1, "stage1.block0.kernel": 3, "stage1.block0.expand": 3}
    model = space.build(arch, tiny_task((3, 32, 32)))
    kinds = {type(m).__name__ for m in model.modules()}
    assert "SqueezeExcite" in kinds and "Hardswish" in kinds and "ReLU6" not in kinds


@pytest.mark.parametrize(("kwargs", "rule"), [
    ({"stages": 0}, "1 <= stages"),
    ({"stages": 8}, "stages <= 7"),
    ({"max_depth": 0}, "max_depth >= 1"),
    ({"stages": 2, "channels": (16, 24, 32)}, "len(channels) == stages"),
])
def test_mobile_bad_arguments_name_the_rule(kwargs, rule):
    with pytest.raises(ValueError, match=re.escape(rule)):
        MobileSpace(**kwargs)


@pytest.mark.parametrize("kwargs", [{"kernels": (4,)}, {"expands": (2,)}, {"act": "tanh"}])
def test_mobile_unknown_block_options_are_user_errors(kwargs):
    """An option the op table cannot build is a UserError naming the bad value, at construction."""
    bad = str(next(iter(kwargs.values())))
    with pytest.raises(UserError, match=re.escape(bad.strip("(),'"))):
        MobileSpace(**kwargs)
