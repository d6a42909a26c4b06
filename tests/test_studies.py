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
