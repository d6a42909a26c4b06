"""A study is what its file says: a re-run that changes what defines the study is refused, byte for byte.

Real `nasopt run` subprocesses on a real SQLite study (tiny_nano: digits, 3 epochs). Every refused
change exits 2 with one line naming each differing field (stored and new value) and the way out, and
leaves the storage byte-identical; what does not change a trial's meaning may change freely; a change
accepted with --allow-changed is recorded by every trial that ran under it.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from test_cli import NANO, STUDIES, assert_user_error, nasopt, snapshot

import nasopt as api
from nasopt.cli.main import load_study_file

OTHER_OPS = (STUDIES / "tiny_nano.py").read_text().replace("NanoSpace(C=8)", "NanoSpace(C=8, ops=['conv3x3', 'skip'])")
OTHER_LIMIT = (STUDIES / "tiny_nano.py").read_text().replace('objectives={"accuracy": "maximize"},',
                                                             'objectives={"accuracy": "maximize"}, '
                                                             'constraints={"params": 90000},')


@pytest.fixture(scope="module")
def nano_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_nano with 2 finished trials, in its own folder (copied per test)."""
    cwd = tmp_path_factory.mktemp("identity")
    result = nasopt("run", NANO, "-q", "--n-trials", 2, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return cwd / "nasopt.db"


@pytest.fixture
def cwd(nano_db: Path, tmp_path: Path) -> Path:
    shutil.copy(nano_db, tmp_path / "nasopt.db")
    (tmp_path / "other_ops.py").write_text(OTHER_OPS)
    (tmp_path / "other_limit.py").write_text(OTHER_LIMIT)
    return tmp_path


def trials(cwd: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="tiny_nano", storage=f"sqlite:///{cwd / 'nasopt.db'}").get_trials()


# id -> (args after `run`, words of the one error line)
REFUSED = {
    "other_space": ([NANO, "--set", "space=mobile"], ["space: stored 'nasopt.search_spaces.nano:NanoSpace'",
                                                     "now 'nasopt.search_spaces.mobile:MobileSpace'",
                                                     "another `name`", "cannot change"]),
    "smaller_op_list": (["other_ops.py"], ["space.ops: stored ['conv3x3', 'conv5x5', 'maxpool3x3', 'skip', 'zero']",
                                           "now ['conv3x3', 'skip']", "cannot change"]),
    "shorter_training": ([NANO, "--set", "train.epochs=1"], ["train.epochs: stored 3, now 1", "--set name=NEW",
                                                             "--allow-changed train.epochs"]),
    "two_fields": ([NANO, "--set", "train.lr=0.1", "--set", "measure.repeats=7"],
                   ["train.lr: stored 0.05, now 0.1", "measure.repeats: stored 5, now 7",
                    "--allow-changed train.lr --allow-changed measure.repeats"]),
    "other_dataset": ([NANO, "--set", "dataset=synthetic"], ["dataset: stored 'digits', now 'synthetic'"]),
    "other_split": ([NANO, "--set", "val_fraction=0.3"], ["val_fraction: stored 0.2, now 0.3",
                                                          "--allow-changed val_fraction"]),
    "other_limit": (["other_limit.py"], ["constraints: stored {}, now {'params': 90000}",
                                         "--allow-changed constraints"]),
    "allowed_other_field": ([NANO, "--set", "train.epochs=1", "--allow-changed", "train.lr"],
                            ["train.epochs: stored 3, now 1"]),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_changed_study_file_is_refused_and_nothing_is_written(cwd, case):
    args, words = REFUSED[case]
    before = snapshot(cwd)
    result = nasopt("run", *args, "--n-trials", 3, cwd=cwd, timeout=120)
    assert_user_error(result, "study 'tiny_nano'", "created with other settings", *words)
    assert snapshot(cwd) == before


def test_a_rerun_with_nothing_left_says_so_in_one_line(cwd):
    before = [(t.number, t.state, t.values, t.datetime_complete) for t in trials(cwd)]
    result = nasopt("run", NANO, "--n-trials", 2, cwd=cwd)  # progress bar on: none is drawn
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        "nasopt: study 'tiny_nano' already has 2 finished trials (n_trials=2); raise --n-trials to continue"], \
        result.stderr
    assert [(t.number, t.state, t.values, t.datetime_complete) for t in trials(cwd)] == before


def test_what_does_not_change_a_trials_meaning_may_change(cwd):
    result = nasopt("run", NANO, "-q", "--n-trials", 3, "--set", "seed=7", "--set", "sampler=tpe", "--set",
                    "pruner=none", "--timeout", 600, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert len(trials(cwd)) == 3 and all("settings" not in t.user_attrs for t in trials(cwd))


def test_an_accepted_change_is_recorded_per_trial(cwd):
    result = nasopt("run", NANO, "-q", "--n-trials", 4, "--set", "train.epochs=1", "--allow-changed", "train.epochs",
                    cwd=cwd)
    assert result.returncode == 0, result.stderr
    done = [t for t in trials(cwd) if t.state.is_finished()]
    assert len(done) == 4
    for t in done[:2]:  # run under the study's own settings: nothing recorded
        assert "settings" not in t.user_attrs and len(t.user_attrs["curve"]) == 3
    for t in done[2:]:
        assert t.user_attrs["settings"] == {"train.epochs": 1}
        if t.state == TrialState.COMPLETE and "reused_from" not in t.user_attrs:
            assert len(t.user_attrs["curve"]) == 1
        if "reused_from" in t.user_attrs:  # only a result trained with the same settings is reused
            assert trials(cwd)[t.user_attrs["reused_from"]].user_attrs.get("settings") == {"train.epochs": 1}
    frame = api.trials_frame(f"sqlite:///{cwd / 'nasopt.db'}", "tiny_nano")
    assert list(frame["settings"]) == ["", "", "train.epochs=1", "train.epochs=1"]
    # the study's record is unchanged: the next run without the flag is refused again
    assert_user_error(nasopt("run", NANO, "-q", "--n-trials", 5, "--set", "train.epochs=1", cwd=cwd),
                      "train.epochs: stored 3, now 1")


def test_the_library_call_checks_the_same(cwd):
    spec = load_study_file(str(NANO))
    url = f"sqlite:///{cwd / 'nasopt.db'}"
    with pytest.raises(api.UserError, match=r"train\.batch_size: stored 128, now 64"):
        api.run(spec.replace(train=api.TrainConfig(epochs=3, batch_size=64, lr=0.05)), storage=url, n_trials=3,
                progress=False)
    assert len(trials(cwd)) == 2
    study = api.run(spec.replace(train=api.TrainConfig(epochs=3, batch_size=64, lr=0.05)), storage=url, n_trials=3,
                    progress=False, allow_changed=["train.batch_size"])
    assert study.trials[-1].user_attrs["settings"] == {"train.batch_size": 64}


def test_a_study_recorded_by_an_earlier_nasopt_is_checked_on_what_it_recorded(cwd):
    """Studies created before the full definition was stored kept their space, data and training."""
    storage = f"sqlite:///{cwd / 'nasopt.db'}"
    study = optuna.load_study(study_name="tiny_nano", storage=storage)
    info = dict(study.user_attrs["nasopt"])
    del info["definition"]
    study.set_user_attr("nasopt", info)
    assert_user_error(nasopt("run", NANO, "-q", "--n-trials", 3, "--set", "train.epochs=2", cwd=cwd),
                      "train.epochs: stored 3, now 2")
    assert_user_error(nasopt("run", "other_ops.py", "-q", "--n-trials", 3, cwd=cwd), "space.ops")
    # measure was not recorded then: it is not compared
    result = nasopt("run", NANO, "-q", "--n-trials", 3, "--set", "measure.repeats=6", cwd=cwd)
    assert result.returncode == 0, result.stderr


def test_a_study_recorded_before_a_training_setting_existed_runs_on(cwd):
    """A TrainConfig field added later (`divergence`) is not in older studies' definitions: not compared there;
    a study that recorded it refuses a change to it like any other training setting."""
    assert_user_error(nasopt("run", NANO, "-q", "--n-trials", 3, "--set", "train.divergence=none", cwd=cwd),
                      "train.divergence: stored 100.0, now None", "--allow-changed train.divergence")
    study = optuna.load_study(study_name="tiny_nano", storage=f"sqlite:///{cwd / 'nasopt.db'}")
    info = dict(study.user_attrs["nasopt"])
    info["definition"] = {k: v for k, v in info["definition"].items() if k != "train.divergence"}
    study.set_user_attr("nasopt", info)
    result = nasopt("run", NANO, "-q", "--n-trials", 3, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert len(trials(cwd)) == 3


def test_a_study_created_by_plain_optuna_is_not_compared(tmp_path):
    """No nasopt record, nothing to compare (the objectives are still checked)."""
    storage = f"sqlite:///{tmp_path / 'nasopt.db'}"
    study = optuna.create_study(study_name="tiny_nano", storage=storage, directions=["maximize"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["accuracy"])
    result = nasopt("run", NANO, "-q", "--n-trials", 1, "--set", "train.epochs=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
