"""The user's own task through the real CLI: a YAML study naming its data factory and metric by
'module:function', run by two worker processes that rebuild the data from the factory; a metric that raises
fails its trials (reason stored, never retried) while the study goes on."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
from optuna.trial import TrialState

import nasopt

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}

DATA_MODULE = '''
import os

import torch
from torch.utils.data import Dataset

BUILT = []


class Signals(Dataset):
    """Noisy 1-D signals whose class is the sign of their mean; a class of its own, not a TensorDataset."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 1, 24, generator=g) + torch.randn(n, 1, 1, generator=g)
        self.y = (self.x.mean(dim=(1, 2)) > 0).long()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def make():
    with open(os.environ["NASOPT_TEST_BUILT"], "a") as f:  # who built the data: one line per process
        f.write(f"{os.getpid()}\\n")
    return Signals(160, 0), Signals(64, 1)


def balanced_accuracy(out, y):
    pred = out.argmax(1)
    return sum(float((pred[y == c] == c).float().mean()) for c in (0, 1) if (y == c).any()) / 2


def broken(out, y):
    raise ZeroDivisionError("no positives")
'''


def _write(folder: Path, metric: str, n_trials: int) -> Path:
    (folder / "signals_data.py").write_text(DATA_MODULE)
    study = folder / "study.yaml"
    study.write_text(textwrap.dedent(f"""\
        name: own
        space: {{name: conv1d, C: 4, layers: 2}}
        data: signals_data:make
        metrics: {{{metric}: signals_data:{metric}}}
        objectives: {{{metric}: maximize, params: minimize}}
        n_trials: {n_trials}
        train: {{epochs: 1, batch_size: 32}}
        """))
    return study


def _run(study: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**ENV, "NASOPT_TEST_BUILT": str(cwd / "built.txt")}
    return subprocess.run([sys.executable, "-m", "nasopt.cli", "run", str(study), "--storage",
                           f"sqlite:///{cwd / 'own.db'}", "-q", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=600)


def test_workers_rebuild_the_users_data_from_its_factory_and_record_its_metric(tmp_path: Path) -> None:
    study_file = _write(tmp_path / "project", "balanced_accuracy", 4) if (tmp_path / "project").mkdir() is None \
        else None
    assert study_file is not None
    result = _run(study_file, tmp_path, "--workers", "2", "--storage", f"journal:///{tmp_path / 'own.log'}")
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="own", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "own.log"))))
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 4
    assert all(0.0 <= t.user_attrs["balanced_accuracy"] <= 1.0 for t in done)
    assert all("balanced_accuracy" in t.user_attrs["curve"][-1] for t in done)
    assert study.metric_names == ["balanced_accuracy", "params"]
    # the data module sits beside the study file, not in the working folder: found through the file's folder
    assert (tmp_path / "built.txt").read_text().splitlines()  # the factory ran
    frame = nasopt.trials_frame(f"journal:///{tmp_path / 'own.log'}", "own")
    assert "balanced_accuracy" in frame.columns


def test_a_metric_that_raises_fails_its_trials_with_the_reason_and_is_never_retried(tmp_path: Path) -> None:
    (tmp_path / "project").mkdir()
    study_file = _write(tmp_path / "project", "broken", 2)
    result = _run(study_file, tmp_path)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="own", storage=f"sqlite:///{tmp_path / 'own.db'}")
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]  # two trials, no retries
    for t in study.trials:
        assert "metric 'broken' raised ZeroDivisionError: no positives" in t.user_attrs["fail_reason"]
