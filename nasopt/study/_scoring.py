"""How a study scores its trials on its task: the user's loss and metrics put on the task (`with_scoring`),
the checks of the task's output before anything is written (`check_output`), the metric that drives the
pruners (`signal`), and the objective values read from a trial's last epoch (`final_metrics`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nasopt.errors import UserError
from nasopt.scoring import scored

__all__ = ["with_scoring", "check_output", "signal", "final_metrics", "PER_EPOCH"]

# built-in objectives read from the last epoch's record -> its curve entry
PER_EPOCH = {"accuracy": "val_acc", "top5": "val_top5", "val_loss": "val_loss"}


def with_scoring(spec: Any, task: Any) -> Any:
    """`task` with the study's loss and metrics (their 'module:function' names imported), checked against the
    task's kind: accuracy needs classes (classify, or dense per position), top5 a classification."""
    kind = str(getattr(task, "kind", "classify"))
    for metric in (*spec.objectives, *spec.constraints):
        if metric in ("accuracy", "int8_accuracy") and kind == "regress":
            raise UserError(f"{metric!r} needs classes, but this is a regression task; use 'val_loss' "
                            "(minimize) or your own metric (metrics={'mae': my_mae})")
        if metric == "top5" and kind != "classify":
            raise UserError(f"objective 'top5' needs a classification task, but this one is {kind}; use "
                            "'accuracy', 'val_loss' or your own metric")
    return scored(task, spec.loss, spec.metrics)


def check_output(model: Any, task: Any, train_cfg: Any) -> None:
    """One batch of training data through a built network: its output must be what the task's kind needs and
    the loss a scalar, else a UserError before the storage is touched."""
    import torch

    from nasopt.scoring import scalar_loss, shaped, task_loss

    kind, k = str(getattr(task, "kind", "classify")), int(task.num_classes)
    x, y = next(iter(task.train.batches(2)))
    model = model.to(x.device).eval()
    with torch.no_grad():
        out = model(x)
    model.train()
    spatial = tuple(task.input_shape[1:])
    want = {"classify": (len(x), k), "regress": (len(x), k), "dense": (len(x), k, *spatial)}[kind]
    if tuple(out.shape) != want:
        raise UserError(f"the network gives outputs of shape {tuple(out.shape)[1:]} per sample, but this {kind} task "
                        f"needs {want[1:]}; check num_classes / input_shape, or use a space that can produce it")
    try:
        value = task_loss(task, train_cfg)(shaped(out, task), y)
    except UserError:
        raise
    except Exception as e:
        first = str(e).splitlines()[0][:160] if str(e) else ""
        raise UserError(f"the loss fails on a batch of this task ({type(e).__name__}: {first}); check that it takes "
                        "(output, target) of these shapes") from None
    scalar_loss(value, "on a batch of the training data")


def signal(spec: Any, task: Any) -> tuple[str, float]:
    """The curve entry the pruners follow and its sign (higher is better after the sign): the first objective
    measured every epoch; without one, accuracy for tasks with classes, else the validation loss."""
    for metric, direction in spec.objectives.items():
        key = PER_EPOCH.get(metric, metric if metric in spec.metrics else None)
        if key is not None:
            return key, 1.0 if direction == "maximize" else -1.0
    return ("val_loss", -1.0) if getattr(task, "kind", "classify") == "regress" else ("val_acc", 1.0)


def final_metrics(record: Mapping[str, float], user: Mapping[str, Any]) -> dict[str, float]:
    """The objective values a trial's last epoch gives: accuracy, top5, val_loss and the user's metrics."""
    out = {metric: float(record[key]) for metric, key in PER_EPOCH.items() if key in record}
    out.update({name: float(record[name]) for name in user if name in record})
    if "val_acc" in record and "val_top5" not in record:
        out["top5"] = 1.0  # five classes or fewer: the top 5 always hold the true one
    return out
