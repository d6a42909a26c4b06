"""The acquisition functions of the pool sampler (`nasopt.samplers._botorch`): analytic log expected
improvement for one objective, Monte-Carlo log expected improvement of a random Chebyshev scalarisation
(ParEGO) for several, on botorch's numerically safe pieces."""

from __future__ import annotations

import math
import warnings

import torch

with warnings.catch_warnings():  # botorch/gpytorch's import-time torch.jit.script calls: noise the user cannot act on
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
    from botorch.acquisition.analytic import _log_ei_helper
    from botorch.utils.safe_math import log_softplus

__all__ = ["log_ei", "log_parego"]


def log_ei(mu: torch.Tensor, sigma: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """Analytic log expected improvement over `best` of N Gaussians, mu and sigma (N, 1) -> (N,)."""
    return (_log_ei_helper((mu - best) / sigma) + sigma.log()).squeeze(-1)


def log_parego(mu: torch.Tensor, sigma: torch.Tensor, Y: torch.Tensor, weights: torch.Tensor,
                base: torch.Tensor) -> torch.Tensor:
    """log expected improvement of a random augmented Chebyshev scalarisation (ParEGO, Knowles 2006).

    mu, sigma (N, m): independent posteriors of the candidates; Y (n, m): feasible observations; all
    maximised. Objectives are scaled to [0, 1] on the observed range, s(y) = min_k w_k y_k +
    0.05 sum_k w_k y_k with w drawn from the simplex per trial. s of a Gaussian is not Gaussian, so the
    expectation is a Monte-Carlo mean over the standard normal draws `base` (S, 1, m), the same for
    every candidate (common random numbers), with botorch's smoothed log-ReLU so that candidates without
    a sampled improvement still rank.
    """
    low, span = Y.min(0).values, (Y.max(0).values - Y.min(0).values).clamp_min(1e-9)

    def chebyshev(y: torch.Tensor) -> torch.Tensor:
        z = weights * (y - low) / span
        return z.min(-1).values + 0.05 * z.sum(-1)

    improvement = chebyshev(mu + sigma * base) - chebyshev(Y).max()  # (S, N)
    return torch.logsumexp(log_softplus(improvement, tau=1e-6), dim=0) - math.log(len(base))
