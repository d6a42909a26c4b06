"""How a network's output is scored, for every kind of task: the loss (`task_loss`: the user's, else
cross-entropy or MSE), the output as the loss sees it (`shaped`), and the validation record (`evaluate`: loss,
accuracy where it applies, and the user's metrics, by name, after every epoch).

A user metric is a function `(outputs, targets) -> number` over the whole validation split, or an object
with `update(output, target)` and `compute()` (torchmetrics) fed batch by batch; one that raises or returns
NaN raises `MetricFailed`, which fails that trial (with the reason stored) and not the study.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from nasopt.errors import UserError
from nasopt.importing import named

if TYPE_CHECKING:
    from nasopt.train import TrainConfig

__all__ = ["scored", "MetricFailed", "kind_of", "task_loss", "shaped", "scalar_loss", "evaluate", "epoch_record", "CURVE_NAMES"]


def scored(task: Any, loss: Any = None, metrics: Any = None) -> Any:
    """`task` with the user's `loss` and `metrics` (functions, objects, or their 'module:function' names)."""
    loss = named(loss, "loss") if loss is not None else None
    metrics = {name: named(fn, f"metric {name!r}") for name, fn in dict(metrics or {}).items()}
    if loss is None and not metrics:
        return task
    if not hasattr(task, "metrics"):  # nano-bench's table: nothing is trained, so nothing to score
        raise UserError("nanobench answers from its table; your own loss and metrics need real data (a dataset or "
                        "`data`)")
    return dataclasses.replace(task, loss=loss, metrics=metrics)


class MetricFailed(RuntimeError):
    """A user metric raised or gave a value that is not a finite number: the trial fails with this reason."""


def kind_of(task: Any) -> str:
    """The task's kind ("classify" for task objects that do not say, as every built-in dataset is)."""
    return str(getattr(task, "kind", "classify"))


def task_loss(task: Any, config: TrainConfig | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss a network of `task` is trained with: the user's `task.loss`, else cross-entropy (with the
    config's label smoothing) for classify and dense, mean squared error for regress."""
    user = getattr(task, "loss", None)
    if user is not None:
        return user
    if kind_of(task) == "regress":
        return F.mse_loss
    smoothing = config.label_smoothing if config is not None else 0.0
    return lambda output, target: F.cross_entropy(output, target, label_smoothing=smoothing)


def shaped(output: torch.Tensor, task: Any) -> torch.Tensor:
    """The network's output as the loss and the metrics see it: a regression's (N, K) outputs reshaped to
    (N, *target_shape) (a scalar target: (N,)); other kinds unchanged."""
    if kind_of(task) == "regress":
        return output.reshape(output.shape[0], *tuple(getattr(task, "target_shape", ())))
    return output


def scalar_loss(loss: Any, where: str) -> torch.Tensor:
    """The loss, checked: a tensor with one element (a user's loss that forgot `.mean()` is refused)."""
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise UserError(f"the loss must return a scalar tensor, but {where} it returned {shape}; reduce it "
                        "(e.g. `.mean()`) in your loss function")
    return loss.reshape(())


def _streaming(metric: Any) -> bool:
    """A metric object that accumulates over batches (torchmetrics style: `update` and `compute`)."""
    return callable(getattr(metric, "update", None)) and callable(getattr(metric, "compute", None))


def _call(name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` of the user's metric `name`; what it raises becomes `MetricFailed` naming it."""
    try:
        return fn(*args)
    except Exception as e:
        first = str(e).splitlines()[0][:160] if str(e) else ""
        raise MetricFailed(f"metric {name!r} raised {type(e).__name__}{': ' + first if first else ''}") from e


def _value(name: str, fn: Callable[..., Any], *args: Any) -> float:
    """The metric's value as a finite float, else `MetricFailed`."""
    value = _call(name, fn, *args)
    try:
        value = float(value.item() if isinstance(value, torch.Tensor) else value)
    except (TypeError, ValueError, RuntimeError):
        raise MetricFailed(f"metric {name!r} returned {type(value).__name__}, not a number") from None
    if not math.isfinite(value):
        raise MetricFailed(f"metric {name!r} returned {value} (not a finite number)")
    return value


@torch.no_grad()
def evaluate(model: nn.Module, split: Any, batch_size: int = 512, task: Any = None) -> dict[str, float]:
    """The model's validation record on `split`, always in fp32 (autocast off, even inside an autocast region),
    so values compare whatever precision trained the model: `loss` (the task's loss, mean per sample), and for
    classify `acc` and `top5` (more than 5 classes), for dense `acc` per position; then each of the task's
    `metrics` by name: a function `(outputs, targets) -> number` gets the whole split's outputs and targets (on
    the CPU), an object with `update(output, target)` and `compute()` (torchmetrics) is fed batch by batch.
    A metric that raises or is not finite raises `MetricFailed`."""
    kind = kind_of(task)
    loss_fn = task_loss(task)
    metrics = dict(getattr(task, "metrics", None) or {})
    whole = {n: f for n, f in metrics.items() if not _streaming(f)}
    for metric in metrics.values():
        if _streaming(metric) and callable(getattr(metric, "reset", None)):
            metric.reset()
    outputs: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    n, loss_sum, top1, top5, positions, width = 0, 0.0, 0, 0, 0, 0
    for x, y in split.batches(batch_size):
        with torch.autocast(x.device.type, enabled=False):
            out = shaped(model(x), task)
            loss_sum += float(scalar_loss(loss_fn(out, y), "on the validation split")) * len(y)
        if kind == "classify":
            width = out.shape[1]
            hit = out.topk(min(5, width), dim=1).indices.eq(y[:, None])
            top1 += int(hit[:, 0].sum())
            top5 += int(hit.any(dim=1).sum())
        elif kind == "dense":
            top1 += int((out.argmax(1) == y).sum())
            positions += y.numel()
        for name, metric in metrics.items():
            if name not in whole:
                _call(name, metric.update, out, y)
        if whole:
            outputs.append(out.detach().float().cpu())
            targets.append(y.detach().cpu())
        n += len(y)
    model.train(was_training)
    if n == 0:
        raise UserError("cannot evaluate on an empty split; use more data or a larger val_fraction")
    result = {"loss": loss_sum / n}
    if kind == "classify":
        result["acc"] = top1 / n
        if width > 5:
            result["top5"] = top5 / n
    elif kind == "dense":
        result["acc"] = top1 / max(positions, 1)
    if whole:
        out_all, y_all = torch.cat(outputs), torch.cat(targets)
        for name, fn in whole.items():
            result[name] = _value(name, fn, out_all, y_all)
    for name, metric in metrics.items():
        if name not in whole:
            result[name] = _value(name, metric.compute)
    return result


# evaluate()'s names -> the curve's (a user metric keeps its own name)
CURVE_NAMES = {"acc": "val_acc", "loss": "val_loss", "top5": "val_top5"}


def epoch_record(val: dict[str, float]) -> dict[str, float]:
    """An `evaluate()` result as curve entries: val_acc, val_loss, val_top5 and the user's metrics by name."""
    return {CURVE_NAMES.get(k, k): v for k, v in val.items()}
