"""`nasopt export` and `nasopt.load_model` on a tiny study made here (nano space, digits, 1 epoch, 3 trials).

The happy paths run the real command in a subprocess; the bad-input matrix calls the same `main()` in
this process (each subprocess costs seconds of torch import on 2 shared cores). Every bad input must
end with exit code 2, one `nasopt: error:` line and no file created or changed.
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

from nasopt.cli.main import load_study_file, main

STUDY_FILE = Path(__file__).parent / "studies" / "tiny_export.py"
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: a second thread only adds contention
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
FILES = {"arch.json", "model.pt", "model.ts", "model.onnx", "manifest.json"}


def cli(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nasopt.cli", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    import nasopt

    folder = tmp_path_factory.mktemp("export")
    url = f"sqlite:///{folder / 'nasopt.db'}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # in this process: `nasopt run` itself is tested in test_cli.py
        nasopt.run(load_study_file(str(STUDY_FILE)), storage=url, progress=False)
    finally:
        torch.set_num_threads(threads)
    study = optuna.load_study(study_name="tiny_export", storage=url)
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(complete) == 3 and all(t.user_attrs.get("weights_artifact") for t in complete)
    return {"folder": folder, "url": url, "study": study, "pareto": sorted(t.number for t in study.best_trials)}


def _outputs_agree(directory: Path) -> None:
    """load_model, the TorchScript file in plain torch and the ONNX file in onnxruntime: one answer."""
    import onnxruntime as ort

    import nasopt

    arch = json.loads((directory / "arch.json").read_text())
    model = nasopt.load_model(directory)
    x = torch.randn(5, *arch["input_shape"])
    with torch.no_grad():
        ref = model(x)
        scripted = torch.jit.load(str(directory / "model.ts"))(x)
    session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    assert ref.shape == (5, arch["num_classes"])
    torch.testing.assert_close(scripted, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(onnx_out, ref, atol=1e-4, rtol=1e-3)
    state = torch.load(directory / "model.pt", weights_only=True)  # tensors only
    assert set(state) == set(model.state_dict())


def test_export_pareto_with_study_file(run: dict) -> None:
    folder, out = run["folder"], run["folder"] / "pareto"
    result = cli("export", "tiny_export", "--pareto", "--study-file", STUDY_FILE, "-o", out, cwd=folder)
    assert result.returncode == 0, result.stderr
    index = json.loads((out / "index.json").read_text())
    assert index["trials"] == run["pareto"]
    study = run["study"]
    for n in run["pareto"]:
        directory = out / f"trial{n}"
        assert {p.name for p in directory.iterdir()} == FILES
        manifest = json.loads((directory / "manifest.json").read_text())
        trial = study.trials[n]
        assert manifest["study"] == "tiny_export" and manifest["trial"] == n
        assert manifest["objectives"]["accuracy"]["value"] == pytest.approx(trial.values[0])
        assert manifest["objectives"]["params"]["direction"] == "minimize"
        assert manifest["params"] == trial.user_attrs["params"] and manifest["macs"] == trial.user_attrs["macs"]
        assert manifest["latency"]["export"]["method"] == "measured" and manifest["latency"]["export"]["device_name"]
        assert manifest["latency"]["search"]["median_ms"] == trial.user_attrs["latency"]["median_ms"]
        assert manifest["weights"] == {"source": "trial artifact", "artifact": trial.user_attrs["weights_artifact"],
                                       "trained": True}
        assert manifest["versions"]["torch"] == torch.__version__ and manifest["versions"]["nasopt"]
        assert manifest["input"]["shape"] == [1, 1, 8, 8] and manifest["input"]["normalisation"]["scale"]
        assert set(manifest["files"]) == FILES - {"manifest.json"}
        arch = json.loads((directory / "arch.json").read_text())
        assert arch["params"] == trial.params and arch["describe"] == trial.user_attrs["arch"]
        assert arch["space"]["kwargs"]["positions"] == 2
        _outputs_agree(directory)
        # the exported weights are the trial's trained weights, not a fresh initialisation
        import nasopt
        from nasopt.artifacts._inherit import artifact_store_for, load_weights

        stored = load_weights(trial.user_attrs["weights_artifact"], artifact_store_for(run["url"]))
        for key, value in nasopt.load_model(directory).state_dict().items():
            torch.testing.assert_close(value, stored[key])


@pytest.fixture(scope="module")
def digits_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One trial of the tiny study trained long enough to be good (~95 %), exported from its study record."""
    import nasopt

    folder = tmp_path_factory.mktemp("digits_export")
    study_file = folder / "study.py"
    study_file.write_text(STUDY_FILE.read_text().replace('"tiny_export"', '"digits_export"')
                          .replace("epochs=1,", "epochs=15,").replace("n_trials=3", "n_trials=1"))
    url = f"sqlite:///{folder / 'nasopt.db'}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        nasopt.run(load_study_file(str(study_file)), storage=url, progress=False)
        assert main(["export", "digits_export", "--storage", url, "--trial", "0", "-o", str(folder / "out")]) == 0
        assert main(["export", "digits_export", "--storage", url, "--trial", "0", "--study-file", str(study_file),
                     "-o", str(folder / "from_file")]) == 0
    finally:
        torch.set_num_threads(threads)
    return folder


def test_manifest_input_feeds_sklearn_digits_to_the_recorded_accuracy(digits_export: Path) -> None:
    """sklearn's load_digits(), turned into network input by following the manifest's fields alone, gives
    the model the accuracy the study recorded (exactly, on the validation rows)."""
    import numpy as np
    from sklearn.datasets import load_digits

    import nasopt
    from nasopt.data._datasets import TEST_FRACTION, TEST_SEED, stratified_split

    out = digits_export / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    spec = manifest["input"]
    assert manifest["space_source"] == "study record"
    # the study file's path (the data loaded again) states the same input
    assert json.loads((digits_export / "from_file" / "manifest.json").read_text())["input"] == spec
    raw_spec, norm = spec["raw"], spec["normalisation"]
    assert raw_spec["source"].startswith("sklearn.datasets.load_digits().images") and raw_spec["range"] == [0, 16]
    assert "0..16" in raw_spec["units"] and "raw / 16" in spec["feed"] and norm["resize"] is None

    digits = load_digits()
    raw = digits.images.reshape(len(digits.images), *spec["shape"][1:])  # (N, 1, 8, 8), as `source` says
    assert raw_spec["range"][0] <= raw.min() and raw.max() <= raw_spec["range"][1]
    per_channel = (1, -1) + (1,) * (raw.ndim - 2)
    mean, std, scale, shift = (np.asarray(norm[k]).reshape(per_channel) for k in ("mean", "std", "scale", "shift"))
    x = ((raw / norm["divide_by"] - mean) / std).astype(spec["dtype"])
    np.testing.assert_allclose(raw * scale + shift, x, atol=1e-5)  # the formula's one-step form

    model = nasopt.load_model(out)
    with torch.no_grad():
        correct = model(torch.from_numpy(x)).argmax(1).numpy() == digits.target
        naive = model(torch.from_numpy(raw.astype("float32"))).argmax(1).numpy() == digits.target
    recorded = manifest["objectives"]["accuracy"]["value"]
    assert recorded > 0.8 and correct.mean() > 0.8 and abs(correct.mean() - recorded) < 0.05, (correct.mean(), recorded)
    # the validation rows, drawn as nasopt draws them, give exactly the recorded validation accuracy
    keep, _ = stratified_split(digits.target, TEST_FRACTION, TEST_SEED)
    _, held = stratified_split(digits.target[keep], manifest["data"]["val_fraction"], manifest["data"]["seed"])
    assert correct[keep[held]].mean() == pytest.approx(recorded, abs=1e-9)
    assert naive.mean() < 0.5  # the raw pixels fed as they are (what "float32 values as stored" led to)


def test_export_refuses_existing_dir_then_force_from_the_study_record(run: dict, capsys) -> None:
    from nasopt.data import load_task
    from nasopt.export._rebuild import study_record

    folder, url, out = run["folder"], run["url"], run["folder"] / "pareto"
    before = snapshot(out)
    user_error(capsys, ["export", "tiny_export", "--storage", url, "--trial", "1", "--study-file", str(STUDY_FILE),
                        "-o", str(out)], "exists", "--force")
    assert snapshot(out) == before
    # a study that records its space config (what study.py stores) needs no study file
    study = run["study"]
    spec = load_study_file(str(STUDY_FILE))
    study.set_user_attr("nasopt", {**study.user_attrs["nasopt"], **study_record(spec, load_task("digits"))})
    n = run["pareto"][0]
    assert main(["export", "tiny_export", "--storage", url, "--trial", str(n), "-o", str(out), "--force"]) == 0
    assert {p.name for p in out.iterdir()} == FILES  # replaced whole: the Pareto layout is gone
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["trial"] == n and manifest["space_source"] == "study record"
    assert not [p for p in folder.iterdir() if p.name.startswith(".pareto.")]  # no temporary left behind


def test_bad_input(run: dict, capsys) -> None:
    folder, url, study = run["folder"], run["url"], run["study"]
    out = folder / "bad"
    db_before = snapshot(folder)
    base = ["export", "tiny_export", "--storage", url, "--study-file", str(STUDY_FILE), "-o", str(out)]
    user_error(capsys, ["export", "nope", "--storage", url, "--trial", "0"], "no study 'nope'", "tiny_export")
    user_error(capsys, [*base, "--trial", "99"], "no trial 99")
    user_error(capsys, ["export", "tiny_export", "--storage", url, "-o", str(out)], "--trial N", "--pareto")
    user_error(capsys, [*base, "--trial", "0", "--pareto"], "not both")
    assert snapshot(folder) == db_before and not out.exists()

    failed = study.ask()
    failed.set_user_attr("fail_reason", "out of memory: test")
    study.tell(failed, state=TrialState.FAIL)
    user_error(capsys, [*base, "--trial", str(failed.number)], f"trial {failed.number}", "FAIL", "out of memory")
    source = study.trials[run["pareto"][0]]
    bare = optuna.trial.create_trial(params=source.params, distributions=source.distributions, values=source.values,
                                     user_attrs={"params": source.user_attrs["params"], "seed": 1})
    study.add_trial(bare)
    number = len(study.trials) - 1
    user_error(capsys, [*base, "--trial", str(number)], "no stored weights", "nasopt train", "--untrained")
    assert not out.exists()
    assert main([*base, "--trial", str(number), "--untrained"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["weights"]["trained"] is False and manifest["weights"]["source"] == "initialised"
    capsys.readouterr()

    # a study file whose space differs from the run's: caught by the parameter count
    other = folder / "other.py"
    other.write_text(STUDY_FILE.read_text().replace("C=8,", "C=16,"))
    user_error(capsys, ["export", "tiny_export", "--storage", url, "--study-file", str(other), "--trial",
                        str(run["pareto"][-1]), "-o", str(folder / "x")], "parameters", "recorded")
    # a corrupt weights artifact: one line, nothing written
    artifact = study.trials[run["pareto"][0]].user_attrs["weights_artifact"]
    path = folder / "nasopt.artifacts" / artifact
    path.write_bytes(b"not a torch file")
    user_error(capsys, [*base[:-1], str(folder / "y"), "--trial", str(run["pareto"][0])], artifact, "cannot be read")
    assert not (folder / "x").exists() and not (folder / "y").exists()
    # a corrupt export directory: load_model says so in one line
    (out / "model.pt").write_bytes(b"garbage")
    import nasopt
    from nasopt.errors import UserError

    with pytest.raises(UserError, match="corrupt"):
        nasopt.load_model(out)


def test_keep_front_weights(run: dict, capsys) -> None:
    from nasopt.artifacts._inherit import artifact_store_for
    from nasopt.export._trial import keep_front_weights
    from nasopt.keys import DROPPED_ATTR

    study, url = run["study"], run["url"]
    dominated = [t.number for t in study.trials if t.state == TrialState.COMPLETE and t.number not in run["pareto"]
                 and t.user_attrs.get("weights_artifact")]
    assert dominated
    artifacts = {n: study.trials[n].user_attrs["weights_artifact"] for n in dominated}
    assert keep_front_weights(study, artifact_store_for(url)) == dominated
    assert keep_front_weights(study, artifact_store_for(url)) == []  # idempotent
    assert study.user_attrs[DROPPED_ATTR] == dominated
    assert not any((run["folder"] / "nasopt.artifacts" / a).exists() for a in artifacts.values())
    user_error(capsys, ["export", "tiny_export", "--storage", url, "--study-file", str(STUDY_FILE), "--trial",
                        str(dominated[0]), "-o", str(run["folder"] / "z")], "dropped", "Pareto front", "nasopt train")
