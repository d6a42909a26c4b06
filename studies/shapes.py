"""The data and the metric of studies/shapes_segmentation.py, written as a user writes their own: plain torch.

Each sample is a SIZE x SIZE gray image of noise with one to three filled shapes of random size, place and
brightness; its target holds one class per pixel: 0 background, 1 rectangle, 2 disc, 3 triangle (a later
shape covers an earlier one). The class of a pixel is told by its shape's outline, not its brightness, so
the network must see the whole shape around a pixel. The data is generated in memory from a fixed seed, so
every run (and every worker) gets the same images.

    from shapes import make_datasets, miou
    train, val, test = make_datasets()     # TensorDatasets of x (N, 1, 16, 16) float32, y (N, 16, 16) int64
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

__all__ = ["make_datasets", "miou", "CLASSES", "SIZE"]

SIZE = 16                                               # pixels per side
CLASSES = ("background", "rectangle", "disc", "triangle")
NOISE = 0.3                                             # standard deviation of the background noise
SIZES = (1000, 300, 300)                                # train, val, test


def _shape(kind: int, size: int, g: torch.Generator) -> torch.Tensor:
    """A boolean SIZE x SIZE mask of one shape of class `kind` (1..3), `size` pixels across."""
    top, left = (int(torch.randint(0, SIZE - size + 1, (1,), generator=g)) for _ in range(2))
    r, c = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    r, c = (r - top).float(), (c - left).float()  # coordinates inside the shape's box
    inside = (r >= 0) & (r < size) & (c >= 0) & (c < size)
    if kind == 1:    # a rectangle: the box, its height cut by up to a third
        cut = int(torch.randint(0, size // 3 + 1, (1,), generator=g))
        return inside & (r < size - cut)
    half = (size - 1) / 2
    if kind == 2:    # a disc in the box
        return (r - half) ** 2 + (c - half) ** 2 <= (half + 0.3) ** 2
    # a triangle standing on the box's bottom edge, its apex at the top centre
    return inside & ((c - half).abs() <= (r + 0.5) * half / size + 0.25)


def _images(n: int, g: torch.Generator) -> TensorDataset:
    x = NOISE * torch.randn(n, 1, SIZE, SIZE, generator=g)
    y = torch.zeros(n, SIZE, SIZE, dtype=torch.int64)
    for i in range(n):
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            kind = int(torch.randint(1, len(CLASSES), (1,), generator=g))
            mask = _shape(kind, int(torch.randint(5, 9, (1,), generator=g)), g)
            brightness = 0.6 + 0.6 * float(torch.rand((), generator=g))
            x[i, 0][mask] = brightness + NOISE * torch.randn(int(mask.sum()), generator=g)
            y[i][mask] = kind
    return TensorDataset(x, y)


def make_datasets(seed: int = 0) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """(train, val, test): x (N, 1, SIZE, SIZE) float32, y (N, SIZE, SIZE) int64 classes 0..3."""
    g = torch.Generator().manual_seed(seed)
    train, val, test = (_images(n, g) for n in SIZES)
    return train, val, test


def miou(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean intersection over union of the predicted classes (argmax of the (N, K, H, W) logits) and the
    (N, H, W) targets, over the classes present in either."""
    predicted = outputs.argmax(1)
    ious = []
    for k in range(outputs.shape[1]):
        p, t = predicted == k, targets == k
        union = int((p | t).sum())
        if union:
            ious.append(int((p & t).sum()) / union)
    return sum(ious) / len(ious)
