"""End-to-end tests of the `nasopt` command: real subprocesses, real SQLite files in a temporary folder.

Every run uses the tiny study files in tests/studies/ (digits, 1-3 epochs, 3-5 trials). Every user
mistake must end with exit code 2 and ONE line `nasopt: error: ...` on stderr, without a traceback
and without creating or touching any storage file.
"""

from __future__ import annotations

import json
import os
import runpy
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

STUDIES = Path(__file__).parent / "studies"
MOBILE = STUDIES / "tiny_mobile.py"
NANO = STUDIES / "tiny_nano.py"
# one BLAS/OpenMP thread per process: on 2 shared cores, oversubscribed threads make tiny nets 5x slower
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def nasopt(*args: object, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `python -m nasopt.cli ARGS` in `cwd` and capture its output."""
    return subprocess.run([sys.executable, "-m", "nasopt.cli", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def load(db: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}")


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def table_numbers(stdout: str, title: str) -> set[int]:
    """Trial numbers of the rows of the table printed under `title` (first column), up to the blank line
    that ends it (warnings about the shown trials, e.g. latencies measured on a loaded machine, follow)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    header = lines[start + 1].split()
    assert header[0] == "number", stdout
    rows = []
    for line in lines[start + 2:]:
        if not line.strip():
            break
        rows.append(int(line.split()[0]))
    return set(rows)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below `folder` with its bytes and mtime (ns)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_user_error(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit 2, exactly one stderr line `nasopt: error: ...` containing `words`, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("nasopt: error: "), lines[0]
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]


# ---------------------------------------------------------------------------------------------- runs

@pytest.fixture(scope="module")
def mobile_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """`nasopt run tiny_mobile.py` with every default (progress bar on), in an empty folder."""
    cwd = tmp_path_factory.mktemp("mobile")
    return cwd, nasopt("run", MOBILE, cwd=cwd)


def test_run_creates_default_storage_and_prints_pareto_set(mobile_run):
    cwd, result = mobile_run
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    # the database and, beside it, the artifact folder (architecture pictures, weights of the front)
    assert sorted(p.name for p in cwd.iterdir()) == ["nasopt.artifacts", "nasopt.db"]
    # the run used WAL; at its end the file is back in SQLite's rollback journal (readers add no files)
    with sqlite3.connect(cwd / "nasopt.db") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    study = load(cwd / "nasopt.db", "tiny_mobile")
    assert study.metric_names == ["accuracy", "latency_ms", "params"]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    trials = study.get_trials()
    assert len(finished(study)) == len(trials) == 4
    assert "'tiny_mobile': 4 trials finished (4 complete, 0 pruned)" in result.stdout
    assert "sqlite:///nasopt.db" in result.stdout
    assert table_numbers(result.stdout, "Pareto set") == {t.number for t in study.best_trials}
    for t in trials:  # the file's TrainConfig(epochs=2) was used
        assert t.state == TrialState.COMPLETE and len(t.user_attrs["curve"]) == 2
        assert t.user_attrs["arch"].startswith("mobile:")


def test_ls_lists_study_with_counts_and_objectives(mobile_run):
    cwd, _ = mobile_run
    before = snapshot(cwd)
    result = nasopt("ls", cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == [
        "tiny_mobile\tcomplete=4\taccuracy (maximize), latency_ms (minimize), params (minimize)"]
    assert snapshot(cwd) == before


def test_show_prints_the_pareto_set(mobile_run):
    cwd, _ = mobile_run
    result = nasopt("show", "tiny_mobile", cwd=cwd)
    assert result.returncode == 0, result.stderr
    study = load(cwd / "nasopt.db", "tiny_mobile")
    assert table_numbers(result.stdout, "Pareto set") == {t.number for t in study.best_trials}
    header = result.stdout.splitlines()[1].split()
    assert header[:4] == ["number", "accuracy", "latency_ms", "params"] and header[-1] == "arch"
    for t in study.best_trials:
        assert t.user_attrs["arch"] in result.stdout


def test_rerun_adds_nothing_and_larger_n_trials_continues(mobile_run, tmp_path):
    shutil.copy(mobile_run[0] / "nasopt.db", tmp_path / "nasopt.db")
    db = tmp_path / "nasopt.db"
    before = [(t.number, t.state, t.values, t.datetime_complete) for t in load(db, "tiny_mobile").get_trials()]

    again = nasopt("run", MOBILE, "-q", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "4 trials finished" in again.stdout
    assert [(t.number, t.state, t.values, t.datetime_complete)
            for t in load(db, "tiny_mobile").get_trials()] == before

    more = nasopt("run", MOBILE, "-q", "--n-trials", 5, cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    assert "5 trials finished" in more.stdout
    assert optuna.get_all_study_names(f"sqlite:///{db}") == ["tiny_mobile"]  # the same study, continued
    trials = load(db, "tiny_mobile").get_trials()
    assert len(trials) == 5 and all(t.state == TrialState.COMPLETE for t in trials)
    assert [(t.number, t.state, t.values, t.datetime_complete) for t in trials[:4]] == before


def test_run_with_overrides_and_other_storage(tmp_path):
    result = nasopt("run", MOBILE, "-q", "--n-trials", 3, "--set", "train.epochs=1", "--set", "sampler=random",
                    "--storage", "sqlite:///other.db", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # -q: no progress bar, and no warnings or log lines either
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.artifacts", "other.db"]  # no nasopt.db
    assert "sqlite:///other.db" in result.stdout and "Pareto set" in result.stdout
    study = load(tmp_path / "other.db", "tiny_mobile")
    trials = study.get_trials()
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    assert all(len(t.user_attrs["curve"]) == 1 for t in trials)  # --set train.epochs=1
    assert study.user_attrs["nasopt"]["train"]["epochs"] == 1

    # --set sampler=random is RandomSampler(seed=spec.seed=0): replay its proposals in memory
    space = runpy.run_path(str(MOBILE))["study"].space
    replay = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    expected = []
    for _ in range(3):
        trial = replay.ask()
        expected.append(space.suggest(trial))
        replay.tell(trial, 0.0)
    assert [t.params for t in trials] == expected


def test_a_new_storage_in_a_missing_folder_below_this_one_makes_the_folder(tmp_path):
    """The README's `--storage sqlite:///runs/mobile.db` works in a fresh checkout (runs/ is made); a missing
    absolute folder stays a one-line error (storage_no_folder), and reading never makes folders."""
    result = nasopt("run", MOBILE, "-q", "--n-trials", 1, "--set", "train.epochs=1", "--storage",
                    "sqlite:///runs/sub/mobile.db", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "runs" / "sub" / "mobile.db").is_file()
    shown = nasopt("ls", "--storage", "sqlite:///elsewhere/x.db", cwd=tmp_path)
    assert shown.returncode == 2 and "does not exist" in shown.stderr and not (tmp_path / "elsewhere").exists()


def test_single_objective_study_with_median_pruner(tmp_path):
    result = nasopt("run", NANO, "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    study = load(tmp_path / "nasopt.db", "tiny_nano")
    assert [d.name for d in study.directions] == ["MAXIMIZE"] and study.metric_names == ["accuracy"]
    trials = study.get_trials()
    assert len(finished(study)) == len(trials) == 5
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert complete and pruned, [t.state for t in trials]
    for t in pruned:  # stopped by the pruner after an epoch, with the reason stored
        assert "MedianPruner" in t.user_attrs["pruned_reason"]
        assert 1 <= len(t.intermediate_values) <= 3
        assert f"at epoch {max(t.intermediate_values)}" in t.user_attrs["pruned_reason"]
    for t in complete:
        assert sorted(t.intermediate_values) == [1, 2, 3]
        assert t.values == [t.intermediate_values[3]]
    assert f"5 trials finished ({len(complete)} complete, {len(pruned)} pruned)" in result.stdout
    assert "top 5 trials" in result.stdout
    assert table_numbers(result.stdout, "top 5 trials") == {t.number for t in complete}


NANOBENCH = """\
import optuna
import nasopt
from nasopt.search_spaces.nano import NanoSpace

study = nasopt.StudySpec(name="nb", space=NanoSpace(), dataset="nanobench", objectives={objectives},
                         constraints={constraints}, sampler=optuna.samplers.{sampler}(seed={seed}), n_trials={n})
"""


def nanobench_study(tmp_path: Path, *, objectives: str = '{"accuracy": "maximize"}', constraints: str = "{}",
                    sampler: str = "TPESampler", seed: int = 0, n: int = 60) -> Path:
    """A nano-bench study file (table look-ups: a trial takes milliseconds, duplicates are common)."""
    path = tmp_path / "nb.py"
    path.write_text(NANOBENCH.format(objectives=objectives, constraints=constraints, sampler=sampler, seed=seed, n=n))
    return path


def table_rows(stdout: str, title: str) -> list[dict[str, str]]:
    """The rows of the table printed under `title`, by column name."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    header = lines[start + 1].split()
    return [dict(zip(header, line.split(), strict=True)) for line in lines[start + 2:] if line.strip()]


def test_show_lists_each_architecture_once_with_integer_counts(tmp_path):
    """TPE on nano-bench proposes the best architectures again and again (the duplicates reuse the first's
    result): the top 5 are 5 different architectures, each with how many trials ran it; params and MACs read
    as integers with separators, and no column is empty in every row."""
    ran = nasopt("run", nanobench_study(tmp_path), "-q", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    study = load(tmp_path / "nasopt.db", "nb")
    reused = [t for t in study.trials if "reused_from" in t.user_attrs]
    assert reused  # the premise: the study has duplicates
    result = nasopt("show", "nb", "--top", 5, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout, "top 5 trials")
    assert len(rows) == 5 and len({r["arch"] for r in rows}) == 5
    by_arch: dict[str, list[int]] = {}
    for t in study.trials:
        by_arch.setdefault(t.user_attrs["arch"], []).append(t.number)
    for r in rows:  # the first trial of each architecture, with the count of its trials
        assert int(r["number"]) == min(by_arch[r["arch"]]) and int(r["trials"]) == len(by_arch[r["arch"]])
        assert r["params"] == f"{study.trials[int(r['number'])].user_attrs['params']:,}"
        assert "." not in r["params"] and "." not in r["macs"] and "," in r["macs"]
        assert len(r["accuracy"].split(".")[1]) == 4
    assert "None" not in result.stdout and "NaN" not in result.stdout and " - " not in result.stdout
    assert any(int(r["trials"]) > 1 for r in rows)


def test_params_as_an_objective_read_as_integers(tmp_path):
    """An objective value is a float (23778.0): the Pareto set prints it as the count it is (23,778)."""
    objectives = '{"accuracy": "maximize", "params": "minimize"}'
    ran = nasopt("run", nanobench_study(tmp_path, objectives=objectives, n=30), "-q", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    study = load(tmp_path / "nasopt.db", "nb")
    rows = table_rows(ran.stdout, "Pareto set")
    assert rows and len({r["arch"] for r in rows}) == len(rows)
    for r in rows:
        assert r["params"] == f"{int(study.trials[int(r['number'])].values[1]):,}"
    assert any("," in r["params"] for r in rows) and not any(r["params"].endswith(".0") for r in rows)


def test_an_all_pruned_run_says_so_consistently(tmp_path):
    """Every trial over the params limit (pruned before training): the summary counts them as pruned, and the
    table says there is no complete trial; `show` says the same."""
    # no nano-bench architecture has under 262 params (the sampler, told of the limit, proposes the closest)
    study_file = nanobench_study(tmp_path, constraints='{"params": 200}', sampler="RandomSampler", seed=1, n=4)
    ran = nasopt("run", study_file, "-q", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    study = load(tmp_path / "nasopt.db", "nb")
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 4  # the premise
    assert ran.stdout.splitlines()[0].startswith("study 'nb': 4 trials finished (0 complete, 4 pruned) (storage ")
    assert ran.stdout.splitlines()[1:] == ["no complete trials: nothing to show"]
    assert "no finished trials" not in ran.stdout
    shown = nasopt("show", "nb", cwd=tmp_path)
    assert shown.returncode == 0 and shown.stdout == "no complete trials: nothing to show\n"


# ---------------------------------------------------------------------------------------------- bad input

BAD_OP = """\
import nasopt
from nasopt.search_spaces.nano import NanoSpace

study = nasopt.StudySpec(name="tiny_mobile", space=NanoSpace(ops=["conv3x3", "conv9x9"]))
"""
BAD_OBJECTIVE = """\
import nasopt
from nasopt.search_spaces.nano import NanoSpace

study = nasopt.StudySpec(name="tiny_mobile", space=NanoSpace(), objectives={"speed": "maximize"})
"""
BAD_CONSTRAINT = """\
import nasopt
from nasopt.search_spaces.nano import NanoSpace

study = nasopt.StudySpec(name="tiny_mobile", space=NanoSpace(), constraints={"accuracy": 0.9})
"""


def _field(text: str) -> str:
    """A study file whose StudySpec gets one more field (a wrong type, say)."""
    return ("import nasopt\nfrom nasopt.search_spaces.nano import NanoSpace\n\n"
            f"study = nasopt.StudySpec(name='tiny_mobile', space=NanoSpace(C=8), {text})\n")


UNREACHABLE = """\
import nasopt
from nasopt.search_spaces.conv1d import Conv1dSpace

study = nasopt.StudySpec(name="tiny_mobile", space=Conv1dSpace(C=8, layers=3), dataset="mnist1d",
                         constraints={"params": 2000}, n_trials=3, train=nasopt.TrainConfig(epochs=1))
"""

# id -> (files to write, with_db: a real study db already there, args, words the error line must contain)
CASES: dict[str, tuple[dict[str, str], bool, list[str], list[str]]] = {
    "missing_file": ({}, False, ["run", "nothere.py"], ["nothere.py", "not found"]),
    "syntax_error": ({"s.py": "import nasopt\nstudy = (\n"}, False, ["run", "s.py"], ["s.py", "syntax error"]),
    "no_study": ({"s.py": "x = 1\n"}, False, ["run", "s.py"], ["s.py", "defines no `study`"]),
    "study_wrong_type": ({"s.py": "study = 42\n"}, True, ["run", "s.py"], ["s.py", "StudySpec", "int"]),
    "unknown_op": ({"s.py": BAD_OP}, True, ["run", "s.py"], ["unknown op", "conv9x9", "conv5x5", "maxpool3x3"]),
    "unknown_objective": ({"s.py": BAD_OBJECTIVE}, False, ["run", "s.py"],
                          ["unknown objective", "speed", "accuracy", "latency_ms"]),
    "unknown_constraint": ({"s.py": BAD_CONSTRAINT}, False, ["run", "s.py"],
                           ["unknown constraint", "'accuracy'", "params", "macs"]),
    "unknown_space": ({}, True, ["run", MOBILE, "--set", "space=nope"], ["unknown space", "nope", "nano", "mobile"]),
    "unknown_dataset": ({}, False, ["run", MOBILE, "--set", "dataset=nope"],
                        ["unknown dataset", "nope", "digits", "cifar10"]),
    "unknown_sampler": ({}, True, ["run", MOBILE, "--set", "sampler=nope"],
                        ["unknown sampler", "nope", "random", "tpe", "nsga2"]),
    "unknown_set_key": ({}, False, ["run", MOBILE, "--set", "epochs=3"],
                        ["unknown --set key", "epochs", "train.epochs", "sampler", "dataset"]),
    "set_not_an_int": ({}, True, ["run", MOBILE, "--set", "train.epochs=abc"], ["train.epochs", "abc", "int"]),
    "set_not_a_bool": ({}, False, ["run", MOBILE, "--set", "download=maybe"], ["download", "maybe", "true/false"]),
    "set_bad_epochs": ({}, False, ["run", MOBILE, "--set", "train.epochs=0"], ["epochs >= 1", "0"]),
    "zero_n_trials": ({}, True, ["run", MOBILE, "--n-trials", "0"], ["n_trials", "0"]),
    "storage_scheme": ({}, False, ["run", MOBILE, "--storage", "foo://x"], ["foo://x", "not supported", "sqlite:///"]),
    "storage_no_folder": ({}, False, ["run", MOBILE, "--storage", "sqlite:////nonexistent_dir/x.db"],
                          ["/nonexistent_dir", "does not exist"]),
    "storage_server_down": ({}, False, ["run", MOBILE, "--storage", "postgresql://user:s3cret@127.0.0.1:1/db"],
                            ["cannot open storage", "127.0.0.1", "user:***@"]),
    "storage_not_sqlite": ({"nasopt.db": "these are my notes, not a database\n"}, False, ["run", MOBILE],
                           ["nasopt.db", "not an SQLite database"]),
    "missing_dataset_files": ({}, True, ["run", MOBILE, "--set", "dataset=cifar10", "--set", "data_dir=nothere"],
                              ["cifar10", "nothere", "download"]),
    "ls_without_storage": ({}, False, ["ls"], ["nasopt.db", "run a study first"]),
    # a study field of the wrong type, an impossible value: named with the fix, before any storage
    "dataset_not_a_string": ({"s.py": _field("dataset=5")}, True, ["run", "s.py"],
                             ["`dataset`", "dataset=5", "int", "dataset='digits'"]),
    "train_a_dict": ({"s.py": _field("train={'epochs': 1}")}, True, ["run", "s.py"],
                     ["`train`", "TrainConfig", "dict"]),
    "objectives_a_list": ({"s.py": _field("objectives=['accuracy']")}, False, ["run", "s.py"],
                          ["`objectives`", "['accuracy']", "{'accuracy': 'maximize'}"]),
    "data_dir_an_int": ({"s.py": _field("data_dir=5")}, False, ["run", "s.py"], ["`data_dir`", "data_dir=5"]),
    "epochs_a_string": ({"s.py": _field("train=nasopt.TrainConfig(epochs='3')")}, True, ["run", "s.py"],
                        ["`epochs`", "'3'", "int"]),
    "val_fraction_out_of_range": ({"s.py": _field("val_fraction=1.5")}, False, ["run", "s.py"],
                                  ["val_fraction", "1.5"]),
    "empty_op_list": ({"s.py": _field("").replace("NanoSpace(C=8)", "NanoSpace(C=8, ops=[])")}, True,
                      ["run", "s.py"], ["NanoSpace(ops=...)", "non-empty", "conv3x3"]),
    "empty_kernels": ({"s.py": _field("").replace("from nasopt.search_spaces.nano import NanoSpace",
                                                  "from nasopt.search_spaces.mobile import MobileSpace")
                       .replace("NanoSpace(C=8)", "MobileSpace(kernels=[])")}, False,
                      ["run", "s.py"], ["MobileSpace", "non-empty", "kernels=()"]),
    "set_without_value": ({}, True, ["run", MOBILE, "--set", "train.epochs"], ["--set train.epochs", "=VALUE"]),
    "batch_larger_than_split": ({}, True, ["run", MOBILE, "--set", "train.batch_size=5000"],
                                ["train.batch_size=5000", "training samples", "digits", "<="]),
    "unreachable_limit": ({"s.py": UNREACHABLE}, True, ["run", "s.py"],
                          ["Conv1dSpace", "params <= 2,000", "smallest network", "raise the limit"]),
    "allow_changed_unknown": ({}, True, ["run", MOBILE, "--allow-changed", "space"],
                              ["--allow-changed 'space'", "another `name`"]),
    "allow_changed_no_field": ({}, True, ["run", MOBILE, "--allow-changed", "train.epoch"],
                               ["train.epoch", "TrainConfig", "epochs"]),
    "show_unknown_study": ({}, True, ["show", "nope"], ["'nope'", "studies there: tiny_mobile"]),
}


def _make_db(db: Path) -> None:
    """A real storage holding the study the tiny_mobile file would open (same name and objectives)."""
    study = optuna.create_study(study_name="tiny_mobile", storage=f"sqlite:///{db}",
                                directions=["maximize", "minimize", "minimize"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["accuracy", "latency_ms", "params"])
    study.add_trial(optuna.create_trial(values=[0.5, 1.0, 1000.0], params={"width": 0.5},
                                        distributions={"width": optuna.distributions.CategoricalDistribution(
                                            [0.5, 1.0])}))


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[subprocess.CompletedProcess[str], dict, dict]]:
    """Run every bad-input case, two at a time: id -> (result, folder before, folder after)."""
    folders = {}
    for case, (files, with_db, _, _) in CASES.items():
        cwd = tmp_path_factory.mktemp(case)
        for name, text in files.items():
            (cwd / name).write_text(text)
        if with_db:
            _make_db(cwd / "nasopt.db")
        folders[case] = (cwd, snapshot(cwd))
    time.sleep(0.05)  # a write after the snapshot would show in the mtime

    def go(case: str) -> tuple[subprocess.CompletedProcess[str], dict, dict]:
        cwd, before = folders[case]
        result = nasopt(*CASES[case][2], cwd=cwd, timeout=120)
        return result, before, snapshot(cwd)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(CASES, pool.map(go, CASES), strict=True))


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_touches_nothing(case, bad_runs):
    result, before, after = bad_runs[case]
    assert_user_error(result, *CASES[case][3])
    assert after == before  # no storage created, an existing one unchanged (bytes and mtime)
    if not CASES[case][1] and "nasopt.db" not in CASES[case][0]:
        assert "nasopt.db" not in after


def test_password_never_printed(bad_runs):
    result, _, _ = bad_runs["storage_server_down"]
    assert "s3cret" not in result.stdout + result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode, so chmod 000 cannot deny")
def test_unreadable_study_file(tmp_path):
    study = tmp_path / "s.py"
    study.write_text(MOBILE.read_text())
    study.chmod(0)
    try:
        assert_user_error(nasopt("run", "s.py", cwd=tmp_path), "s.py", "ermission")
    finally:
        study.chmod(0o644)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.py"]


# ---------------------------------------------------------------------------------------------- dashboard

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listen_addresses(port: int) -> set[str]:
    """Local IPv4 addresses (hex, as in /proc/net/tcp) listening on `port`."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if int(hex_port, 16) == port and state == "0A":  # 0A = LISTEN
            found.add(address)
    return found


def test_dashboard_serves_the_study_on_localhost(mobile_run):
    cwd, _ = mobile_run
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "nasopt.cli", "dashboard", "--port", str(port)], cwd=cwd,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, body = time.monotonic() + 60, None  # imports torch and botorch: slow on a busy machine
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as response:
                    body = json.load(response)
                break
            except OSError:
                time.sleep(0.3)
        assert body is not None, f"no answer on port {port}; exit code {proc.poll()}"
        assert [s["study_name"] for s in body["study_summaries"]] == ["tiny_mobile"]
        if Path("/proc/net/tcp").exists():
            assert _listen_addresses(port) == {"0100007F"}  # 127.0.0.1 only
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert "warning: serving" not in err  # the default host is local: no exposure warning
    assert "Warning" not in err and "Traceback" not in err  # no Python warnings (FutureWarning, ...) either


def test_dashboard_on_another_host_warns(mobile_run):
    cwd, _ = mobile_run
    proc = subprocess.Popen([sys.executable, "-m", "nasopt.cli", "dashboard", "--host", "0.0.0.0", "--port",
                             str(_free_port())], cwd=cwd, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(60, proc.kill)  # never hang on a silent process
    timer.start()
    try:
        first = proc.stderr.readline()
    finally:
        timer.cancel()
        proc.kill()
        proc.communicate()
    assert first.startswith("warning: serving the dashboard on 0.0.0.0"), first
