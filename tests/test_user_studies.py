"""The shipped studies on the user's own data (studies/signal_regression.py, studies/shapes_segmentation.py) and
the user's task end to end: real `nasopt` subprocesses on SQLite files in a temporary folder, shrunk with --set.

- each shipped study runs to exit 0 and learns (R², mIoU far above what a trivial predictor gets);
- a run killed (SIGKILL) after its first trial resumes with the same command: no trial lost or run twice;
- `nasopt export` + `nasopt.load_model` give back the trained network (its stored metric, recomputed);
- the Python API with a Dataset class of the user's, a custom metric as one of two objectives and MedianStop;
- `train_fn`: the user's own loop, its reported curve, and a pruner stopping it;
- mistakes in the user's data, metrics, space and loss: exit 2, one line, no database.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import optuna
import pytest
import torch
import torch.nn.functional as F
from optuna.trial import FrozenTrial, TrialState
from torch.utils.data import Dataset

import nasopt
from nasopt.pruners import EarlyKill, MedianStop
from nasopt.search_spaces.nano import NanoSpace

STUDIES = Path(__file__).resolve().parents[1] / "studies"
REGRESSION, SEGMENTATION = STUDIES / "signal_regression.py", STUDIES / "shapes_segmentation.py"
# one BLAS/OpenMP thread per process: on 2 shared cores, oversubscribed threads make tiny nets many times slower
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
# the shipped studies, shrunk: a few trials of a few epochs (each a new study in its own temporary storage)
SMALL_REGRESSION = ("--set", "n_trials=3", "--set", "train.epochs=3")
SMALL_SEGMENTATION = ("--set", "n_trials=3", "--set", "train.epochs=6")


def nasopt_cli(*args: object, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python -m nasopt.cli ARGS` in `cwd`, output captured."""
    return subprocess.run([sys.executable, "-m", "nasopt.cli", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def study_module(name: str) -> ModuleType:
    """A data module of studies/ (signals, shapes), imported by path under a name of its own."""
    spec = importlib.util.spec_from_file_location(f"_user_studies_{name}", STUDIES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_trials(db: Path, name: str) -> list[FrozenTrial] | None:
    """The study's trials, read without creating tables; None while the study does not exist yet."""
    if not db.exists():
        return None
    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{db}", skip_table_creation=True,
                                             skip_compatibility_check=True)
        return optuna.load_study(study_name=name, storage=storage).get_trials()
    except Exception:  # tables or study not created yet
        return None


def finished(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


# ---------------------------------------------------------------------------------------------- the shipped studies

@pytest.fixture(scope="module")
def regression_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, optuna.Study]:
    cwd = tmp_path_factory.mktemp("regression")
    result = nasopt_cli("run", REGRESSION, "--storage", f"sqlite:///{cwd / 'nasopt.db'}", "-q", *SMALL_REGRESSION,
                        cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "'signal_regression': 3 trials finished" in result.stdout
    return cwd, optuna.load_study(study_name="signal_regression", storage=f"sqlite:///{cwd / 'nasopt.db'}")


@pytest.fixture(scope="module")
def segmentation_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, optuna.Study]:
    cwd = tmp_path_factory.mktemp("segmentation")
    result = nasopt_cli("run", SEGMENTATION, "--storage", f"sqlite:///{cwd / 'nasopt.db'}", "-q",
                        *SMALL_SEGMENTATION, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "'shapes_segmentation': 3 trials finished" in result.stdout
    return cwd, optuna.load_study(study_name="shapes_segmentation", storage=f"sqlite:///{cwd / 'nasopt.db'}")


def test_signal_regression_learns_the_frequency_and_amplitude(regression_run):
    _, study = regression_run
    assert study.metric_names == ["r2", "params"]
    trials = study.get_trials()
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]
    for t in trials:
        assert t.user_attrs["r2"] == round(t.values[0], 6)
        assert [r["epoch"] for r in t.user_attrs["curve"]] == [1, 2, 3]
        assert all({"r2", "mae", "val_loss", "score"} <= set(r) for r in t.user_attrs["curve"])
        assert "val_acc" not in t.user_attrs["curve"][-1] and "accuracy" not in t.user_attrs  # no classes
    # predicting each target's mean has R² = 0; three architectures of three epochs reach a best R² of 0.97-0.98
    # (four seeds; the whole study: 0.98)
    assert max(t.values[0] for t in trials) >= 0.8


def test_shapes_segmentation_labels_the_pixels(segmentation_run):
    _, study = segmentation_run
    assert study.metric_names == ["miou", "params"]
    trials = study.get_trials()
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]
    shapes = study_module("shapes")
    _, val, _ = shapes.make_datasets()
    y = val.tensors[1]
    trivial = shapes.miou(F.one_hot(torch.zeros_like(y), len(shapes.CLASSES)).permute(0, 3, 1, 2).float(), y)
    assert trivial < 0.21  # everything background: the background's IoU (its share) over one class
    for t in trials:
        assert t.user_attrs["miou"] == round(t.values[0], 6)
        assert all({"miou", "val_acc", "val_loss", "train_acc"} <= set(r) for r in t.user_attrs["curve"])
    # three architectures of six epochs reach a best mIoU of 0.53-0.70 (five seeds; the whole study: about 0.76)
    assert max(t.values[0] for t in trials) >= 0.4


# ---------------------------------------------------------------------------------------------- resume

def test_regression_resumes_after_sigkill(tmp_path):
    db = tmp_path / "nasopt.db"
    command = [sys.executable, "-m", "nasopt.cli", "run", str(REGRESSION), "--storage", f"sqlite:///{db}", "-q",
               *SMALL_REGRESSION]
    proc = subprocess.Popen(command, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while True:
        trials = read_trials(db, "signal_regression") or []
        if finished(trials):
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"no trial finished before the run ended ({proc.returncode}) or 180 s passed: {out}\n{err}")
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    killed_state = read_trials(db, "signal_regression")
    done_before = {t.number: (t.state, t.values, t.params, t.datetime_complete) for t in finished(killed_state)}
    running = [t for t in killed_state if t.state == TrialState.RUNNING]
    assert done_before and len(done_before) < 3 and len(running) <= 1

    result = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "'signal_regression': 3 trials finished" in result.stdout
    trials = read_trials(db, "signal_regression")
    by_number = {t.number: t for t in trials}
    assert len(finished(trials)) == 3
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for number, before in done_before.items():  # no finished trial lost, changed or run again
        t = by_number[number]
        assert (t.state, t.values, t.params, t.datetime_complete) == before
    for t in running:  # the trial the kill interrupted failed once and was trained again with its params
        assert by_number[t.number].state == TrialState.FAIL
        retries = [r for r in trials if r.system_attrs.get("failed_trial") == t.number]
        assert len(retries) == 1 and retries[0].params == t.params and retries[0].state.is_finished()
    assert len([t for t in trials if t.state == TrialState.FAIL]) == len(running)
    trained = [tuple(sorted(t.params.items())) for t in finished(trials) if "reused_from" not in t.user_attrs]
    assert len(trained) == len(set(trained))  # no architecture trained twice


# ---------------------------------------------------------------------------------------------- export

def export_and_load(cwd: Path, study: optuna.Study) -> tuple[FrozenTrial, Path, torch.nn.Module]:
    """`nasopt export` of the study's best trial by its first objective (a Pareto trial: it kept its weights),
    then `nasopt.load_model` of the folder."""
    best = max((t for t in study.best_trials), key=lambda t: t.values[0])
    out = cwd / f"export-{best.number}"
    result = nasopt_cli("export", study.study_name, "--trial", best.number, "-o", out, "--storage",
                        f"sqlite:///{cwd / 'nasopt.db'}", cwd=cwd)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["weights"]["trained"] is True and manifest["trial"] == best.number
    return best, out, nasopt.load_model(out)


def same_outputs(model: torch.nn.Module, out: Path, x: torch.Tensor) -> torch.Tensor:
    """The loaded model's outputs on x, checked against the exported TorchScript module's."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated; the export still writes it
        eager, traced = model(x), torch.jit.load(str(out / "model.ts"))(x)
    torch.testing.assert_close(eager, traced, rtol=1e-4, atol=1e-5)
    return eager


def test_export_and_reload_the_regression(regression_run, one_thread):
    cwd, study = regression_run
    best, out, model = export_and_load(cwd, study)
    arch = json.loads((out / "arch.json").read_text())
    assert arch["kind"] == "regress" and arch["target_shape"] == [2] and arch["input_shape"] == [1, 64]
    signals = study_module("signals")
    _, val, _ = signals.make_datasets()
    x, y = val.tensors
    outputs = same_outputs(model, out, x)
    assert outputs.shape == (len(x), 2)
    # the reloaded network is the trained one: its validation R² is the one the trial stored
    assert signals.r2(outputs, y) == pytest.approx(best.values[0], abs=1e-4)


def test_export_and_reload_the_segmentation(segmentation_run, one_thread):
    cwd, study = segmentation_run
    best, out, model = export_and_load(cwd, study)
    arch = json.loads((out / "arch.json").read_text())
    assert arch["kind"] == "dense" and arch["num_classes"] == 4 and arch["input_shape"] == [1, 16, 16]
    shapes = study_module("shapes")
    _, val, _ = shapes.make_datasets()
    x, y = val.tensors
    outputs = same_outputs(model, out, x)
    assert outputs.shape == (len(x), 4, 16, 16)
    # argmax ties may flip a pixel or two where the arithmetic differs by a rounding: a little slack
    assert shapes.miou(outputs, y) == pytest.approx(best.values[0], abs=2e-3)


# ---------------------------------------------------------------------------------------------- the Python API

class Quadrants(Dataset):
    """8x8 noisy images whose class is the brightest quadrant (4 classes), as numpy arrays and int labels:
    the user's own Dataset class, not a TensorDataset."""

    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.y = rng.integers(0, 4, n)
        self.x = rng.normal(0, 1, (n, 1, 8, 8)).astype(np.float32)
        for i, k in enumerate(self.y):
            r, c = divmod(int(k), 2)
            self.x[i, 0, 4 * r:4 * r + 4, 4 * c:4 * c + 4] += 1.0

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.x[i], int(self.y[i])


def quadrants() -> tuple[Quadrants, Quadrants]:
    return Quadrants(320, 0), Quadrants(160, 1)


def macro_f1(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    predicted = outputs.argmax(1)
    scores = []
    for k in range(outputs.shape[1]):
        tp = int(((predicted == k) & (targets == k)).sum())
        fp, fn = int(((predicted == k) & (targets != k)).sum()), int(((predicted != k) & (targets == k)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


def error_rate(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    return float((outputs.argmax(1) != targets).float().mean())


def test_api_dataset_class_custom_metric_and_median_stop(tmp_path, one_thread):
    storage = f"sqlite:///{tmp_path / 'api.db'}"
    spec = nasopt.StudySpec(
        name="quadrants", space=NanoSpace(C=8), data=quadrants,
        metrics={"f1": macro_f1, "error_rate": error_rate},
        objectives={"f1": "maximize", "params": "minimize"},
        sampler=optuna.samplers.NSGAIISampler(population_size=4, seed=0),
        pruner=MedianStop(n_startup_trials=1, n_warmup_epochs=0),
        n_trials=6, device="cpu", train=nasopt.TrainConfig(epochs=3, batch_size=32, lr=0.05))
    study = nasopt.run(spec, storage=storage, progress=False)
    assert study.metric_names == ["f1", "params"]
    trials = study.get_trials()
    assert len(finished(trials)) == 6 and not [t for t in trials if t.state == TrialState.FAIL]
    frame = nasopt.trials_frame(storage, "quadrants")
    assert "f1" in frame.columns
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert complete and all(frame.loc[t.number, "f1"] == pytest.approx(t.values[0]) for t in complete)
    assert max(t.values[0] for t in complete) > 0.5  # four classes: guessing gives about 0.25
    for t in trials:  # every epoch of every trial, pruned ones too, records the user's metrics
        curve = t.user_attrs["curve"]
        assert curve and all({"f1", "error_rate", "val_acc", "score"} <= set(r) for r in curve)
        assert all(r["score"] == r["f1"] for r in curve)  # the pruners follow f1, the first objective
        if t.state == TrialState.COMPLETE:
            assert t.user_attrs["error_rate"] == pytest.approx(1 - t.user_attrs["accuracy"], abs=1e-5)
    pruned = [t for t in trials if t.state == TrialState.PRUNED and "reused_from" not in t.user_attrs]
    assert pruned, [(t.number, t.state, [r["f1"] for r in t.user_attrs["curve"]]) for t in trials]
    for t in pruned:
        assert t.user_attrs["pruned_reason"].startswith("median stop: f1=")
        assert len(t.user_attrs["curve"]) < 3


# ---------------------------------------------------------------------------------------------- train_fn

CALLS: list[list[float]] = []  # the accuracies each train_fn call reported, one list per call


def my_loop(model, task, config, reporter):
    """A plain training loop of the user's: Adam, cross-entropy, the validation accuracy after each epoch."""
    CALLS.append([])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(0)
    acc = 0.0
    for epoch in range(1, config.epochs + 1):
        model.train()
        for x, y in task.train.batches(config.batch_size, shuffle=True, generator=generator, drop_last=True):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in task.val.batches(256))
        acc = hits / len(task.val)
        CALLS[-1].append(acc)
        reporter.report(epoch, {"accuracy": acc})
    return {"accuracy": acc}


def bad_loop(model, task, config, reporter):
    """Reports a hopeless accuracy: the pruner stops it at once (report raises optuna.TrialPruned)."""
    CALLS.append([])
    for epoch in range(1, config.epochs + 1):
        CALLS[-1].append(0.01)
        reporter.report(epoch, {"accuracy": 0.01})
    return {"accuracy": 0.01}


def test_train_fn_reports_its_curve_and_a_pruner_can_stop_it(tmp_path, one_thread):
    storage = f"sqlite:///{tmp_path / 'train_fn.db'}"
    common = dict(space=NanoSpace(C=8), data=quadrants, objectives={"accuracy": "maximize"}, n_trials=2,
                  device="cpu", sampler=optuna.samplers.RandomSampler(seed=0),
                  train=nasopt.TrainConfig(epochs=3, batch_size=32))
    CALLS.clear()
    study = nasopt.run(nasopt.StudySpec(name="own_loop", train_fn=my_loop, **common), storage=storage,
                       progress=False)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    trained = [t for t in trials if "reused_from" not in t.user_attrs]
    assert len(trained) == len(CALLS) >= 1
    for t, reported in zip(trained, CALLS, strict=True):
        curve = t.user_attrs["curve"]
        assert [r["epoch"] for r in curve] == [1, 2, 3]
        assert [r["val_acc"] for r in curve] == [round(a, 6) for a in reported]
        assert t.values == [reported[-1]] and t.user_attrs["accuracy"] == round(reported[-1], 6)
    assert max(t.values[0] for t in trials) > 0.5

    CALLS.clear()
    study = nasopt.run(nasopt.StudySpec(name="hopeless_loop", train_fn=bad_loop,
                                        pruner=EarlyKill(threshold=0.3, epoch=1), **common),
                       storage=storage, progress=False)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    assert CALLS and all(reported == [0.01] for reported in CALLS)  # stopped in epoch 1's report
    for t in trials:
        assert t.user_attrs["pruned_reason"].startswith("early kill: val_acc=0.0100 < 0.3 at epoch 1")
        assert [r["val_acc"] for r in t.user_attrs["curve"]] == [0.01]


# ---------------------------------------------------------------------------------------------- mistakes

DATA_MODULE = '''
import torch
from torch.utils.data import TensorDataset

def ints():
    return [1, 2, 3]

def empty():
    return TensorDataset(torch.zeros(0, 1, 16), torch.zeros(0)), TensorDataset(torch.zeros(4, 1, 16), torch.zeros(4))

def regression():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 16, generator=g)
    return TensorDataset(x[:48], x[:48].mean((1, 2))), TensorDataset(x[48:], x[48:].mean((1, 2)))

def masks():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 1, 16, 16, generator=g)
    return TensorDataset(x[:32], (x[:32, 0] > 0).long()), TensorDataset(x[32:], (x[32:, 0] > 0).long())

def mae(outputs, targets):
    return float((outputs - targets).abs().mean())
'''

STUDY = '''
import nasopt
from nasopt.search_spaces.conv1d import Conv1dSpace
from nasopt.search_spaces.mobile import MobileSpace

study = nasopt.StudySpec(name="mistake", n_trials=1, train=nasopt.TrainConfig(epochs=1, batch_size=8), {fields})
'''

MISTAKES = {
    "no such module": ('space=Conv1dSpace(C=4), data="nosuchmodule:make"', ["nosuchmodule"]),
    "factory returns ints": ('space=Conv1dSpace(C=4), data="mydata:ints"', ["mydata:ints", "is an int"]),
    "empty dataset": ('space=Conv1dSpace(C=4), data="mydata:empty"', ["train set is empty"]),
    "metric named accuracy": ('space=Conv1dSpace(C=4), data="mydata:regression", metrics={"accuracy": "mydata:mae"}, '
                              'objectives={"accuracy": "maximize"}', ["'accuracy' is a built-in name"]),
    "objective not defined": ('space=Conv1dSpace(C=4), data="mydata:regression", objectives={"f1": "maximize"}',
                              ["unknown objective 'f1'"]),
    "dense on mobile": ('space=MobileSpace(stages=2, max_depth=1), data="mydata:masks"', ["dense"]),
    "non-scalar loss": ('space=Conv1dSpace(C=4), data="mydata:regression", loss=lambda out, y: (out - y) ** 2, '
                        'objectives={"val_loss": "minimize"}',
                        ["scalar"]),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_mistakes_are_one_line_exit_2_and_write_nothing(tmp_path, mistake):
    fields, words = MISTAKES[mistake]
    (tmp_path / "mydata.py").write_text(textwrap.dedent(DATA_MODULE))
    (tmp_path / "study.py").write_text(STUDY.format(fields=fields))
    before = sorted(p.name for p in tmp_path.iterdir())
    result = nasopt_cli("run", "study.py", cwd=tmp_path, timeout=120)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nasopt: error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no nasopt.db, no artifacts
