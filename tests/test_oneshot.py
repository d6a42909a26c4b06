"""DARTS and PC-DARTS: the mixed op, the second-order gradient, and a gradient run as one trial of a study."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import torch.nn.functional as F
from gradient_resume import kill_mid_search_and_resume
from optuna.trial import TrialState

import nasopt
from nasopt.oneshot import DARTS, MixedChooser, MixedOp, Supernet
from nasopt.oneshot.darts import build_supernet, derive
from nasopt.oneshot.mixed import candidate_costs, channel_shuffle, expected_cost, record_spatial
from nasopt.search_spaces.layers import LayersSpace
from nasopt.search_spaces.nano import NanoSpace
from nasopt.space import random_arch

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
TINY = nasopt.TrainConfig(epochs=1, batch_size=64)


def supernet_for(space, task, partial: int = 1, seed: int = 0, edge_normalization: bool = False) -> Supernet:
    torch.manual_seed(seed)
    return build_supernet(space, task, MixedChooser(partial), edge_normalization=edge_normalization)


def test_mixed_op_is_the_weighted_sum_of_its_candidates():
    torch.manual_seed(0)
    op = MixedOp("e", ["conv3x3", "skip", "maxpool3x3", "zero"], 4, 4, 1)
    op.eval()
    x = torch.randn(2, 4, 6, 6)
    w = torch.tensor([0.1, 0.2, 0.3, 0.4])
    op.weights = w
    expected = sum(wi * m(x) for wi, m in zip(w, op.ops, strict=True))
    assert torch.allclose(op(x), expected)


def test_partial_channels_one_equals_darts(digits_task):
    space = NanoSpace(C=8)
    torch.manual_seed(0)
    darts = build_supernet(space, digits_task, MixedChooser())
    torch.manual_seed(0)
    pc1 = build_supernet(space, digits_task, MixedChooser(partial_channels=1))
    x, y = next(iter(digits_task.train.batches(32)))
    for net in (darts, pc1):
        net.train()
        F.cross_entropy(net(x), y).backward()
    assert torch.equal(darts(x), pc1(x))
    for a, b in zip(darts.arch_parameters(), pc1.arch_parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)


def test_partial_channels_sample_a_quarter_and_shuffle():
    torch.manual_seed(0)
    op = MixedOp("e", ["conv3x3", "skip"], 8, 8, 2, partial=4)
    assert all(m[0].in_channels == 2 for m in op.ops[:1])  # the conv sees C/K = 2 channels
    op.weights = torch.tensor([0.5, 0.5])
    out = op(torch.randn(3, 8, 6, 6))
    assert out.shape == (3, 8, 3, 3)
    x = torch.arange(8.0).view(1, 8, 1, 1)
    assert channel_shuffle(x, 4).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    with pytest.raises(nasopt.UserError, match="partial_channels"):
        MixedOp("e", ["conv3x3"], 6, 6, 1, partial=4)


def test_architecture_weights_are_parameters_in_the_state_dict(digits_task):
    net = supernet_for(NanoSpace(C=4), digits_task)
    state = net.state_dict()
    assert {f"alphas.pos{i}__op" for i in range(4)} <= set(state)
    assert all(p.requires_grad for p in net.arch_parameters())
    assert not {id(p) for p in net.arch_parameters()} & {id(p) for p in net.weight_parameters()}
    arch = derive(NanoSpace(C=4), net)
    assert set(arch) == set(NanoSpace().distributions())


def test_second_order_gradient_matches_finite_differences(digits_task):
    """d/dalpha L_val(w - eta * dL_train/dw (w, alpha), alpha), checked numerically in float64."""
    space = NanoSpace(positions=2, C=3, ops=("conv3x3", "skip", "avgpool3x3"))
    net = supernet_for(space, digits_task, seed=1).double()
    net.eval()  # BatchNorm with running statistics: a smooth, deterministic function of the weights
    (xw, yw), (xa, ya) = list(digits_task.train.batches(16))[:2]
    xw, xa = xw.double(), xa.double()
    strategy = DARTS(momentum=0.0, weight_decay=0.0, lr=0.5, hessian_eps=1e-5)
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=strategy.lr)
    strategy.unrolled_backward(net, w_opt, xw, yw, xa, ya)
    analytic = torch.cat([a.grad.flatten() for a in net.arch_parameters()])
    darts_default = dataclasses.replace(strategy, hessian_eps=0.01)  # the paper's step: an approximation
    darts_default.unrolled_backward(net, w_opt, xw, yw, xa, ya)
    approx = torch.cat([a.grad.flatten() for a in net.arch_parameters()])

    weights, alphas = net.weight_parameters(), net.arch_parameters()
    w0 = [w.detach().clone() for w in weights]

    def unrolled_val_loss() -> float:
        with torch.no_grad():
            for w, b in zip(weights, w0, strict=True):
                w.copy_(b)
        grads = torch.autograd.grad(F.cross_entropy(net(xw), yw), weights, allow_unused=True)
        with torch.no_grad():
            for w, g in zip(weights, grads, strict=True):
                if g is not None:
                    w.sub_(strategy.lr * g)
            return float(F.cross_entropy(net(xa), ya))

    numeric, h = [], 1e-5
    for a in alphas:
        for i in range(a.numel()):
            with torch.no_grad():
                a.view(-1)[i] += h
            plus = unrolled_val_loss()
            with torch.no_grad():
                a.view(-1)[i] -= 2 * h
            minus = unrolled_val_loss()
            with torch.no_grad():
                a.view(-1)[i] += h
            numeric.append((plus - minus) / (2 * h))
    numeric_t = torch.tensor(numeric, dtype=torch.float64)
    assert numeric_t.abs().max() > 1e-4  # the check is not trivially about zeros
    assert torch.allclose(analytic, numeric_t, rtol=1e-4, atol=1e-8), (analytic, numeric_t)
    assert torch.allclose(approx, numeric_t, rtol=0.0, atol=0.1 * float(numeric_t.abs().max())), (approx, numeric_t)
    first_order = torch.cat([g.flatten() for g in torch.autograd.grad(
        F.cross_entropy(net(xa), ya), alphas)])
    assert not torch.allclose(first_order, numeric_t, rtol=1e-2, atol=1e-6)  # the Hessian term matters


def test_resource_penalty_ranks_candidates_by_cost(digits_task):
    space = NanoSpace(C=8)
    chooser = MixedChooser()
    torch.manual_seed(0)
    net = build_supernet(space, digits_task, chooser)
    memory = candidate_costs(chooser, "memory")
    ops = list(chooser.decisions["pos0.op"])
    params = dict(zip(ops, memory["pos0.op"], strict=True))
    # conv kxk + BN on 8 channels: 8*8*k*k weights + 2*8 affine
    assert params["conv3x3"] == 8 * 8 * 9 + 16 and params["conv5x5"] == 8 * 8 * 25 + 16
    assert params["skip"] == params["zero"] == params["maxpool3x3"] == 0
    x = next(iter(digits_task.val.batches(1)))[0]
    compute = candidate_costs(chooser, "compute", record_spatial(net, x))
    macs = dict(zip(ops, compute["pos0.op"], strict=True))
    assert macs["conv5x5"] == 8 * 8 * 25 * 64 and macs["conv3x3"] == 8 * 8 * 9 * 64  # 8x8 positions
    with torch.no_grad():
        before = float(expected_cost(net, memory))
    with torch.no_grad():
        for name in net.decisions:
            net.alphas[name.replace(".", "__")][ops.index("conv5x5")] = 5.0
        assert float(expected_cost(net, memory)) > before


def test_darts_needs_a_fixed_edge_set(digits_task):
    with pytest.raises(nasopt.UserError, match="fixed set of edges"):
        build_supernet(LayersSpace(), digits_task, MixedChooser())


def test_a_darts_run_is_one_complete_trial_like_a_sampled_one(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    space = NanoSpace(C=8)
    common = dict(name="mixed", space=space, dataset="digits", train=TINY,
                  objectives={"accuracy": "maximize", "params": "minimize"})
    nasopt.run(nasopt.StudySpec(**common, n_trials=2, sampler=optuna.samplers.RandomSampler(seed=0)),
               storage=url, progress=False)
    study = nasopt.run(nasopt.StudySpec(**common, strategy=[DARTS(epochs=2, batch_size=32),
                                                            DARTS(epochs=2, batch_size=32, partial_channels=2)]),
                       storage=url, progress=False)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    sampled, gradient = trials[:2], trials[2:]
    for t in gradient:
        assert t.distributions == sampled[0].distributions  # same names and distributions as the samplers'
        assert t.params == {n: t.params[n] for n in space.distributions()}
        assert [r["epoch"] for r in t.user_attrs["search"]] == [1, 2]
        assert {"train_acc", "valid_acc", "alpha_entropy", "skips"} <= set(t.user_attrs["search"][0])
        assert len(t.user_attrs["alphas"]) == 2 and set(t.user_attrs["alphas"][0]["weights"]) == set(t.params)
        assert t.user_attrs["genotype"] == space.describe(t.params) == t.user_attrs["arch"]
        assert t.user_attrs["curve"] and t.values[1] == t.user_attrs["params"]
        ops = [t.params[f"pos{i}.op"] for i in range(4)]  # a mostly weightless derived network says so
        weightless = sum(op in ("zero", "skip", "maxpool3x3") for op in ops)
        assert any("searched ops" in w for w in t.user_attrs.get("warnings", [])) == (weightless >= 3), ops
    assert [t.user_attrs["strategy"]["label"] for t in gradient] == ["darts", "pc_darts_k2"]
    frame = nasopt.trials_frame(url, "mixed")
    assert list(frame["strategy"]) == ["RandomSampler", "RandomSampler", "darts", "pc_darts_k2"]
    # running the file again adds nothing: each strategy has its trial
    again = nasopt.run(nasopt.StudySpec(**common, strategy=[DARTS(epochs=2, batch_size=32),
                                                            DARTS(epochs=2, batch_size=32, partial_channels=2)]),
                       storage=url, progress=False)
    assert len(again.get_trials()) == 4
    # and a sampled run's budget counts only the sampled trials
    more = nasopt.run(nasopt.StudySpec(**common, n_trials=3, sampler=optuna.samplers.RandomSampler(seed=1)),
                      storage=url, progress=False)
    assert len(more.get_trials()) == 5


def test_skip_guard_stops_the_search(digits_task):
    space = NanoSpace(C=4, ops=("skip", "conv3x3"))
    strategy = DARTS(epochs=5, batch_size=64, max_skips=0, arch_lr=0.5)
    torch.manual_seed(0)
    arch, summary = strategy.search(space, digits_task, seed=0)
    assert summary["epochs_run"] == 1 or "skip" not in arch.values()
    if summary["stopped"]:
        assert "max_skips=0" in summary["stopped"]


def test_killed_search_resumes_from_its_last_epoch(tmp_path):
    kill_mid_search_and_resume(ROOT / "studies" / "tiny_darts.py", "tiny_darts", tmp_path, epochs=6)
    artifacts = list((tmp_path / "nasopt.artifacts").iterdir())
    # one checkpoint per run is kept (the killed run's last one may remain), plus pictures and front weights
    checkpoints = [a for a in artifacts if a.stat().st_size > 20_000]
    assert len(checkpoints) <= 3


def test_bad_strategy_inputs(tmp_path):
    with pytest.raises(nasopt.UserError, match="either a `sampler`"):
        nasopt.StudySpec(name="x", space=NanoSpace(), strategy=DARTS(), sampler=optuna.samplers.RandomSampler())
    with pytest.raises(nasopt.UserError, match="gradient method"):
        nasopt.StudySpec(name="x", space=NanoSpace(), strategy="darts")
    with pytest.raises(nasopt.UserError, match="partial_channels"):
        DARTS(partial_channels=0)
    with pytest.raises(nasopt.UserError, match="penalty"):
        DARTS(penalty="energy")
    study = tmp_path / "mobile_darts.py"
    study.write_text("import nasopt\nfrom nasopt.oneshot import DARTS\nfrom nasopt.search_spaces.layers import "
                     "LayersSpace\nstudy = nasopt.StudySpec(name='m', space=LayersSpace(), strategy=DARTS(epochs=1))\n")
    out = subprocess.run([sys.executable, "-m", "nasopt.cli", "run", str(study), "-q"], cwd=tmp_path, env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "fixed set of edges" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "nasopt.db").exists()
    for space, words in [("DartsCellSpace(genotype='DARTS_V9')", "DARTS_V2"),
                         ("DartsCellSpace(genotype=\"Genotype(normal=[('sep_conv_3x3', 0)\")", "genotype"),
                         ("DartsCellSpace(ops=('sep_conv_3x3', 'warp_conv'))", "warp_conv")]:
        study.write_text("import nasopt\nfrom nasopt.oneshot import DARTS\nfrom nasopt.search_spaces.darts_cell import "
                         f"DartsCellSpace\nstudy = nasopt.StudySpec(name='m', space={space}, strategy=DARTS(epochs=1))\n")
        out = subprocess.run([sys.executable, "-m", "nasopt.cli", "run", str(study), "-q"], cwd=tmp_path, env=ENV,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and words in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert not (tmp_path / "nasopt.db").exists()


def test_random_arch_of_the_space_is_a_valid_supernet_path(digits_task):
    space = NanoSpace(C=4)
    arch = random_arch(space, seed=3)
    net = supernet_for(space, digits_task)
    assert set(net.decisions) == set(arch)
    assert dataclasses.is_dataclass(DARTS())
