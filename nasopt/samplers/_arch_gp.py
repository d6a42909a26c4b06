"""A Gaussian process over architectures: decisions compared by Hamming distance plus an ARD kernel over
their one-hot features, fitted by MAP with priors that suit 10-100 observations (see `ArchGP`)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import scipy.optimize
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution

__all__ = ["ArchGP", "decision_groups"]


def decision_groups(space: Mapping[str, BaseDistribution]) -> torch.Tensor:
    """(features, decisions) matrix G: ((x - x')**2) @ G is, per decision, 1 where a categorical decision
    differs (Hamming; its two differing one-hot entries weigh 1/2 each), 1/2 where it is present on one
    side only, and the squared difference of a [0, 1]-scaled number. Rows follow `encode_params`."""
    rows = []
    for j, name in enumerate(sorted(space)):
        dist = space[name]
        if isinstance(dist, CategoricalDistribution):
            rows += [(j, 0.5)] * len(dist.choices)
        else:
            rows.append((j, 1.0))
    G = torch.zeros(len(rows), len(space), dtype=torch.float64)
    for f, (j, weight) in enumerate(rows):
        G[f, j] = weight
    return G


def _matern52(r2: torch.Tensor) -> torch.Tensor:
    """Matern-5/2 correlation of squared scaled distances; finite gradients at 0 (the clamp)."""
    r = (5 * r2).clamp_min(1e-36).sqrt()
    return (1 + r + r * r / 3) * torch.exp(-r)


class ArchGP:
    """Independent GPs for the m columns of Y (n, m), batched, each with its own MAP hyperparameters.

    X (n, F) are `encode_params` features, G (F, P) their `decision_groups`. With D_j the distance of
    decision j and d_f = x_f - x'_f, outcomes standardized:

        k(x, x') = s_d Matern52(sum_j lam_j D_j) + s_f Matern52(sum_f mu_f d_f^2),   y = f(x) + noise

    The first term compares decisions (categorical ones by Hamming distance, as Optuna's GPSampler): P
    inverse squared lengthscales, a robust model from 10 observations on that lets decisions interact.
    The second is an ARD kernel over the one-hot features, a lengthscale per choice: it learns which
    choices behave alike (two cheap ops, one expensive), what additive objectives such as cost need.
    The MAP fit weighs the two through s_d and s_f. Priors (log densities up to constants):
    -0.1 (a / lam + lam / a), mode a = 5 / P, so lengthscales grow like sqrt(P) as in Hvarfner et al.
    (2024) (at P = 5 it is the prior of Optuna's GPSampler); mu^(-1/2) ~ LogNormal(sqrt(2) + log(F) / 2,
    sqrt(3)) (Hvarfner et al., botorch's default); s_d, s_f ~ Gamma(2, 1); noise ~ Gamma(1.1, 30) above
    `MIN_NOISE` (nearly deterministic objectives; a noisy training still fits). Without priors (maximum
    likelihood) the sampler fell below random search on benchmarks/bench_botorch.py. `raw` holds the logs
    of lam (P), mu (F), s_d, s_f and noise - MIN_NOISE per output: (m, P + F + 3).
    """

    MIN_NOISE = 1e-6

    def __init__(self, X: torch.Tensor, Y: torch.Tensor, G: torch.Tensor, raw: torch.Tensor | None,
                 max_iter: int) -> None:
        n, m = Y.shape
        self.X, self.G, self.P, self.F = X, G, G.shape[1], X.shape[1]
        self.loc = Y.mean(0)
        scale = Y.std(0) if n > 1 else torch.ones(m, dtype=Y.dtype)
        self.scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        self.y = ((Y - self.loc) / self.scale).T  # (m, n)
        self.X_sq = X * X
        default = torch.zeros(m, self.P + self.F + 3, dtype=torch.float64)
        default[:, -3:] = torch.tensor([math.log(0.5), math.log(0.5), math.log(1e-2)])
        starts = [raw, default] if raw is not None and raw.shape == default.shape else [default]
        for start in starts:  # the previous fit first; if the factorisation fails, the defaults
            try:
                self._factor(self._map(start, max_iter) if max_iter else start)
                return
            except (torch.linalg.LinAlgError, ValueError):
                continue
        self._factor(default)

    def _split(self, raw: torch.Tensor) -> tuple[torch.Tensor, ...]:
        theta = raw.exp()
        P, F = self.P, self.F
        return theta[:, :P], theta[:, P:P + F], theta[:, -3], theta[:, -2], theta[:, -1] + self.MIN_NOISE

    def _cov(self, A: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        """(m, N, n) prior covariances of A (N, F) and the data. sum_j lam_j D_j is the squared distance
        with feature weights G @ lam, and a weighted squared distance is |a|_w^2 + |x|_w^2 - 2 <a, x>_w:
        two matrix products instead of an (N, n, F) tensor of differences."""
        lam, mu, s_d, s_f, _ = self._split(raw)

        def r2(w: torch.Tensor) -> torch.Tensor:  # w (m, F) -> (m, N, n)
            cross = (A * w[:, None, :]) @ self.X.T
            return (((A * A) @ w.T).T[:, :, None] + (self.X_sq @ w.T).T[:, None, :] - 2 * cross).clamp_min(0)

        return (s_d[:, None, None] * _matern52(r2(lam @ self.G.T))
                + s_f[:, None, None] * _matern52(r2(mu)))

    def _chol(self, raw: torch.Tensor) -> torch.Tensor:
        noise = self._split(raw)[-1]
        eye = torch.eye(self.X.shape[0], dtype=raw.dtype)
        return torch.linalg.cholesky(self._cov(self.X, raw) + noise[:, None, None] * eye)

    def _loss(self, raw: torch.Tensor) -> torch.Tensor:
        """Negative log posterior of the hyperparameters, summed over the m independent outputs."""
        L = self._chol(raw)
        z = torch.linalg.solve_triangular(L, self.y.unsqueeze(-1), upper=False).squeeze(-1)
        nll = L.diagonal(dim1=-2, dim2=-1).log().sum() + 0.5 * (z * z).sum()
        lam, mu, s_d, s_f, noise = self._split(raw)
        a = 5.0 / self.P
        log_l, loc, sd = -0.5 * mu.log(), math.sqrt(2) + 0.5 * math.log(self.F), math.sqrt(3)
        log_prior = (-0.1 * (a / lam + lam / a).sum() - ((log_l - loc) ** 2 / (2 * sd * sd) + log_l).sum()
                     + (s_d.log() - s_d + s_f.log() - s_f).sum() + (0.1 * noise.log() - 30 * noise).sum())
        return nll - log_prior

    def _map(self, raw: torch.Tensor, max_iter: int) -> torch.Tensor:
        def loss_and_grad(x: np.ndarray) -> tuple[float, np.ndarray]:
            theta = torch.from_numpy(x).reshape(raw.shape).requires_grad_(True)
            with torch.enable_grad():
                loss = self._loss(theta)
                (grad,) = torch.autograd.grad(loss, theta)
            return loss.item(), grad.flatten().numpy()

        x0 = raw.flatten().numpy().copy()
        result = scipy.optimize.minimize(loss_and_grad, x0, jac=True, method="L-BFGS-B",
                                         bounds=[(-10.0, 10.0)] * len(x0),
                                         options={"maxiter": max_iter, "gtol": 1e-3})
        return torch.from_numpy(result.x).reshape(raw.shape)

    def _factor(self, raw: torch.Tensor) -> None:
        self.raw, self.L = raw, self._chol(raw)
        self.alpha = torch.cholesky_solve(self.y.unsqueeze(-1), self.L).squeeze(-1)  # (m, n)
        _, _, s_d, s_f, _ = self._split(raw)
        self.prior_var = s_d + s_f  # k(x, x)

    def posterior(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std), each (N, m), of the latent functions at X (N, F), in chunks of 256 rows."""
        means, stds = [], []
        for chunk in X.split(256):
            k = self._cov(chunk, self.raw)  # (m, N, n)
            mean = (k @ self.alpha.unsqueeze(-1)).squeeze(-1)
            V = torch.linalg.solve_triangular(self.L, k.transpose(-1, -2), upper=False)  # (m, n, N)
            var = (self.prior_var[:, None] - (V * V).sum(-2)).clamp_min(1e-12)
            means.append(mean.T * self.scale + self.loc)
            stds.append(var.sqrt().T * self.scale)
        return torch.cat(means), torch.cat(stds)
