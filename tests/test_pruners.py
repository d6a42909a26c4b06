"""Curve pruners: the decisions themselves, bad settings, and pruning inside real multi-objective studies."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

import nasopt
from nasopt.pruners import EarlyKill, Hyperband, MedianStop, SuccessiveHalving, make_pruner
from nasopt.search_spaces.nano import NanoSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study_with(curves: list[list[float]], directions=("maximize", "minimize")) -> optuna.Study:
    study = optuna.create_study(directions=list(directions))
    for curve in curves:
        study.add_trial(optuna.create_trial(
            values=[curve[-1], 1.0][: len(directions)],
            user_attrs={"curve": [{"epoch": i + 1, "val_acc": v} for i, v in enumerate(curve)]}))
    return study


def test_early_kill_kills_below_threshold_at_its_epoch_only():
    pruner, study = EarlyKill(threshold=0.5, epoch=3), _study_with([])
    assert pruner.prune(study, 0, [0.1, 0.2]) is None  # not yet at epoch 3
    reason = pruner.prune(study, 0, [0.1, 0.2, 0.3])
    assert reason and "early kill" in reason and "0.3" in reason and "epoch 3" in reason
    assert pruner.prune(study, 0, [0.1, 0.2, 0.6]) is None
    assert pruner.prune(study, 0, [0.1, 0.2, 0.3, 0.1]) is None  # judged once, at its epoch


def test_median_stop_compares_with_the_same_epoch_of_other_trials():
    study = _study_with([[0.5, 0.7, 0.8], [0.6, 0.8, 0.9], [0.4, 0.6, 0.7]])
    pruner = MedianStop(n_startup_trials=3, n_warmup_epochs=1)
    assert pruner.prune(study, 99, [0.1]) is None  # warm-up epoch
    assert "median" in pruner.prune(study, 99, [0.1, 0.65])  # median at epoch 2 is 0.7
    assert pruner.prune(study, 99, [0.1, 0.75]) is None
    assert MedianStop(n_startup_trials=4).prune(study, 99, [0.1, 0.1]) is None  # too few trials yet


def test_successive_halving_keeps_the_top_third_at_each_rung():
    study = _study_with([[0.9, 0.9, 0.9], [0.8, 0.8, 0.8], [0.7, 0.7, 0.7], [0.6, 0.6, 0.6], [0.5, 0.5, 0.5]])
    sh = SuccessiveHalving(min_epochs=1, reduction_factor=3)
    assert sh.rungs(9) == [1, 3]
    assert sh.prune(study, 99, [0.85]) is None  # 2nd of 6 at rung 1: top ceil(6/3)=2
    assert "successive halving" in sh.prune(study, 99, [0.75])  # 3rd of 6: out
    assert sh.prune(study, 99, [0.75, 0.1]) is None  # epoch 2 is no rung


def test_hyperband_judges_trials_within_their_own_bracket():
    hb = Hyperband(min_epochs=1, max_epochs=9, reduction_factor=3)
    assert hb.n_brackets == 3
    # trials 0, 3 are bracket 0 (rungs 1, 3); trial 1 is bracket 1 (first rung at epoch 3)
    study = _study_with([[0.9, 0.9, 0.9], [0.1, 0.1, 0.1], [0.2, 0.2, 0.2], [0.95, 0.95, 0.95]])
    assert "bracket 0" in hb.prune(study, 6, [0.5])  # bracket-0 peers 0.9, 0.95: 0.5 is not in the top third
    assert hb.prune(study, 7, [0.05]) is None  # bracket 1 has no rung at epoch 1
    assert hb.prune(study, 7, [0.05, 0.05, 0.5]) is None  # bracket-1 peer is trial 1 (0.1): 0.5 leads


@pytest.mark.parametrize(("factory", "match"), [
    (lambda: EarlyKill(threshold=1.5), "threshold"),
    (lambda: EarlyKill(epoch=0), "epoch >= 1"),
    (lambda: MedianStop(n_startup_trials=0), "n_startup_trials"),
    (lambda: SuccessiveHalving(reduction_factor=1), "reduction_factor >= 2"),
    (lambda: Hyperband(min_epochs=5, max_epochs=5), "max_epochs > min_epochs"),
    (lambda: make_pruner("sometimes"), "known pruners"),
])
def test_bad_pruner_settings_are_user_errors(factory, match):
    with pytest.raises(nasopt.UserError, match=match):
        factory()


def test_optuna_pruner_in_a_multi_objective_study_is_refused_with_the_fix():
    with pytest.raises(nasopt.UserError, match="nasopt pruner"):
        nasopt.StudySpec(name="x", space=NanoSpace(), objectives={"accuracy": "maximize", "params": "minimize"},
                         pruner=optuna.pruners.MedianPruner())


def test_multi_objective_study_prunes_a_bad_curve_and_keeps_a_good_one(tmp_path):
    """Two real trainings in a 2-objective study: an all-`zero` nano net (chance level) and a conv net."""
    bad = {f"pos{i}.op": "zero" for i in range(4)} | {"pos0.op": "maxpool3x3"}
    good = {f"pos{i}.op": op for i, op in enumerate(["conv3x3", "conv3x3", "skip", "conv3x3"])}
    storage = f"sqlite:///{tmp_path / 'p.db'}"
    spec = nasopt.StudySpec(
        name="mo_prune", space=NanoSpace(C=16), dataset="digits",
        objectives={"accuracy": "maximize", "params": "minimize"},
        # the conv net is at 0.47-0.78 after 2 epochs (by seed), the all-zero one at chance (0.1)
        pruner=EarlyKill(threshold=0.3, epoch=2), n_trials=2,
        train=nasopt.TrainConfig(epochs=3, batch_size=128, lr=0.1),
        measure=nasopt.MeasureConfig(warmup=0, repeats=3))
    study = optuna.create_study(study_name="mo_prune", storage=storage, directions=["maximize", "minimize"])
    study.enqueue_trial(bad)
    study.enqueue_trial(good)
    nasopt.run(spec, storage=storage, progress=False)
    trials = sorted(optuna.load_study(study_name="mo_prune", storage=storage).trials, key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.COMPLETE]
    assert "early kill" in trials[0].user_attrs["pruned_reason"]
    assert len(trials[0].user_attrs["curve"]) == 2  # stopped at epoch 2, not trained to the end
    assert len(trials[1].user_attrs["curve"]) == 3 and trials[1].values[0] > 0.5
