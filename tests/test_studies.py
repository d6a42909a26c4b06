"""The study files shipped in studies/ load, build on their data's shape, and pair up where they share a study."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from nasopt.cli.main import load_study_file
from nasopt.space import random_arch

pytestmark = pytest.mark.usefixtures("one_thread")

STUDIES = sorted((Path(__file__).parent.parent / "studies").glob("*.py"))
SHAPES = {"digits": (1, 8, 8), "mnist1d": (1, 40), "cifar10": (3, 32, 32)}


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_study_file_loads_and_builds(path):
    spec = load_study_file(str(path))
    assert spec.name and spec.dataset in SHAPES
    task = SimpleNamespace(input_shape=SHAPES[spec.dataset], num_classes=10)
    net = spec.space.build(random_arch(spec.space, seed=0), task).eval()
    with torch.no_grad():
        assert net(torch.randn(2, *task.input_shape)).shape == (2, 10)
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
