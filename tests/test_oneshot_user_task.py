"""The one-shot methods (DARTS, PC-DARTS, ProxylessNAS, ENAS) on the user's own task (issue 16): the task's
loss in every weight and architecture step, its first per-epoch objective as the validation and ENAS' reward,
training splits halved whatever they are (in memory or streamed), dense tasks refused by a supernet without a
dense head, and a regression through the study API. (A classification without a user loss keeps its numbers:
tests/test_oneshot.py, test_proxyless.py and test_enas.py compare against references.)"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import optuna
import pytest
import torch
import torch.nn.functional as F
from optuna.trial import TrialState
from torch.utils.data import TensorDataset

import nasopt
from nasopt.data import LoaderSplit, Split, user_task
from nasopt.oneshot import DARTS, ENAS, ProxylessNAS
from nasopt.oneshot._shared import HalfSplit, split_half
from nasopt.search_spaces.conv1d import Conv1dSpace
from nasopt.search_spaces.nano import NanoSpace
from nasopt.space import fixed

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = {
    "darts": lambda: DARTS(epochs=1, batch_size=32),
    "pc_darts": lambda: DARTS(epochs=1, batch_size=32, partial_channels=2),
    "proxyless": lambda: ProxylessNAS(epochs=1, batch_size=32),
    "enas": lambda: ENAS(epochs=1, batch_size=16, controller_steps=2, controller_batch=2, derive_samples=2),
}


class Counted:
    """The user's loss (or metric), counting its calls."""

    def __init__(self, fn) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, output, target):
        self.calls += 1
        return self.fn(output, target)


def signals(shape, n: int = 160, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), g


def regression(shape, streamed: bool = False):
    """A regression task of 128 + 32 samples `shape` with two float targets each (streamed: a LoaderSplit)."""
    x, _ = signals(shape)
    y = torch.stack([x.flatten(1).mean(1) * 3, x.flatten(1)[:, 0]], 1)
    task = user_task((TensorDataset(x[:128], y[:128]), TensorDataset(x[128:], y[128:])),
                     max_in_memory_bytes=1 if streamed else 2**28)
    return dataclasses.replace(task, loss=Counted(F.mse_loss), metrics={"mae": lambda o, t: (o - t).abs().mean()})


def classification():
    """Images (1, 8, 8) in 3 classes, with the user's loss and a user metric."""
    x, g = signals((1, 8, 8))
    y = torch.randint(0, 3, (160,), generator=g)
    x[:, 0, :3, :3] += y[:, None, None].float()  # learnable a little
    task = user_task((TensorDataset(x[:128], y[:128]), TensorDataset(x[128:], y[128:])))
    return dataclasses.replace(task, loss=Counted(F.cross_entropy),
                               metrics={"err": lambda o, t: (o.argmax(1) != t).float().mean()})


def space_for(method: str, task):
    return NanoSpace(C=4) if method == "proxyless" or len(task.input_shape) == 3 else Conv1dSpace(C=4, nodes=2)


def search(method: str, task, **kwargs):
    space, strategy = space_for(method, task), METHODS[method]()
    strategy.check(space, task)
    records = []
    before = task.loss.calls
    arch, summary = strategy.search(space, task, seed=0, on_epoch=lambda record, state: records.append(record),
                                    **kwargs)
    assert summary["epochs_run"] == 1 and records[-1]["arch"] == arch
    assert space.suggest(optuna.trial.FixedTrial(arch)) == arch  # a valid architecture of the space
    assert task.loss.calls > before  # the user's loss trained the supernet
    return records[-1]


@pytest.mark.parametrize("method", list(METHODS))
def test_a_regression_searches_on_its_loss_and_first_objective(method):
    task = regression((1, 8, 8) if method == "proxyless" else (1, 32), streamed=method in ("proxyless", "enas"))
    record = search(method, task, signal=("mae", -1.0))
    assert "train_acc" not in record and "valid_acc" not in record and math.isfinite(record["train_loss"])
    assert record["valid_score"] == -record["valid_mae"] and record["valid_loss"] >= 0
    if method == "enas":
        assert record["reward"] <= 0  # minus the mae: higher is better


def test_without_a_measured_objective_the_score_is_minus_the_validation_loss():
    record = search("darts", regression((1, 32)))  # signal: val_acc, which a regression does not measure
    assert record["valid_score"] == -record["valid_loss"]


@pytest.mark.parametrize("method", list(METHODS))
def test_a_classification_trains_on_the_users_loss_and_keeps_accuracy(method):
    record = search(method, classification(), signal=("err", -1.0))
    assert 0 <= record["train_acc"] <= 1 and 0 <= record["valid_acc"] <= 1 and "valid_score" not in record


def test_a_loss_that_is_not_a_scalar_is_refused():
    task = dataclasses.replace(regression((1, 32)), loss=lambda o, t: (o - t) ** 2)
    with pytest.raises(nasopt.UserError, match="scalar"):
        DARTS(epochs=1, batch_size=32).search(Conv1dSpace(C=4, nodes=2), task, seed=0)


class PooledNano(NanoSpace):
    """Nano whose networks always pool to (N, K): no dense head."""

    def build(self, arch, task, choose=fixed):
        return super().build(arch, SimpleNamespace(input_shape=task.input_shape, num_classes=task.num_classes),
                             choose)


@pytest.mark.parametrize("method", ["darts", "proxyless", "enas"])
def test_a_dense_task_is_refused_by_a_supernet_without_a_dense_head(method):
    x, _ = signals((1, 8, 8))
    y = (x[:, 0] > 0).long()
    task = user_task((TensorDataset(x[:128], y[:128]), TensorDataset(x[128:], y[128:])), kind="dense")
    with pytest.raises(nasopt.UserError) as info:
        METHODS[method]().check(PooledNano(C=4), task)
    message = str(info.value)
    assert "dense" in message and "(2, 8, 8)" in message and "\n" not in message


class OnlyStreamed(Split):
    """A split that can only be streamed in order: sample i is x = i."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    @property
    def targets(self) -> torch.Tensor:
        return torch.arange(self.n)

    def batches(self, batch_size, *, shuffle=False, generator=None, drop_last=False):
        for start in range(0, self.n, batch_size):
            i = torch.arange(start, min(start + batch_size, self.n))
            yield i.float()[:, None, None], i


def test_training_splits_are_halved_whatever_they_are():
    x = torch.arange(50.0)[:, None, None].expand(50, 1, 4).clone()  # sample i holds i
    streamed = user_task((TensorDataset(x, torch.arange(50.0)), TensorDataset(x[:4], torch.zeros(4))),
                         max_in_memory_bytes=1).train
    assert isinstance(streamed, LoaderSplit)
    for split in (streamed, OnlyStreamed(50)):
        halves = split_half(split, seed=3)
        seen = [sorted(int(v) for _, y in h.batches(7, shuffle=True, generator=torch.Generator().manual_seed(0))
                       for v in y) for h in halves]
        assert [len(s) for s in seen] == [len(h) for h in halves] == [25, 25]
        assert sorted(seen[0] + seen[1]) == list(range(50))  # disjoint, together the whole split
        kept = [int(v) for _, y in halves[0].batches(7, drop_last=True) for v in y]
        assert len(kept) == 21 and set(kept) <= set(seen[0])
    assert isinstance(split_half(OnlyStreamed(50), 3)[0], HalfSplit)


def regression_data():
    x, _ = signals((1, 32))
    y = x.mean((1, 2)) * 3
    return TensorDataset(x[:128], y[:128]), TensorDataset(x[128:], y[128:])


def test_a_darts_trial_of_a_regression_study_completes(tmp_path):
    spec = nasopt.StudySpec(name="regress_darts", space=Conv1dSpace(C=4, nodes=2), data=regression_data,
                            strategy=DARTS(epochs=1, batch_size=32), objectives={"val_loss": "minimize"},
                            n_trials=1, train=nasopt.TrainConfig(epochs=1, batch_size=32))
    study = nasopt.run(spec, storage="sqlite:///" + str(tmp_path / "s.db"), progress=False)
    (trial,) = study.get_trials()
    assert trial.state == TrialState.COMPLETE and math.isfinite(trial.user_attrs["val_loss"])
    (epoch,) = trial.user_attrs["search"]
    assert epoch["valid_score"] == -epoch["valid_loss"]  # the study's first objective: val_loss, minimised
