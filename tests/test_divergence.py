"""Divergent training ends as PRUNED with the reason, in real studies run by the `nasopt` command.

`train.lr=10000` blows every network's weights up in its first epoch: the training loss stays finite
(about 1e12) while the accuracy is chance. Such a trial is pruned (`pruned_reason` says why), in
single- and multi-objective studies and in the final training of a gradient method's architecture;
normal training is never flagged. The rule itself is tested on the trainer in test_train.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
from optuna.trial import TrialState

STUDIES = Path(__file__).parent / "studies"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def run(study: str, *args: object, cwd: Path) -> list[optuna.trial.FrozenTrial]:
    result = subprocess.run([sys.executable, "-m", "nasopt.cli", "run", str(STUDIES / f"{study}.py"), "-q",
                             *map(str, args)], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return optuna.load_study(study_name=study, storage=f"sqlite:///{cwd / 'nasopt.db'}").get_trials()


def assert_diverged(trials: list[optuna.trial.FrozenTrial], count: int) -> None:
    assert len(trials) == count
    for t in trials:
        assert t.state == TrialState.PRUNED, (t.number, t.state)
        reason = t.user_attrs["pruned_reason"]
        assert reason.startswith("diverged: training loss") and "epoch 1 > 100 x log(10)" in reason, reason
        assert "accuracy" not in t.user_attrs and t.values is None


def test_a_huge_learning_rate_prunes_every_trial_with_the_reason(tmp_path):
    assert_diverged(run("tiny_nano", "--set", "train.lr=10000", "--n-trials", 3, cwd=tmp_path), 3)


def test_normal_training_is_never_flagged(tmp_path):
    trials = run("tiny_nano", cwd=tmp_path)
    assert len(trials) == 5
    for t in trials:  # COMPLETE, or pruned by the study's MedianPruner: never for diverging
        reason = t.user_attrs.get("pruned_reason", "")
        assert "diverged" not in reason and "non-finite" not in reason, reason
        assert t.state == TrialState.COMPLETE or reason.startswith("pruned by MedianPruner"), (t.state, reason)
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= 2  # the pruner's two start-up trials


def test_multi_objective_trials_are_pruned_too(tmp_path):
    """Three objectives (no intermediate reports): the trial is pruned by raising, which Optuna supports."""
    assert_diverged(run("tiny_mobile", "--set", "train.lr=10000", "--n-trials", 2, cwd=tmp_path), 2)


def test_a_gradient_methods_final_training_is_pruned_too(tmp_path):
    """DARTS searches with its own optimizer; the derived architecture is trained by train.py with
    `train.lr`, through the same objective as sampled trials."""
    trials = run("tiny_darts", "--set", "train.lr=10000", cwd=tmp_path)
    assert_diverged(trials, 1)
    assert trials[0].user_attrs["search_summary"] and trials[0].params  # the search finished; its result was kept
