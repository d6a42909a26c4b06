"""Tests of `nasopt.data.user_task`: the user's own torch datasets as a Task, built here from small real
datasets (TensorDataset and a custom Dataset class), held in memory or streamed."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset, default_collate

from nasopt.data import LoaderSplit, MemorySplit, user_task
from nasopt.errors import UserError


def images(n: int, seed: int = 0, classes: int = 4) -> TensorDataset:
    """n images (2, 6, 5) whose first pixel is the sample's index, labels cycling 0..classes-1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, 6, 5, generator=g)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.float32)
    return TensorDataset(x, torch.arange(n) % classes)


class Pairs(Dataset):
    """A custom dataset: sample i is `make(i)` (numpy arrays, numbers, whatever the test needs)."""

    def __init__(self, n: int, make) -> None:
        self.n, self.make = n, make

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.make(i)


class Stream(IterableDataset):
    def __iter__(self):
        yield from images(4)


def everything(split, batch_size: int = 7):
    xs, ys = zip(*split.batches(batch_size), strict=True)
    return torch.cat(xs), torch.cat(ys)


def raises(match: str, *args, **kwargs) -> UserError:
    with pytest.raises(UserError, match=match) as info:
        user_task(*args, **kwargs)
    assert "\n" not in str(info.value), str(info.value)
    return info.value


# ---------------------------------------------------------------------------------------------- the forms of data

def test_a_tuple_of_datasets_is_a_classification_task_held_in_memory():
    train, val = images(30), images(10, seed=1)
    task = user_task((train, val))
    assert (task.name, task.kind, task.input_shape, task.num_classes, task.target_shape) == \
        ("custom", "classify", (2, 6, 5), 4, ())
    assert isinstance(task.train, MemorySplit) and task.test is task.val  # no test set: test is val
    assert (len(task.train), len(task.val)) == (30, 10)
    x, y = everything(task.train)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x, train.tensors[0]) and torch.equal(y, train.tensors[1])  # no normalisation
    assert torch.equal(task.val.targets, val.tensors[1])
    sizes = [len(b[1]) for b in task.train.batches(8, shuffle=True, generator=torch.Generator().manual_seed(0),
                                                   drop_last=True)]
    assert sizes == [8, 8, 8]
    shuffled = torch.cat([b[1] for b in task.train.batches(8, shuffle=True, generator=torch.Generator().manual_seed(0))])
    assert sorted(shuffled.tolist()) == sorted(train.tensors[1].tolist())


def test_dataloaders_keep_their_collate_fn():
    def doubled(samples):
        x, y = default_collate(samples)
        return x * 2, y

    train, val = images(12), images(6, seed=1)
    for budget in (2**30, 0):  # held in memory, then streamed: the collate_fn applies to both
        task = user_task([DataLoader(train, batch_size=5, collate_fn=doubled), DataLoader(val)], num_classes=4,
                         max_in_memory_bytes=budget)
        assert torch.equal(everything(task.train)[0], train.tensors[0] * 2)
        assert torch.equal(everything(task.val)[0], val.tensors[0])


def test_a_dict_with_a_test_set():
    task = user_task({"train": images(20), "val": images(8, seed=1), "test": images(9, seed=2)}, name="mine")
    assert task.name == "mine" and len(task.test) == 9 and task.test is not task.val


def test_a_single_training_set_is_split_by_val_fraction_deterministically():
    data = images(40)

    def val_indices(seed: int) -> list[int]:
        task = user_task(data, val_fraction=0.25, seed=seed)
        train_idx = everything(task.train)[0][:, 0, 0, 0].long().tolist()
        val_idx = everything(task.val)[0][:, 0, 0, 0].long().tolist()
        assert len(val_idx) == 10 and sorted(train_idx + val_idx) == list(range(40)) and task.test is task.val
        return val_idx

    assert val_indices(0) == val_indices(0) == sorted(val_indices(0))
    assert val_indices(0) != val_indices(1)


def test_a_module_function_string_imports_from_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "my_user_data.py").write_text(
        "import torch\nfrom torch.utils.data import TensorDataset\n\n"
        "def make():\n"
        "    x = torch.randn(10, 1, 16)\n"
        "    return TensorDataset(x, torch.arange(10) % 3), TensorDataset(x[:4], torch.arange(4) % 3)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "my_user_data", raising=False)
    task = user_task("my_user_data:make")
    assert (task.name, task.input_shape, task.num_classes, len(task.train)) == ("my_user_data:make", (1, 16), 3, 10)
    assert str(tmp_path) in sys.path


def test_a_callable_is_named_by_its_qualname_and_a_custom_dataset_may_give_numpy_and_numbers():
    def make():
        return Pairs(12, lambda i: (np.full(9, i, np.float32), i % 3)), Pairs(3, lambda i: (np.zeros(9), i))

    task = user_task(make)
    assert task.name.endswith("make") and task.input_shape == (1, 9) and task.num_classes == 3  # (L,) is (1, L)
    x, y = everything(task.train)
    assert x.shape == (12, 1, 9) and torch.equal(y, torch.arange(12) % 3)


def test_input_shape_reshapes_x():
    data = TensorDataset(torch.randn(10, 24), torch.arange(10) % 2)
    task = user_task((data, data), input_shape=(2, 3, 4))
    assert task.input_shape == (2, 3, 4) and everything(task.train)[0].shape == (10, 2, 3, 4)


@pytest.mark.parametrize("shape", [(), (3,)])
def test_float_targets_are_a_regression(shape):
    y = torch.randn(16, *shape, dtype=torch.float64)
    data = TensorDataset(torch.randn(16, 2, 8), y)
    task = user_task((data, data))
    assert (task.kind, task.target_shape, task.num_classes) == ("regress", shape, max(1, int(np.prod(shape))))
    got = everything(task.train)[1]
    assert got.dtype == torch.float32 and got.shape == (16, *shape) and torch.allclose(got, y.float())


def test_integer_targets_of_the_spatial_shape_are_dense():
    masks = torch.randint(0, 3, (8, 6, 5))
    masks[0, 0, 0] = 2
    task = user_task((TensorDataset(torch.randn(8, 2, 6, 5), masks),) * 2)
    assert (task.kind, task.target_shape, task.num_classes) == ("dense", (6, 5), 3)
    assert torch.equal(everything(task.train)[1], masks)
    seq = TensorDataset(torch.randn(8, 4, 20), torch.randint(0, 5, (8, 20)))
    task = user_task((seq, seq), num_classes=5)
    assert (task.kind, task.target_shape, task.num_classes, task.input_shape) == ("dense", (20,), 5, (4, 20))


def test_explicit_kind_regress_takes_integer_targets():
    data = TensorDataset(torch.randn(6, 1, 4), torch.arange(6))
    task = user_task((data, data), kind="regress")
    assert task.kind == "regress" and everything(task.train)[1].dtype == torch.float32


def test_the_streamed_path_gives_the_same_batches_as_the_memory_path():
    def sample(i: int):
        return torch.full((2, 4, 3), float(i)), i % 5

    train, val = Pairs(23, sample), Pairs(9, sample)
    held = user_task((train, val), num_classes=5)
    streamed = user_task((train, val), num_classes=5, max_in_memory_bytes=0)
    assert isinstance(held.train, MemorySplit) and isinstance(streamed.train, LoaderSplit)
    assert (streamed.kind, streamed.input_shape, streamed.num_classes) == (held.kind, held.input_shape, 5)
    for a, b in ((held.train, streamed.train), (held.val, streamed.val)):
        for drop_last in (False, True):
            pairs = zip(a.batches(4, drop_last=drop_last), b.batches(4, drop_last=drop_last), strict=True)
            for (xa, ya), (xb, yb) in pairs:
                assert torch.equal(xa, xb) and torch.equal(ya, yb) and xb.dtype == torch.float32
        assert torch.equal(a.targets, b.targets)  # computed by one pass over the stream
    g = torch.Generator().manual_seed(3)
    assert sorted(torch.cat([y for _, y in streamed.train.batches(5, shuffle=True, generator=g)]).tolist()) == \
        sorted(held.train.targets.tolist())


def test_a_streamed_set_states_its_classes_through_its_targets():
    task = user_task((images(20, classes=6), images(6, seed=1, classes=6)), max_in_memory_bytes=0)
    assert isinstance(task.train, LoaderSplit) and task.num_classes == 6  # a TensorDataset's labels


# ---------------------------------------------------------------------------------------------- mistakes

def test_bad_factory_strings_modules_and_attributes(tmp_path, monkeypatch):
    raises(r"'no_colon' is not of the form 'module:function'", "no_colon")
    raises(r"is not of the form 'module:function'", "a b:make")
    raises(r"cannot import module 'nasopt_no_such_module_x'.*ModuleNotFoundError.*to PYTHONPATH",
           "nasopt_no_such_module_x:make")
    (tmp_path / "my_user_data_2.py").write_text("VALUE = 3\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "my_user_data_2", raising=False)
    raises(r"my_user_data_2 has no 'make'", "my_user_data_2:make")
    raises(r"is an int, not a function", "my_user_data_2:VALUE")


def test_a_factory_that_raises_is_named_with_its_error():
    def broken():
        raise RuntimeError("no data here\nsecond line")

    err = raises(r"the data factory .*broken raised RuntimeError: no data here; fix it", broken)
    assert "second line" not in str(err)


@pytest.mark.parametrize(("value", "match"), [
    (42, r"returned an int; return a Dataset or DataLoader, a tuple"),
    ((images(4),) * 4, r"returned a tuple of 4 items"),
    ({"train": images(4), "valid": images(4)}, r"a dict with keys train, valid; give keys train and val"),
    ((torch.zeros(4, 3), torch.zeros(4)), r"the train set .* is a Tensor, .*TensorDataset\(x, y\)"),
    ((Stream(), images(4)), r"the train set .* is a Stream, not a map-style Dataset"),
    (((torch.zeros(4, 3), torch.zeros(4)),) * 2, r"the train set .* is a tuple of tensors, .*TensorDataset\(x, y\)"),
])
def test_a_factory_returning_the_wrong_type(value, match):
    raises(match, lambda: value)


def test_empty_sets_are_refused():
    raises(r"the val set is empty", (images(4), images(0)))
    raises(r"the train set is empty", {"train": images(0), "val": images(4)})
    raises(r"cannot split 1 training samples into train and val", images(1))


def test_samples_that_are_not_pairs():
    raises(r"sample 0 of the train set is a Tensor, not an \(x, y\) pair", (Pairs(4, lambda i: torch.zeros(3)),) * 2)
    raises(r"is a tuple of 3 items, not an \(x, y\) pair", (Pairs(4, lambda i: (0, 1, 2)),) * 2)


def test_samples_of_inconsistent_shapes():
    ragged = Pairs(10, lambda i: (torch.zeros(1, 8 if i < 9 else 7), 0))
    raises(r"sample 9 of the train set has x \(1, 7\)", (ragged, images(3)))
    raises(r"sample 0 of the val set has x \(2, 6, 5\)", (Pairs(5, lambda i: (torch.zeros(1, 8), i % 2)), images(3)))
    middle = Pairs(10, lambda i: (torch.zeros(1, 8 if i != 4 else 7), i % 2))  # caught when read
    raises(r"reading the train set failed \(RuntimeError: .*\); fix its dataset", (middle, middle))


def test_a_non_numeric_target():
    raises(r"the target of sample 0 of the train set is a str, not numeric", (Pairs(3, lambda i: (torch.zeros(1, 4),
                                                                                                   "cat")),) * 2)


def test_bad_kinds():
    data = images(6)
    raises(r"unknown task kind 'segment'; choose one of classify, regress, dense", (data, data), kind="segment")
    raises(r"kind='dense' needs integer targets of x's spatial shape \(6, 5\)", (data, data), kind="dense")
    floats = TensorDataset(torch.randn(6, 1, 4), torch.randn(6))
    raises(r"kind='classify' needs one integer class label", (floats, floats), kind="classify")
    vectors = TensorDataset(torch.randn(6, 1, 4), torch.zeros(6, 3, dtype=torch.long))
    raises(r"cannot tell the task's kind.*pass kind='regress'", (vectors, vectors))


def test_bad_class_counts_and_labels():
    data = images(8)
    raises(r"a classify task needs at least 2 classes, but num_classes=1", (data, data), num_classes=1)
    zeros = TensorDataset(torch.randn(4, 1, 4), torch.zeros(4, dtype=torch.long))
    raises(r"at least 2 classes, but the training labels run up to 0", (zeros, zeros))
    raises(r"the labels of the train set run from 0 to 3, outside 0\.\.2 \(num_classes=3\)", (data, data),
           num_classes=3)
    raises(r"the labels of the val set run from 0 to 5, outside 0\.\.3", (data, images(8, classes=6)))
    negative = TensorDataset(torch.randn(4, 1, 4), torch.tensor([0, 1, -1, 1]))
    raises(r"the labels of the val set run from -1 to 1, outside 0\.\.1", (TensorDataset(*negative[:2]), negative),
           num_classes=2)
    raises(r"num_classes=5, but a regression target of shape \(\) has 1 values", (TensorDataset(
        torch.randn(4, 1, 4), torch.randn(4)),) * 2, num_classes=5)


def test_a_stream_without_targets_needs_num_classes():
    streamed = Pairs(6, lambda i: (torch.zeros(1, 4), i % 2))
    raises(r"streamed .* states no \.targets.*pass num_classes=K", (streamed, streamed), max_in_memory_bytes=0)
