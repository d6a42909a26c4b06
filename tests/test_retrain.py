"""YAML study files and `nasopt train` (retrain from scratch, --compare resnet18, --dataset transfer).

One tiny DARTS-cell study is run from a YAML file made here (digits, 1 trial, 1 epoch), then retrained
through the command. The bad-input cases call the same `main()` in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from cli_errors import user_error

from nasopt.cli.main import apply_sets, load_study_file, main

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: a second thread only adds contention
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
ROOT = Path(__file__).parent.parent
CELL_YAML = """\
name: tiny_cell
space: {name: darts_cell, C: 4, layers: 3, nodes: 2}
dataset: digits
objectives: {accuracy: maximize}
sampler: {name: random, seed: 3}
n_trials: 3
train: {epochs: 3, batch_size: 256}
measure: {warmup: 1, repeats: 3}
"""


def cli(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nasopt.cli", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def cell(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """`nasopt run cell.yaml` with --set overrides (1 trial of 1 epoch instead of the file's 3 and 3)."""
    folder = tmp_path_factory.mktemp("cell")
    (folder / "cell.yaml").write_text(CELL_YAML)
    url = f"sqlite:///{folder / 'nasopt.db'}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # the command's own main(), in this process (the subprocess below is `nasopt train`)
        assert main(["run", str(folder / "cell.yaml"), "--storage", url, "-q", "--set", "n_trials=1",
                     "--set", "train.epochs=1"]) == 0
    finally:
        torch.set_num_threads(threads)
    study = optuna.load_study(study_name="tiny_cell", storage=url)
    [trial] = study.trials
    assert trial.state.name == "COMPLETE" and len(trial.user_attrs["curve"]) == 1
    assert study.user_attrs["nasopt"]["space"] == "DartsCellSpace"
    return {"folder": folder, "url": url, "study": study}


def test_yaml_matches_the_python_study_file() -> None:
    py, yml = (load_study_file(str(ROOT / "studies" / f"mobile_pareto.{ext}")) for ext in ("py", "yaml"))
    for field in ("name", "dataset", "objectives", "constraints", "n_trials", "train", "measure", "seed"):
        assert getattr(yml, field) == getattr(py, field), field
    assert vars(yml.space) == vars(py.space)
    assert type(yml.sampler) is type(py.sampler) and yml.sampler._population_size == 10
    changed = apply_sets(yml, ["train.epochs=2", "sampler=tpe", "space=nano"])
    assert changed.train.epochs == 2 and type(changed.sampler).__name__ == "TPESampler"


def test_yaml_mistakes(tmp_path: Path, capsys) -> None:
    def check(text: str, *words: str) -> None:
        path = tmp_path / "s.yaml"
        path.write_text(text)
        user_error(capsys, ["run", str(path), "--storage", f"sqlite:///{tmp_path / 'db.db'}"], *words)
        assert not (tmp_path / "db.db").exists()

    check("name: x\nspace: nano\nepochs: 3\n", "unknown key 'epochs'", "known keys: name, space", "train")
    check("name: x\nspace: {name: nano, width: 3}\n", "space(nano).width", "positions, C, ops")
    check("name: x\nspace: nano\ntrain: {epoch: 3}\n", "train.epoch", "epochs, batch_size")
    check("name: x\nspace: nano\nsampler: {name: nsga2, popsize: 3}\n", "sampler(nsga2).popsize", "population_size")
    check("name: x\nspace: nano\nstrategy: {name: darts, epoch: 3}\n", "strategy(darts).epoch", "epochs")
    check("name: x\nspace: hexagon\n", "unknown space 'hexagon'", "mobile")
    check("name: x\nspace: nano\nsampler: annealing\n", "unknown sampler 'annealing'", "nsga2")
    check("name: x\nspace: nano\nobjectives: {speed: maximize}\n", "unknown objective 'speed'")
    check("name: x\nspace: [nano\n", "not valid YAML")
    check("- name\n", "mapping of StudySpec fields")
    check("name: x\nspace: {name: nano, C: 8}\npruner: {name: hyperband, max_epochs: 9}\nn_trials: 0\n", "n_trials")


def test_train_with_resnet18_and_export(cell: dict) -> None:
    folder = cell["folder"]
    out = folder / "retrained"
    result = cli("train", "tiny_cell", "--trial", 0, "--epochs", 1, "--compare", "resnet18", "--json", "-q",
                 "--study-file", "cell.yaml", "-o", out, cwd=folder)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["cell"] == {"auxiliary": True, "drop_path": 0.2}  # DARTS' evaluation setting
    assert summary["augmentation"] == "none" and summary["train"]["epochs"] == 1  # 8x8 digits: no crop, no flip
    ours, resnet = summary["results"]
    trial = cell["study"].trials[0]
    assert ours["model"] == "trial 0" and ours["params"] == trial.user_attrs["params"]  # aux head not counted
    assert resnet["model"] == "resnet18" and 11_000_000 < resnet["params"] < 11_300_000
    for row in (ours, resnet):
        assert 0.0 <= row["test_acc"] <= 1.0 and len(row["curve"]) == 1
    assert resnet["test_acc"] > 0.3  # a real network trained on real digits
    # the retrained model was exported with the aux head it trained with
    import nasopt

    arch = json.loads((out / "arch.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert arch["space"]["kwargs"]["auxiliary"] is True and arch["genotype"].startswith("Genotype(")
    assert manifest["weights"]["source"] == "nasopt train" and manifest["retrain"]["test_acc"] == ours["test_acc"]
    model = nasopt.load_model(out)
    assert any(k.startswith("auxiliary_head.") for k in model.state_dict())
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(out / "model.ts"))(x), model(x))


def test_transfer_to_another_dataset_and_bad_input(cell: dict, tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    y_train, y_test = rng.integers(0, 4, 160), rng.integers(0, 4, 40)
    x_train = (rng.random((160, 3, 12, 12)) * 80 + y_train[:, None, None, None] * 40).astype(np.uint8)
    x_test = (rng.random((40, 3, 12, 12)) * 80 + y_test[:, None, None, None] * 40).astype(np.uint8)
    data = tmp_path / "rgb.npz"
    np.savez(data, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    base = ["train", "tiny_cell", "--storage", cell["url"], "--study-file", str(cell["folder"] / "cell.yaml")]
    assert main([*base, "--trial", "0", "--epochs", "1", "--dataset", "tensors", "--data-dir", str(data),
                 "--augment", "crop+flip", "--no-aux", "--json", "-q"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dataset"] == "tensors" and summary["augmentation"] == "crop+flip"
    assert summary["cell"] == {"auxiliary": False, "drop_path": 0.2}
    [row] = summary["results"]
    assert 0.0 <= row["test_acc"] <= 1.0
    assert row["params"] != cell["study"].trials[0].user_attrs["params"]  # 3 channels in, 4 classes out

    user_error(capsys, ["train", "nope", "--storage", cell["url"], "--trial", "0", "--epochs", "1"], "no study 'nope'")
    user_error(capsys, [*base, "--trial", "5", "--epochs", "1"], "no trial 5")
    user_error(capsys, [*base, "--trial", "0", "--epochs", "1", "--compare", "vgg"], "unknown baseline 'vgg'")
    user_error(capsys, [*base, "--trial", "0", "--epochs", "0"], "--epochs >= 1")
    # a diverged run: exit 2 and one error line (after the line that says what is retrained), no traceback
    assert main([*base, "--trial", "0", "--epochs", "1", "--lr", "10000", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[1].startswith("nasopt: error: training stopped: diverged"), err
    assert "smaller --lr (it was 10000)" in err[1]
    user_error(capsys, [*base, "--trial", "0", "--epochs", "1", "--dataset", "mnist1d", "--compare", "resnet18"],
               "(1, 40)")
    (tmp_path / "taken").mkdir()
    user_error(capsys, [*base, "--trial", "0", "--epochs", "1", "-o", str(tmp_path / "taken")], "exists", "--force")
