"""Tests of nasopt.data: every dataset is loaded from tiny files in its real on-disk format."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nasopt.data import DATASETS, StreamSplit, TensorSplit, load_task
from nasopt.errors import UserError

# ---------------------------------------------------------------------------------------------- writers


def write_idx(path: Path, data: np.ndarray) -> None:
    """An IDX file as in MNIST: magic 0x0000080N (N = ndim), big-endian int32 dims, uint8 payload."""
    path.parent.mkdir(parents=True, exist_ok=True)
    magic = 0x0800 + data.ndim  # 2049 for labels, 2051 for images
    path.write_bytes(struct.pack(">i", magic) + struct.pack(f">{data.ndim}i", *data.shape)
                     + data.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str, n_train: int = 40, n_test: int = 20) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8) % 10,
    }
    for name, a in arrays.items():
        write_idx(root / folder / "raw" / name, a)
    return arrays


def cifar_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)


def write_pickle(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))


def write_cifar10(root: Path, per_batch: int = 4, n_test: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The cifar-10-batches-py layout: rows of 3072 bytes = R, G, B planes of 32 x 32, row-major."""
    folder = root / "cifar-10-batches-py"
    train = cifar_images(5 * per_batch, seed=2)
    for i in range(5):
        chunk = train[i * per_batch:(i + 1) * per_batch]
        write_pickle(folder / f"data_batch_{i + 1}", {b"batch_label": b"training batch", b"data": chunk.reshape(
            len(chunk), 3072), b"labels": [int(j % 10) for j in range(i * per_batch, (i + 1) * per_batch)]})
    test = cifar_images(n_test, seed=3)
    write_pickle(folder / "test_batch", {b"data": test.reshape(n_test, 3072), b"labels": [j % 10 for j in range(n_test)]})
    write_pickle(folder / "batches.meta", {b"label_names": [f"c{j}".encode() for j in range(10)]})
    return train, test


def write_cifar100(root: Path, n_train: int = 30, n_test: int = 10) -> tuple[np.ndarray, np.ndarray]:
    folder = root / "cifar-100-python"
    train, test = cifar_images(n_train, seed=4), cifar_images(n_test, seed=5)
    for name, x in (("train", train), ("test", test)):
        labels = [(j * 7) % 100 for j in range(len(x))]
        write_pickle(folder / name, {b"data": x.reshape(len(x), 3072), b"fine_labels": labels,
                                     b"coarse_labels": [lab // 5 for lab in labels]})
    write_pickle(folder / "meta", {b"fine_label_names": [f"f{j}".encode() for j in range(100)]})
    return train, test


def write_images(root: Path, counts: dict[str, int], size: int = 12) -> dict[str, tuple[int, int, int]]:
    """Solid-colour PNGs root/<class>/<i>.png; returns the colour of each class."""
    colours = {}
    for k, (cls, n) in enumerate(counts.items()):
        colours[cls] = (40 * k + 10, 200 - 30 * k, 90)
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (size, size + 3 * (i % 2)), colours[cls]).save(root / cls / f"{i}.png")
    return colours


def all_batches(split, batch_size=64, **kw):
    xs, ys = zip(*split.batches(batch_size, **kw), strict=True)
    return torch.cat(xs), torch.cat(ys)


def denormalise(split, x: torch.Tensor) -> torch.Tensor:
    """Undo x * scale + shift back to uint8 pixels."""
    return ((x - split.shift) / split.scale).round().to(torch.uint8)


# ---------------------------------------------------------------------------------------------- digits


def test_digits_shapes_and_split_sizes():
    task = load_task("digits")
    assert task.name == "digits" and task.input_shape == (1, 8, 8) and task.num_classes == 10
    assert task.device == torch.device("cpu")
    assert len(task.train) + len(task.val) + len(task.test) == 1797
    assert len(task.test) == 359 and len(task.val) == 288
    x, y = next(task.train.batches(32))
    assert x.shape == (32, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    for split in (task.train, task.val, task.test):  # stratified: every class in every split
        assert set(split.targets.tolist()) == set(range(10))
    x, _ = all_batches(task.train)
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3  # train-normalised


def test_digits_test_split_fixed_across_seeds_and_splits_disjoint():
    a, b = load_task("digits", seed=0), load_task("digits", seed=1)
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.val.y, b.val.y) or not torch.equal(a.val.x, b.val.x)
    rows = [{r.numpy().tobytes() for r in s.x.flatten(1)} for s in (a.train, a.val, a.test)]
    assert sum(map(len, rows)) == 1797  # the 1797 digits images are all distinct
    assert not (rows[0] & rows[1]) and not (rows[0] & rows[2]) and not (rows[1] & rows[2])


def test_batches_cover_train_once_and_are_deterministic():
    task = load_task("digits", val_fraction=0.25, seed=3)
    n = len(task.train)
    x, y = all_batches(task.train, 100, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert len(y) == n
    ref, ref_y = all_batches(task.train, 100)  # unshuffled: storage order
    key = torch.randn(64, generator=torch.Generator().manual_seed(9))
    perm, perm_ref = (x.flatten(1) @ key).argsort(), (ref.flatten(1) @ key).argsort()
    assert torch.equal(x[perm], ref[perm_ref]) and torch.equal(y[perm], ref_y[perm_ref])  # a permutation
    assert not torch.equal(x, ref)
    x2, y2 = all_batches(task.train, 100, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = all_batches(task.train, 100, shuffle=True, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(x, x3)
    assert len(all_batches(task.train, 100, shuffle=True)[1]) == n  # global RNG when no generator
    sizes = [len(b) for _, b in task.train.batches(100, drop_last=True)]
    assert sizes == [100] * (n // 100)
    xb, _ = next(task.train.batches(10))  # unshuffled batches are copies, not views of the data
    xb.zero_()
    assert task.train.x[:10].abs().sum() > 0
    with pytest.raises(UserError, match="batch_size"):
        task.train.batches(0)


def test_image_size_resizes_digits():
    task = load_task("digits", image_size=16)
    assert task.input_shape == (1, 16, 16)
    assert next(task.val.batches(8))[0].shape == (8, 1, 16, 16)


def test_synthetic_is_deterministic_and_learnable_shape():
    a, b = load_task("synthetic", seed=5), load_task("synthetic", seed=5)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.y, b.val.y)
    assert len(a.train) + len(a.val) + len(a.test) == 600 and a.num_classes == 10
    c = load_task("synthetic", seed=6)
    assert torch.equal(a.test.x, c.test.x) and not torch.equal(a.val.x, c.val.x)
    # classes are separable: nearest class mean on train classifies the test split well
    means = torch.stack([a.train.x[a.train.y == k].mean(0) for k in range(10)]).flatten(1)
    pred = torch.cdist(a.test.x.flatten(1), means).argmin(1)
    assert (pred == a.test.y).float().mean() > 0.8


# ---------------------------------------------------------------------------------------------- mnist


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_idx_files_round_trip(tmp_path, name, folder):
    arrays = write_mnist(tmp_path, folder)
    task = load_task(name, data_dir=tmp_path)
    assert task.input_shape == (1, 28, 28) and task.num_classes == 10
    assert len(task.train) + len(task.val) == 40 and len(task.test) == 20 and len(task.val) == 8
    assert isinstance(task.test, TensorSplit) and task.test.x.dtype == torch.uint8
    x, y = all_batches(task.test)
    assert torch.equal(denormalise(task.test, x)[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert torch.equal(y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
    pixel = float(arrays["t10k-images-idx3-ubyte"][0, 0, 0])
    mean, std = {"mnist": (0.1307, 0.3081), "fashion_mnist": (0.2860, 0.3530)}[name]
    assert x[0, 0, 0, 0].item() == pytest.approx((pixel / 255 - mean) / std, abs=1e-5)  # standard constants


def test_mnist_missing_files(tmp_path):
    with pytest.raises(UserError, match="download") as e:
        load_task("fashion_mnist", data_dir=tmp_path)
    assert str(tmp_path / "FashionMNIST" / "raw") in str(e.value) and "\n" not in str(e.value)


def test_mnist_corrupt_file(tmp_path):
    write_mnist(tmp_path, "MNIST")
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"garbage")
    with pytest.raises(UserError, match="IDX") as e:
        load_task("mnist", data_dir=tmp_path)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------- cifar


def test_cifar10_pickles_round_trip(tmp_path):
    train, test = write_cifar10(tmp_path)
    task = load_task("cifar10", data_dir=str(tmp_path), val_fraction=0.5)
    assert task.input_shape == (3, 32, 32) and task.num_classes == 10
    assert task.classes == tuple(f"c{j}" for j in range(10))
    assert len(task.train) == 10 and len(task.val) == 10 and len(task.test) == 10
    assert torch.equal(task.test.x, torch.from_numpy(test))  # stored uint8, R, G, B channel order
    x, y = all_batches(task.test, 4)
    assert torch.equal(denormalise(task.test, x), torch.from_numpy(test))
    assert y.tolist() == [j % 10 for j in range(10)]
    both = torch.cat([task.train.x, task.val.x])
    assert sorted(r.numpy().tobytes() for r in both) == sorted(r.tobytes() for r in train)


def test_cifar100_pickles_round_trip(tmp_path):
    _, test = write_cifar100(tmp_path)
    task = load_task("cifar100", data_dir=tmp_path, val_fraction=0.2)
    assert task.num_classes == 100 and task.classes[3] == "f3"
    assert len(task.train) + len(task.val) == 30 and len(task.test) == 10
    img = torch.from_numpy(test[4])
    assert torch.equal(task.test.x[4, 0], img[0]) and torch.equal(task.test.x[4, 2], img[2])
    assert task.test.y[4].item() == 28


def test_cifar_resize_per_batch_when_too_big(tmp_path):
    write_cifar10(tmp_path)
    small = load_task("cifar10", data_dir=tmp_path, image_size=16)
    assert small.input_shape == (3, 16, 16) and small.train.x.shape[-1] == 16
    lazy = load_task("cifar10", data_dir=tmp_path, image_size=16, max_in_memory_bytes=100)
    assert lazy.train.x.shape[-1] == 32 and lazy.train.size == (16, 16)
    x, _ = next(lazy.test.batches(5))
    assert x.shape == (5, 3, 16, 16)


def test_cifar_missing_and_corrupt(tmp_path):
    with pytest.raises(UserError, match="download=True") as e:
        load_task("cifar10", data_dir=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg and "data_batch_1..5" in msg and "\n" not in msg
    write_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "test").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(UserError, match="cannot read") as e:
        load_task("cifar100", data_dir=tmp_path)
    assert str(tmp_path / "cifar-100-python" / "test") in str(e.value) and "\n" not in str(e.value)
    write_pickle(tmp_path / "cifar-100-python" / "test", {b"data": np.zeros((2, 100), np.uint8), b"fine_labels": [0, 1]})
    with pytest.raises(UserError, match="not a CIFAR batch"):
        load_task("cifar100", data_dir=tmp_path)


# ---------------------------------------------------------------------------------------------- imagefolder


def test_imagefolder_in_memory(tmp_path):
    colours = write_images(tmp_path / "train", {"cat": 10, "dog": 15})
    task = load_task("imagefolder", data_dir=tmp_path, image_size=8)
    assert task.input_shape == (3, 8, 8) and task.num_classes == 2 and task.classes == ("cat", "dog")
    assert isinstance(task.train, TensorSplit)
    assert len(task.train) + len(task.val) + len(task.test) == 25 and len(task.test) == 5
    x, y = all_batches(task.test)
    pixels = denormalise(task.test, x)
    for img, label in zip(pixels, y.tolist(), strict=True):
        want = torch.tensor(colours[task.classes[label]], dtype=torch.uint8).view(3, 1, 1).expand(3, 8, 8)
        assert torch.equal(img, want)


def test_imagefolder_streams_when_too_big(tmp_path):
    write_images(tmp_path / "train", {"a": 6, "b": 6, "c": 6})
    memory = load_task("imagefolder", data_dir=tmp_path, image_size=8)
    stream = load_task("imagefolder", data_dir=tmp_path, image_size=8, max_in_memory_bytes=1)
    assert isinstance(stream.train, StreamSplit) and len(stream.train) == len(memory.train)
    assert torch.equal(stream.val.targets, memory.val.targets)
    xs, ys = all_batches(stream.train, 4)
    xm, ym = all_batches(memory.train, 4)
    assert torch.equal(ys, ym) and torch.allclose(xs, xm, atol=1e-4)
    xs, _ = all_batches(stream.train, 4, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert xs.shape == xm.shape


def test_imagefolder_val_and_test_folders_keep_train_labels(tmp_path):
    write_images(tmp_path / "train", {"a": 4, "b": 4, "c": 4})
    write_images(tmp_path / "val", {"c": 2})
    write_images(tmp_path / "test", {"b": 1, "c": 1})
    task = load_task("imagefolder", data_dir=tmp_path, image_size=4)
    assert len(task.train) == 12 and task.val.targets.tolist() == [2, 2] and task.test.targets.tolist() == [1, 2]
    write_images(tmp_path / "val", {"zebra": 1})
    with pytest.raises(UserError, match="zebra"):
        load_task("imagefolder", data_dir=tmp_path)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(UserError, match="imagefolder not found") as e:
        load_task("imagefolder", data_dir=tmp_path)
    assert str(tmp_path / "train") in str(e.value)
    write_images(tmp_path / "train", {"a": 5, "b": 5})
    (tmp_path / "train" / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="broken.png") as e:
        load_task("imagefolder", data_dir=tmp_path)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------- bad input


def test_unknown_name_lists_datasets():
    with pytest.raises(UserError) as e:
        load_task("imagenet")
    assert all(name in str(e.value) for name in DATASETS)
    assert load_task(" DIGITS ").name == "digits"  # names are case-insensitive, "-" == "_"


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder"])
def test_data_dir_required(name):
    with pytest.raises(UserError, match="data_dir"):
        load_task(name)


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1, True, "0.2"])
def test_bad_val_fraction(fraction):
    with pytest.raises(UserError, match="val_fraction"):
        load_task("digits", val_fraction=fraction)


def test_bad_other_arguments():
    with pytest.raises(UserError, match="image_size"):
        load_task("digits", image_size=0)
    with pytest.raises(UserError, match="device"):
        load_task("digits", device="nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA"):
            load_task("digits", device="cuda")
