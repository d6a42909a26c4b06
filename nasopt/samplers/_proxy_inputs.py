"""Zero-cost proxies as extra inputs of a predictor (`PNASSampler(proxy_inputs=...)`).

PNAS predicts a candidate's accuracy from `space.encode(arch)`. On nano-bench, appending the proxies of the
untrained network (naswot, log synflow) to that encoding brings the optimum ~25 % sooner
(benchmarks/bench_proxy_inputs.py). A proxy costs milliseconds to a second per network while a pool holds
~1,250 candidates per trial, so only a shortlist is scored: the predictor without proxies ranks the pool as
before, the best `shortlist` candidates and the finished trials get their proxies (computed once per
architecture, cached), and a second predictor over encoding + proxies chooses among the shortlist.

The proxies come from a scoring rule the runner hands over (`use_proxies`): the network built on the
study's task with a fixed seed, scored on one fixed training batch (`nasopt.study._proxies.proxy_scorer`).
Each proxy enters as one column: synflow on log scale (it spans decades), every column standardised over the
architectures scored so far, so the predictor sees comparable ranges whatever the space.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from nasopt.errors import UserError
from nasopt.measure._proxies import PROXIES
from nasopt.samplers._surrogate import ranked

__all__ = ["ProxyInputs", "ProxyReader", "Scorer"]

Scorer = Callable[[Mapping[str, Any]], "Mapping[str, float] | None"]
_LOG = ("synflow", "snip", "grad_norm")  # saliency sums: positive, spanning decades
_MAX_CACHED = 100_000


class ProxyInputs:
    """The proxy columns of a predictor's inputs: which proxies, how many candidates get them, the cache."""

    def __init__(self, names: Iterable[str] | str, shortlist: int) -> None:
        if isinstance(names, str):  # proxy_inputs="naswot": one proxy, not five letters
            names = [names]
        if not all(isinstance(n, str) for n in names):
            raise UserError(f"`proxy_inputs` must be proxy names like ('synflow', 'naswot'), but got {names!r}")
        names = list(dict.fromkeys(names))
        unknown = [n for n in names if n not in PROXIES]
        if unknown:
            raise UserError(f"unknown zero-cost proxy {unknown[0]!r} in proxy_inputs; known proxies: "
                            f"{', '.join(PROXIES)}")
        if not names:
            raise UserError("`proxy_inputs` names no proxy; leave it out to predict from the encoding alone")
        if not isinstance(shortlist, int) or shortlist < 2:
            raise UserError(f"`proxy_shortlist >= 2` must hold, but got proxy_shortlist={shortlist!r}")
        self.names, self.shortlist = names, shortlist
        self._scorer: Scorer | None = None
        self.used = False  # whether the last prediction read the proxies
        self._cache: dict[Any, np.ndarray | None] = {}  # arch key -> raw columns (None: cannot be scored)

    @property
    def ready(self) -> bool:
        """True once the runner (or the user) gave the scoring rule."""
        return self._scorer is not None

    def use(self, scorer: Scorer | None) -> None:
        self._scorer, self.used = scorer, False
        self._cache.clear()

    def _raw(self, arch: Mapping[str, Any], key: Any) -> np.ndarray | None:
        if key not in self._cache:
            if len(self._cache) > _MAX_CACHED:
                self._cache.clear()
            assert self._scorer is not None
            scores = self._scorer(arch)
            row = None
            if scores is not None:
                values = [float(scores[n]) for n in self.names]
                values = [math.log(max(v, 0.0) + 1e-30) if n in _LOG else v for n, v in zip(self.names, values,
                                                                                         strict=True)]
                row = np.asarray(values, dtype=np.float64) if all(math.isfinite(v) for v in values) else None
            self._cache[key] = row
        return self._cache[key]

    def columns(self, archs: Sequence[Mapping[str, Any]], keys: Sequence[Any], *, unit: bool = False
                ) -> np.ndarray | None:
        """The proxy columns of `archs` (rows in order), standardised over the architectures scored so far
        (`unit`: min-max scaled to [0, 1] instead, as a GP's numeric decisions are), or None when one cannot
        be scored (the model then goes on without proxies)."""
        rows = [self._raw(a, k) for a, k in zip(archs, keys, strict=True)]
        if any(r is None for r in rows):
            return None
        known = np.stack([r for r in self._cache.values() if r is not None])
        if unit:
            low, span = known.min(axis=0), np.ptp(known, axis=0)
            return (np.stack(rows) - low) / np.where(span > 1e-12, span, 1.0)  # type: ignore[arg-type]
        mean, std = known.mean(axis=0), known.std(axis=0)
        return ((np.stack(rows) - mean) / np.where(std > 1e-12, std, 1.0)).astype(np.float32)  # type: ignore[arg-type]

    def rerank(self, predict: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
               X_obs: np.ndarray, observed: Sequence[Mapping[str, Any]], observed_keys: Sequence[Any], X: np.ndarray,
               archs: Sequence[Mapping[str, Any]], keys: Sequence[Any], index: np.ndarray, score: np.ndarray,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The shortlist of `index` (the `shortlist` best by `score`, the encoding-only prediction) predicted
        again from encoding + proxies: (its index, mean, optimistic score), or None when a proxy cannot be
        scored. `predict(X_obs, X_new)` fits the predictor to the observed trials and returns (mean, score)."""
        keep = np.asarray(ranked(score, self.shortlist), dtype=int)
        short = index[keep]
        P = self.columns([*observed, *(archs[i] for i in short)], [*observed_keys, *(keys[i] for i in short)])
        if P is None:
            return None
        n = len(observed)
        mean, new_score = predict(np.hstack([X_obs, P[:n]]), np.hstack([X[short], P[n:]]))
        return short, mean, new_score


class ProxyReader:
    """What a sampler reading zero-cost proxies shows the runner: `proxy_inputs` and `use_proxies`."""

    _proxies: ProxyInputs | None = None

    @property
    def proxy_inputs(self) -> list[str]:
        """The zero-cost proxies the model reads (empty: the encoding alone)."""
        return list(self._proxies.names) if self._proxies is not None else []

    def use_proxies(self, scorer: Scorer | None) -> None:
        """The rule scoring an architecture's proxies (arch -> {name: score}, None if it cannot be scored);
        `nasopt run` gives it (`nasopt.study._proxies.give_proxies`)."""
        if self._proxies is not None:
            self._proxies.use(scorer)
