"""The latency lookup table: coverage of every op/shape a space produces, the predictor, files and the CLI."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import nasopt
from nasopt.measure import _latency_build as latency_build
from nasopt.measure._latency_build import build_table
from nasopt.measure._latency_table import (
    LatencyTable,
    default_path,
    predicted_latency,
    shape_key,
)
from nasopt.measure._metrics import flop_counter_macs, measure_latency
from nasopt.search_spaces.mobile import MobileSpace
from nasopt.space import fixed, random_arch

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
TINY = dict(stages=2, max_depth=2, kernels=(3, 5), expands=(1, 3), widths=(0.5, 1.0))


def macs_instead_of_time(jobs, warmup, repeats, bar, seed=0):
    """A stand-in for the timer: each job's 'latency' is its multiply-adds / 1e6, exact and deterministic."""
    return [(flop_counter_macs(module, tuple(x.shape[1:])) / 1e6, 0.0) for module, x in jobs]


class ShapeRecorder:
    """A chooser that builds the real op and records (op, shape key) of every slot when the network runs."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()
        self.candidates: set[tuple[str, str]] = set()

    def __call__(self, name, candidates, chosen, C_in, C_out, stride, **options):
        op = fixed(name, candidates, chosen, C_in, C_out, stride, **options)

        def hook(module, args, chosen=chosen, candidates=tuple(candidates)):
            key = shape_key(C_in, C_out, stride, args[0].shape[2:], options)
            self.seen.add((chosen, key))
            self.candidates.update((c, key) for c in candidates)

        wrapper = nn.Sequential(op)  # an Identity is dropped by the mobile space: record it through a wrapper
        wrapper.register_forward_pre_hook(hook)
        return wrapper


def test_table_covers_every_op_and_shape_of_random_architectures(digits_task, monkeypatch):
    monkeypatch.setattr(latency_build, "_measure", lambda jobs, *a, **k: [(0.0, 0.0)] * len(jobs))
    space = MobileSpace(**TINY)
    table = build_table(space, digits_task, repeats=1, warmup=0)
    recorder = ShapeRecorder()
    for seed in range(60):
        net = space.build(random_arch(space, seed=seed), digits_task, recorder).eval()
        with torch.no_grad():
            net(torch.zeros(1, *digits_task.input_shape))
    entries = {(op, key) for op, shapes in table.ops.items() for key in shapes}
    assert recorder.seen and recorder.seen <= entries  # every op an architecture runs, at its shape
    assert recorder.candidates <= entries  # and every candidate of every slot it runs
    assert {key for _, key in recorder.seen} == {key for op, key in entries if op == "zero"}  # no shape too many
    assert set(table.frames) == {"width=0.5", "width=1.0"} and table.provenance["structural"] == ["width"]


def test_predictor_sums_the_entries_of_an_architecture_exactly(digits_task, monkeypatch):
    """With multiply-adds in place of times, the prediction must be the network's own MAC count."""
    monkeypatch.setattr(latency_build, "_measure", macs_instead_of_time)
    space = MobileSpace(**TINY)
    table = build_table(space, digits_task, repeats=1, warmup=0)
    for seed in range(8):
        arch = random_arch(space, seed=seed)
        expected = flop_counter_macs(space.build(arch, digits_task), digits_task.input_shape) / 1e6
        assert table.predict(space, arch, digits_task) == pytest.approx(expected, abs=1e-5)
    assert {f["median_ms"] for f in table.frames.values()} != {0.0}  # stem + classifier in the fixed part


def test_a_frame_timed_below_its_zero_ops_is_clamped_not_negative(digits_task, monkeypatch):
    """Timing noise can make a skeleton time less than its zero ops alone; the table never holds a negative
    cost: the frame is 0 with the raw difference kept beside it, and a stored negative reads as 0."""
    def frames_faster_than_zeros(jobs, warmup, repeats, bar, seed=0):
        # op entries 1 ms each; the frames (the last jobs: whole networks) 0.5 ms, below their zero ops' sum
        return [(0.5 if isinstance(module, nn.Module) and hasattr(module, "blocks") else 1.0, 0.0)
                for module, _ in jobs]

    monkeypatch.setattr(latency_build, "_measure", frames_faster_than_zeros)
    space = MobileSpace(**TINY)
    table = build_table(space, digits_task, repeats=1, warmup=0)
    assert all(f["median_ms"] == 0.0 and f["clamped_from_ms"] < 0 for f in table.frames.values())
    arch = random_arch(space, seed=0)
    key = next(iter(table.frames))
    table.frames[key]["median_ms"] = -0.074  # an older table's negative entry
    assert table.frame_ms(arch) >= 0.0


def test_predictor_tracks_measured_latency(digits_task, tmp_path):
    """A loose check in real milliseconds (the exact composition is the MAC test above; the error figure is
    benchmarks/bench_latency.py): the smallest and the largest architecture and four random ones. Load from
    other processes only adds time, so each measurement is the fastest of three measure_latency calls."""
    space = MobileSpace(**TINY)
    table = build_table(space, digits_task, repeats=15, threads=1)  # 44 entries: 20 rounds take 0.1 s
    table.save(tmp_path / "t.json")
    table = LatencyTable.load(tmp_path / "t.json")
    small = {"width": 0.5, "stage1.depth": 1, "stage2.depth": 1, "stage1.block0.kernel": 3,
             "stage1.block0.expand": 1, "stage2.block0.kernel": 3, "stage2.block0.expand": 1}
    large = {"width": 1.0, "stage1.depth": 2, "stage2.depth": 2, **{
        f"stage{s}.block{b}.{k}": v for s in (1, 2) for b in (0, 1) for k, v in (("kernel", 5), ("expand", 3))}}
    archs = [small, large, *(random_arch(space, seed=seed) for seed in range(4))]
    predicted, measured = [], []
    for arch in archs:
        ms, provenance = predicted_latency(table, space, arch, digits_task)
        model = space.build(arch, digits_task)
        measured.append(min(measure_latency(model, digits_task.input_shape, threads=1, repeats=5).median_ms
                            for _ in range(3)))
        predicted.append(ms)
    ratios = [p / m for p, m in zip(predicted, measured, strict=True)]
    assert 1 / 3 < statistics.median(ratios) < 3, ratios  # milliseconds of the right size (no timing claim)
    assert predicted[1] > 1.5 * predicted[0] and measured[1] > measured[0], (predicted, measured)
    assert provenance["method"] == "predicted" and provenance["table"] == str(tmp_path / "t.json")
    assert {"device", "device_name", "threads", "batch_size", "repeats", "torch", "date"} <= set(provenance)


def test_stale_or_missing_tables_say_how_to_rebuild(digits_task, tmp_path, monkeypatch):
    monkeypatch.setattr(latency_build, "_measure", lambda jobs, *a, **k: [(0.0, 0.0)] * len(jobs))
    space = MobileSpace(**TINY)
    path = build_table(space, digits_task, repeats=1).save(tmp_path / "t.json")
    table = LatencyTable.load(path)
    table.check(space, digits_task, "cpu")
    with pytest.raises(nasopt.UserError, match=r"widths=\[0.5, 1.0\].*nasopt latency-table"):
        table.check(MobileSpace(**{**TINY, "widths": (0.5,)}), digits_task)
    with pytest.raises(nasopt.UserError, match="input shape"):
        table.check(space, type("T", (), {"input_shape": (3, 32, 32), "num_classes": 10})())
    with pytest.raises(nasopt.UserError, match="measured on cpu"):
        table.check(space, digits_task, "cuda")
    with pytest.raises(nasopt.UserError, match="no latency table at .*nasopt latency-table"):
        LatencyTable.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(nasopt.UserError, match="cannot be read"):
        LatencyTable.load(tmp_path / "bad.json")
    from nasopt.search_spaces.nano import NanoSpace

    with pytest.raises(nasopt.UserError, match="built for MobileSpace, not NanoSpace"):
        table.predict(NanoSpace(), random_arch(NanoSpace(), seed=0), digits_task)


def test_default_path_is_next_to_the_database():
    assert default_path(MobileSpace(), "cpu") == Path("latency_mobile_cpu.json")
    assert default_path(MobileSpace(), "cuda", "sqlite:///runs/x.db") == Path("runs/latency_mobile_cuda.json")


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "nasopt.cli", "latency-table", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)


def test_cli_writes_a_table_with_its_provenance(tmp_path):
    out = cli("--study", str(ROOT / "studies" / "tiny_proxyless.py"), "--repeats", "2", "--threads", "1", "-q",
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "latency_mobile_cpu.json").read_text())
    p = data["provenance"]
    assert {"device", "device_name", "threads", "torch", "batch_size", "repeats", "warmup", "date", "space",
            "space_config", "input_shape"} <= set(p)
    assert p["space"] == "MobileSpace" and p["space_config"]["widths"] == [0.5, 1.0] and p["input_shape"] == [1, 8, 8]
    assert p["threads"] == 1 and p["repeats"] == 2
    entries = [e for shapes in data["ops"].values() for e in shapes.values()]
    assert entries and all(set(e) == {"median_ms", "iqr_ms"} and e["median_ms"] > 0 for e in entries)
    assert "mbconv_k5_e3" in data["ops"] and "skip" in data["ops"]
    # a default space from its name, an input shape and the default file next to the database
    out = cli("--space", "mobile", "--input-shape", "3,16,16", "--repeats", "1", "--warmup", "0", "-q",
              "--storage", f"sqlite:///{tmp_path / 'runs' / 'x.db'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "runs" / "latency_mobile_cpu.json").read_text())
    assert data["provenance"]["input_shape"] == [3, 16, 16] and set(data["frames"]) == {
        "width=0.5", "width=0.75", "width=1.0"}


@pytest.mark.parametrize("args, message", [
    ((), "--space NAME"),
    (("--space", "mobile", "--study", "x.py"), "not both"),
    (("--space", "mobile", "--input-shape", "3x32"), "C,H,W"),
    (("--space", "galaxy"), "unknown space"),
    (("--space", "mobile", "--repeats", "0"), "repeats >= 1"),
])
def test_cli_bad_inputs_are_one_line(tmp_path, monkeypatch, capsys, args, message):
    from nasopt.cli.main import main

    monkeypatch.chdir(tmp_path)
    assert main(["latency-table", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_discrete_study_can_take_its_latency_from_the_table(digits_task, tmp_path):
    """MeasureConfig(latency_table=...): latency_ms is the table's prediction, marked as predicted."""
    import nasopt
    from nasopt.measure._latency_table import LatencyTable

    space = MobileSpace(**TINY)
    path = build_table(space, digits_task, repeats=3, warmup=0, threads=1).save(tmp_path / "t.json")
    table = LatencyTable.load(path)
    study = nasopt.run(nasopt.StudySpec(
        name="predicted", space=space, dataset="digits", n_trials=2, train=nasopt.TrainConfig(epochs=1),
        objectives={"accuracy": "maximize", "latency_ms": "minimize"},
        measure=nasopt.MeasureConfig(latency_table=str(path))), storage=f"sqlite:///{tmp_path / 's.db'}", progress=False)
    for t in study.get_trials():
        assert t.user_attrs["latency"]["method"] == "predicted"
        assert t.values[1] == pytest.approx(table.predict(space, t.params, digits_task), abs=1e-4)
    # a table of another space setting is refused before the storage is touched
    other = nasopt.StudySpec(name="other", space=MobileSpace(**{**TINY, "max_depth": 3}), dataset="digits",
                             measure=nasopt.MeasureConfig(latency_table=str(path)))
    with pytest.raises(nasopt.UserError, match="latency table"):
        nasopt.run(other, storage=f"sqlite:///{tmp_path / 'o.db'}", progress=False)
    assert not (tmp_path / "o.db").exists()
