"""Hardware metrics: MACs against torchvision's published numbers, params, latency, peak memory."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import warnings
from types import SimpleNamespace

import pytest
import torch
import torchvision
from torch import nn

from nasopt import MeasureConfig, UserError
from nasopt.measure._metrics import count_macs, count_params, flop_counter_macs, measure_latency, peak_memory
from nasopt.ops import build_op
from nasopt.search_spaces import SPACES, make_space
from nasopt.search_spaces.mobile import MobileSpace
from nasopt.space import random_arch

pytestmark = pytest.mark.usefixtures("one_thread")

PROVENANCE = {"device", "device_name", "threads", "batch_size", "input_shape", "warmup", "repeats", "torch",
              "method"}


def close(a: float, b: float, rel: float = 0.01) -> bool:
    return abs(a - b) <= rel * abs(b)


@pytest.fixture(scope="module")
def reference_models():
    # published: resnet18 1.814 GFLOPS (multiply-adds), mobilenet_v2 0.301 GFLOPS (torchvision model docs)
    return {"resnet18": (torchvision.models.resnet18(), 1.814e9),
            "mobilenet_v2": (torchvision.models.mobilenet_v2(), 0.301e9)}


def small_mobile_model(shape=(3, 16, 16), seed=0) -> nn.Module:
    space = MobileSpace(stages=2, max_depth=2, se=True, act="hswish")
    torch.manual_seed(seed)
    return space.build(random_arch(space, seed), SimpleNamespace(input_shape=shape, num_classes=10))


# ------------------------------------------------------------------------------------------------ MACs

@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_macs_match_torchvision_published_numbers(reference_models, name):
    model, published = reference_models[name]
    macs = count_macs(model, (3, 224, 224))
    assert close(macs, published), f"{name}: {macs / 1e9:.3f} GMACs, published {published / 1e9:.3f}"
    assert close(flop_counter_macs(model, (3, 224, 224)), macs)


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)], ids=["1x8x8", "3x32x32"])
@pytest.mark.parametrize("name", list(SPACES))
def test_two_mac_counters_agree_on_space_archs(name, shape):
    space = make_space(name)
    if name == "conv1d":  # (channels, length) signals: the same positions per channel as the image
        shape = (shape[0], shape[1] * shape[2])
    task = SimpleNamespace(input_shape=shape, num_classes=10)
    counts = set()
    for seed in range(3):
        model = space.build(random_arch(space, seed), task)
        macs = count_macs(model, shape)
        assert macs > 0
        assert close(flop_counter_macs(model, shape), macs)
        counts.add(macs)
    assert len(counts) > 1  # different architectures, different counts: the counter does look at the model


def test_macs_hand_count_on_a_tiny_network():
    # conv 3->8, 3x3, no padding on 8x8: 6*6 outputs x 8 channels x 27 MACs; linear 8->2: 16
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    assert count_macs(model, (3, 8, 8)) == 6 * 6 * 8 * 27 + 16
    assert flop_counter_macs(model, (3, 8, 8)) == 6 * 6 * 8 * 27 + 16


def test_attention_macs_are_counted():
    """The attention op: q/k/v and output projections plus the two L x L matrix products."""
    C, H, W = 16, 8, 8
    L = H * W
    model = nn.Sequential(build_op("attention", C, C, 1))
    expected = L * C * 3 * C + L * C * C + 2 * L * L * C
    fast_path = torch.backends.mha.get_fastpath_enabled()
    assert count_macs(model, (C, H, W)) == expected
    assert flop_counter_macs(model, (C, H, W)) == expected
    assert torch.backends.mha.get_fastpath_enabled() == fast_path  # the global switch is restored


def test_count_params_hand_count():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2, bias=False))
    assert count_params(model) == (4 * 3 + 3) + (3 + 3) + 3 * 2  # BN running stats are buffers: not counted
    model[0].bias.requires_grad_(False)
    assert count_params(model) == 4 * 3 + (3 + 3) + 3 * 2  # frozen weights are not trainable parameters


def test_count_macs_keeps_fvcore_and_jit_quiet(caplog, capfd):
    model = nn.Sequential(small_mobile_model(), nn.Identity())
    attention = nn.Sequential(build_op("attention", 8, 8, 1), build_op("se", 8, 8, 1, act="silu"))
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        count_macs(model, (3, 16, 16))
        count_macs(attention, (8, 6, 6))
    noisy = [w for w in caught if issubclass(w.category, (FutureWarning, UserWarning))
             or "jit" in str(w.message).lower()]
    assert not noisy, [str(w.message) for w in noisy]
    assert not [r for r in caplog.records if r.name.startswith("fvcore") or "Unsupported" in r.getMessage()]
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_count_macs_is_quiet_on_first_import():
    """In a fresh interpreter (fvcore not yet imported, all warnings shown) nothing reaches stderr."""
    code = textwrap.dedent("""
        import logging, warnings
        logging.basicConfig(level=logging.DEBUG)
        warnings.simplefilter("always")
        from torch import nn
        from nasopt.measure._metrics import count_macs
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Hardswish(), nn.BatchNorm2d(8),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
        print(count_macs(model, (3, 8, 8)))
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(8 * 8 * 8 * 27 + 16)
    assert proc.stderr == ""


# --------------------------------------------------------------------------------------------- latency

def test_measure_latency_reports_with_provenance():
    model = small_mobile_model()
    threads = torch.get_num_threads()
    other = 2 if threads == 1 else 1
    lat = measure_latency(model, (3, 16, 16), batch_size=2, threads=other, warmup=1, repeats=5)
    assert lat.median_ms > 0 and lat.iqr_ms >= 0
    assert PROVENANCE <= set(lat.provenance)
    p = lat.provenance
    assert p["device"] == "cpu" and isinstance(p["device_name"], str) and p["device_name"]
    assert p["threads"] == other and p["batch_size"] == 2 and list(p["input_shape"]) == [2, 3, 16, 16]
    assert p["warmup"] == 1 and p["repeats"] == 5 and p["torch"] == torch.__version__
    assert torch.get_num_threads() == threads  # the thread setting is restored


def test_measure_latency_needs_three_repeats():
    with pytest.raises(ValueError, match="repeats >= 3"):
        measure_latency(nn.Linear(2, 2), (2,), repeats=2)


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"repeats": 2}, {"warmup": -1}, {"threads": 0}])
def test_measure_config_validation_names_the_rule(kwargs):
    key = next(iter(kwargs))
    with pytest.raises(UserError, match=f"{key}"):
        MeasureConfig(**kwargs)


# ---------------------------------------------------------------------------------------------- memory

def test_peak_memory_grows_with_batch_and_input_size():
    model = small_mobile_model()
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    b1, info = peak_memory(model, (3, 16, 16), batch_size=1)
    b8, _ = peak_memory(model, (3, 16, 16), batch_size=8)
    big, _ = peak_memory(model, (3, 32, 32), batch_size=1)
    assert b1 >= weights + 3 * 16 * 16 * 4
    assert b8 > b1 and big > b1
    assert b8 - weights > 4 * (b1 - weights)  # activations scale with the batch
    assert info["batch_size"] == 1 and list(info["input_shape"]) == [1, 3, 16, 16]
    assert {"method", "device", "torch"} <= set(info)


class KeepAlive(nn.Module):
    """Creates `k` activations of the input's size and keeps them all alive until the end."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept = [x * float(i) for i in range(self.k)]
        return torch.stack(kept).sum(0) * self.scale


class Chain(KeepAlive):
    """Creates `k` activations one after another, each freed when the next exists."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.k):
            x = x * 1.0
        return x * self.scale


def test_peak_memory_counts_live_activations_only():
    nbytes = 32 * 32 * 4
    keep = [peak_memory(KeepAlive(k), (1, 32, 32))[0] for k in (1, 4, 16)]
    chain = [peak_memory(Chain(k), (1, 32, 32))[0] for k in (1, 4, 16)]
    assert keep[2] - keep[1] >= 12 * nbytes  # 12 more tensors alive at once
    assert chain[0] == chain[1] == chain[2]  # freed activations do not add up
    assert chain[2] < 4 * nbytes


# --------------------------------------------------------------------------------------- mode restored

@pytest.mark.parametrize("metric", [
    lambda m: count_macs(m, (3, 16, 16)),
    lambda m: flop_counter_macs(m, (3, 16, 16)),
    lambda m: measure_latency(m, (3, 16, 16), warmup=1, repeats=3),
    lambda m: peak_memory(m, (3, 16, 16), batch_size=2),
], ids=["count_macs", "flop_counter_macs", "measure_latency", "peak_memory"])
def test_metrics_run_in_eval_mode_and_restore_the_mode(metric):
    model = small_mobile_model()
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    for training in (True, False):
        model.train(training)
        before = bn.running_mean.clone()
        metric(model)
        assert model.training == training
        assert all(m.training == training for m in model.modules())
        assert torch.equal(bn.running_mean, before)  # measured in eval mode: BN statistics untouched
