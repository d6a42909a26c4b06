"""The input an export's manifest states (`nasopt.export._rebuild.normalisation`): each dataset's raw data, fed
exactly as the record says, is the network input the task trains on. The digits round trip through a
real export and sklearn's load_digits() is in test_export.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_data import all_batches, write_cifar10, write_images, write_mnist

from nasopt.data import load_task
from nasopt.export._rebuild import _stored_normalisation, normalisation


def feed(record: dict, raw: np.ndarray) -> torch.Tensor:
    """The network input from `raw`, following only the record's fields."""
    x = torch.from_numpy(np.ascontiguousarray(raw))
    if record["resize"] is not None:
        size = tuple(record["resize"]["to"])
        down = size[0] < x.shape[-2] or size[1] < x.shape[-1]
        resized = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False, antialias=down)
        x = resized.round().clamp(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else resized
    per_channel = (1, -1) + (1,) * (x.ndim - 2)
    mean, std = (torch.tensor(record[k], dtype=torch.float64).view(per_channel) for k in ("mean", "std"))
    out = ((x.double() / record["divide_by"] - mean) / std).float()
    scale, shift = (torch.tensor(record[k], dtype=torch.float64).view(per_channel) for k in ("scale", "shift"))
    torch.testing.assert_close((x.double() * scale + shift).float(), out, atol=1e-5, rtol=1e-5)
    return out


def check(task, raw_test: np.ndarray, **expect) -> dict:
    record = normalisation(task, image_size=expect.pop("image_size", None))
    assert record is not None
    for key, value in expect.items():
        assert record["raw"][key] == value if key in record["raw"] else record[key] == value, key
    raw = record["raw"]
    if raw["range"] is not None:
        assert raw["range"][0] <= raw_test.min() and raw_test.max() <= raw["range"][1]
    x, _ = all_batches(task.test)
    torch.testing.assert_close(feed(record, raw_test), x, atol=1e-4, rtol=1e-4)
    assert record["feed"].startswith("x = (raw") and raw["source"] in record["feed"]
    return record


def test_mnist_is_uint8_pixels_over_255(tmp_path):
    arrays = write_mnist(tmp_path, "MNIST")
    raw = arrays["t10k-images-idx3-ubyte"][:, None]
    record = check(load_task("mnist", data_dir=tmp_path), raw, range=[0, 255], divide_by=255.0, resize=None)
    assert record["mean"] == [pytest.approx(0.1307)] and record["std"] == [pytest.approx(0.3081)]
    small = check(load_task("mnist", data_dir=tmp_path, image_size=16), raw, image_size=16, divide_by=255.0)
    assert small["resize"]["to"] == [16, 16] and "16 x 16" in small["feed"]


def test_cifar10_is_uint8_rgb_planes(tmp_path):
    write_cifar10(tmp_path)
    import pickle

    test = pickle.loads((tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes())[b"data"]
    record = check(load_task("cifar10", data_dir=tmp_path), test.reshape(-1, 3, 32, 32), range=[0, 255],
                   divide_by=255.0)
    assert len(record["mean"]) == 3 and "(N, 3, 32, 32)" in record["raw"]["source"]


def test_tensors_floats_as_stored_and_uint8_images(tmp_path):
    rng = np.random.default_rng(0)
    x, xt = rng.normal(3, 2, (40, 12)).astype(np.float64), rng.normal(3, 2, (20, 12))
    y, yt = np.arange(40) % 2, np.arange(20) % 2
    np.savez(tmp_path / "seq.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    record = check(load_task("tensors", data_dir=tmp_path / "seq.npz"), xt[:, None].astype(np.float32),
                   range=None, divide_by=1.0, resize=None)
    assert record["raw"]["observed_range"][0] < 0 < record["raw"]["observed_range"][1]
    images = rng.integers(0, 256, (60, 3, 10, 10), dtype=np.uint8)
    np.savez(tmp_path / "img.npz", x_train=images[:40], y_train=y, x_test=images[40:], y_test=yt)
    record = check(load_task("tensors", data_dir=tmp_path / "img.npz", image_size=6), images[40:], image_size=6,
                   range=[0, 255], divide_by=255.0)
    assert record["resize"]["to"] == [6, 6]


def test_synthetic_and_imagefolder(tmp_path):
    task = load_task("synthetic")
    record = check(task, task.test.x.numpy(), range=None, divide_by=1.0)
    assert "observed_range" in record["raw"]
    write_images(tmp_path / "train", {"a": 5, "b": 5})
    record = normalisation(load_task("imagefolder", data_dir=tmp_path, image_size=8), image_size=8)
    assert record["raw"]["range"] == [0, 255] and record["divide_by"] == 255.0 and record["resize"] is None
    assert "resized to 8 x 8" in record["raw"]["source"] and "RGB" in record["raw"]["source"]


def test_a_record_stored_by_an_older_nasopt_is_restated(digits_task):
    new = normalisation(digits_task)
    old = {"formula": "x = raw * scale + shift (per channel)", "raw": "float32 values as stored",
           "scale": digits_task.train.scale.flatten().tolist(), "shift": digits_task.train.shift.flatten().tolist()}
    again = _stored_normalisation(old, {"dataset": "digits"}, [1, 8, 8])
    assert again.pop("raw") == new.pop("raw") and again.pop("feed") == new.pop("feed")
    for key, value in new.items():
        assert again[key] == (pytest.approx(value, rel=1e-6) if isinstance(value, list) else value), key
    current = normalisation(digits_task)
    assert _stored_normalisation(current, {"dataset": "digits"}, [1, 8, 8]) == current  # kept as it is
