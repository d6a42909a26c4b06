"""int8 metrics of trained trials (onnxruntime static quantization: nasopt.measure._int8, nasopt.study._int8)
and `nasopt export --int8`.

A tiny study (nano space, digits, 3 epochs) with `int8_accuracy` and `int8_latency_ms` as objectives and an
`int8_kb` limit runs through the real CLI with two worker processes on a journal file, then resumes with one;
its trials store the figures with provenance, the limit makes trials infeasible after training, `show`,
`report`, `trials_frame` and the dashboard's view carry them, and `export --int8` writes the int8 graph
whose manifest states its agreement with fp32. A network trained to ~90 % keeps its accuracy in int8 (the
public API), a network the exporter cannot handle fails its own trial once, and every bad input is one line,
exit 2, nothing written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from cli_errors import user_error
from optuna.trial import TrialState
from torch import nn

import nasopt
from nasopt.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
STUDY = '''
import optuna
import nasopt
from nasopt.search_spaces.nano import NanoSpace


class ByNumber(optuna.samplers.RandomSampler):
    """Trial n runs the n-th architecture below, whichever worker takes it: trials 1 and 3 are over the
    int8_kb limit of 2 kB (3.9 and 2.2 kB in int8), 0 and 2 within it (1.9 and 1.2 kB)."""

    ARCHS = [("conv3x3", "conv3x3"), ("conv5x5", "conv5x5"), ("maxpool3x3", "conv3x3"), ("conv5x5", "skip")]

    def sample_independent(self, study, trial, name, distribution):
        return self.ARCHS[trial.number % len(self.ARCHS)][int(name[3])]


study = nasopt.StudySpec(
    name="tiny_int8",
    space=NanoSpace(C=8, positions=2),
    dataset="digits",
    objectives={"int8_accuracy": "maximize", "int8_latency_ms": "minimize"},
    constraints={"int8_kb": 2.0},
    sampler=ByNumber(seed=0),
    n_trials=4,
    train=nasopt.TrainConfig(epochs=3, batch_size=64, lr=0.05),
    measure=nasopt.MeasureConfig(warmup=1, repeats=5, int8_samples=128),
)
'''
PROVENANCE = {"median_ms", "iqr_ms", "method", "runtime", "provider", "device", "device_name", "threads",
              "batch_size", "input_shape", "warmup", "repeats"}


def cli(*args: object, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nasopt.cli", *map(str, args)], cwd=cwd, env=env or ENV,
                          capture_output=True, text=True, timeout=400)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("int8")
    (folder / "study.py").write_text(STUDY)
    url = f"journal:///{folder / 'study.log'}"
    first = cli("run", "study.py", "--storage", url, "--workers", "2", "--n-trials", "3", "-q", cwd=folder)
    assert first.returncode == 0, first.stderr
    resumed = cli("run", "study.py", "--storage", url, "-q", cwd=folder)  # the same command: up to the file's 4
    assert resumed.returncode == 0, resumed.stderr
    assert "4 trials finished" in resumed.stdout
    study = nasopt.analysis.load_study("tiny_int8", url)
    return {"folder": folder, "url": url, "study": study, "first": first.stdout}


def test_trials_store_int8_metrics_with_provenance(run: dict) -> None:
    study = run["study"]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4 and study.metric_names == ["int8_accuracy", "int8_latency_ms"]
    for t in complete:
        rec = t.user_attrs["int8"]
        assert t.values == [t.user_attrs["int8_accuracy"], t.user_attrs["int8_latency_ms"]]
        assert t.user_attrs["int8_accuracy"] == pytest.approx(rec["check"]["int8_val"]["acc"], abs=1e-6)
        # the same runtime, settings and spread record as latency_ms, plus where it ran
        assert PROVENANCE <= set(rec["latency"]) and rec["latency"]["device"] == "cpu"
        assert rec["latency"]["warmup"] == 1 and rec["latency"]["repeats"] == 5 and rec["latency"]["batch_size"] == 1
        assert rec["latency"]["runtime"].startswith("onnxruntime") and rec["fp32_latency"]["median_ms"] > 0
        assert rec["quantization"]["format"] == "QDQ" and rec["quantization"]["method"] == "MinMax"
        assert rec["quantization"]["calibration"]["samples"] == 128 and "per output channel" in rec["quantization"]["weights"]
        assert 0 < rec["kb"] == t.user_attrs["int8_kb"] < rec["size"]["file_kb"]
        # int8 predicts the fp32 network's class almost everywhere, and scores about the same
        assert rec["agreement"] >= 0.9 and abs(t.user_attrs["int8_accuracy"] - t.user_attrs["accuracy"]) <= 0.05
        # this CPU's fused int8 kernels are recorded beside it, and a trial says when they disagree more
        host = rec["check"]["host_kernels"]
        assert host["kernels"].startswith("onnxruntime's fused int8 kernels") and 0 <= host["agreement"] <= 1
        saturated = rec["agreement"] - host["agreement"] > 0.01
        assert saturated == any("int8 kernels" in w for w in t.user_attrs.get("warnings", []))
        # the int8_kb limit: an Optuna constraint set after training (never a prune)
        assert t.system_attrs["constraints:int8_kb"] == pytest.approx(t.user_attrs["int8_kb"] - 2.0)
    workers = {t.system_attrs["nasopt:worker"]["pid"] for t in complete}
    assert len(workers) >= 2  # the forked workers and the resumed run all measured int8
    # the kept weights lie beside the journal file, where export looks for them
    assert (run["folder"] / "study.artifacts").is_dir() and not (run["folder"] / "nasopt-artifacts").exists()


def test_trials_frame_show_report_and_dashboard(run: dict, capsys) -> None:
    from nasopt.analysis import trials_frame
    from nasopt.analysis._dashboard import FeasibilityView
    from nasopt.storage import open_storage

    study, url, folder = run["study"], run["url"], run["folder"]
    frame = trials_frame(study=study)
    assert {"int8_accuracy", "int8_latency_ms", "int8_kb", "accuracy", "latency_ms"} <= set(frame.columns)
    for t in study.trials:
        assert frame.loc[t.number, "int8_kb"] == t.user_attrs["int8_kb"]
        assert frame.loc[t.number, "feasible"] == (t.user_attrs["int8_kb"] <= 2.0) == (t.number % 2 == 0)
    assert main(["show", "tiny_int8", "--storage", url]) == 0
    shown = capsys.readouterr().out
    assert "int8_accuracy" in shown and "int8_kb" in shown and "int8_latency_ms" in shown
    assert main(["report", "tiny_int8", "--storage", url, "-o", str(folder / "report.html")]) == 0
    html = (folder / "report.html").read_text()
    assert "int8 against fp32" in html and "int8 = fp32 class" in html
    view = FeasibilityView(open_storage(url, create=False, heartbeat=False))
    for t in view.get_all_trials(study._study_id):
        over = t.user_attrs["int8_kb"] > 2.0
        assert t.user_attrs["feasible"] == (f"no: int8_kb={t.user_attrs['int8_kb']:,.2f} > 2.00" if over else "yes")


def test_export_int8_agrees_with_fp32(run: dict) -> None:
    import onnxruntime as ort

    from nasopt.data import load_task

    study, folder = run["study"], run["folder"]
    front = [t for t in study.best_trials if t.user_attrs.get("weights_artifact")]
    trial = max(front, key=lambda t: t.values[0])
    out = folder / "export"
    result = cli("export", "tiny_int8", "--storage", run["url"], "--trial", trial.number, "--int8", "-o", out,
                 cwd=folder)
    assert result.returncode == 0, result.stderr
    assert {p.name for p in out.iterdir()} == {"arch.json", "model.pt", "model.ts", "model.onnx", "model.int8.onnx",
                                               "manifest.json"}
    manifest = json.loads((out / "manifest.json").read_text())
    section = manifest["int8"]
    assert section["file"] == "model.int8.onnx" and "model.int8.onnx" in manifest["files"]
    assert section["format"] == "QDQ" and section["method"] == "MinMax" and section["calibration"]["samples"] == 128
    assert section["scales"]["activations"]["input"]["scale"] > 0 and section["scales"]["weights"]["tensors"] >= 2
    check = section["check"]
    assert check["agreement"] >= 0.9 and check["split"] == "validation" and check["samples"] > 100
    # quantized as the trial was (its recorded calibration): the same int8 model, the same figures
    assert check["int8_val"]["acc"] == pytest.approx(trial.user_attrs["int8_accuracy"], abs=1e-6)
    assert f"same class as fp32 on {check['agreement']:.2%}" in result.stdout
    # the int8 file on its own in onnxruntime, against the exported torch module, on the validation split
    task = load_task("digits", seed=0)
    model = nasopt.load_model(out)
    # as written (the int8 arithmetic exactly: `agreement`) and with this CPU's fused int8 kernels
    # (`host_kernels`; they saturate on x86 without VNNI, so the two may differ there)
    exact = ort.SessionOptions()
    exact.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for options, expected in ((exact, check["agreement"]), (None, check["host_kernels"]["agreement"])):
        session = ort.InferenceSession(str(out / "model.int8.onnx"), options, providers=["CPUExecutionProvider"])
        same = total = 0
        for x, _ in task.val.batches(256):
            int8 = session.run(None, {"input": x.numpy()})[0].argmax(1)
            with torch.no_grad():
                same += int((model(x).argmax(1).numpy() == int8).sum())
            total += len(x)
        assert same / total == pytest.approx(expected, abs=0.01)


def test_trained_network_keeps_its_accuracy_in_int8(digits_task) -> None:
    """A nano network trained to ~90 % loses at most 2 points in int8, and its int8 tensors are what
    flash_kb counts plus onnxruntime's extra bytes per channel (bias scale and zero point, activation scales)."""
    from nasopt.measure import flash_kb
    from nasopt.measure._int8 import Calibration, int8_metrics
    from nasopt.search_spaces.nano import NanoSpace
    from nasopt.train import train

    space = NanoSpace(C=8, positions=2)
    torch.manual_seed(0)
    model = space.build({"pos0.op": "conv5x5", "pos1.op": "conv3x3"}, digits_task)
    result = train(model, digits_task, nasopt.TrainConfig(epochs=8, batch_size=64, lr=0.05), seed=0)
    rec = int8_metrics(model, digits_task, Calibration(), warmup=1, repeats=5)
    assert result.val_acc >= 0.85
    assert abs(rec["accuracy"] - result.val_acc) <= 0.02 and rec["agreement"] >= 0.95
    assert rec["check"]["fp32_val"]["acc"] == pytest.approx(result.val_acc, abs=1e-6)  # fp32 in onnxruntime = torch
    assert flash_kb(model) < rec["kb"] < 1.5 * flash_kb(model)


class _BadOnExport(nn.Module):
    """Stands for a network that the ONNX exporter (or the quantizer) cannot handle."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting():
            raise RuntimeError("this op has no ONNX form")
        return x


class _TwoNets:
    """A one-decision space: a small CNN, with or without the module above."""

    def suggest(self, trial: optuna.Trial) -> dict:
        return {"tail": trial.suggest_categorical("tail", ["plain", "bad"])}

    def build(self, arch, task, choose=None) -> nn.Module:
        layers = [nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)]
        return nn.Sequential(*layers, *([_BadOnExport()] if arch["tail"] == "bad" else []))

    def distributions(self) -> dict:
        return {"tail": optuna.distributions.CategoricalDistribution(["plain", "bad"])}

    def encode(self, arch):
        import numpy as np

        return np.array([float(arch["tail"] == "bad")])

    def describe(self, arch) -> str:
        return f"two:{arch['tail']}"


def test_a_network_the_quantizer_cannot_handle_fails_its_trial_once(tmp_path) -> None:
    """`MeasureConfig(int8=True)` records the int8 metrics without optimising them; the trial whose network
    cannot be exported fails with the reason, is not retried, and the study goes on."""
    spec = nasopt.StudySpec(name="bad_int8", space=_TwoNets(), dataset="digits", n_trials=2,
                            sampler=optuna.samplers.GridSampler({"tail": ["bad", "plain"]}, seed=0),
                            train=nasopt.TrainConfig(epochs=1, batch_size=128),
                            measure=nasopt.MeasureConfig(warmup=1, repeats=3, int8=True, int8_samples=64))
    study = nasopt.run(spec, storage=f"sqlite:///{tmp_path / 'db.sqlite'}", progress=False)
    trials = {t.params["tail"]: t for t in study.trials}
    assert len(study.trials) == 2 and trials["plain"].state == TrialState.COMPLETE
    assert trials["plain"].values == [pytest.approx(trials["plain"].user_attrs["accuracy"], abs=1e-6)]  # not an objective
    assert trials["plain"].user_attrs["int8"]["accuracy"] == trials["plain"].user_attrs["int8_accuracy"]
    bad = trials["bad"]
    assert bad.state == TrialState.FAIL and "int8_kb" not in bad.user_attrs
    assert "int8: the ONNX export failed" in bad.user_attrs["fail_reason"]
    assert "no ONNX form" in bad.user_attrs["fail_reason"] and "not retried" in bad.user_attrs["fail_reason"]


REGRESSION = '''
import torch
from torch.utils.data import TensorDataset
import nasopt
from nasopt.search_spaces.nano import NanoSpace

x = torch.randn(64, 1, 8, 8)
study = nasopt.StudySpec(name="reg_int8", space=NanoSpace(C=4, positions=1),
                         data=(TensorDataset(x, x.mean((1, 2, 3))), TensorDataset(x[:16], x[:16].mean((1, 2, 3)))),
                         objectives={"val_loss": "minimize", "int8_accuracy": "maximize"}, n_trials=1)
'''


def test_bad_inputs_one_line_exit_2_nothing_written(tmp_path, capsys, monkeypatch) -> None:
    (tmp_path / "study.py").write_text(STUDY)
    (tmp_path / "regression.py").write_text(REGRESSION)
    (tmp_path / "minimum.py").write_text(STUDY.replace('{"int8_kb": 2.0}', '{"int8_accuracy": 1.5}'))
    (tmp_path / "unknown.py").write_text(STUDY.replace('{"int8_kb": 2.0}', '{"int8_speed": 1}'))
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    before = snapshot(tmp_path)
    base = ["run", str(tmp_path / "study.py"), "--storage", url, "-q"]
    user_error(capsys, [*base, "--set", "measure.int8_method=bogus"], "int8_method", "'bogus'", "minmax")
    user_error(capsys, [*base, "--set", "measure.int8_samples=0"], "int8_samples >= 1")
    user_error(capsys, ["run", str(tmp_path / "minimum.py"), "--storage", url], "int8_accuracy", "(0, 1]")
    user_error(capsys, ["run", str(tmp_path / "unknown.py"), "--storage", url], "int8_speed", "int8_kb")
    user_error(capsys, ["run", str(tmp_path / "regression.py"), "--storage", url, "-q"], "'int8_accuracy' needs "
               "classes", "regression")
    # onnxruntime's quantizer missing: the study and the export refuse before anything is written
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)
    user_error(capsys, base, "int8", "pip install 'nasopt[export]'")
    user_error(capsys, ["export", "tiny_int8", "--storage", url, "--trial", "0", "--int8", "-o",
                        str(tmp_path / "out")], "pip install 'nasopt[export]'")
    monkeypatch.delitem(sys.modules, "onnxruntime.quantization")
    assert snapshot(tmp_path) == before


def test_missing_onnxruntime_through_the_real_cli(tmp_path) -> None:
    """onnxruntime not importable at all (a stub package that fails to import stands for it)."""
    stub = tmp_path / "stub" / "onnxruntime"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('onnxruntime is not installed')\n")
    (tmp_path / "study.py").write_text(STUDY)
    before = snapshot(tmp_path)
    env = {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path / "stub"), ENV.get("PYTHONPATH")]))}
    result = cli("run", "study.py", "--storage", "sqlite:///db.sqlite", "-q", cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "`onnxruntime`" in lines[0] and "pip install 'nasopt[export]'" in lines[0], lines
    assert snapshot(tmp_path) == before


def test_an_int8_accuracy_limit_is_a_minimum_in_the_dashboard() -> None:
    """`constraints={"int8_accuracy": 0.9}`: a trial at 0.85 is infeasible (constraint 0.9 - 0.85 > 0), and the
    dashboard's view says it is under the limit, not over it."""
    from nasopt.analysis._dashboard import FeasibilityView

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, directions=["maximize"])
    study.set_user_attr("nasopt", {"constraints": {"int8_accuracy": 0.9}})
    for value in (0.85, 0.95):
        study.add_trial(optuna.trial.create_trial(value=value, system_attrs={"constraints:int8_accuracy": 0.9 - value}))
    low, high = FeasibilityView(storage).get_all_trials(study._study_id)
    assert low.user_attrs["feasible"] == "no: int8_accuracy=0.8500 < 0.9000" and high.user_attrs["feasible"] == "yes"


@pytest.mark.parametrize("name", sorted(__import__("nasopt.search_spaces", fromlist=["SPACES"]).SPACES))
def test_every_space_quantizes_and_runs_in_int8(name, tmp_path, monkeypatch) -> None:
    """A random network of every registered space goes through the whole recipe (export, pre-processing,
    quantization, both graphs in onnxruntime), and nothing is left in the working directory."""
    from types import SimpleNamespace

    from nasopt.export._rebuild import ShapeTask
    from nasopt.measure._int8 import Calibration, int8_metrics
    from nasopt.search_spaces import make_space
    from nasopt.space import random_arch

    monkeypatch.chdir(tmp_path)
    space = make_space(name)
    shape = (1, 40) if name in ("conv1d", "micro") else (3, 16, 16) if name in ("mobile", "darts_cell") else (1, 8, 8)
    model = space.build(random_arch(space, seed=0), ShapeTask(name, shape, 10)).eval()
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, *shape, generator=generator), torch.randint(0, 10, (48,), generator=generator)
    split = SimpleNamespace(batches=lambda n, **_: ((x[i:i + n], y[i:i + n]) for i in range(0, 48, n)))
    task = SimpleNamespace(input_shape=shape, num_classes=10, kind="classify", train=split, val=split)
    rec = int8_metrics(model, task, Calibration(samples=32), warmup=1, repeats=3)
    assert rec["latency_ms"] > 0 and rec["kb"] > 0 and 0 <= rec["accuracy"] <= 1
    assert rec["agreement"] >= 0.75  # an untrained network's logits are close together: int8 may flip a few
    assert list(tmp_path.iterdir()) == []
