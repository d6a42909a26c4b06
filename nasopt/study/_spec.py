"""What a study file declares: `StudySpec`, checked field by field when it is made, and `METRICS`, the
metrics a study can optimise or limit."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna

from nasopt.data import DATASETS
from nasopt.errors import UserError, check_fields
from nasopt.measure._metrics import MeasureConfig
from nasopt.pruners import CurvePruner
from nasopt.study import _identity as identity
from nasopt.study import _int8 as int8
from nasopt.study import _proxies as proxies
from nasopt.train import TrainConfig

__all__ = ["StudySpec", "METRICS"]

# metric name -> (what it is, usable as a hard limit before training)
# (a literal, so `nasopt list metrics` reads it without importing torch; METRICS adds the proxies)
MEASURED: dict[str, tuple[str, bool]] = {
    "accuracy": ("validation top-1 after the last epoch", False),
    "top5": ("validation top-5 after the last epoch", False),
    "params": ("trainable parameters", True),
    "macs": ("multiply-adds of one forward pass at batch 1", True),
    "latency_ms": ("median measured forward latency", True),
    "memory_mb": ("peak inference memory in MiB", True),
    "energy_mj": ("energy per inference in mJ (RAPL/NVML counter where readable, else estimated from MACs and "
                  "memory traffic; provenance stored)", True),
    "flash_kb": ("int8 flash in KB: weights 1 byte, biases 4, per-channel scale and zero point (BN folded)", True),
    "sram_kb": ("int8 peak activation SRAM in KB at batch 1, layer by layer, skip tensors held", True),
    "val_loss": ("validation loss (the task's loss) after the last epoch", False),
    "int8_accuracy": ("validation accuracy of the int8 model (onnxruntime static quantization, QDQ, per-channel "
                      "weights, calibrated on training samples); as a limit, the least allowed", False),
    "int8_latency_ms": ("median latency of the int8 model in onnxruntime on the CPU", False),
    "int8_kb": ("KB of the int8 model's tensors (int8 weights, int32 biases, scales, zero points)", False),
}
PROXY_LIMIT = "; as a limit, the least allowed"
METRICS: dict[str, tuple[str, bool]] = {
    **MEASURED,
    # zero-cost proxies of the untrained network (nasopt.measure._proxies), known before training
    **{name: (what + PROXY_LIMIT, True) for name, what in proxies.PROXIES.items()},
}
# names a user metric cannot take: the built-in metrics and the other entries of a learning curve
RESERVED = (*METRICS, "epoch", "train_loss", "train_acc", "val_acc", "val_top5", "lr", "seconds", "score", "acc",
            "loss")
# what `kind` accepts (the task's kind, or a word for it)
KIND_WORDS = {"classify": "classify", "classification": "classify", "regress": "regress", "regression": "regress",
              "dense": "dense", "segmentation": "dense"}


_HINTS = {
    "dataset": "give a dataset name such as dataset='digits'",
    "data_dir": "give the folder as a string, e.g. data_dir='data/cifar10'",
    "objectives": "give a dict of metric -> direction, e.g. objectives={'accuracy': 'maximize'}",
    "constraints": "give a dict of metric -> limit, e.g. constraints={'params': 50000}",
    "train": "give train=nasopt.TrainConfig(epochs=..., ...)",
    "measure": "give measure=nasopt.MeasureConfig(...)",
    "pruner": "give a nasopt pruner (nasopt.pruners.MedianStop(), ...) or an Optuna pruner",
    "allow_changed": "give a list of field names, e.g. allow_changed=['train.epochs']",
    "metrics": "give a dict of name -> function (outputs, targets) -> number, e.g. metrics={'f1': my_f1}",
    "input_shape": "give the shape of one sample, e.g. input_shape=(1, 40)",
    "num_classes": "give the number of classes, e.g. num_classes=10",
    "kind": "give 'classify', 'regress' or 'dense'",
}


@dataclass(frozen=True, kw_only=True)
class StudySpec:
    """One NAS study: what to search, on which data, for which objectives, with which sampler."""

    name: str
    space: Any
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    val_fraction: float = 0.2
    image_size: int | None = None
    objectives: Mapping[str, str] = field(default_factory=lambda: {"accuracy": "maximize"})
    constraints: Mapping[str, float] = field(default_factory=dict)
    sampler: Any = None
    strategy: Any = None  # a gradient method (nasopt.oneshot.DARTS(...)) or a list of them: one trial each
    pruner: optuna.pruners.BasePruner | CurvePruner | None = None
    n_trials: int = 20
    timeout: float | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    seed: int = 0
    device: str = "auto"
    storage: str | None = None
    inherit_weights: bool = False
    artifacts: str | None = None
    # study-defining settings this file changes on purpose against the stored study (see nasopt.study._identity)
    allow_changed: tuple[str, ...] = ()
    # the user's own task (see nasopt.data.user_task): `data` = Datasets/DataLoaders, a factory returning them,
    # or its "module:function"; `kind` (inferred from the targets when None), the shape of one sample and the
    # number of classes (inferred when None); `loss(output, target) -> scalar`, `metrics={name: fn}` (each can
    # be an objective); `train_fn(model, task, config, reporter) -> {metric: value}` replaces the training
    data: Any = None
    kind: str | None = None
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    loss: Any = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    train_fn: Any = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise UserError(f"a study needs a non-empty `name`, but got name={self.name!r}")
        if isinstance(self.data_dir, os.PathLike):
            object.__setattr__(self, "data_dir", os.fspath(self.data_dir))
        if isinstance(self.allow_changed, str):
            object.__setattr__(self, "allow_changed", (self.allow_changed,))
        check_fields(self, _HINTS)
        object.__setattr__(self, "allow_changed", tuple(self.allow_changed))
        identity.check_allow(self.allow_changed)
        if not 0 < self.val_fraction < 1:
            raise UserError(f"`0 < val_fraction < 1` must hold, but got val_fraction={self.val_fraction!r}")
        if self.image_size is not None and self.image_size < 1:
            raise UserError(f"`image_size >= 1` must hold, but got image_size={self.image_size!r}")
        if not self.dataset:
            raise UserError("`dataset` is empty; give a dataset name such as 'digits' (known: "
                            f"{', '.join((*DATASETS, 'nanobench'))})")
        self._check_user_task()
        if self.train.qat_epochs and self.train_fn is not None:  # QAT lives in nasopt's own loop
            raise UserError(f"train.qat_epochs={self.train.qat_epochs} fake-quantizes nasopt's own training loop, but "
                            "this study trains with train_fn; set qat_epochs=0 and fake-quantize inside your train_fn "
                            "with nasopt.quant.FakeQuant(model).attach()")
        if self.train.qat_epochs and self.dataset == "nanobench":
            raise UserError(f"train.qat_epochs={self.train.qat_epochs}: nanobench answers from its table of networks "
                            "trained without it; use real data (dataset='digits', 'mnist1d', ...) or qat_epochs=0")
        if not self.objectives:
            raise UserError("a study needs at least one objective, e.g. objectives={'accuracy': 'maximize'}")
        for metric, direction in self.objectives.items():
            if metric not in METRICS and metric not in self.metrics:
                raise UserError(f"unknown objective {metric!r}; known metrics: {', '.join((*METRICS, *self.metrics))} "
                                "(your own: metrics={name: function})")
            if direction not in ("maximize", "minimize"):
                raise UserError(f"objective {metric!r} has direction {direction!r}; use 'maximize' or 'minimize'")
        limits = [m for m, (_, cheap) in METRICS.items() if cheap or m in int8.INT8_METRICS]  # int8: after training
        for metric, limit in self.constraints.items():
            if metric not in limits:
                raise UserError(f"unknown constraint {metric!r}; hard limits exist for: {', '.join(limits)}")
            if not isinstance(limit, (int, float)) or limit <= 0:
                raise UserError(f"constraint {metric!r} must be a positive number, but got {limit!r}")
        int8.check(self)  # onnxruntime's quantizer installed where the study asks for int8 metrics
        proxies.check(self)  # zero-cost proxies need a network (not nanobench's table)
        if not isinstance(self.n_trials, int) or self.n_trials < 1:
            raise UserError(f"`n_trials >= 1` must hold, but got n_trials={self.n_trials!r}")
        if self.timeout is not None and self.timeout <= 0:
            raise UserError(f"`timeout > 0` must hold, but got timeout={self.timeout!r}")
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise UserError(f"unknown device {self.device!r}; use auto, cpu or cuda")
        if isinstance(self.pruner, optuna.pruners.BasePruner) and len(self.objectives) > 1:
            raise UserError("Optuna's pruners need a single-objective study; use a nasopt pruner "
                            "(nasopt.pruners.MedianStop, EarlyKill, SuccessiveHalving, Hyperband) instead")
        if self.pruner is not None and not isinstance(self.pruner, (optuna.pruners.BasePruner, CurvePruner)):
            raise UserError(f"`pruner` must be a nasopt or Optuna pruner, but got {self.pruner!r}")
        for method in ("suggest", "build", "distributions", "encode", "describe"):
            if not callable(getattr(self.space, method, None)):
                raise UserError(f"`space` must be a search space (missing `{method}`), but got {self.space!r}")
        _check_decisions(self.space)
        if self.sampler is not None and not isinstance(self.sampler, optuna.samplers.BaseSampler):
            raise UserError(f"`sampler` must be an Optuna sampler, but got {self.sampler!r}")
        if self.strategy is not None:
            strategies = self.strategy if isinstance(self.strategy, (list, tuple)) else [self.strategy]
            for s in strategies:
                if not callable(getattr(s, "search", None)) or not isinstance(getattr(s, "label", None), str):
                    raise UserError(f"`strategy` must be a gradient method such as nasopt.oneshot.DARTS(...) or a "
                                    f"list of them, but got {s!r}")
            if not strategies:
                raise UserError("`strategy` is an empty list; give nasopt.oneshot.DARTS(...) or leave it out")
            if self.sampler is not None:
                raise UserError("a study file gives either a `sampler` (sampled trials) or a `strategy` (gradient "
                                "trials), not both; put the other in a second study file with the same `name`")

    def _check_user_task(self) -> None:
        if self.data is not None:
            if self.dataset not in ("digits", "custom"):
                raise UserError(f"a study gives either `dataset` ({self.dataset!r}) or its own `data`, not both; "
                                "drop one")
            object.__setattr__(self, "dataset", "custom")
        elif self.dataset == "custom":
            raise UserError("dataset='custom' needs `data` (your Datasets, DataLoaders or a 'module:function' "
                            "factory returning them)")
        if self.kind is not None:
            if self.kind not in KIND_WORDS:
                raise UserError(f"unknown kind {self.kind!r}; use classify, regress or dense")
            object.__setattr__(self, "kind", KIND_WORDS[self.kind])
        if self.input_shape is not None:
            if not self.input_shape or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                                               for n in self.input_shape):
                raise UserError(f"input_shape must be positive integers such as (1, 40), but got {self.input_shape!r}")
            object.__setattr__(self, "input_shape", tuple(self.input_shape))
        if self.num_classes is not None and self.num_classes < 1:
            raise UserError(f"`num_classes >= 1` must hold, but got num_classes={self.num_classes!r}")
        for name in self.metrics:
            if not isinstance(name, str) or not name.isidentifier():
                raise UserError(f"metric name {name!r} must be a plain name such as 'f1' or 'miou'")
            if name in RESERVED:
                raise UserError(f"metric name {name!r} is a built-in name (built-in metrics and curve entries: "
                                f"{', '.join(RESERVED)}); call yours otherwise, e.g. {name + '_user'!r}")
        for what, value in (("loss", self.loss), ("train_fn", self.train_fn),
                            *((f"metric {n!r}", f) for n, f in self.metrics.items())):
            ok = value is None or isinstance(value, str) or callable(value) or (
                what.startswith("metric") and callable(getattr(value, "update", None))
                and callable(getattr(value, "compute", None)))
            if not ok:
                raise UserError(f"{what} must be a function (or its 'module:function'), but got {value!r}")

    @property
    def directions(self) -> list[str]:
        return list(self.objectives.values())

    def replace(self, **changes: Any) -> StudySpec:
        return dataclasses.replace(self, **changes)


def _check_decisions(space: Any) -> None:
    """Every decision of the space has a choice (an empty op list has none)."""
    name = type(space).__name__
    try:
        decisions = space.distributions()
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"space {name} cannot list its decisions ({type(e).__name__}: {e}); check its settings "
                        "(an empty op or kernel list?)") from None
    for key, dist in decisions.items():
        if isinstance(dist, optuna.distributions.CategoricalDistribution) and not dist.choices:
            raise UserError(f"space {name}: decision {key!r} has no choices; give it a non-empty list")
