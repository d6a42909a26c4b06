"""ENAS: the single-path supernet, how sampled architectures map onto it, a run as one trial of a study,
checkpoint + resume (also after SIGKILL through the CLI), and the spaces it cannot search."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from gradient_resume import kill_mid_search_and_resume
from optuna.trial import TrialState

import nasopt
from nasopt.oneshot import ENAS, MixedOp, make_strategy
from nasopt.oneshot.enas import build_shared
from nasopt.search_spaces.darts_cell import DartsCellSpace
from nasopt.search_spaces.layers import LayersSpace
from nasopt.search_spaces.mobile import MobileSpace
from nasopt.search_spaces.nano import NanoSpace
from nasopt.space import random_arch

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
SMALL = dict(batch_size=32, controller_steps=2, controller_batch=3, derive_samples=3)


def test_single_path_mixed_op_runs_only_the_picked_candidates():
    torch.manual_seed(0)
    op = MixedOp("e", ["conv3x3", "skip", "maxpool3x3"], 4, 4, 1)
    op.eval()
    x = torch.randn(2, 4, 5, 5)
    calls = []
    for i, m in enumerate(op.ops):
        m.register_forward_hook(lambda *_, i=i: calls.append(i))
    op.path = (2,)
    assert torch.equal(op(x), op.ops[2](x)) and calls == [2, 2]
    op.path = (0, 1)  # two inputs of a cell node reading the same state
    assert torch.allclose(op(x), op.ops[0](x) + x)


def test_a_sampled_cell_runs_exactly_its_edges(digits_task):
    space = DartsCellSpace(C=4, layers=3)  # a normal cell, then two reduction cells
    net = build_shared(space, digits_task)
    arch = random_arch(space, seed=0)
    arch.update({"normal.n0.in0": 1, "normal.n0.op0": "sep_conv_3x3", "normal.n0.in1": 1,
                 "normal.n0.op1": "skip_connect", "normal.n1.in0": 2, "normal.n1.op0": "max_pool_3x3",
                 "normal.n1.in1": 0, "normal.n1.op1": "dil_conv_5x5"})
    paths = dict(zip([op.name for op in net._mixed], net.to_paths(arch), strict=True))
    candidates = space.candidates  # ("none", *ops)
    assert paths["normal.n0.e0"] == (candidates.index("none"),)
    assert paths["normal.n0.e1"] == (candidates.index("sep_conv_3x3"), candidates.index("skip_connect"))
    assert paths["normal.n1.e0"] == (candidates.index("dil_conv_5x5"),)
    assert paths["normal.n1.e1"] == (candidates.index("none"),)
    assert paths["normal.n1.e2"] == (candidates.index("max_pool_3x3"),)
    net.select(arch)
    assert net(next(iter(digits_task.val.batches(4)))[0]).shape == (4, 10)


def test_mobile_depth_is_a_choice_of_skip_paths(digits_task):
    space = MobileSpace(stages=2, max_depth=3, widths=(1.0,))
    net = build_shared(space, digits_task)
    arch = random_arch(space, seed=0)
    arch = {k: v for k, v in arch.items() if ".block" not in k or ".block0." in k}
    arch.update({"stage1.depth": 1, "stage2.depth": 1})
    paths = dict(zip([op.name for op in net._mixed], net.to_paths(arch), strict=True))
    for s in (1, 2):
        op = next(o for o in net._mixed if o.name == f"stage{s}.block0")
        kernel, expand = arch[f"stage{s}.block0.kernel"], arch[f"stage{s}.block0.expand"]
        assert paths[f"stage{s}.block0"] == (op.candidates.index(f"mbconv_k{kernel}_e{expand}"),)
        for b in (1, 2):
            skip = next(o for o in net._mixed if o.name == f"stage{s}.block{b}").candidates.index("skip")
            assert paths[f"stage{s}.block{b}"] == (skip,)


@pytest.mark.parametrize(("space", "words"), [
    (MobileSpace(), ["`width`", "MobileSpace(widths=(1.0,))", "nano, nb201, darts_cell, conv1d"]),
    (LayersSpace(), ["`n_layers`", "nano, nb201, darts_cell, conv1d"]),
], ids=["mobile_widths", "layers"])
def test_spaces_whose_decisions_change_shapes_are_refused_before_training(space, words, digits_task):
    for attempt in (lambda: ENAS(epochs=1, **SMALL).check(space, digits_task),
                    lambda: ENAS(epochs=1, **SMALL).search(space, digits_task, seed=0)):
        with pytest.raises(nasopt.UserError) as info:
            attempt()
        message = str(info.value)
        assert all(w in message for w in words) and "\n" not in message
    ENAS(**SMALL).check(MobileSpace(widths=(1.0,)), digits_task)  # one width: depth and blocks are paths
    with pytest.raises(nasopt.UserError, match="too few"):
        ENAS(batch_size=1000).check(NanoSpace(C=4), digits_task)


def test_search_records_checkpoints_and_resumes(digits_task):
    space = NanoSpace(C=4)
    strategy = ENAS(epochs=2, **SMALL)
    records, states = [], []

    def on_epoch(record, state):
        records.append(record)
        buffer = io.BytesIO()
        torch.save(state(), buffer)  # what the runner stores as the artifact
        states.append(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))

    arch, summary = strategy.search(space, digits_task, seed=0, on_epoch=on_epoch)
    assert summary == {"history": summary["history"], "stopped": "", "epochs_run": 2}
    assert [r["epoch"] for r in records] == [1, 2] and arch == records[-1]["arch"]
    for r in records:
        assert {"train_acc", "valid_acc", "alpha_entropy", "skips", "weights", "arch", "reward"} <= set(r)
        assert 0 < r["alpha_entropy"] <= 1.61  # log(5) nats per decision at most
        assert set(r["weights"]) == set(space.distributions())
        assert all(sum(p) == pytest.approx(1.0, abs=1e-4) for p in r["weights"].values())
        assert space.suggest(optuna.trial.FixedTrial(r["arch"])) == r["arch"]
    assert {"model", "controller", "w_opt", "c_opt", "rng", "history", "epoch"} <= set(states[0])
    resumed, summary2 = strategy.search(space, digits_task, seed=0, resume=states[0])
    assert [h["epoch"] for h in summary2["history"]] == [1, 2]
    assert summary2["history"][0] == summary["history"][0]
    assert resumed == arch  # same RNG, weights and controller: the same second epoch


def test_an_enas_run_is_one_complete_trial_like_a_sampled_one(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    space = NanoSpace(C=4)
    common = dict(name="mixed", space=space, dataset="digits", train=nasopt.TrainConfig(epochs=1, batch_size=64),
                  objectives={"accuracy": "maximize", "params": "minimize"})
    nasopt.run(nasopt.StudySpec(**common, n_trials=1, sampler=optuna.samplers.RandomSampler(seed=0)),
               storage=url, progress=False)
    study = nasopt.run(nasopt.StudySpec(**common, strategy=ENAS(epochs=2, **SMALL)), storage=url, progress=False)
    sampled, enas = study.get_trials()
    assert enas.state == TrialState.COMPLETE
    assert enas.distributions == sampled.distributions  # the sampled-trial form: same names and distributions
    assert enas.params == {n: enas.params[n] for n in space.distributions()}
    assert [r["epoch"] for r in enas.user_attrs["search"]] == [1, 2]
    assert set(enas.user_attrs["alphas"][0]["weights"]) == set(enas.params)
    assert enas.user_attrs["genotype"] == space.describe(enas.params)
    assert enas.user_attrs["strategy"]["label"] == "enas" and enas.values[1] == enas.user_attrs["params"]
    assert list(nasopt.trials_frame(url, "mixed")["strategy"]) == ["RandomSampler", "enas"]
    assert isinstance(make_strategy("enas"), ENAS)


def test_killed_search_resumes_from_its_last_epoch(tmp_path):
    # 8 short epochs, caught anywhere from the 1st to the 6th (6 at batch 32 once all ran between two polls)
    retry = kill_mid_search_and_resume(ROOT / "studies" / "tiny_enas.py", "tiny_enas", tmp_path, epochs=8,
                                       catch=(1, 6))
    assert retry.params == {n: retry.params[n] for n in NanoSpace().distributions()}


def test_unsupported_space_is_one_line_at_the_cli(tmp_path):
    study = tmp_path / "layers_enas.py"
    study.write_text("import nasopt\nfrom nasopt.oneshot import ENAS\nfrom nasopt.search_spaces.layers import "
                     "LayersSpace\nstudy = nasopt.StudySpec(name='l', space=LayersSpace(), dataset='digits', "
                     "strategy=ENAS(epochs=1))\n")
    out = subprocess.run([sys.executable, "-m", "nasopt.cli", "run", str(study), "-q"], cwd=tmp_path, env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "ENAS" in out.stderr and "nano, nb201" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "nasopt.db").exists()  # refused before the storage is touched


def test_bad_settings_name_the_rule():
    with pytest.raises(nasopt.UserError, match="controller_batch >= 1"):
        ENAS(controller_batch=0)
    with pytest.raises(nasopt.UserError, match="derive_samples >= 1"):
        ENAS(derive_samples=0)
    with pytest.raises(nasopt.UserError, match="epochs >= 1"):
        ENAS(epochs=0)
