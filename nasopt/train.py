"""One small train/eval loop for every trial.

SGD (or Adam) with a cosine schedule for `TrainConfig.epochs` epochs; validation top-1 (and top-5
when there are more than 5 classes) after every epoch, handed to `on_epoch`, which may stop the run
by raising `optuna.TrialPruned`. A diverged run ends as pruned with the reason (`divergence_reason`): a
non-finite training or validation loss, or a finite training loss that ran away (above
`TrainConfig.divergence` times the loss of guessing uniformly).

Mixed precision (`TrainConfig.precision`) is autocast around the forward pass and loss of training
steps only: weights, gradients and optimizer state stay fp32, and validation always runs in fp32, so
the accuracy a trial records compares across precisions.

Quantization-aware training (`TrainConfig.qat_epochs`) fake-quantizes the last epochs' training steps to int8
(`nasopt.quant.FakeQuant`); validation runs the float network, and the model is handed back as plain fp32.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch
from torch import nn

from nasopt.errors import UserError, check_fields
from nasopt.quant import FakeQuant
from nasopt.scoring import epoch_record, evaluate, kind_of, scalar_loss, shaped, task_loss

__all__ = ["TrainConfig", "TrainResult", "train", "evaluate", "divergence_reason", "Reporter", "train_with"]

OPTIMIZERS = ("sgd", "adam", "adamw")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How every architecture of a study is trained (the same for all, so they compare fairly)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "sgd"
    label_smoothing: float = 0.0
    grad_clip: float | None = 5.0
    # NHWC makes depthwise convs 2-3x faster on CPU (oneDNN) but dense small convs slower;
    # None picks it when the model has grouped/depthwise convolutions
    channels_last: bool | None = None
    # "bf16"/"fp16": autocast of the training forward pass + loss (weights, grads, optimizer state stay
    # fp32; fp16 adds a GradScaler and is CUDA-only); "auto" picks bf16 when the device runs it natively
    # (CPU with AMX-BF16: dense convs ~1.7x faster; CUDA with native bf16) and the model has no grouped/
    # depthwise convs (2x slower in bf16 in oneDNN), else fp32 -- a fixed rule per machine and model, never
    # a timing, so seeded runs repeat
    # (on another machine auto may pick otherwise: pin "fp32"/"bf16" to compare across machines)
    precision: str = "auto"
    # networks with an auxiliary head (DARTS cells with auxiliary=True) leave `aux_logits` after a
    # training forward pass; their loss is added with this weight (DARTS: 0.4)
    aux_weight: float = 0.4
    # a run whose mean training loss in an epoch exceeds `divergence` x log(classes) -- the loss of guessing
    # uniformly, where every fresh network starts -- or exceeds it x the first epoch's loss while worse than
    # guessing, has diverged: the trial is pruned with the reason (its accuracy would be chance). None: only
    # non-finite losses (training or validation) prune
    divergence: float | None = 100.0
    # quantization-aware training: the last `qat_epochs` epochs train with fake int8 quantization (per-channel
    # symmetric weights, per-tensor activations, as onnxruntime's static quantization; `nasopt.quant`), so the
    # network loses less when it is quantized to deploy; validation and the returned model stay fp32. 0: off;
    # = epochs: from the start
    qat_epochs: int = 0

    def __post_init__(self) -> None:
        check_fields(self)
        rules = [
            (self.epochs >= 1, f"`epochs >= 1` must hold, but got epochs={self.epochs}"),
            (self.batch_size >= 1, f"`batch_size >= 1` must hold, but got batch_size={self.batch_size}"),
            (self.lr > 0, f"`lr > 0` must hold, but got lr={self.lr}"),
            (self.weight_decay >= 0, f"`weight_decay >= 0` must hold, but got weight_decay={self.weight_decay}"),
            (0 <= self.qat_epochs <= self.epochs,
             f"`0 <= qat_epochs <= epochs` must hold, but got qat_epochs={self.qat_epochs}, epochs={self.epochs}"),
            (self.aux_weight >= 0, f"`aux_weight >= 0` must hold, but got aux_weight={self.aux_weight}"),
            (self.divergence is None or self.divergence > 1,
             f"`divergence > 1` (or None) must hold, but got divergence={self.divergence}"),
            (0 <= self.label_smoothing < 1, f"`0 <= label_smoothing < 1` must hold, but got {self.label_smoothing}"),
            (self.optimizer in OPTIMIZERS, f"unknown optimizer {self.optimizer!r}; choose one of {list(OPTIMIZERS)}"),
            (self.precision in PRECISIONS, f"unknown precision {self.precision!r}; choose one of {list(PRECISIONS)}"),
        ]
        for ok, message in rules:
            if not ok:
                raise UserError(message)


@dataclass
class TrainResult:
    """Per-epoch records (`curve`), the final validation accuracy (the trial's `accuracy`) and what the
    "auto" settings resolved to: `precision` ("fp32", "bf16" or "fp16") and `channels_last`."""

    curve: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    precision: str = "fp32"
    channels_last: bool = False

    @property
    def val_acc(self) -> float:
        return self.curve[-1].get("val_acc", 0.0) if self.curve else 0.0

    @property
    def best_val_acc(self) -> float:
        return max((r.get("val_acc", 0.0) for r in self.curve), default=0.0)


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    # no weight decay on BN/bias parameters (1-D tensors), as is standard for small CNNs
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups: list[dict[str, Any]] = [{"params": decay, "weight_decay": config.weight_decay},
                                    {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    return torch.optim.AdamW(groups, lr=config.lr)


def _has_grouped_convs(model: nn.Module, kinds: tuple[type[nn.Module], ...]) -> bool:
    return any(isinstance(m, kinds) and getattr(m, "groups", 1) > 1 for m in model.modules())


def _use_channels_last(model: nn.Module, task: Any, config: TrainConfig) -> bool:
    if len(task.input_shape) != 3:
        return False
    if config.channels_last is not None:
        return config.channels_last
    return _has_grouped_convs(model, (nn.Conv2d,))


def _cuda_bf16(device: torch.device, *, emulated: bool) -> bool:
    with torch.cuda.device(device):  # is_bf16_supported asks the current device
        return torch.cuda.is_bf16_supported(including_emulation=emulated)


def _native_bf16(device: torch.device) -> bool:
    """Whether `device` runs bf16 convs/matmuls in hardware: AMX-BF16 on the CPU, sm80+ (or ROCm) on CUDA."""
    if device.type == "cuda":
        return _cuda_bf16(device, emulated=False)
    if device.type == "cpu":
        # only AMX tiles make oneDNN's bf16 convs beat fp32 (nano on digits: 0.57x the fp32 time); with
        # AVX512-BF16 alone they were 1.13x, emulated 2.4x (measured with ONEDNN_MAX_CPU_ISA, 2026-12-06)
        capabilities = getattr(torch.cpu, "get_capabilities", None)  # recent torch (cpuinfo's flags)
        if capabilities is not None:
            return bool(capabilities().get("amx_bf16", False))
        return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())  # older torch: AMX tiles
    return False


def resolve_precision(model: nn.Module, device: torch.device, config: TrainConfig) -> str:
    if config.precision == "auto":
        grouped = _has_grouped_convs(model, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
        return "bf16" if _native_bf16(device) and not grouped else "fp32"
    if config.precision == "fp16" and device.type != "cuda":
        raise UserError(f"precision='fp16' needs a CUDA device, but training runs on {device.type!r} (fp16 on the "
                        "CPU is slow and needs loss scaling); use precision='bf16', 'auto' or 'fp32'")
    if config.precision == "bf16" and device.type == "cuda" and not _cuda_bf16(device, emulated=True):
        raise UserError(f"precision='bf16' needs a GPU with bf16 support, but {device} has none; "
                        "use precision='fp16', 'auto' or 'fp32'")
    return config.precision


def divergence_reason(epoch: int, train_loss: float, val_loss: float, first_loss: float, classes: int,
                      divergence: float | None) -> str | None:
    """Why a run has diverged after `epoch` (None while it has not): a non-finite training or validation
    loss; or, with `divergence`, a training loss above `divergence` x log(classes), the cross-entropy of
    guessing uniformly (a fresh network starts near it; 100x is e^-230 on the true class for 10 classes,
    beyond any learning), or above `divergence` x the first epoch's loss while worse than guessing."""
    if not math.isfinite(train_loss):
        return f"non-finite training loss in epoch {epoch}"
    if not math.isfinite(val_loss):
        return f"diverged: non-finite validation loss ({val_loss}) after epoch {epoch} (training loss {train_loss:.4g})"
    if divergence is None:
        return None
    if classes < 2:  # a loss without a chance level (regression, the user's own): only running away counts
        if epoch > 1 and train_loss > divergence * max(first_loss, 1e-12):
            return (f"diverged: training loss {train_loss:.4g} in epoch {epoch} > {divergence:g} x epoch 1's "
                    f"{first_loss:.4g}")
        return None
    chance = math.log(classes)
    if train_loss > divergence * chance:
        return (f"diverged: training loss {train_loss:.4g} in epoch {epoch} > {divergence:g} x log({classes}) = "
                f"{divergence * chance:.4g} (guessing uniformly: {chance:.4g})")
    if epoch > 1 and train_loss > chance and train_loss > divergence * first_loss:
        return (f"diverged: training loss {train_loss:.4g} in epoch {epoch} > {divergence:g} x epoch 1's "
                f"{first_loss:.4g}, and worse than guessing uniformly ({chance:.4g})")
    return None


def train(model: nn.Module, task: Any, config: TrainConfig, *, seed: int = 0,
          on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    """Train `model` (already on the task's device) on `task.train`, validating on `task.val`.

    `on_epoch(epoch, record)` is called after each epoch (1-based) with the record appended to the
    curve; it may raise `optuna.TrialPruned`. Raises `optuna.TrialPruned` when the run diverged
    (`divergence_reason`), before `on_epoch` sees that epoch. With `config.qat_epochs` the last epochs train
    fake-quantized (`nasopt.quant.FakeQuant`); `model` is left a plain fp32 model however the run ends.
    """
    qat = FakeQuant(model)
    try:
        return _train(model, task, config, seed, on_epoch, qat)
    finally:
        qat.remove()


def _train(model: nn.Module, task: Any, config: TrainConfig, seed: int,
           on_epoch: Callable[[int, dict[str, float]], None] | None, qat: FakeQuant) -> TrainResult:
    device = torch.device(task.device)
    result = TrainResult(precision=resolve_precision(model, device, config),
                         channels_last=_use_channels_last(model, task, config))
    generator = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if result.channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    optimizer = _optimizer(model, config)
    steps_per_epoch = max(1, math.ceil(len(task.train) / config.batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    dtype = _AUTOCAST_DTYPES.get(result.precision)
    # fp16 gradients underflow without loss scaling; disabled, the scaler passes calls straight through
    scaler = torch.amp.GradScaler(device.type, enabled=result.precision == "fp16")
    start = time.perf_counter()
    model.train()
    epoch_start = getattr(model, "on_epoch_start", None)  # e.g. DARTS' linearly growing drop-path rate
    kind, loss_fn = kind_of(task), task_loss(task, config)
    # the loss of guessing uniformly is log(classes) for the built-in cross-entropy; unknown for other losses
    classes = int(task.num_classes) if kind != "regress" and getattr(task, "loss", None) is None else 0
    first_loss = math.inf
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        if callable(epoch_start):
            epoch_start(epoch - 1, config.epochs)
        if epoch > config.epochs - config.qat_epochs:
            qat.attach()
        loss_sum = torch.zeros((), device=task.device)
        correct = torch.zeros((), device=task.device, dtype=torch.long)
        seen, positions = 0, 0
        for step, (x, y) in enumerate(task.train.batches(config.batch_size, shuffle=True, generator=generator,
                                                               drop_last=len(task.train) % config.batch_size == 1)):
            # fp32 disables autocast explicitly, so an enclosing autocast region cannot change it
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                out = shaped(model(x.contiguous(memory_format=fmt)), task)  # bf16/fp16 under autocast
                loss = scalar_loss(loss_fn(out, y), "in a training step")  # autocast: fp32
                aux = getattr(model, "aux_logits", None)
                if aux is not None:
                    loss = loss + config.aux_weight * loss_fn(shaped(aux, task), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip is not None:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            # accumulate on the device; one host sync per epoch instead of one per step
            loss_sum += loss.detach() * len(y)
            if kind != "regress":
                correct += (out.detach().argmax(1) == y).sum()
                positions += y.numel()
            seen += len(y)
            if step % 20 == 0 and not torch.isfinite(loss.detach()):
                raise optuna.TrialPruned(f"non-finite training loss at epoch {epoch}, step {step}")
        train_loss = float(loss_sum) / max(seen, 1)
        if not math.isfinite(train_loss):
            raise optuna.TrialPruned(f"non-finite training loss in epoch {epoch}")
        first_loss = train_loss if epoch == 1 else first_loss
        with qat.paused():  # the accuracy of the fp32 model that is kept
            val = evaluate(model, task.val, task=task)
        reason = divergence_reason(epoch, train_loss, val["loss"], first_loss, classes, config.divergence)
        if reason is not None:
            raise optuna.TrialPruned(reason)
        record = {"epoch": epoch, "train_loss": train_loss}
        if kind != "regress":
            record["train_acc"] = float(correct) / max(positions, 1)
        record.update(epoch_record(val))
        record.update({"lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - t0})
        result.curve.append(record)
        result.seconds = time.perf_counter() - start
        if on_epoch is not None:
            on_epoch(epoch, record)
    return result


# a user's train_fn reports these names; the curve keeps nasopt's
_REPORTED = {"accuracy": "val_acc", "top5": "val_top5"}


class Reporter:
    """What a user's `train_fn` calls after each epoch: `report(epoch, {"accuracy": 0.91, "f1": 0.8})`. nasopt
    appends the record to the trial's learning curve, stores it, and runs the pruners (which may stop the
    trial by raising `optuna.TrialPruned` out of `report`: let it propagate)."""

    def __init__(self, on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> None:
        self.curve: list[dict[str, float]] = []
        self._on_epoch = on_epoch

    def report(self, epoch: int, metrics: Mapping[str, float]) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1 or (
                self.curve and epoch <= self.curve[-1]["epoch"]):
            raise UserError(f"train_fn reported epoch {epoch!r}; report epochs 1, 2, ... in increasing order")
        record: dict[str, float] = {"epoch": epoch, **_numbers(metrics, f"train_fn's report for epoch {epoch}")}
        self.curve.append(record)
        if self._on_epoch is not None:
            self._on_epoch(epoch, record)


def _numbers(metrics: Any, where: str) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        raise UserError(f"{where} must be a dict of metric name -> number, but got {type(metrics).__name__}")
    out = {}
    for name, value in metrics.items():
        try:
            number = float(value.item() if isinstance(value, torch.Tensor) else value)
        except (TypeError, ValueError, RuntimeError):
            raise UserError(f"{where}: {name!r} is {type(value).__name__}, not a number") from None
        out[_REPORTED.get(str(name), str(name))] = number
    return out


def train_with(train_fn: Callable[..., Any], model: nn.Module, task: Any, config: TrainConfig, *, seed: int = 0,
               on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    """The user's own training: `train_fn(model, task, config, reporter)` trains `model` (on the task's device)
    however it likes, calls `reporter.report(epoch, metrics)` after each epoch, and returns the final metrics
    `{name: value}` (the objectives it measures: "accuracy", "val_loss" or the study's own metrics). A
    non-finite final value prunes the trial as diverged, like nasopt's own loop."""
    torch.manual_seed(seed)
    reporter = Reporter(on_epoch)
    start = time.perf_counter()
    final = _numbers(train_fn(model, task, config, reporter), "train_fn's return value")
    record = {**(reporter.curve[-1] if reporter.curve else {"epoch": config.epochs}), **final}
    bad = [k for k, v in final.items() if not math.isfinite(v)]
    if bad:
        raise optuna.TrialPruned(f"diverged: train_fn returned {bad[0]}={final[bad[0]]}")
    curve = [*reporter.curve[:-1], record] if reporter.curve else [record]
    return TrainResult(curve=curve, seconds=time.perf_counter() - start)
