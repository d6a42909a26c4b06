"""Scoring a network on the user's task (nasopt.scoring, nasopt.train): the task's loss for classify, regress
and dense outputs, the user's metrics (functions over the split, or update/compute objects), a metric that
fails, and `train_fn` with its reporter. Real training of tiny networks on the CPU."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import nasopt
from nasopt import TrainConfig, UserError
from nasopt.data import user_task
from nasopt.scoring import MetricFailed, evaluate, scalar_loss, shaped, task_loss
from nasopt.train import Reporter, train, train_with

pytestmark = pytest.mark.usefixtures("one_thread")


def _signals(n: int, *, target: str, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 16, generator=g)
    if target == "regress":
        y = torch.stack([x.mean(dim=(1, 2)), x[:, 0, :4].mean(dim=1)], dim=1)  # (N, 2) float
    elif target == "dense":
        y = (x[:, 0] > 0).long()  # (N, 16): the sign of each step
    else:
        y = (x.mean(dim=(1, 2)) > 0).long()
    return TensorDataset(x, y)


def task_of(target: str, **extra) -> nasopt.data.Task:
    import dataclasses

    task = user_task((_signals(96, target=target), _signals(48, target=target, seed=1)))
    return dataclasses.replace(task, **extra) if extra else task


class Dense(nn.Module):
    """A per-position classifier or a flat regressor: a 1-D conv net whose head the kind decides."""

    def __init__(self, task: nasopt.data.Task) -> None:
        super().__init__()
        self.kind, self.k = task.kind, task.num_classes
        self.body = nn.Sequential(nn.Conv1d(1, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv1d(8, self.k, 1) if task.kind == "dense" else nn.Linear(8 * 16, self.k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return self.head(h) if self.kind == "dense" else self.head(h.flatten(1))


# ---------------------------------------------------------------------------------------------- loss/shape

def test_the_default_loss_follows_the_kind():
    reg, cls = task_of("regress"), task_of("classify")
    out, y = torch.randn(4, 2), torch.randn(4, 2)
    assert torch.equal(task_loss(reg)(out, y), nn.functional.mse_loss(out, y))
    logits, labels = torch.randn(4, 2), torch.tensor([0, 1, 1, 0])
    assert torch.equal(task_loss(cls)(logits, labels), nn.functional.cross_entropy(logits, labels))
    mine = task_of("regress", loss=nn.functional.l1_loss)
    assert task_loss(mine) is nn.functional.l1_loss


def test_a_regression_output_is_shaped_like_its_target():
    task = task_of("regress")
    assert shaped(torch.zeros(5, 2), task).shape == (5, 2)
    import dataclasses

    scalar = dataclasses.replace(task, target_shape=(), num_classes=1)
    assert shaped(torch.zeros(5, 1), scalar).shape == (5,)


def test_a_loss_that_is_not_a_scalar_is_refused_with_the_fix():
    with pytest.raises(UserError, match=r"scalar tensor.*\(4,\).*\.mean\(\)"):
        scalar_loss(torch.zeros(4), "in a training step")


# ---------------------------------------------------------------------------------------------- evaluate

@pytest.mark.parametrize("target", ["classify", "regress", "dense"])
def test_evaluate_gives_the_loss_and_accuracy_where_it_applies(target):
    task = task_of(target)
    torch.manual_seed(0)
    record = evaluate(Dense(task), task.val, task=task)
    assert math.isfinite(record["loss"])
    assert ("acc" in record) == (target != "regress")
    if target == "dense":
        assert 0.0 <= record["acc"] <= 1.0


def test_user_metrics_see_the_whole_split_or_each_batch():
    seen: dict[str, object] = {}

    def mae(out: torch.Tensor, y: torch.Tensor) -> float:
        seen["shapes"] = (tuple(out.shape), tuple(y.shape))
        return float((out - y).abs().mean())

    class Batched:  # torchmetrics-like: reset, update per batch, compute
        def __init__(self) -> None:
            self.batches, self.total, self.n = 0, 0.0, 0

        def reset(self) -> None:
            self.batches, self.total, self.n = 0, 0.0, 0

        def update(self, out: torch.Tensor, y: torch.Tensor) -> None:
            self.batches += 1
            self.total += float((out - y).abs().sum())
            self.n += y.numel()

        def compute(self) -> torch.Tensor:
            return torch.tensor(self.total / self.n)

    batched = Batched()
    task = task_of("regress", metrics={"mae": mae, "mae_batched": batched})
    torch.manual_seed(0)
    record = evaluate(Dense(task), task.val, batch_size=16, task=task)
    assert seen["shapes"] == ((48, 2), (48, 2))  # all 48 validation samples at once
    assert batched.batches == 3  # 48 samples in batches of 16
    assert record["mae"] == pytest.approx(record["mae_batched"], rel=1e-5)


@pytest.mark.parametrize(("metric", "match"), [
    (lambda out, y: 1 / 0, r"metric 'bad' raised ZeroDivisionError"),
    (lambda out, y: float("nan"), r"metric 'bad' returned nan"),
    (lambda out, y: "high", r"metric 'bad' returned str, not a number"),
])
def test_a_metric_that_fails_raises_metric_failed_naming_it(metric, match):
    task = task_of("classify", metrics={"bad": metric})
    with pytest.raises(MetricFailed, match=match):
        evaluate(Dense(task), task.val, task=task)


# ---------------------------------------------------------------------------------------------- train

def test_training_a_regression_lowers_its_loss_and_records_the_metric():
    task = task_of("regress", metrics={"mae": lambda out, y: (out - y).abs().mean()})
    torch.manual_seed(0)
    result = train(Dense(task), task, TrainConfig(epochs=3, batch_size=16, lr=0.01, optimizer="adam"))
    curve = result.curve
    assert [r["epoch"] for r in curve] == [1, 2, 3]
    assert "val_acc" not in curve[-1] and "train_acc" not in curve[-1]
    assert curve[-1]["val_loss"] < curve[0]["val_loss"]
    assert curve[-1]["mae"] > 0


def test_training_a_dense_task_gives_a_per_position_accuracy():
    task = task_of("dense")
    torch.manual_seed(0)
    result = train(Dense(task), task, TrainConfig(epochs=4, batch_size=16, lr=0.05))
    assert result.curve[-1]["val_acc"] > 0.8  # the sign of each step is easy for a conv: far above 0.5


def test_train_fn_reports_through_the_reporter_and_returns_the_final_metrics():
    task = task_of("classify")
    calls: list[tuple[int, dict[str, float]]] = []

    def my_loop(model, task, config, reporter):
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        acc = 0.0
        for epoch in range(1, config.epochs + 1):
            for x, y in task.train.batches(config.batch_size, shuffle=True):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
            acc = evaluate(model, task.val, task=task)["acc"]
            reporter.report(epoch, {"accuracy": acc})
        return {"accuracy": acc}

    result = train_with(my_loop, Dense(task), task, TrainConfig(epochs=2, batch_size=16),
                        on_epoch=lambda e, r: calls.append((e, dict(r))))
    assert [e for e, _ in calls] == [1, 2]
    assert "val_acc" in calls[0][1]  # "accuracy" is the curve's val_acc
    assert result.val_acc == pytest.approx(calls[-1][1]["val_acc"])


@pytest.mark.parametrize(("report", "match"), [
    (lambda r: r.report(0, {"accuracy": 0.5}), "reported epoch 0"),
    (lambda r: (r.report(2, {"accuracy": 0.5}), r.report(1, {"accuracy": 0.5})), "increasing order"),
    (lambda r: r.report(1, [0.5]), "must be a dict"),
    (lambda r: r.report(1, {"accuracy": "high"}), "not a number"),
])
def test_the_reporter_refuses_what_it_cannot_record(report, match):
    with pytest.raises(UserError, match=match):
        report(Reporter())


def test_a_train_fn_that_returns_nan_prunes_as_diverged():
    task = task_of("classify")
    with pytest.raises(optuna.TrialPruned, match="diverged: train_fn returned val_acc=nan"):
        train_with(lambda m, t, c, r: {"accuracy": float("nan")}, Dense(task), task, TrainConfig(epochs=1))


# ---------------------------------------------------------------------------------------------- the spec

@pytest.mark.parametrize(("kwargs", "match"), [
    ({"metrics": {"accuracy": len}}, "metric name 'accuracy' is a built-in name"),
    ({"metrics": {"val_acc": len}}, "metric name 'val_acc' is a built-in name"),
    ({"metrics": {"my f1": len}}, "must be a plain name"),
    ({"metrics": {"f1": 3}}, "metric 'f1' must be a function"),
    ({"objectives": {"f1": "maximize"}}, "unknown objective 'f1'.*metrics=\\{name: function\\}"),
    ({"loss": 3}, "loss must be a function"),
    ({"kind": "clustering"}, "unknown kind 'clustering'"),
    ({"dataset": "mnist1d", "data": "mymod:make"}, "either `dataset`.*or its own `data`"),
    ({"dataset": "custom"}, "dataset='custom' needs `data`"),
    ({"input_shape": (1, 0)}, "input_shape must be positive integers"),
])
def test_the_spec_refuses_a_bad_user_task_in_one_line(kwargs, match):
    from nasopt.search_spaces.nano import NanoSpace

    with pytest.raises(UserError, match=match) as info:
        nasopt.StudySpec(name="s", space=NanoSpace(C=4), **kwargs)
    assert "\n" not in str(info.value)


def test_kind_words_are_normalised_and_data_makes_the_dataset_custom():
    from nasopt.search_spaces.nano import NanoSpace

    spec = nasopt.StudySpec(name="s", space=NanoSpace(C=4), data="mymod:make", kind="segmentation")
    assert (spec.kind, spec.dataset) == ("dense", "custom")
