"""The surrogate math of the PNAS sampler: an MLP ensemble, ridge regression, Pareto ranks, hypervolume gain.

Plain functions of numpy arrays (losses: lower is better), kept apart from the sampler's logic in
`nasopt.samplers._pnas`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from optuna._hypervolume import compute_hypervolume  # Optuna's own exact (WFG) hypervolume

__all__ = ["ensemble_predict", "ridge", "pareto_mask", "ranked", "best_hv"]


def ensemble_predict(X: np.ndarray, Y: np.ndarray, Xq: np.ndarray, *, members: int, steps: int, seed: int,
                     hidden: int = 64, lr: float = 1e-2, decay: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over `members` MLPs (d -> hidden -> K, ReLU) of their predictions at Xq.

    The members are trained at once as batched matrices, each on its own bootstrap resample, by full-batch
    Adam. Gradients are written out by hand: for these tiny tensors autograd's overhead is several times
    the arithmetic, and the sampler runs this once per trial.
    """
    g = torch.Generator().manual_seed(seed)
    y_mean, y_std = Y.mean(0), np.where(Y.std(0) > 0, Y.std(0), 1.0)
    (n, d), K, E = X.shape, Y.shape[1], members
    ones = np.ones((n, 1), dtype=np.float32)
    x = torch.as_tensor(np.hstack([X, ones]), dtype=torch.float32).expand(E, n, d + 1)  # bias folded in W1
    y = torch.as_tensor((Y - y_mean) / y_std, dtype=torch.float32)  # (n, K)
    picks = torch.randint(n, (E, n), generator=g)  # bootstrap: member e counts sample i w[e, i] times
    w = torch.zeros(E, n).scatter_add_(1, picks, torch.ones(E, n)).mul_(2.0 / (n * K)).unsqueeze(2)
    shapes = [(E, d + 1, hidden), (E, hidden, K), (E, 1, K)]
    sizes = [math.prod(s) for s in shapes]
    theta, grad = torch.zeros(sum(sizes)), torch.zeros(sum(sizes))
    W1, W2, b2 = (t.view(s) for t, s in zip(theta.split(sizes), shapes, strict=True))
    gW1, gW2, gb2 = (t.view(s) for t, s in zip(grad.split(sizes), shapes, strict=True))
    W1[:, :d].normal_(0.0, math.sqrt(2.0 / max(d, 1)), generator=g)
    W2.normal_(0.0, math.sqrt(1.0 / hidden), generator=g)
    m, v = torch.zeros_like(theta), torch.zeros_like(theta)
    with torch.no_grad():
        for t in range(1, steps + 1):
            a = torch.bmm(x, W1).clamp_min_(0.0)  # (E, n, hidden)
            g_out = torch.baddbmm(b2, a, W2).sub_(y).mul_(w)  # d(weighted mean squared error)/d(out), (E, n, K)
            torch.bmm(a.transpose(1, 2), g_out, out=gW2)
            torch.sum(g_out, 1, keepdim=True, out=gb2)
            g_a = torch.bmm(g_out, W2.transpose(1, 2)).mul_(a > 0)
            torch.bmm(x.transpose(1, 2), g_a, out=gW1)
            grad.add_(theta, alpha=decay)  # L2 weight decay
            m.lerp_(grad, 0.1)  # Adam, betas (0.9, 0.999), bias corrections folded into the step size
            v.mul_(0.999).addcmul_(grad, grad, value=0.001)
            root = math.sqrt(1 - 0.999**t)
            theta.addcdiv_(m, v.sqrt().add_(1e-8 * root), value=-lr * root / (1 - 0.9**t))
        xq = torch.as_tensor(np.hstack([Xq, np.ones((len(Xq), 1))]), dtype=torch.float32).expand(E, len(Xq), d + 1)
        out = torch.baddbmm(b2, torch.bmm(xq, W1).clamp_min_(0.0), W2).numpy()  # (E, N, K)
    out = out * y_std + y_mean
    return out.mean(0), out.std(0)


def ridge(F: np.ndarray, y: np.ndarray, Fq: np.ndarray, alpha: float = 1e-2) -> np.ndarray:
    """Ridge regression on standardised features; the prediction at Fq."""
    mu, sd = F.mean(0), F.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)  # a constant feature stays zero
    A, Aq = (F - mu) / sd, (Fq - mu) / sd
    w = np.linalg.solve(A.T @ A + alpha * len(F) * np.eye(A.shape[1]), A.T @ (y - y.mean()))
    return Aq @ w + y.mean()


def pareto_mask(Z: np.ndarray) -> np.ndarray:
    """Mask of the rows of Z (losses) that no other row dominates."""
    le = (Z[None, :, :] <= Z[:, None, :]).all(2)  # le[i, j]: row j is nowhere worse than row i
    lt = (Z[None, :, :] < Z[:, None, :]).any(2)
    return ~np.any(le & lt, axis=1)


def ranked(Z: np.ndarray, n: int) -> list[int]:
    """The first `n` rows of Z by non-dominated front, then by the first column."""
    order: list[int] = []
    rest = np.arange(len(Z))
    while len(order) < n and len(rest):
        on = pareto_mask(Z[rest])
        front = rest[on]
        order += front[np.argsort(Z[front, 0], kind="stable")].tolist()
        rest = rest[~on]
    return order[:n]


def best_hv(Z_obs: np.ndarray, Z_cand: np.ndarray) -> int:
    """Index of the candidate with the largest hypervolume improvement over the observed front."""
    if Z_cand.shape[1] == 1:
        return int(np.argmin(Z_cand[:, 0]))
    both = np.vstack([Z_obs, Z_cand])
    lo, span = both.min(0), np.ptp(both, 0)
    span = np.where(span > 0, span, 1.0)
    front, cand = (Z_obs - lo) / span, (Z_cand - lo) / span
    front = front[pareto_mask(front)]
    ref = np.full(Z_cand.shape[1], 1.1)
    base = compute_hypervolume(front, ref)
    gain = np.array([compute_hypervolume(np.vstack([front, c]), ref) - base for c in cand])
    if gain.max() > 1e-12:
        return int(np.argmax(gain))
    # all predicted dominated: the smallest shift in every objective that would put one on the front
    depth = np.max(np.min(cand[:, None, :] - front[None, :, :], axis=2), axis=1)
    return int(np.argmin(depth))
