"""Zero-cost proxies (nasopt.measure._proxies) and screening before training (nasopt.pruners.Screen).

The proxies repeat for a seed, leave the network and the random state as they were (training after them is
bit-identical), keep the orderings their definitions imply (a `zero` op that cuts the nano chain takes the
later positions out of synflow; a conv chain has more activation patterns than skips), score networks without
ReLUs and regression tasks; then the runner: a proxy as an objective of a 2-objective study and Screen
pruning with its reason, through the real CLI, and the one-line refusals.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState
from torch import nn
from torch.utils.data import TensorDataset

import nasopt
from nasopt._format import fmt
from nasopt.analysis._results import PROXY_COLUMNS
from nasopt.data import user_task
from nasopt.errors import UserError
from nasopt.measure import PROXIES, naswot, proxy_batch, synflow, zero_cost
from nasopt.pruners import Screen, make_pruner
from nasopt.search_spaces.nano import NanoSpace
from nasopt.study._objective import trial_seed
from nasopt.train import TrainConfig, train
from tests.cli_errors import user_error

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
ALL_C3 = {f"pos{i}": "conv3x3" for i in range(4)}


def nano(arch: dict[str, str] | str, task, seed: int = 0, C: int = 8) -> nn.Module:
    space = NanoSpace(C=C)
    names = list(space.distributions())
    arch = dict(zip(names, arch.split(","), strict=True)) if isinstance(arch, str) else arch
    torch.manual_seed(seed)
    return space.build(arch, task)


def test_every_proxy_repeats_for_a_seed_and_names_match_the_frame(digits_task, one_thread):
    x, y = proxy_batch(digits_task, seed=3)
    first = zero_cost(nano("conv3x3,maxpool3x3,conv5x5,skip", digits_task), PROXIES, x, y, digits_task)
    x2, y2 = proxy_batch(digits_task, seed=3)
    again = zero_cost(nano("conv3x3,maxpool3x3,conv5x5,skip", digits_task), PROXIES, x2, y2, digits_task)
    assert torch.equal(x, x2) and first == again and set(first) == set(PROXIES)
    assert tuple(PROXIES) == PROXY_COLUMNS  # trials_frame names them without importing torch


def test_proxies_leave_weights_and_random_state_so_training_is_identical(digits_task, one_thread):
    config = TrainConfig(epochs=1, batch_size=128, precision="fp32")
    plain = nano("conv3x3,zero,conv5x5,maxpool3x3", digits_task, seed=5)
    torch.manual_seed(11)
    result_plain = train(plain, digits_task, config, seed=5)
    scored = nano("conv3x3,zero,conv5x5,maxpool3x3", digits_task, seed=5)
    before = {k: v.clone() for k, v in scored.state_dict().items()}
    torch.manual_seed(11)
    rng = torch.get_rng_state()
    x, y = proxy_batch(digits_task, seed=5)
    zero_cost(scored, PROXIES, x, y, digits_task)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in scored.state_dict().items()) and scored.training
    result_scored = train(scored, digits_task, config, seed=5)
    timeless = [[{k: v for k, v in r.items() if k != "seconds"} for r in res.curve] for res in (result_scored,
                                                                                               result_plain)]
    assert timeless[0] == timeless[1]
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), scored.state_dict().values(),
                                                strict=True))


def test_synflow_ignores_what_a_zero_op_cuts_off(digits_task):
    """zero at position 1 feeds 0 to positions 2-4 (bias-free convs, BN removed): no synaptic flow reaches
    their weights, so scaling them changes nothing, while it does in the chain without the cut."""
    for arch, cut in (("zero,conv3x3,conv5x5,conv3x3", True), ("conv3x3,conv3x3,conv5x5,conv3x3", False)):
        net = nano(arch, digits_task)
        base = synflow(net, digits_task.input_shape)
        with torch.no_grad():
            for op in list(net.positions)[1:]:
                for p in op.parameters():
                    p.mul_(10)
        assert (synflow(net, digits_task.input_shape) == base) is cut
    full = synflow(nano("conv3x3,conv3x3,conv5x5,conv3x3", digits_task), digits_task.input_shape)
    assert synflow(nano("zero,conv3x3,conv5x5,conv3x3", digits_task), digits_task.input_shape) < full / 10


def test_naswot_sees_more_activation_patterns_in_convs_than_in_skips(digits_task):
    x, _ = proxy_batch(digits_task, seed=0)
    assert naswot(nano("conv3x3,conv3x3,conv3x3,conv3x3", digits_task), x) > \
        naswot(nano("skip,skip,skip,skip", digits_task), x) > 0


def test_networks_without_relu_and_a_regression_task_are_scored():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(120, 1, 8, 8, generator=gen)
    task = user_task((TensorDataset(x[:96], x[:96].mean((1, 2, 3))[:, None].repeat(1, 2)),
                      TensorDataset(x[96:], x[96:].mean((1, 2, 3))[:, None].repeat(1, 2))), kind="regress")
    xb, yb = proxy_batch(task, batch_size=32, seed=0)
    linear = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(144, 2))  # no activation module
    silu = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.SiLU(), nn.Flatten(), nn.Linear(144, 2))
    for net in (linear, silu):
        scores = zero_cost(net, PROXIES, xb, yb, task)
        assert all(isinstance(v, float) and v == v for v in scores.values()), scores
        assert scores["naswot"] > 0 and scores["synflow"] > 0 and scores["snip"] > 0
    with pytest.raises(UserError, match="needs conv or linear weights"):
        zero_cost(nn.Sequential(nn.Flatten(), nn.AdaptiveAvgPool1d(2)), ["snip"], xb, yb, task)


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(UserError, match=r"unknown zero-cost proxy 'nawsot'; known proxies: naswot, synflow"):
        Screen(proxy="nawsot")
    for bottom in (0, 1, 1.5, -0.1):
        with pytest.raises(UserError, match=r"`0 < bottom < 1` must hold"):
            Screen(bottom=bottom)
    with pytest.raises(UserError, match=r"unknown objective 'nawsot'"):
        nasopt.StudySpec(name="x", space=NanoSpace(), objectives={"nawsot": "maximize"})
    with pytest.raises(UserError, match=r"nanobench .* no zero-cost proxy \('naswot'\)"):
        nasopt.StudySpec(name="x", space=NanoSpace(), dataset="nanobench", pruner=Screen())
    assert isinstance(make_pruner("screen"), Screen)


@pytest.mark.parametrize("line, words", [
    ("pruner=nasopt.pruners.Screen(proxy='synflow', bottom=1.0)", ("`0 < bottom < 1` must hold", "bottom=1.0")),
    ("pruner=nasopt.pruners.Screen(proxy='synflo')", ("unknown zero-cost proxy 'synflo'", "known proxies")),
    ("objectives={'accuracy': 'maximize', 'snipp': 'maximize'}", ("unknown objective 'snipp'",)),
])
def test_cli_refuses_bad_screening_in_one_line_writing_nothing(tmp_path, capsys, line, words):
    study = tmp_path / "bad.py"
    study.write_text("import nasopt\nfrom nasopt.search_spaces.nano import NanoSpace\n"
                     f"study = nasopt.StudySpec(name='bad', space=NanoSpace(C=4), n_trials=2, {line})\n")
    user_error(capsys, ["run", str(study), "--storage", f"sqlite:///{tmp_path / 'bad.db'}"], *words)
    assert not list(Path(tmp_path).glob("*.db*"))


def test_a_proxy_limit_is_the_least_score_allowed(tmp_path, one_thread):
    spec = nasopt.StudySpec(name="lim", space=NanoSpace(C=4), dataset="digits", n_trials=6,
                            constraints={"synflow": 150.0}, sampler=optuna.samplers.RandomSampler(seed=0),
                            train=nasopt.TrainConfig(epochs=1, batch_size=128),
                            measure=nasopt.MeasureConfig(warmup=0, repeats=3))
    study = nasopt.run(spec, storage=f"sqlite:///{tmp_path / 'lim.db'}", progress=False)
    states = {t.state for t in study.trials}
    assert states == {TrialState.COMPLETE, TrialState.PRUNED}
    for t in study.trials:
        value = t.user_attrs["synflow"]
        assert t.system_attrs["constraints:synflow"] == pytest.approx(150.0 - value)
        if t.state == TrialState.PRUNED:
            assert t.user_attrs["pruned_reason"] == f"constraint violated before training: synflow={fmt(value, 'synflow')} < 150"
            assert "curve" not in t.user_attrs
        else:
            assert value >= 150 and "naswot" not in t.user_attrs  # only what the study names is scored


def test_a_proxy_objective_and_screening_with_two_workers_through_the_cli(tmp_path):
    """accuracy and naswot, both maximised, in a journal file served by two workers; Screen on synflow after 3
    scored trials prunes the bottom half before training, with the reason, ranking against the scores every
    worker stored."""
    (tmp_path / "zc.py").write_text(
        "import optuna, nasopt\nfrom nasopt.search_spaces.nano import NanoSpace\n"
        "study = nasopt.StudySpec(name='zc', space=NanoSpace(C=4), dataset='digits', n_trials=12,\n"
        "    objectives={'accuracy': 'maximize', 'naswot': 'maximize'},\n"
        "    pruner=nasopt.pruners.Screen(proxy='synflow', bottom=0.5, warmup=3),\n"
        "    sampler=optuna.samplers.RandomSampler(seed=2), train=nasopt.TrainConfig(epochs=1, batch_size=128),\n"
        "    measure=nasopt.MeasureConfig(warmup=0, repeats=3))\n")
    result = subprocess.run([sys.executable, "-m", "nasopt.cli", "run", "zc.py", "--storage", "journal:///zc.log",
                             "--workers", "2", "--quiet"],
                            cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "naswot" in result.stdout  # the Pareto set printed with the proxy objective
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "zc.log")))
    study = optuna.load_study(study_name="zc", storage=storage)
    trials = [t for t in study.trials if "reused_from" not in t.user_attrs]
    assert {t.system_attrs["nasopt:worker"]["index"] for t in study.trials} == {0, 1}
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert pruned and complete
    for t in pruned:
        reason = t.user_attrs["pruned_reason"]
        match = re.fullmatch(r"screened before training: synflow=(\S+) ranks at (\d+)% of (\d+) scored trials, "
                             r"in the bottom 50%", reason)
        assert match, reason
        assert float(match[1]) == pytest.approx(t.user_attrs["synflow"], rel=1e-5)
        assert int(match[2]) < 50 and int(match[3]) >= 3 and "curve" not in t.user_attrs
    for t in complete:
        assert t.values[1] == t.user_attrs["naswot"] and "synflow" in t.user_attrs and t.user_attrs["curve"]
    task = nasopt.data.load_task("digits", seed=0)
    t = complete[0]
    model = nano(t.params, task, seed=trial_seed(0, t.number), C=4)
    x, y = proxy_batch(task, seed=trial_seed(0, t.number))
    assert zero_cost(model, ["naswot"], x, y, task)["naswot"] == t.user_attrs["naswot"]  # stored = recomputed
    frame = nasopt.trials_frame(f"journal:///{tmp_path / 'zc.log'}", "zc")
    assert {"naswot", "synflow"} <= set(frame.columns)
    assert frame.loc[t.number, "synflow"] == t.user_attrs["synflow"]
