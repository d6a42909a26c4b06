"""The mnist1d dataset: generated offline by the mnist1d package, cached, deterministic, and leaving the
caller's global random streams alone. Each generation takes a few seconds: the module makes it twice."""

from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nasopt.data import DATASETS, TensorSplit, _datasets, load_task
from nasopt.errors import UserError

CACHE_FILE = Path("mnist1d") / "mnist1d_4000_1000_len40_seed42.npz"


@pytest.fixture(scope="module")
def mnist1d_dir(tmp_path_factory) -> Path:
    """A data folder in which mnist1d has been generated (and cached) once."""
    root = tmp_path_factory.mktemp("mnist1d_data")
    load_task("mnist1d", data_dir=root)
    return root


@pytest.fixture
def no_generation(monkeypatch):
    """Fail if the data is generated instead of read from the cache."""
    def refuse():
        raise AssertionError("mnist1d was generated again instead of read from the cache")
    monkeypatch.setattr(_datasets, "_generate_mnist1d", refuse)


def test_shapes_splits_and_normalisation(mnist1d_dir, no_generation):
    assert "mnist1d" in DATASETS
    task = load_task("mnist1d", data_dir=mnist1d_dir, val_fraction=0.2)
    assert task.name == "mnist1d" and task.input_shape == (1, 40) and task.num_classes == 10
    assert task.classes == tuple(str(c) for c in range(10))
    assert len(task.train) == 3200 and len(task.val) == 800 and len(task.test) == 1000
    assert isinstance(task.train, TensorSplit) and task.train.x.shape == (3200, 1, 40)
    assert task.train.x.dtype == torch.float32 and task.train.scale.shape == (1, 1, 1)
    for split in (task.train, task.val, task.test):
        assert set(split.targets.tolist()) == set(range(10))
    x, y = next(task.val.batches(16))
    assert x.shape == (16, 1, 40) and x.dtype == torch.float32 and y.dtype == torch.int64
    x = torch.cat([b for b, _ in task.train.batches(1000)])
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3  # normalised by train statistics
    with pytest.raises(UserError, match="image_size"):
        load_task("mnist1d", data_dir=mnist1d_dir, image_size=32)


def test_seed_picks_the_val_split_only(mnist1d_dir, no_generation):
    a, b = (load_task("mnist1d", data_dir=mnist1d_dir, seed=s) for s in (0, 1))
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.val.x, b.val.x)
    rows = [sorted(map(bytes, torch.cat([t.train.x, t.val.x]).flatten(1).numpy())) for t in (a, b)]
    assert rows[0] == rows[1]  # the same 4000 training signals, split differently


def test_generation_is_deterministic_and_leaves_global_rngs_alone(mnist1d_dir, tmp_path):
    random.seed(123)
    np.random.seed(123)
    expected = [random.random() for _ in range(3)], np.random.rand(3)
    random.seed(123)
    np.random.seed(123)
    fresh = load_task("mnist1d", data_dir=tmp_path)  # generates: make_dataset reseeds both generators
    drawn = [random.random() for _ in range(3)], np.random.rand(3)
    assert drawn[0] == expected[0] and np.array_equal(drawn[1], expected[1])
    cached = load_task("mnist1d", data_dir=mnist1d_dir)
    assert torch.equal(fresh.test.x, cached.test.x) and torch.equal(fresh.train.x, cached.train.x)
    assert fresh.test.y[:10].tolist() == [2, 6, 3, 9, 4, 3, 1, 9, 5, 2]  # the package's seed-42 data


def test_generated_once_then_read_from_the_cache(mnist1d_dir, tmp_path, monkeypatch, no_generation):
    assert (mnist1d_dir / CACHE_FILE).is_file()
    with np.load(mnist1d_dir / CACHE_FILE) as f:
        assert f["x_train"].shape == (4000, 40) and f["x_test"].shape == (1000, 40)
    # without a data folder the cache is ~/.cache/nasopt (XDG_CACHE_HOME when set)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    target = tmp_path / "nasopt" / CACHE_FILE
    target.parent.mkdir(parents=True)
    shutil.copy(mnist1d_dir / CACHE_FILE, target)
    assert len(load_task("mnist1d").test) == 1000


def test_a_broken_cache_is_generated_again(mnist1d_dir, tmp_path, monkeypatch):
    with np.load(mnist1d_dir / CACHE_FILE) as f:
        arrays = {k: f[k] for k in f.files}
    calls = []
    monkeypatch.setattr(_datasets, "_generate_mnist1d", lambda: calls.append(1) or arrays)
    (tmp_path / CACHE_FILE).parent.mkdir()
    (tmp_path / CACHE_FILE).write_bytes(b"not an npz")
    assert len(load_task("mnist1d", data_dir=tmp_path).test) == 1000 and calls == [1]
    assert len(load_task("mnist1d", data_dir=tmp_path).test) == 1000 and calls == [1]  # the cache was rewritten


def test_missing_package_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mnist1d", None)  # `import mnist1d` now raises ImportError
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(UserError, match="pip install mnist1d") as e:
        load_task("mnist1d", data_dir=tmp_path)
    assert "\n" not in str(e.value)
