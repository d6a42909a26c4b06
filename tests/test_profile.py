"""`nasopt profile` and energy per inference (measured from RAPL counters, or estimated), with provenance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from nasopt.cli.main import main
from nasopt.export._export import write_export
from nasopt.export._rebuild import ShapeTask, space_config
from nasopt.export._trial import describe_export
from nasopt.measure._energy import PJ_PER_MAC, _Rapl, energy_per_inference, estimate_energy, rapl_domains
from nasopt.search_spaces.nano import NanoSpace

pytestmark = pytest.mark.usefixtures("one_thread")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
ARCH = {"pos0.op": "conv3x3", "pos1.op": "maxpool3x3"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    space, task = NanoSpace(C=8, positions=2), ShapeTask("digits", (1, 8, 8), 10)
    model = space.build(ARCH, task)
    arch, manifest = describe_export(model, space, ARCH, space_config(space), task,
                                     weights={"source": "initialised", "trained": False})
    return write_export(tmp_path_factory.mktemp("profile") / "nano", {"": (model, arch, manifest)})


def test_profile_command(exported: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "nasopt.cli", "profile", "--json", "--seconds", "0.2",
                             "--model", str(exported)], env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    device, build = report["device"], report["build"]
    assert device["type"] == "cpu" and device["name"] and device["logical_cores"] >= 1
    assert device["memory_bytes"] > 0 and build["torch"] == torch.__version__
    for kind in ("matmul_fp32", "conv3x3_fp32"):
        assert report["throughput"][kind]["gflops"] > 0
    model = report["model"]
    assert model["params"] > 0 and model["macs"] > 0 and model["latency_ms"] > 0 and model["energy_mj"] > 0
    energy = model["energy"]
    if rapl_domains():
        assert energy["method"] == "measured" and "RAPL" in energy["source"]
    else:  # this machine exposes no counter: an estimate, which says why and from what
        assert report["energy"]["method"] == energy["method"] == "estimate" and energy["why"]
        assert energy["macs"] == model["macs"] and energy["weight_bytes"] > 0
        assert model["energy_mj"] * 1e9 >= energy["macs"] * PJ_PER_MAC  # mJ -> pJ: at least the MACs' share


def test_energy_estimate_grows_with_the_work() -> None:
    task = ShapeTask("digits", (1, 8, 8), 10)
    small, big = (NanoSpace(C=c, positions=2).build(ARCH, task) for c in (4, 32))
    (e_small, p_small), (e_big, p_big) = estimate_energy(small, (1, 8, 8)), estimate_energy(big, (1, 8, 8))
    assert 0 < e_small < e_big and p_small["macs"] < p_big["macs"] and "Horowitz" in p_big["model"]


def _fake_rapl(root: Path, watts: float, stop: threading.Event) -> None:
    """A powercap tree whose package counter advances at `watts` (microjoules), wrapping at 10 J."""
    zone = root / "intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "max_energy_range_uj").write_text("10000000\n")
    (root / "intel-rapl:0:0").mkdir()  # a sub-zone (core): not counted twice
    start = time.perf_counter()

    def tick() -> None:
        while not stop.is_set():
            uj = int((time.perf_counter() - start) * watts * 1e6 + 9_000_000) % 10_000_000
            tmp = zone / "energy_uj.tmp"
            tmp.write_text(f"{uj}\n")
            os.replace(tmp, zone / "energy_uj")
            time.sleep(0.002)

    (zone / "energy_uj").write_text("9000000\n")
    threading.Thread(target=tick, daemon=True).start()


def test_energy_measured_from_rapl_counters(tmp_path: Path) -> None:
    stop = threading.Event()
    _fake_rapl(tmp_path, watts=5.0, stop=stop)
    try:
        assert rapl_domains(str(tmp_path)) == [str(tmp_path / "intel-rapl:0")]
        reader = _Rapl(rapl_domains(str(tmp_path)))
        time.sleep(0.4)  # crosses the 10 J wrap-around after 0.2 s
        assert 1.0 < reader() < 3.0  # ~2 J at 5 W
        model = NanoSpace(C=8, positions=2).build(ARCH, ShapeTask("digits", (1, 8, 8), 10))
        joules, provenance = energy_per_inference(model, (1, 8, 8), "cpu", powercap=str(tmp_path), min_seconds=0.2)
    finally:
        stop.set()
    assert provenance["method"] == "measured" and "intel-rapl:0" in provenance["source"]
    assert provenance["idle_w"] == pytest.approx(5.0, rel=0.3) and provenance["inferences"] > 0
    assert joules >= 0  # a constant 5 W is all idle power: (nearly) nothing is left for the inferences


def test_measured_energy_without_a_counter_is_a_user_error(exported: Path, tmp_path: Path, capsys) -> None:
    if rapl_domains():
        pytest.skip("this machine exposes RAPL counters")
    assert main(["profile", "--seconds", "0.1", "--model", str(exported), "--energy", "measured"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no readable energy counter" in err[0] and "--energy estimate" in err[0]
    assert main(["profile", "--seconds", "0.1", "--model", str(tmp_path)]) == 2
    assert "not a nasopt export" in capsys.readouterr().err
