"""Retrain an architecture from scratch with the full schedule, and a ResNet-18 baseline beside it.

The full schedule is the study's `TrainConfig` (SGD or Adam, cosine to zero, label smoothing, gradient
clipping) for more epochs, plus the standard augmentation of image datasets, and for cell networks
(DARTS-style spaces) the auxiliary head and drop path their papers train with. Accuracy is reported on
the held-out TEST split, which no search ever looked at.

Augmentation happens on the device, batched: the training split is wrapped so each shuffled batch is
randomly cropped (padding of 1/8 of the side with zeros of the normalised input, i.e. the mean
colour, then a random window of the original size, one offset per sample) and, where mirror images are the same class, flipped left-right with probability
0.5. Digits and MNIST are not flipped (a mirrored 2 is no 2), 8x8 digits are too small to crop, and
1-D signals are left alone.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import optuna
import torch
from torch import Tensor, nn

from nasopt.data import Split
from nasopt.errors import UserError
from nasopt.train import TrainConfig, evaluate, train

__all__ = ["AUGMENTATIONS", "augmentation_for", "AugmentedSplit", "augment", "resnet18", "retrain"]

AUGMENTATIONS = ("none", "crop", "crop+flip")
_FLIP = ("cifar10", "cifar100", "imagefolder", "fashion_mnist")  # mirror images keep their class
_CROP = (*_FLIP, "mnist")


def augmentation_for(dataset: str, input_shape: tuple[int, ...]) -> str:
    """The standard augmentation of `dataset`: crop+flip for natural images, crop for MNIST, else none."""
    if len(input_shape) != 3 or min(input_shape[1:]) < 16:
        return "none"
    return "crop+flip" if dataset in _FLIP else "crop" if dataset in _CROP else "none"


def augment(x: Tensor, kind: str, generator: torch.Generator) -> Tensor:
    """Random crop after zero padding (pad = side // 8) and/or a left-right flip, per sample; x (N, C, H, W)."""
    if kind == "none":
        return x
    N, _, H, W = x.shape
    if "crop" in kind:
        pad = max(1, min(H, W) // 8)
        padded = nn.functional.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (N,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (N,), generator=generator).to(x.device)
        rows = (dy[:, None] + torch.arange(H, device=x.device))[:, None, :, None]  # (N, 1, H, 1)
        cols = (dx[:, None] + torch.arange(W, device=x.device))[:, None, None, :]  # (N, 1, 1, W)
        n = torch.arange(N, device=x.device)[:, None, None, None]
        c = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[n, c, rows, cols]
    if "flip" in kind:
        flip = (torch.rand(N, generator=generator) < 0.5).to(x.device)[:, None, None, None]
        x = torch.where(flip, x.flip(-1), x)
    return x


@dataclasses.dataclass(frozen=True, eq=False)
class AugmentedSplit(Split):
    """A training split whose shuffled batches are augmented (unshuffled ones, for evaluation, are not)."""

    base: Split
    kind: str
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in AUGMENTATIONS:
            raise UserError(f"unknown augmentation {self.kind!r}; choose one of {', '.join(AUGMENTATIONS)}")
        object.__setattr__(self, "_generator", torch.Generator().manual_seed(self.seed))

    def __len__(self) -> int:
        return len(self.base)

    @property
    def targets(self) -> Tensor:
        return self.base.targets

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in self.base.batches(batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last):
            yield (augment(x, self.kind, self._generator) if shuffle else x), y  # type: ignore[attr-defined]


def resnet18(task: Any) -> nn.Module:
    """torchvision's ResNet-18 for the task's images and classes: the first conv takes the task's
    channels; below 64 pixels a side it is a 3x3 stride-1 conv without the max pool (the usual CIFAR
    adaptation, else an 8x8 image would be 1x1 after the stem)."""
    from torchvision.models import resnet18 as tv_resnet18

    shape = tuple(task.input_shape)
    if len(shape) != 3:
        raise UserError(f"ResNet-18 needs images (C, H, W), but {task.name} has input shape {shape}; "
                        "compare on an image dataset")
    model = tv_resnet18(weights=None, num_classes=task.num_classes)
    if min(shape[1:]) < 64:
        model.conv1 = nn.Conv2d(shape[0], 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    else:
        model.conv1 = nn.Conv2d(shape[0], 64, 7, 2, 3, bias=False)
    return model



def retrain(model: nn.Module, task: Any, config: TrainConfig, *, augmentation: str = "none", seed: int = 0,
            on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Train `model` (on the task's device) from its current weights with `config` and `augmentation`,
    then evaluate it on the validation and TEST splits."""
    torch.manual_seed(seed)
    if augmentation != "none":
        task = dataclasses.replace(task, train=AugmentedSplit(task.train, augmentation, seed))
    t0 = time.perf_counter()
    try:
        result = train(model, task, config, seed=seed, on_epoch=on_epoch)
    except optuna.TrialPruned as e:  # outside a study a diverged run is the settings' fault: say which to change
        raise UserError(f"training stopped: {e}; retrain with a smaller --lr (it was {config.lr:g})") from None
    seconds = time.perf_counter() - t0
    val, test = evaluate(model, task.val, task=task), evaluate(model, task.test, task=task)
    # val_acc, val_loss, ... and test_acc, test_loss, ...: the accuracy where the task has classes, and the
    # user's metrics by name (val_f1, test_f1)
    out: dict[str, Any] = {f"val_{k}": v for k, v in val.items()}
    out.update({f"test_{k}": v for k, v in test.items()})
    out.update({"train_s": round(seconds, 2), "epochs": config.epochs, "curve": result.curve})
    return out
