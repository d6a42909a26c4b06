"""The data and the metric of studies/signal_regression.py, written as a user writes their own: plain torch.

Each sample is a noisy 1-D signal of LENGTH steps, one sinusoid of random frequency, amplitude and phase in
Gaussian noise; the network predicts two numbers, the sinusoid's frequency and its amplitude, both scaled to
about zero mean and unit variance (`FREQ` cycles per window map to -1.7..1.7, `AMP` to -1.7..1.7). The data is
generated in memory from a fixed seed, so every run (and every worker) gets the same samples.

    from signals import make_datasets, r2
    train, val, test = make_datasets()     # TensorDatasets of x (N, 1, 64) float32, y (N, 2) float32
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import TensorDataset

__all__ = ["make_datasets", "r2", "mae", "LENGTH", "FREQ", "AMP"]

LENGTH = 64              # steps per signal
FREQ = (2.0, 12.0)       # cycles per window
AMP = (0.5, 2.0)         # amplitude of the sinusoid
NOISE = 0.3              # standard deviation of the added noise
SIZES = (1200, 400, 400)  # train, val, test


def _scaled(v: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """A uniform value in [lo, hi] scaled to zero mean and unit variance."""
    return (v - (lo + hi) / 2) / ((hi - lo) / math.sqrt(12))


def _signals(n: int, generator: torch.Generator) -> TensorDataset:
    freq = FREQ[0] + (FREQ[1] - FREQ[0]) * torch.rand(n, generator=generator)
    amp = AMP[0] + (AMP[1] - AMP[0]) * torch.rand(n, generator=generator)
    phase = 2 * math.pi * torch.rand(n, generator=generator)
    t = torch.arange(LENGTH) / LENGTH
    x = amp[:, None] * torch.sin(2 * math.pi * freq[:, None] * t + phase[:, None])
    x = x + NOISE * torch.randn(n, LENGTH, generator=generator)
    y = torch.stack([_scaled(freq, *FREQ), _scaled(amp, *AMP)], dim=1)
    return TensorDataset(x[:, None, :].float(), y.float())


def make_datasets(seed: int = 0) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """(train, val, test): x (N, 1, LENGTH) float32, y (N, 2) float32 = (frequency, amplitude), scaled."""
    generator = torch.Generator().manual_seed(seed)
    train, val, test = (_signals(n, generator) for n in SIZES)
    return train, val, test


def r2(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """The coefficient of determination over the whole split, averaged over the targets: 1 is perfect,
    0 is predicting each target's mean."""
    outputs, targets = outputs.reshape(len(outputs), -1).double(), targets.reshape(len(targets), -1).double()
    residual = ((outputs - targets) ** 2).sum(0)
    total = ((targets - targets.mean(0)) ** 2).sum(0)
    return float((1 - residual / total).mean())


def mae(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """The mean absolute error over every target value (in the scaled units)."""
    return float((outputs - targets).abs().mean())
