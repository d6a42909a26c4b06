"""Fault injection against the real PostgreSQL: a worker killed or terminated in the middle of a trial,
the database server restarted in the middle of a study.

Real `nasopt run --workers N` processes train real (tiny) networks; the tests watch the study through
the database and send the signals. The restart test runs its own throw-away PostgreSQL cluster (the
same server binaries as the shared one) so that restarting it disturbs nobody; where no private
cluster can be made it restarts the shared server, and brings it back whatever happens.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from test_workers import (
    ENV,
    NANO_STUDY,
    admin_connection,
    assert_settled,
    create_database,
    drop_database,
    read_storage,
    write_study,
)

EPOCHS = 20  # about 2-5 s per trial on a busy 2-core machine: long enough to be caught mid-training

TRAIN_STUDY = """
import optuna, nasopt
from nasopt.search_spaces.nano import NanoSpace
study = nasopt.StudySpec(name={name!r}, space=NanoSpace(C=8), dataset="digits", n_trials={n_trials},
                         objectives={{"accuracy": "maximize", "params": "minimize"}},
                         sampler=optuna.samplers.RandomSampler(seed=0),
                         train=nasopt.TrainConfig(epochs=EPOCHS, batch_size=128),
                         measure=nasopt.MeasureConfig(warmup=1, repeats=3))
""".replace("EPOCHS", str(EPOCHS))

GRADIENT_STUDY = """
import nasopt
from nasopt.oneshot import DARTS
from nasopt.search_spaces.nano import NanoSpace
study = nasopt.StudySpec(name={name!r}, space=NanoSpace(C=8), dataset="digits", n_trials={n_trials},
                         objectives={{"accuracy": "maximize", "params": "minimize"}},
                         strategy=[DARTS(epochs=3, batch_size=16), DARTS(epochs=3, batch_size=16, partial_channels=4)],
                         train=nasopt.TrainConfig(epochs=1, batch_size=128),
                         measure=nasopt.MeasureConfig(warmup=1, repeats=3))
"""


def start(study: Path, url: str, cwd: Path, *extra: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "nasopt.cli", "run", str(study), "--storage", url, "-q",
                             *map(str, extra)], cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


class Watcher:
    """Reads the study's trials from the database (plain Optuna) until a condition holds."""

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name, self.storage = url, name, None

    def _schema_ready(self) -> bool:
        """Optuna's tables exist and carry their version: a plain Optuna client opening the database
        earlier would stamp the version itself, racing the nasopt worker that is creating them."""
        import psycopg

        try:
            with psycopg.connect(self.url, connect_timeout=5) as conn:
                return conn.execute("SELECT count(*) FROM alembic_version").fetchone()[0] > 0
        except Exception:
            return False

    def trials(self) -> list[FrozenTrial]:
        try:
            if self.storage is None:
                if not self._schema_ready():
                    return []
                self.storage = read_storage(self.url)
            return optuna.load_study(study_name=self.name, storage=self.storage).get_trials(deepcopy=False)
        except Exception:  # tables or study not created yet
            self.storage = None
            return []

    def wait(self, proc: subprocess.Popen[str], what: str, pick: Callable[[list[FrozenTrial]], object],
             timeout: float = 240, step: float = 0.1) -> object:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = pick(self.trials())
            if found:
                return found
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"nasopt run ended ({proc.returncode}) before {what}:\n{out}\n{err}")
            time.sleep(step)
        proc.kill()
        proc.communicate()
        pytest.fail(f"no {what} within {timeout} s")


def mid_training(trials: list[FrozenTrial], parent: int) -> list[FrozenTrial]:
    """RUNNING trials of a worker (not the supervisor) with a few epochs done and many to go."""
    return [t for t in trials if t.state == TrialState.RUNNING and 2 <= len(t.user_attrs.get("curve", [])) <= EPOCHS - 10
            and t.system_attrs.get("nasopt:worker", {}).get("pid") not in (None, parent)]


def failed_within(watch: Watcher, numbers: set[int], t0: float, limit: float = 10.0) -> float:
    """Seconds from `t0` until all trials `numbers` are FAIL in the database (fails after `limit`)."""
    while time.monotonic() - t0 < limit:
        if {t.number for t in watch.trials() if t.state == TrialState.FAIL} >= numbers:
            return time.monotonic() - t0
        time.sleep(0.05)
    pytest.fail(f"trials {sorted(numbers)} not FAIL {limit} s after the signal")


def retries_of(trials: list[FrozenTrial], failed: FrozenTrial) -> list[FrozenTrial]:
    return [t for t in trials if t.system_attrs.get("failed_trial") == failed.number]


def test_sigkill_one_worker_mid_trial_the_trial_is_retried_once_and_completes(tmp_path, pg_url):
    study = write_study(tmp_path, "killed", 3, TRAIN_STUDY)
    proc = start(study, pg_url, tmp_path, "--workers", 2)
    watch = Watcher(pg_url, "killed")
    victim = watch.wait(proc, "a trial in the middle of training", lambda ts: mid_training(ts, proc.pid))[0]
    os.kill(victim.system_attrs["nasopt:worker"]["pid"], signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "killed by SIGKILL" in err and "Traceback" not in err, err

    trials = watch.trials()
    by_number = {t.number: t for t in trials}
    assert by_number[victim.number].state == TrialState.FAIL
    retry, = retries_of(trials, victim)  # retried once ...
    assert retry.params == victim.params and retry.state == TrialState.COMPLETE  # ... same params, completed
    assert len(retry.user_attrs["curve"]) == EPOCHS and retry.user_attrs["seed"] == victim.user_attrs["seed"]
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [victim.number]
    assert_settled(trials, 3, 2)


def test_sigterm_fails_running_trials_within_2_s_and_they_are_retried(tmp_path, pg_url):
    """Slurm and Kubernetes send SIGTERM to the main process: every worker fails and queues its trial."""
    study = write_study(tmp_path, "termed", 3, TRAIN_STUDY)
    proc = start(study, pg_url, tmp_path, "--workers", 2)
    watch = Watcher(pg_url, "termed")
    victims = watch.wait(proc, "a trial in the middle of training", lambda ts: mid_training(ts, proc.pid))
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    numbers = {t.number for t in victims}
    elapsed = failed_within(watch, numbers, t0)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, (out, err)
    assert "terminated (SIGTERM)" in err and "Traceback" not in err, err
    assert elapsed <= 2.0, elapsed
    trials = watch.trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    for victim in victims:
        retry, = retries_of(trials, victim)
        assert retry.state == TrialState.WAITING and retry.params == victim.params

    again = subprocess.run([sys.executable, "-m", "nasopt.cli", "run", str(study), "--storage", pg_url, "-q",
                            "--workers", "2"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    trials = watch.trials()
    for victim in victims:
        retry, = retries_of(trials, victim)
        assert retry.state == TrialState.COMPLETE and len(retry.user_attrs["curve"]) == EPOCHS
    assert_settled(trials, 3, 2)


def test_gradient_methods_run_one_trial_per_worker_and_resume_after_sigterm(tmp_path, pg_url):
    """DARTS and PC-DARTS in parallel; one worker is terminated mid-search, the other one resumes its
    trial from the last epoch checkpoint."""
    study = write_study(tmp_path, "grad", 1, GRADIENT_STUDY)
    proc = start(study, pg_url, tmp_path, "--workers", 4)  # capped at 2: one worker per gradient method
    watch = Watcher(pg_url, "grad")

    def searching(trials: list[FrozenTrial]) -> list[FrozenTrial]:
        running = [t for t in trials if t.state == TrialState.RUNNING and t.user_attrs.get("nasopt:checkpoint")
                   and len(t.user_attrs.get("search", [])) < 3]
        return running if len(running) == 2 else []

    first = watch.wait(proc, "both gradient trials past their first epoch", searching, step=0.2)
    assert len({t.system_attrs["nasopt:strategy"] for t in first}) == 2
    pids = {t.system_attrs["nasopt:worker"]["pid"] for t in first}
    assert len(pids) == 2
    victim = min(first, key=lambda t: len(t.user_attrs["search"]))  # the furthest from its evaluation
    t0 = time.monotonic()
    os.kill(victim.system_attrs["nasopt:worker"]["pid"], signal.SIGTERM)
    assert failed_within(watch, {victim.number}, t0) <= 2.0
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err

    trials = watch.trials()
    retry, = retries_of(trials, victim)
    assert retry.state == TrialState.COMPLETE
    assert retry.system_attrs["nasopt:strategy"] == victim.system_attrs["nasopt:strategy"]
    assert retry.user_attrs["resumed_from_epoch"] >= len(victim.user_attrs["search"]) >= 1
    survivor = (pids - {victim.system_attrs["nasopt:worker"]["pid"]}).pop()
    assert retry.system_attrs["nasopt:worker"]["pid"] == survivor  # the other worker took it over
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.system_attrs["nasopt:strategy"] for t in done) == ["darts", "pc_darts_k4"]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


# ------------------------------------------------------------------------------ database restart

def _pg_bindir() -> str | None:
    found = shutil.which("pg_ctl")
    candidates = ([os.path.dirname(found)] if found else []) + sorted(glob.glob("/usr/lib/postgresql/*/bin"))[::-1]
    return next((d for d in candidates if os.path.exists(os.path.join(d, "initdb"))), None)


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateCluster:
    """A throw-away PostgreSQL cluster on a free port, stopped and deleted afterwards."""

    def __init__(self) -> None:
        bindir = _pg_bindir()
        if bindir is None or (os.geteuid() == 0 and shutil.which("runuser") is None):
            raise RuntimeError("no initdb/pg_ctl (or no runuser to run them as postgres)")
        self.bindir, self.port = bindir, _free_port()
        self.root = tempfile.mkdtemp(prefix="nasopt-pg-")
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        self.data = os.path.join(self.root, "data")
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        self.start()
        self.admin = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(_as_postgres([os.path.join(self.bindir, tool), *args]), check=True, capture_output=True,
                       timeout=120)

    def start(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-w", "-l", os.path.join(self.root, "log"), "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self.data, "-w", "-m", mode, "stop")

    def running(self) -> bool:
        return subprocess.run(_as_postgres([os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "status"]),
                              capture_output=True).returncode == 0

    def remove(self) -> None:
        try:
            if self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class SharedServer:
    """The shared server (fallback): restarted with pg_ctlcluster, and always started again."""

    def __init__(self) -> None:
        if shutil.which("pg_ctlcluster") is None or shutil.which("pg_lsclusters") is None:
            raise RuntimeError("no pg_ctlcluster")
        line = next(line for line in subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True)
                    .stdout.splitlines() if line.split()[2] == "5432")
        self.version, self.name = line.split()[:2]
        self.admin = os.environ.get("NASOPT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")

    def start(self) -> None:
        subprocess.run(["pg_ctlcluster", self.version, self.name, "start"], capture_output=True, timeout=120)

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(["pg_ctlcluster", self.version, self.name, "stop", "-m", mode], check=True,
                       capture_output=True, timeout=120)

    def remove(self) -> None:
        self.start()  # whatever happened: the shared server runs again


@pytest.fixture
def server() -> Iterator[PrivateCluster | SharedServer]:
    admin_connection().close()  # skips, saying why, when no PostgreSQL answers at all
    try:
        cluster: PrivateCluster | SharedServer = PrivateCluster()
    except Exception as private_error:
        try:
            cluster = SharedServer()
        except Exception:
            pytest.skip(f"cannot restart any PostgreSQL server here ({private_error})")
    try:
        yield cluster
    finally:
        cluster.remove()


def test_database_restart_in_the_middle_of_a_study_loses_nothing(tmp_path, server):
    url = create_database(server.admin)
    try:
        study = write_study(tmp_path, "restart", 150, NANO_STUDY)
        proc = start(study, url, tmp_path, "--workers", 4)
        watch = Watcher(url, "restart")
        before = watch.wait(proc, "30 finished trials",
                            lambda ts: [t for t in ts if t.state == TrialState.COMPLETE] if sum(
                                t.state == TrialState.COMPLETE for t in ts) >= 30 else None, step=0.2)
        watch.storage = None
        try:
            server.stop("fast")  # a restart with the server away for 2 s
            time.sleep(2)
        finally:
            server.start()
        out, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err
        assert "lost the database" in err and "database back after" in err and "Traceback" not in err, err
        trials = watch.trials()
        assert_settled(trials, 150, 4)
        assert all(t.state == TrialState.COMPLETE for t in trials)  # nothing failed, nothing retried
        by_number = {t.number: t for t in trials}
        assert all(by_number[t.number].values == t.values and by_number[t.number].params == t.params
                   for t in before)  # what had finished is untouched
    finally:
        if isinstance(server, PrivateCluster):
            pass  # the whole cluster goes with the fixture
        else:
            drop_database(url)


def test_a_pooled_connection_dropped_while_idle_is_replaced_quietly(pg_url, capsys, monkeypatch):
    """The server ends an idle pooled connection (a restart, an idle timeout): the next storage call
    pings it on checkout, gets a new one, and goes on, with no outage message and no retry."""
    from nasopt.storage import _open as nasopt_storage

    monkeypatch.setattr(nasopt_storage, "PING_IDLE", 0.2)
    storage = nasopt_storage.open_storage(pg_url)
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "idle")
    with storage.engine.connect() as connection:
        pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    database = pg_url.rsplit("/", 1)[1]
    with admin_connection() as admin:  # end every pooled connection of this database, as a restart would
        ended = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                              "AND pid <> pg_backend_pid()", (database,)).fetchall()
    assert ended and pid is not None
    time.sleep(0.3)
    assert storage.get_study_name_from_id(study_id) == "idle"
    assert "lost the database" not in capsys.readouterr().err
    nasopt_storage.close_storage(storage)
