"""The `tensors` dataset: a user's own x_train, y_train, x_test, y_test from one .npz or .pt file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nasopt.data import DATASETS, load_task
from nasopt.errors import UserError


def arrays(x_shape=(40, 16), n_test=10, dtype=np.float32, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    make = (lambda n: rng.integers(0, 256, (n, *x_shape[1:]), dtype=np.uint8)) if dtype == np.uint8 \
        else (lambda n: rng.normal(size=(n, *x_shape[1:])).astype(dtype))
    return {"x_train": make(x_shape[0]), "y_train": np.arange(x_shape[0]) % classes,
            "x_test": make(n_test), "y_test": np.arange(n_test) % classes}


def test_npz_of_1d_signals(tmp_path):
    data = arrays((40, 16))
    np.savez(tmp_path / "mine.npz", **data)
    task = load_task("tensors", data_dir=tmp_path / "mine.npz", val_fraction=0.25)
    assert "tensors" in DATASETS
    assert task.name == "tensors" and task.input_shape == (1, 16) and task.num_classes == 4
    assert len(task.train) == 30 and len(task.val) == 10 and len(task.test) == 10
    assert torch.equal(task.test.x[:, 0], torch.from_numpy(data["x_test"]))  # (N, L) -> (N, 1, L), as given
    x, y = next(task.test.batches(10))
    assert x.shape == (10, 1, 16) and y.tolist() == data["y_test"].tolist()
    xs = torch.cat([b for b, _ in task.train.batches(64)])
    assert abs(xs.mean().item()) < 1e-5 and abs(xs.std(unbiased=False).item() - 1) < 1e-4  # train statistics


def test_npz_of_uint8_images_with_class_names(tmp_path):
    data = arrays((20, 3, 8, 8), dtype=np.uint8, classes=2)
    np.savez(tmp_path / "img.npz", **data, classes=np.array(["cat", "dog"]))
    task = load_task("tensors", data_dir=str(tmp_path / "img.npz"))
    assert task.input_shape == (3, 8, 8) and task.classes == ("cat", "dog") and task.num_classes == 2
    assert task.test.x.dtype == torch.uint8 and torch.equal(task.test.x, torch.from_numpy(data["x_test"]))
    assert load_task("tensors", data_dir=tmp_path / "img.npz", image_size=4).input_shape == (3, 4, 4)


def test_pt_file_of_multichannel_sequences(tmp_path):
    data = {k: torch.from_numpy(v) for k, v in arrays((24, 2, 12), classes=3).items()}
    torch.save({**data, "classes": ["a", "b", "c", "d"]}, tmp_path / "seq.pt")
    task = load_task("tensors", data_dir=tmp_path / "seq.pt")
    assert task.input_shape == (2, 12) and task.num_classes == 4  # a named class may have no samples
    assert torch.equal(task.test.x, data["x_test"]) and torch.equal(task.test.y, data["y_test"])
    x, _ = next(task.train.batches(5, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert x.shape == (5, 2, 12)
    with pytest.raises(UserError, match="image_size"):
        load_task("tensors", data_dir=tmp_path / "seq.pt", image_size=8)


def bad(**changes):
    data = arrays()
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


@pytest.mark.parametrize(("data", "problem"), [
    (bad(y_test=None), "lacks y_test"),
    (bad(x_train=None, y_train=None), "lacks x_train, y_train"),
    (bad(y_train=np.arange(39) % 4), "40 samples and y_train 39 labels"),
    (bad(x_test=np.zeros((10, 17), np.float32)), "x_test samples (1, 17)"),
    (bad(x_test=np.zeros((10, 16), np.uint8)), "uint8"),
    (bad(x_train=np.zeros((40, 1, 2, 3, 4), np.float32)), "x_train has shape (40, 1, 2, 3, 4)"),
    (bad(x_train=np.zeros(40, np.float32)), "x_train has shape (40,)"),
    (bad(x_train=np.array(["a"] * 40)), "x_train has dtype <U1"),
    (bad(y_train=np.arange(40) / 2), "y_train must be a 1-D array of integer labels"),
    (bad(y_train=np.arange(40) - 1), "negative label -1"),
    (bad(x_train=np.full((40, 16), np.nan, np.float32)), "NaN"),
    (bad(classes=np.array(["a", "b"])), "label 3 but only 2 classes"),
    (bad(x_test=np.zeros((0, 16), np.float32), y_test=np.zeros(0, np.int64)), "at least one sample"),
])
def test_bad_contents_are_one_line_user_errors(tmp_path, data, problem):
    np.savez(tmp_path / "bad.npz", **data)
    with pytest.raises(UserError) as e:
        load_task("tensors", data_dir=tmp_path / "bad.npz")
    message = str(e.value)
    assert problem in message and str(tmp_path / "bad.npz") in message and "\n" not in message


def test_bad_files_are_one_line_user_errors(tmp_path):
    cases = {
        tmp_path / "missing.npz": "does not exist",
        tmp_path: "is a folder",
        tmp_path / "data.csv": "neither .npz nor .pt",
        tmp_path / "broken.npz": "cannot read",
        tmp_path / "list.pt": "holds a list, not a dict",
    }
    (tmp_path / "data.csv").write_text("1,2\n")
    (tmp_path / "broken.npz").write_bytes(b"garbage")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    for path, problem in cases.items():
        with pytest.raises(UserError, match="x_train, y_train, x_test, y_test") as e:
            load_task("tensors", data_dir=path)
        assert problem in str(e.value) and "\n" not in str(e.value), path
    with pytest.raises(UserError, match=r"data_dir=<file.npz or file.pt>"):
        load_task("tensors")
