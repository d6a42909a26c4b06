"""A gradient run as ONE trial of the study, next to the sampled trials.

The trial is asked like any other and stays RUNNING (with Optuna's heartbeat) during the search. After
every search epoch its user attrs get the epoch's record (`search`: supernet train/valid accuracy,
alpha entropy, skips in the derived normal cell; a task that is no classification: its validation by the
study's first per-epoch objective) and the softmax weights (`alphas`), and a checkpoint
(weights, alphas, both optimisers, scheduler, RNG state) is uploaded as an artifact. A killed run is
failed and retried by the runner with its attrs; the retry finds the checkpoint and continues after
its epoch. At the end the derived architecture goes through Optuna's fixed-params path (the mechanism
of `enqueue_trial`): the space's own `suggest` records it as the trial's params with the same names
and distributions the samplers use, and the ordinary objective builds, measures and trains it for the
study's evaluation epochs and returns its objectives.
"""

from __future__ import annotations

import inspect
import io
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import optuna
import torch
from optuna.artifacts import download_artifact, upload_artifact
from optuna.trial import TrialState
from tqdm.auto import tqdm

from nasopt.keys import CHECKPOINT_KEY, OPTUNA_ARTIFACT_PREFIX, STRATEGY_KEY, WORKER_KEY
from nasopt.storage import set_user_attrs
from nasopt.study import _objective, _recovery
from nasopt.study import _suspect as suspect
from nasopt.study._signals import check_stop

if TYPE_CHECKING:
    from nasopt.study._spec import StudySpec

__all__ = ["STRATEGY_KEY", "CHECKPOINT_KEY", "GradientObjective", "labels", "strategy_trials"]



def labels(strategies: Sequence[Any]) -> list[str]:
    """One label per strategy; repeated labels get #2, #3, ... so each runs once."""
    out: list[str] = []
    for s in strategies:
        label, n = s.label, 2
        while label in out:
            label, n = f"{s.label}#{n}", n + 1
        out.append(label)
    return out


def _accepts(fn: Any, name: str) -> bool:
    """Whether `fn` takes keyword `name` (a method written before it existed does not)."""
    params = inspect.signature(fn).parameters.values()
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def strategy_trials(study: optuna.Study, label: str) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.system_attrs.get(STRATEGY_KEY) == label]


def strategy_done(study: optuna.Study, label: str) -> bool:
    """COMPLETE or PRUNED, or FAIL with no retry pending: its architecture failed more than MAX_RETRY times
    (an interrupted trial always has its retry queued, `nasopt.storage._retry.RetryTrial`)."""
    trials = strategy_trials(study, label)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return any(t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and t.number not in retried) for t in trials)


def _spare(artifact_id: str) -> str:
    return f"{artifact_id}.next"


def _save_checkpoint(trial: optuna.Trial, state: dict[str, Any], store: Any, previous: str | None) -> str:
    """One checkpoint artifact per run (`trial{N}_checkpoint.pt`, one name in the dashboard's list), rewritten
    every epoch: the state goes to a spare file (no artifact record) first, so a kill while the checkpoint
    is rewritten leaves a whole copy for `_load_checkpoint`. A retry gets its own, and the one it resumed
    from (its failed trial's) is removed."""
    own = previous is not None and \
        f"{OPTUNA_ARTIFACT_PREFIX}{previous}" in trial.storage.get_trial_system_attrs(trial._trial_id)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"trial{trial.number}_checkpoint.pt")
        torch.save(state, path)
        if previous is None or not own:
            artifact_id = upload_artifact(artifact_store=store, file_path=path, study_or_trial=trial,
                                          mimetype="application/octet-stream")
        else:
            artifact_id = previous
            for stored in (_spare(previous), previous):
                with open(path, "rb") as f:
                    store.write(stored, f)
    for stale in ([_spare(previous)] if own else [previous, _spare(previous)]) if previous else []:
        try:
            store.remove(stale)  # keep one checkpoint per run on disk
        except Exception:  # already gone: nothing to free
            pass
    return artifact_id


def _load_checkpoint(artifact_id: str, store: Any) -> dict[str, Any] | None:
    problem = None
    for stored in (artifact_id, _spare(artifact_id)):  # the spare: killed while the checkpoint was rewritten
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "checkpoint.pt")
                download_artifact(artifact_store=store, file_path=path, artifact_id=stored)
                with open(path, "rb") as f:
                    return torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
        except Exception as e:  # missing or unreadable: the search starts over, and says so
            problem = problem or e
    tqdm.write(f"checkpoint {artifact_id} could not be loaded ({type(problem).__name__}: {problem}); "
               "searching from the start")
    return None


class GradientObjective:
    """The objective of `study.optimize` for gradient trials; `pending` labels still to run, in order."""

    def __init__(self, spec: StudySpec, task: Any, store: Any, strategies: dict[str, Any], progress: bool, *,
                 worker: Mapping[str, Any] | None = None) -> None:
        self.spec, self.task, self.store, self.strategies, self.progress = spec, task, store, strategies, progress
        self.worker = dict(worker or {})
        self.evaluate = _objective.Objective(spec, task, worker=self.worker)
        self.pending = list(strategies)

    def __call__(self, trial: optuna.Trial) -> Any:
        try:
            return self._run(trial)
        except KeyboardInterrupt as e:  # the runner queues the interrupted trial again (same attrs: it resumes)
            _recovery.interrupted(trial, e, self.worker)
            raise
        except Exception as e:  # the search failed (or its evaluation: recorded there); retried up to the cap
            failure = _recovery.architecture_failure(trial, e)
            if failure is e:
                raise
            raise failure from e

    def _run(self, trial: optuna.Trial) -> Any:
        system = trial.storage.get_trial_system_attrs(trial._trial_id)
        label = system.get(STRATEGY_KEY)
        if label is None and trial.params:  # a sampled trial's retry popped here: run it as such
            return self.evaluate(trial)
        if label is None or label not in self.strategies:
            label = self.pending[0]
            trial.storage.set_trial_system_attr(trial._trial_id, STRATEGY_KEY, label)
        if label in self.pending:
            self.pending.remove(label)
        strategy = self.strategies[label]
        if "fixed_params" not in system:  # killed during the evaluation training: the search is done
            arch, summary = self._search(trial, strategy, label, system)
            suspect.warn(trial, suspect.collapsed(self.spec.space, arch, self.task))  # DARTS' collapse, said
            set_user_attrs(trial, {"strategy": strategy.config(), "search_summary": summary["stopped"] or "completed",
                                   "genotype": self.spec.space.describe(arch)})
            trial.storage.set_trial_system_attr(trial._trial_id, "fixed_params", arch)
        # Optuna's fixed-params path: a fresh Trial object reads `fixed_params`, and the space's own
        # `suggest` records the derived architecture as params with the samplers' distributions
        evaluation = optuna.Trial(trial.study, trial._trial_id)
        return self.evaluate(evaluation)

    def _search(self, trial: optuna.Trial, strategy: Any, label: str, system: dict[str, Any]) -> tuple[Any, Any]:
        spec = self.spec
        trial.storage.set_trial_system_attr(trial._trial_id, WORKER_KEY, _recovery.worker_record(self.worker))
        checkpoint_id = trial.user_attrs.get(CHECKPOINT_KEY)
        resume = _load_checkpoint(checkpoint_id, self.store) if checkpoint_id else None
        alphas: list[dict[str, Any]] = list(trial.user_attrs.get("alphas", [])) if resume else []
        if resume is not None:
            alphas = alphas[: int(resume["epoch"])]
            trial.set_user_attr("resumed_from_epoch", int(resume["epoch"]))
        seed = _objective.trial_seed(spec.seed, system.get("failed_trial", trial.number))
        bar = tqdm(total=strategy.epochs, initial=int(resume["epoch"]) if resume else 0, unit="epoch",
                   desc=f"{spec.name}: {label} search", disable=not self.progress, dynamic_ncols=True)
        t0 = time.perf_counter()

        def on_epoch(record: dict[str, Any], state: Any) -> None:
            nonlocal checkpoint_id
            alphas.append({"epoch": record["epoch"], "weights": record["weights"]})
            full = state()
            checkpoint_id = _save_checkpoint(trial, full, self.store, checkpoint_id)
            set_user_attrs(trial, {"search": full["history"], "alphas": alphas, CHECKPOINT_KEY: checkpoint_id,
                                   "derived": self.spec.space.describe(record["arch"])})
            valid = record.get("valid_acc", record.get("valid_score", math.nan))  # score: not a classification
            bar.set_postfix(valid=f"{valid:.3f}", skips=record["skips"],
                            entropy=f"{record['alpha_entropy']:.2f}", refresh=False)
            bar.update(1)
            check_stop()  # a Ctrl-C that some library swallowed (the epoch's checkpoint is saved by now)

        # the metric the pruners follow (the first per-epoch objective) scores a task that is no classification
        extra = {"signal": self.evaluate.signal} if _accepts(strategy.search, "signal") else {}
        try:
            arch, summary = strategy.search(spec.space, self.task, seed=seed, resume=resume, on_epoch=on_epoch,
                                            **extra)
        finally:
            bar.close()
        trial.set_user_attr("search_s", round(time.perf_counter() - t0, 3))
        return arch, summary
