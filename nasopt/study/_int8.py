"""The int8 metrics of a sampled trial (`nasopt.measure._int8`: onnxruntime's static quantization of the
trained network), computed after training when the study names one as an objective or a limit, or records
them (`MeasureConfig(int8=True)`).

Their limits are checked after training, as Optuna constraints only: a trial over `int8_latency_ms` or
`int8_kb`, or under `int8_accuracy` (a minimum), is COMPLETE and infeasible (the samplers and the Pareto front
leave it out), never pruned: its training is done. A network the quantizer cannot handle fails its trial
once, with the reason (`Int8Failed`), and the study goes on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nasopt.errors import UserError
from nasopt.measure._int8 import AT_LEAST, INT8_METRICS, Calibration, int8_metrics, need_int8
from nasopt.storage import set_user_attrs
from nasopt.study._suspect import warn

if TYPE_CHECKING:
    import optuna
    from torch import nn

    from nasopt.measure._metrics import MeasureConfig
    from nasopt.study._spec import StudySpec

__all__ = ["INT8_METRICS", "wanted", "check", "calibration", "record"]


def wanted(spec: StudySpec) -> bool:
    """Whether the study's trials get the int8 metrics."""
    return bool(spec.measure.int8) or any(m in INT8_METRICS for m in (*spec.objectives, *spec.constraints))


def check(spec: StudySpec) -> None:
    """A study that asks for int8 metrics: onnxruntime's quantizer is installed, and an `int8_accuracy`
    limit is an accuracy (a minimum in (0, 1]). Raised when the spec is made, before anything is written."""
    if not wanted(spec):
        return
    need_int8()
    for metric in AT_LEAST:
        limit = spec.constraints.get(metric)
        if limit is not None and not 0 < limit <= 1:
            raise UserError(f"constraint {metric!r} is the least int8 accuracy a trial may have, in (0, 1], but got "
                            f"{limit!r}; e.g. constraints={{{metric!r}: 0.9}}")


def calibration(measure: MeasureConfig) -> Calibration:
    """The calibration a study's settings ask for (the same samples for every trial)."""
    return Calibration(samples=measure.int8_samples, method=measure.int8_method)


def record(trial: optuna.Trial, spec: StudySpec, model: nn.Module, task: Any) -> dict[str, float]:
    """The int8 metrics of the trained `model`, stored as user attrs (the figures by name, and `int8`: the
    whole record with provenance), the study's int8 limits set as constraints; returns the figures."""
    m = spec.measure
    rec = int8_metrics(model, task, calibration(m), batch_size=m.batch_size, threads=m.threads, warmup=m.warmup,
                       repeats=m.repeats)
    metrics = {"int8_latency_ms": float(rec["latency_ms"]), "int8_kb": float(rec["kb"])}
    if rec["accuracy"] is not None:
        metrics["int8_accuracy"] = round(float(rec["accuracy"]), 6)
    set_user_attrs(trial, {**metrics, "int8": rec})
    warn(trial, rec["check"].get("int8_warning"))
    for metric, limit in spec.constraints.items():
        if metric in INT8_METRICS:  # > 0 is infeasible (Optuna's rule)
            value = metrics[metric]
            trial.set_constraint(metric, limit - value if metric in AT_LEAST else value - limit)
    return metrics
