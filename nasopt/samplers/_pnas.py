"""PNAS: a predictor-guided, progressive sampler (Liu et al. 2018, "Progressive Neural Architecture Search").

The whole architecture of a trial is decided at its first `suggest` and stored in the trial's system
attrs (`pnas:arch`, with how it was chosen in `pnas:info`), so define-by-run conditional spaces work
and a trial continued in another process keeps its architecture. One decision:

1. pool: `n_candidates` random architectures drawn through the space's own `suggest` (a stand-in
   trial that draws each decision), plus one-decision mutations of the incumbent (the best trial, or
   every Pareto-optimal one); architectures already tried or running are dropped.
2. progressive: only the lowest-complexity fraction of the pool is allowed. Complexity is the number of
   active decisions (the depth of a variable-depth space), ties broken by log(params) as estimated by a
   ridge fit to the exact counts of the networks built so far. The fraction is `start_fraction` for the
   `n_startup_trials` random (hence simplest and smallest) architectures and widens linearly to the full
   space over the next `grow_trials` finished trials.
3. predict: an ensemble of `ensemble` one-hidden-layer MLPs over `space.encode(arch)`, each trained
   on a bootstrap resample of the COMPLETE trials, predicts the learned objectives and scores a
   candidate by mean + kappa * std (towards better): a mild optimism bonus for what the members
   disagree on, i.e. what the trials so far say little about. With the study's `metric_names`,
   `params` and `macs` are counted EXACTLY on the built candidate when `input_shape` is given (cached
   per architecture); `latency_ms`, `memory_mb` (and `params`/`macs` without `input_shape`, counted on
   a reference 3x32x32 input) come from a ridge regressor on log scale over [log params, log MACs,
   number of decisions] of the finished trials. Every other objective is learned by the ensemble: all
   of them when the study has no metric names (no accuracy to single out) or the sampler no space.
4. choose: one objective -> the best score. Several -> a shortlist (`n_shortlist`, by non-dominated
   rank of the learned scores and the complexity) is built and counted, and the candidate with the
   largest predicted hypervolume improvement over the observed Pareto front wins (objectives min-max
   normalised, cost metrics on log scale); if all are predicted dominated, the one closest to the front.

Zero-cost proxies (`proxy_inputs`): the predictor's shortlist is predicted again with the proxies of the
untrained networks appended to their encodings (`nasopt.samplers._proxy_inputs`; the runner gives the rule).

Hard limits (`use_limits`, which the runner calls with the study's counted limits): candidates are taken in
the order the steps above prefer them (at random at startup, by score after) and one over a limit is passed
over; each is counted when it comes up (cached), at most `max_counted` per trial, so a real space builds a
few networks per trial, not the pool. Where none counted fits, the one that breaks them least is proposed.

Without a space (`space=None`): a generic sampler over the union of the distributions the study has seen
(`encode_params`, no progressive stage); a name it did not decide is drawn at random."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from optuna.distributions import BaseDistribution
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from nasopt.errors import UserError
from nasopt.measure._metrics import count_macs, count_params
from nasopt.samplers._base import MISSING, ArchSampler, fit_value
from nasopt.samplers._limits import Limits
from nasopt.samplers._proxy_inputs import ProxyInputs, ProxyReader
from nasopt.samplers._standin import StandInTrial, chooser
from nasopt.samplers._surrogate import best_hv, ensemble_predict, pareto_mask, ranked, ridge
from nasopt.space import encode_params

__all__ = ["PNASSampler"]

ARCH_KEY, INFO_KEY = "pnas:arch", "pnas:info"
_COSTS = ("params", "macs", "latency_ms", "memory_mb")  # positive metrics, modelled on log scale
_REFERENCE_SHAPE = (3, 32, 32)


def _key(arch: Mapping[str, Any]) -> tuple[Any, ...]:
    """A hashable identity of an architecture (names are unique, so values are never compared)."""
    return tuple(sorted(arch.items()))


@dataclass(frozen=True)
class _Task:
    """What `space.build` reads of a task."""

    input_shape: tuple[int, ...]
    num_classes: int


@dataclass(frozen=True)
class _Objectives:
    """The study's objectives as losses (lower is better; cost metrics on log scale) and how each is predicted:
    `exact` (counted on the built network), `cost` (ridge regressor) or `learned` (the MLP ensemble)."""

    names: list[str]
    signs: list[float]
    logs: list[bool]
    kinds: list[str]

    def loss(self, k: int, value: float) -> float:
        return self.signs[k] * (math.log1p(max(value, 0.0)) if self.logs[k] else value)

    def value(self, k: int, loss: float) -> float:
        return float(math.expm1(self.signs[k] * loss) if self.logs[k] else self.signs[k] * loss)


class PNASSampler(ArchSampler, ProxyReader):
    """Predictor-guided progressive architecture search (the algorithm is in the module docstring).

    Args:
        space: the study's search space; None for a generic sampler over the observed distributions.
        n_startup_trials: COMPLETE trials (at least 2) before the predictor is used.
        n_candidates: random architectures screened per trial (plus a quarter as many mutations).
        ensemble: MLPs in the predictor ensemble; `train_steps` Adam steps train them.
        input_shape, num_classes: the task the networks are built for, for exact params and MACs.
        kappa: the optimism bonus, in ensemble standard deviations.
        start_fraction, grow_trials: the progressive schedule (see the module docstring).
        n_shortlist: candidates built, counted and compared by hypervolume with several objectives.
        seed: seeds the candidates, the predictor and the random fallback.
        max_counted: candidates counted per trial at most against the study's limits (`use_limits`).
        proxy_inputs: zero-cost proxies (e.g. ("naswot",)) the predictor also reads, for the `proxy_shortlist`
            candidates it ranks best without them (module docstring); `nasopt run` gives the scoring rule.
    """

    attr_key = ARCH_KEY

    def __init__(self, space: Any = None, *, n_startup_trials: int = 10, n_candidates: int = 1000,
                 ensemble: int = 5, input_shape: Sequence[int] | None = None, num_classes: int = 10,
                 kappa: float = 0.5, train_steps: int = 200, start_fraction: float = 0.1,
                 grow_trials: int = 20, n_shortlist: int = 12, seed: int | None = None,
                 max_counted: int = 1024, proxy_inputs: Sequence[str] | None = None,
                 proxy_shortlist: int = 64) -> None:
        if space is not None and not all(callable(getattr(space, m, None)) for m in ("suggest", "build", "encode")):
            raise UserError(f"`space` must be a search space (suggest, build, encode) or None, but got {space!r}")
        ints = {"n_startup_trials": (n_startup_trials, 0), "n_candidates": (n_candidates, 1),
                "ensemble": (ensemble, 1), "num_classes": (num_classes, 1), "train_steps": (train_steps, 1),
                "grow_trials": (grow_trials, 0), "n_shortlist": (n_shortlist, 1), "max_counted": (max_counted, 1)}
        for name, (value, low) in ints.items():
            if not isinstance(value, int) or value < low:
                raise UserError(f"`{name} >= {low}` must hold for PNASSampler, but got {name}={value!r}")
        if not 0 < start_fraction <= 1 or kappa < 0:
            raise UserError("`0 < start_fraction <= 1` and `kappa >= 0` must hold for PNASSampler, but got "
                            f"start_fraction={start_fraction!r}, kappa={kappa!r}")
        if input_shape is not None and (not input_shape or any(int(s) < 1 for s in input_shape)):
            raise UserError(f"`input_shape` must be positive sizes like (3, 32, 32), but got {input_shape!r}")
        self._space, self._n_startup, self._n_candidates = space, n_startup_trials, n_candidates
        self._members, self._kappa, self._steps = ensemble, kappa, train_steps
        self._start, self._grow, self._n_shortlist = start_fraction, grow_trials, n_shortlist
        self._exact = input_shape is not None  # counts on the real input; else on a reference input
        self._task = _Task(tuple(int(s) for s in input_shape or _REFERENCE_SHAPE), num_classes)
        self._can_count = space is not None
        self._decisions = set(space.distributions()) if space is not None and hasattr(space, "distributions") else set()
        super().__init__(fallback_seed=None if seed is None else seed + 1)
        self._rng = np.random.default_rng(seed)
        self._built: dict[Any, dict[str, Any]] = {}  # arch key -> {"x": encoding, "params": n, "macs": n}
        self._encoded: dict[Any, np.ndarray] = {}  # arch key -> space.encode(arch)
        self._dists: dict[tuple[Any, ...], BaseDistribution] = {}
        self._limits: Limits | None = None
        self._max_counted = max_counted
        self._proxies = ProxyInputs(proxy_inputs, proxy_shortlist) if proxy_inputs is not None else None
        if self._proxies is not None and space is None:
            raise UserError("PNASSampler(proxy_inputs=...) scores built networks: it needs the space")

    def use_limits(self, limits: Limits | None) -> None:
        """Propose only candidates within `limits` where it can (module docstring); None: no limits."""
        self._limits = limits

    def _fitting(self, archs: list[dict[str, Any]], order: Sequence[int], n: int) -> list[int]:
        """The first `n` of `order` (indices into `archs`) within the limits, counted as they come up (at most
        `max_counted`); where none of those fits, the `n` counted ones that break the limits least."""
        if self._limits is None:
            return [int(i) for i in order[:n]]
        return self._limits.first(archs, order, n, at_most=self._max_counted)

    def reseed_rng(self) -> None:
        self._rng = np.random.default_rng()
        super().reseed_rng()

    # -- one decision ----------------------------------------------------------------------------
    def decide(self, study: Study, trial: FrozenTrial) -> tuple[dict[str, Any], dict[str, Any]]:
        """The trial's architecture (stored under `pnas:arch`) and how it was chosen (under `pnas:info`)."""
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None
                    and all(math.isfinite(v) for v in t.values)]
        n_done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        startup = len(complete) < max(self._n_startup, 2)
        fraction = self._fraction(n_done)
        if self._space is None and startup:
            return {}, {INFO_KEY: {"stage": "startup"}}  # every parameter drawn at random
        pinned = {**trial.system_attrs.get("fixed_params", {}), **trial.params}
        union: dict[str, BaseDistribution] = {}
        for t in trials:
            union.update(t.distributions)
        draws = [self._new_arch(union, pinned) for _ in range(self._n_candidates)]
        obj = self._objectives(study)
        losses = np.array([[obj.loss(k, v) for k, v in enumerate(t.values)] for t in complete])
        losses = losses.reshape(len(complete), len(obj.kinds))
        mutants = [] if startup else self._mutations(complete, losses, union, pinned)
        pool = {_key(a): a for a in draws + mutants}  # unique; the random draws keep their order first
        seen = {_key(t.params) for t in trials if t.params}
        seen |= {_key(t.system_attrs[ARCH_KEY]) for t in trials if ARCH_KEY in t.system_attrs}
        keys = [k for k in pool if k not in seen] or list(pool)
        archs = [pool[k] for k in keys]
        X = np.stack([self._encode(a, k, union) for a, k in zip(archs, keys, strict=True)])
        complexity = self._complexity(archs, keys, X)
        allowed = np.ones(len(archs), dtype=bool)
        if complexity is not None and fraction < 1:
            random_keys = {_key(a) for a in draws}
            reference = complexity[[k in random_keys for k in keys]]
            if len(reference):
                allowed = complexity <= np.quantile(reference, fraction) + 1e-9
        info: dict[str, Any] = {"stage": "startup" if startup else "predictor", "fraction": round(fraction, 4)}
        index = np.flatnonzero(allowed)
        if startup:
            chosen = (int(self._rng.choice(index)) if self._limits is None
                      else self._fitting(archs, self._rng.permutation(index).tolist(), 1)[0])
        else:
            if self._proxies is not None:
                self._proxies.used = False
            chosen, info["predicted"] = self._propose(obj, complete, losses, archs, keys, X, complexity, index, union)
            if self._proxies is not None:  # which proxies the choice read (none: no scoring rule, or unscorable)
                info["proxy_inputs"] = self._proxies.names if self._proxies.used else []
        if complexity is not None:
            self._count(archs[chosen], keys[chosen])  # one more exact point for the size estimate
        return archs[chosen], {INFO_KEY: info}

    def _fraction(self, n_done: int) -> float:
        """The allowed lowest-complexity share of the pool after `n_done` finished trials."""
        if self._space is None:
            return 1.0
        grown = n_done - self._n_startup
        if grown >= self._grow:
            return 1.0
        return self._start + (1 - self._start) * max(0, grown) / self._grow

    def _new_arch(self, union: Mapping[str, BaseDistribution], pinned: Mapping[str, Any],
                  base: Mapping[str, Any] | None = None, redraw: str | None = None) -> dict[str, Any]:
        """An architecture by `chooser`'s rule, through the space's `suggest` (else over `union` by name)."""
        trial = StandInTrial(chooser(self._rng, pinned, base, redraw), self._dists)
        if self._space is None:
            for name in sorted(union):
                trial.take(name, union[name])
        else:
            self._space.suggest(trial)
        return trial.params

    def _mutations(self, complete: list[FrozenTrial], losses: np.ndarray, union: Mapping[str, BaseDistribution],
                   pinned: Mapping[str, Any]) -> list[dict[str, Any]]:
        """One-decision mutations of the incumbents (the best trial; the Pareto front with several objectives)."""
        parents = ([complete[int(np.argmin(losses[:, 0]))]] if losses.shape[1] == 1
                   else [complete[i] for i in np.flatnonzero(pareto_mask(losses))])
        out = []
        for _ in range(max(1, self._n_candidates // 4)):
            parent = parents[int(self._rng.integers(len(parents)))].params
            names = sorted(n for n in parent if n in (self._decisions or union)) or sorted(parent)
            redraw = names[int(self._rng.integers(len(names)))]
            out.append(self._new_arch(union, pinned, base=parent, redraw=redraw))
        return out

    def _encode(self, arch: Mapping[str, Any], key: Any, union: Mapping[str, BaseDistribution]) -> np.ndarray:
        if self._space is not None:
            x = self._encoded.get(key)
            if x is None:
                if len(self._encoded) > 100_000:
                    self._encoded.clear()
                x = self._encoded[key] = np.asarray(self._space.encode(arch), dtype=np.float32)
            return x
        # keep only values the current distributions contain (a study's ranges may change)
        return encode_params({n: v for n, v in arch.items() if n in union and fit_value(union[n], v) is not MISSING},
                             union)

    # -- exact counts and complexity ---------------------------------------------------------------
    def _count(self, arch: Mapping[str, Any], key: Any, macs: bool = False) -> dict[str, Any] | None:
        """Params (and MACs) of the built network, cached per architecture; None if it cannot be built."""
        entry = self._built.get(key)
        if self._can_count and (entry is None or (macs and "macs" not in entry)):
            try:
                with torch.random.fork_rng(devices=[]), torch.no_grad():  # leave the caller's RNG alone
                    model = self._space.build(arch, self._task)
                    entry = {"x": np.asarray(self._space.encode(arch), dtype=np.float32),
                             "params": count_params(model), "active": len(arch)}
                    if macs:
                        entry["macs"] = count_macs(model, self._task.input_shape)
            except Exception as e:  # only the reference input may not suit the space
                if self._exact:
                    raise
                warnings.warn(f"PNASSampler cannot build on the reference input {self._task.input_shape} "
                              f"({type(e).__name__}: {e}); pass input_shape=... for exact params/MACs", stacklevel=2)
                self._can_count = False
                return None
            self._built[key] = entry
        return entry

    def _complexity(self, archs: list[dict[str, Any]], keys: list[Any], X: np.ndarray) -> np.ndarray | None:
        """Number of active decisions (depth, as PNAS grows cells block by block), ties broken by log(params).

        log(params) is estimated for the whole pool by a ridge fit over encodings to the exact counts of
        the networks built so far (24 random ones at first, then every chosen one), min-max scaled
        into [0, 1) so it only orders architectures with the same number of decisions.
        """
        if self._space is None:
            return None
        active = np.array([len(a) for a in archs], dtype=float)
        for i in range(min(len(archs), max(0, 24 - len(self._built)))):  # a first calibration set, once
            self._count(archs[i], keys[i])
        if not self._can_count or len(self._built) < 2:
            return active
        F = np.stack([e["x"] for e in self._built.values()])
        y = np.log(np.array([e["params"] for e in self._built.values()], dtype=float) + 1.0)
        size = ridge(F, y, X, alpha=1e-3)
        return active + 0.99 * (size - size.min()) / (np.ptp(size) + 1e-12)

    # -- prediction and choice -------------------------------------------------------------------
    def _objectives(self, study: Study) -> _Objectives:
        names = study.metric_names or []
        K = len(study.directions)
        kinds = []
        for k in range(K):
            name = names[k] if names else ""
            if self._space is None or not self._can_count or name not in _COSTS:
                kinds.append("learned")
            else:
                kinds.append("exact" if self._exact and name in ("params", "macs") else "cost")
        return _Objectives(names=list(names) if names else [f"objective{k}" for k in range(K)],
                           signs=[1.0 if d == StudyDirection.MINIMIZE else -1.0 for d in study.directions],
                           logs=[bool(names) and names[k] in _COSTS for k in range(K)], kinds=kinds)

    def _propose(self, obj: _Objectives, complete: list[FrozenTrial], losses: np.ndarray,
                 archs: list[dict[str, Any]], keys: list[Any], X: np.ndarray, complexity: np.ndarray | None,
                 index: np.ndarray, union: Mapping[str, BaseDistribution]) -> tuple[int, dict[str, Any]]:
        learned = [k for k, kind in enumerate(obj.kinds) if kind == "learned"]
        X_obs = np.stack([self._encode(t.params, _key(t.params), union) for t in complete])
        mean = score = np.zeros((len(index), 0))
        if learned:
            mean, std = ensemble_predict(X_obs, losses[:, learned], X[index], members=self._members, steps=self._steps,
                                  seed=int(self._rng.integers(2**31)))
            score = mean - self._kappa * std  # optimistic: lower loss where the members disagree
            if self._proxies is not None and self._proxies.ready:
                def predict(A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                    m, s = ensemble_predict(A, losses[:, learned], B, members=self._members, steps=self._steps,
                                            seed=int(self._rng.integers(2**31)))
                    return m, m - self._kappa * s

                again = self._proxies.rerank(predict, X_obs, [t.params for t in complete],
                                             [_key(t.params) for t in complete], X, archs, keys, index, score)
                if again is not None:
                    index, mean, score = again
                self._proxies.used = again is not None
        if len(obj.kinds) == 1 and learned:
            best = self._fitting([archs[i] for i in index], np.argsort(score[:, 0], kind="stable").tolist(), 1)[0]
            return int(index[best]), {obj.names[0]: obj.value(0, float(mean[best, 0]))}
        ranking = score
        if complexity is not None and len(learned) < len(obj.kinds):
            ranking = np.column_stack([score, complexity[index]])
        if ranking.shape[1] == 0:
            ranking = self._rng.random((len(index), 1))
        # with limits: the candidates in order of preference, of which the first `n_shortlist` that fit
        n_short = self._n_shortlist if self._limits is None else max(self._max_counted, self._n_shortlist)
        short = np.asarray(self._fitting([archs[i] for i in index], ranked(ranking, n_short), self._n_shortlist))
        cand = np.zeros((len(short), len(obj.kinds)))
        shown: list[dict[str, Any]] = [{} for _ in short]
        for j, k in enumerate(learned):
            cand[:, k] = score[short, j]
            for s, i in enumerate(short):
                shown[s][obj.names[k]] = obj.value(k, float(mean[i, j]))
        cost = [k for k, kind in enumerate(obj.kinds) if kind == "cost"]
        if cost or "exact" in obj.kinds:
            need_macs = bool(cost) or "macs" in obj.names
            counts = [self._count(archs[index[i]], keys[index[i]], macs=need_macs) for i in short]
            obs = [self._count(t.params, _key(t.params), macs=True) for t in complete] if cost else []
            if any(c is None for c in counts + obs):  # the network could not be built: learned scores only
                return int(index[short[0]]), shown[0]
            F_obs, F_new = (self._cost_features(obs), self._cost_features(counts)) if cost else (None, None)
            for k, kind in enumerate(obj.kinds):
                for s, entry in enumerate(counts):
                    if kind == "exact":
                        cand[s, k] = obj.loss(k, float(entry[obj.names[k]]))  # type: ignore[index]
                        shown[s][obj.names[k]] = int(entry[obj.names[k]])  # type: ignore[index]
                if kind == "cost":
                    assert F_obs is not None and F_new is not None
                    cand[:, k] = ridge(F_obs, losses[:, k], F_new, alpha=1e-1)
                    for s in range(len(short)):
                        shown[s][obj.names[k]] = obj.value(k, float(cand[s, k]))
        best = best_hv(losses, cand)
        return int(index[short[best]]), shown[best]

    @staticmethod
    def _cost_features(counts: Sequence[dict[str, Any] | None]) -> np.ndarray:
        """[log params, log MACs, active decisions]: few features, so a handful of trials fits them."""
        return np.array([[math.log1p(c["params"]), math.log1p(c.get("macs", 0)), c["active"]]
                         for c in counts if c is not None])
