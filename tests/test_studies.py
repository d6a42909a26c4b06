"""The study files shipped in studies/ load, build on their data's shape, and pair up where they share a study."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from nasopt.cli.main import load_study_file
from nasopt.data import user_task
from nasopt.space import random_arch

pytestmark = pytest.mark.usefixtures("one_thread")

# the study files (their data modules beside them, signals.py and shapes.py, define no study)
STUDIES = sorted(p for p in (Path(__file__).parent.parent / "studies").glob("*.py") if "StudySpec(" in p.read_text())
SHAPES = {"digits": (1, 8, 8), "mnist1d": (1, 40), "cifar10": (3, 32, 32)}


def study_task(spec):
    """The shapes the study's networks are built for: its own data (its factory, beside the study file) or a
    built-in dataset's."""
    if spec.dataset == "custom":
        return user_task(spec.data, kind=spec.kind, input_shape=spec.input_shape, num_classes=spec.num_classes)
    assert spec.dataset in SHAPES
    return SimpleNamespace(input_shape=SHAPES[spec.dataset], num_classes=10)


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_study_file_loads_and_builds(path):
    spec = load_study_file(str(path))
    assert spec.name
    task = study_task(spec)
    net = spec.space.build(random_arch(spec.space, seed=0), task).eval()
    dense = getattr(task, "kind", "classify") == "dense"
    with torch.no_grad():
        out = net(torch.randn(2, *task.input_shape))
    assert out.shape == ((2, task.num_classes, *task.input_shape[1:]) if dense else (2, task.num_classes))
    assert (spec.strategy is None) != (spec.sampler is None)


def test_darts_and_evolution_files_name_the_same_study():
    darts = load_study_file(str(STUDIES[0].parent / "mnist1d_darts.py"))
    evolution = load_study_file(str(STUDIES[0].parent / "mnist1d_evolution.py"))
    assert darts.name == evolution.name and darts.dataset == evolution.dataset
    assert dict(darts.objectives) == dict(evolution.objectives) and darts.train == evolution.train
    assert darts.space.distributions() == evolution.space.distributions()
    arch = random_arch(darts.space, seed=1)
    assert darts.space.describe(arch) == evolution.space.describe(arch)
    assert [s.label for s in darts.strategy] == ["darts", "pc_darts_k4"]


def test_mobile_proxyless_joins_the_mobile_pareto_study():
    """ProxylessNAS adds one trial to the demo's study: same name, data, objectives, limits, space and training."""
    pareto = load_study_file(str(STUDIES[0].parent / "mobile_pareto.py"))
    proxyless = load_study_file(str(STUDIES[0].parent / "mobile_proxyless.py"))
    assert proxyless.name == pareto.name and proxyless.dataset == pareto.dataset == "mnist1d"
    assert dict(proxyless.objectives) == dict(pareto.objectives) and proxyless.train == pareto.train
    assert dict(proxyless.constraints) == dict(pareto.constraints)
    assert vars(proxyless.space) == vars(pareto.space)


def test_tinyml_study_runs_shrunk_through_the_cli(tmp_path):
    """studies/tinyml_mnist1d.py, shrunk: budgets counted before training, QAT epochs, int8 figures measured in
    onnxruntime with provenance, the front by int8 accuracy and latency; every trained network inside its budget."""
    import subprocess
    import sys

    import optuna

    path = STUDIES[0].parent / "tinyml_mnist1d.py"
    spec = load_study_file(str(path))
    assert spec.space.__class__.__name__ == "MicroSpace" and spec.dataset == "mnist1d"
    assert dict(spec.objectives) == {"int8_accuracy": "maximize", "int8_latency_ms": "minimize"}
    assert 0 < spec.train.qat_epochs < spec.train.epochs
    url = f"sqlite:///{tmp_path / 'tiny.db'}"
    done = subprocess.run([sys.executable, "-m", "nasopt.cli", "run", str(path), "--storage", url, "--n-trials", "3",
                           "--set", "train.epochs=2", "--set", "train.qat_epochs=1", "-q"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name=spec.name, storage=url)
    trained = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert trained
    for t in trained:
        assert t.user_attrs["flash_kb"] <= spec.constraints["flash_kb"]
        assert t.user_attrs["sram_kb"] <= spec.constraints["sram_kb"]
        assert 0.1 < t.values[0] <= 1 and t.values[1] > 0  # int8 accuracy above chance after 2 epochs; latency
        assert t.user_attrs["int8"]["latency"]["runtime"].startswith("onnxruntime")
        assert t.user_attrs["int8"]["latency"]["threads"] == 1
    for t in study.trials:  # an over-budget network is pruned before any training, with its reason
        if t.state == optuna.trial.TrialState.PRUNED:
            assert "constraint violated before training" in t.user_attrs.get("pruned_reason", "")
