"""Results that should not be trusted say so: a trial's `warnings` (near-chance accuracy, a collapsed derived
architecture), stored by the runner and raised by the one-line API as `nasopt.errors.SuspectResult`."""

from __future__ import annotations

import optuna
import pytest

import nasopt
from nasopt.data import load_task
from nasopt.errors import SuspectResult
from nasopt.search_spaces.darts_cell import DartsCellSpace
from nasopt.search_spaces.genotypes import GENOTYPES, genotype_to_arch
from nasopt.search_spaces.micro import MicroSpace
from nasopt.search_spaces.nano import NanoSpace
from nasopt.study._suspect import collapsed, near_chance

pytestmark = pytest.mark.usefixtures("one_thread")


def test_near_chance_is_a_tenth_of_the_way_from_chance_to_perfect():
    assert "near chance (0.100 for 10 classes)" in near_chance(0.11, 10)
    assert near_chance(0.19, 10) is not None and near_chance(0.20, 10) is None  # 0.1 + 0.1 * 0.9 = 0.19
    assert near_chance(0.55, 2) is not None and near_chance(0.56, 2) is None
    assert near_chance(None, 10) is None and near_chance(0.0, None) is None and near_chance(0.0, 1) is None


def test_collapse_is_a_majority_of_weightless_searched_ops(digits_task):
    nano = NanoSpace()
    zero = {f"pos{i}.op": "zero" for i in range(4)}
    assert "every searched op" in collapsed(nano, zero, digits_task)
    pools = {"pos0.op": "maxpool3x3", "pos1.op": "skip", "pos2.op": "skip", "pos3.op": "conv3x3"}
    message = collapsed(nano, pools, digits_task)
    assert "3 of 4 searched ops" in message and "skip x2" in message and "maxpool3x3 x1" in message
    assert collapsed(nano, {**pools, "pos1.op": "conv5x5"}, digits_task) is None  # 2 of 4: no collapse
    cells = DartsCellSpace(C=8, layers=5)
    for name in sorted(GENOTYPES):  # the published cells are no collapse
        assert collapsed(cells, genotype_to_arch(GENOTYPES[name]), digits_task) is None, name
    skips = genotype_to_arch(GENOTYPES["DARTS_V2"])
    for key in [k for k in skips if k.endswith(tuple(f"op{j}" for j in range(2)))]:
        skips[key] = "skip_connect"  # every edge a skip: the collapse DARTS is known for
    assert "skip_connect x" in collapsed(cells, skips, digits_task)
    # a micro network without residuals: its zero-or-skip residual decisions do not count
    micro = MicroSpace()
    arch = {"stem.width": 8, "depth": 2, "block1.op": "conv_bn_relu_k3", "block1.width": 8, "block1.stride": 1,
            "block1.residual": False, "block2.op": "conv_bn_relu_k5", "block2.width": 8, "block2.stride": 1,
            "block2.residual": False}
    assert collapsed(micro, arch, load_task("mnist1d", seed=0)) is None


def test_a_near_chance_trial_stores_its_warning_and_the_api_raises_it(tmp_path):
    """A nano space whose only op is `zero` passes no signal: every trial ends at chance, says so in its
    `warnings`, and `nasopt.search` raises it as a SuspectResult warning."""
    space = NanoSpace(positions=2, ops=("zero",))
    study = nasopt.run(nasopt.StudySpec(name="dead", space=space, dataset="digits", n_trials=1,
                                        train=nasopt.TrainConfig(epochs=1)),
                       storage=optuna.storages.InMemoryStorage(), progress=False)
    [trial] = study.trials
    assert any("near chance" in w for w in trial.user_attrs["warnings"])
    with pytest.warns(SuspectResult, match="near chance"):
        nasopt.search("random", space=space, dataset="digits", n_trials=1, epochs=1,
                      storage=optuna.storages.InMemoryStorage(), progress=False)
    healthy = nasopt.run(nasopt.StudySpec(name="ok", space=NanoSpace(positions=2, ops=("conv3x3",)), dataset="digits",
                                          n_trials=1, train=nasopt.TrainConfig(epochs=3)),
                         storage=optuna.storages.InMemoryStorage(), progress=False)
    assert "warnings" not in healthy.trials[0].user_attrs


def _trial(number, latency, warnings=None):
    attrs = {"latency": latency, **({"warnings": warnings} if warnings else {})}
    trial = optuna.trial.create_trial(values=[0.9, latency["median_ms"]], user_attrs=attrs,
                                      params={}, distributions={})
    trial.number = number
    return trial


def test_a_front_that_mixes_latency_conditions_or_timed_a_busy_machine_is_flagged():
    from nasopt.analysis import front_warnings, trial_warnings

    quiet = {"method": "measured", "device": "cpu", "threads": 2, "batch_size": 1, "median_ms": 1.0, "iqr_ms": 0.05}
    front = [_trial(0, quiet), _trial(1, {**quiet, "median_ms": 2.0})]
    assert front_warnings(front, ["accuracy", "latency_ms"]) == []
    mixed = [*front, _trial(2, {**quiet, "threads": 1})]
    [message] = front_warnings(mixed, ["accuracy", "latency_ms"])
    assert "different conditions" in message and "2 thread(s), batch 1: trials 0, 1" in message
    assert "1 thread(s), batch 1: trials 2" in message
    busy = [*front, _trial(3, {**quiet, "iqr_ms": 0.9})]
    [message] = front_warnings(busy, ["accuracy", "latency_ms"])
    assert "more than half the median for trials 3 (IQR 0.9 ms on 1 ms)" in message
    assert front_warnings(busy, ["accuracy", "params"]) == []  # latency not compared: nothing to say
    warned = _trial(4, quiet, ["final accuracy 0.110 is near chance"])
    assert trial_warnings([*front, warned]) == ["trial 4: final accuracy 0.110 is near chance"]


def test_show_and_the_report_carry_the_warnings(tmp_path):
    """A study whose network learns nothing: `nasopt show` prints the trial's warning after the table and the
    HTML report has a Warnings section with it."""
    import subprocess
    import sys

    (tmp_path / "dead.py").write_text(
        "import nasopt\nfrom nasopt.search_spaces.nano import NanoSpace\n"
        "study = nasopt.StudySpec(name='dead', space=NanoSpace(positions=2, ops=('zero',)), dataset='digits',\n"
        "                         n_trials=1, train=nasopt.TrainConfig(epochs=1))\n")
    url = f"sqlite:///{tmp_path / 'dead.db'}"

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "nasopt.cli", *args, "--storage", url], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)

    assert cli("run", "dead.py", "-q").returncode == 0
    shown = cli("show", "dead")
    assert shown.returncode == 0 and "warning: trial 0: final accuracy" in shown.stdout, shown.stdout
    report = cli("report", "dead", "-o", str(tmp_path / "r.html"))
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "r.html").read_text()
    assert 'id="warnings"' in text and "near chance" in text
