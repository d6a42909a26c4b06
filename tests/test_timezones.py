"""A trial's times are what Optuna writes and reads, in any time zone; and on an Optuna the fast storage
path was not verified on, Optuna's own storage classes do the writing.

Optuna (5.0, 5.1) stores `datetime_start`/`datetime_complete` as naive UTC in an RDB and as aware UTC in a
journal, and hands out naive local time. nasopt's fast path (`nasopt.storage._fast._buffer`, `_cache`, `_batch`, `_load`) writes
and reads those columns itself, so outside UTC any slip shows as hours: the tests below run with the
process in a zone east of UTC (JST, +9) and west of it (EST, -5), in-process and through `nasopt run`
in a subprocess, on SQLite, a journal file and PostgreSQL. The zones are POSIX rules ("JST-9" is
Asia/Tokyo's offset), so no time-zone database is needed.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import FrozenTrial, TrialState

import nasopt
from nasopt.keys import WORKER_KEY
from nasopt.search_spaces.nano import NanoSpace
from nasopt.storage import close_storage, open_storage
from nasopt.storage._fast import _buffer, _cache, _load
from nasopt.storage._fast._buffer import BufferedStorage, hold
from nasopt.storage._fast._load import (
    VERIFIED_OPTUNA,
    fast_path_verified,
    from_stored,
    seconds_since,
    stored_now,
)
from nasopt.study._recovery import ORPHAN_AFTER, recover_dead_local_trials

ROOT = Path(__file__).resolve().parent.parent
STUDY = Path(__file__).parent / "studies" / "tiny_nano.py"
TOKYO, NEW_YORK = "JST-9", "EST5"  # +9 h and -5 h, no daylight saving
SLACK = datetime.timedelta(seconds=2)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # tiny_nano has a MedianPruner


@contextmanager
def local_tz(name: str) -> Iterator[None]:
    """This process in time zone `name` (and back to its own afterwards)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    try:
        assert time.timezone != 0, f"TZ={name} had no effect"
        yield
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.fixture(params=[TOKYO, NEW_YORK])
def tz(request) -> Iterator[str]:
    with local_tz(request.param):
        yield request.param


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tz.db'}"
    return request.getfixturevalue("pg_url")


def _outside(url: str) -> optuna.storages.RDBStorage:
    """Plain Optuna, as the dashboard, pandas or another tool opens the storage."""
    return optuna.storages.RDBStorage(url, skip_compatibility_check=True, skip_table_creation=True)


def _raw_times(url: str) -> dict[int, tuple[datetime.datetime | None, datetime.datetime | None]]:
    """trial number -> (datetime_start, datetime_complete) as the columns hold them."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT number, datetime_start, datetime_complete FROM trials")).all()
    finally:
        engine.dispose()

    def parse(value: object) -> datetime.datetime | None:
        return datetime.datetime.fromisoformat(value) if isinstance(value, str) else value  # type: ignore[return-value]

    return {number: (parse(start), parse(complete)) for number, start, complete in rows}


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def _within(value: datetime.datetime | None, low: datetime.datetime, high: datetime.datetime) -> bool:
    return value is not None and low - SLACK <= value <= high + SLACK


# ------------------------------------------------------------------------------- the rule, in-process

def test_the_fast_path_writes_and_reads_times_as_optuna_does(url, tz):
    """Trials created, taken from the queue and finished by nasopt, and by plain Optuna, in one study:
    the columns hold UTC, both readers give local time, and nasopt's read equals Optuna's."""
    local0, utc0 = datetime.datetime.now(), _utc_now()
    study = optuna.create_study(storage=BufferedStorage(open_storage(url, heartbeat=False)), study_name="tz")
    outside = optuna.load_study(study_name="tz", storage=_outside(url))
    ours = study.ask()  # nasopt's create_trial
    hold(ours)
    ours.suggest_int("width", 8, 64)
    study.tell(ours, 0.5)  # nasopt's write_batch (the final state)
    theirs = outside.ask()  # Optuna's own code
    theirs.suggest_int("width", 8, 64)
    outside.tell(theirs, 0.25)
    study.enqueue_trial({"width": 16})
    queued = study.ask()  # started by Optuna's code, finished by nasopt's
    hold(queued)
    queued.suggest_int("width", 8, 64)
    study.tell(queued, 0.75)
    running = study.ask()  # read by another worker while running, nothing written yet
    local1, utc1 = datetime.datetime.now(), _utc_now()

    for number, (start, complete) in _raw_times(url).items():  # naive UTC in the columns, as Optuna writes
        assert _within(start, utc0, utc1), (number, start, utc0)
        assert complete is None if number == running.number else _within(complete, utc0, utc1), (number, complete)
    plain = outside.get_trials()
    for t in plain:  # naive local time out of Optuna
        assert _within(t.datetime_start, local0, local1), (t.number, t.datetime_start, local0)
        assert t.state == TrialState.RUNNING or _within(t.datetime_complete, local0, local1), t.number
        assert t.state == TrialState.RUNNING or t.duration < datetime.timedelta(seconds=5), (t.number, t.duration)
    fresh = BufferedStorage(open_storage(url, heartbeat=False))  # another worker's read: nasopt.storage._fast._load
    for source in (fresh.get_all_trials(study._study_id), study.get_trials()):
        assert [(t.number, t.datetime_start, t.datetime_complete) for t in source] == \
            [(t.number, t.datetime_start, t.datetime_complete) for t in plain]
    close_storage(fresh)
    close_storage(study._storage)


def test_the_rule_is_the_installed_optunas():
    """`stored_now`/`from_stored` against Optuna's own model of a trial (what its RDBStorage writes and
    reads), in both zones: a new Optuna that changes either fails here (and `fast_path_verified` keeps
    the fast path off it until this suite has run on it)."""
    from optuna.storages._rdb import models

    for zone in (TOKYO, NEW_YORK):
        with local_tz(zone):
            now = datetime.datetime.now()
            model = models.TrialModel(datetime_start=now, datetime_complete=now)
            stored = stored_now()
            assert abs(model._datetime_start_utc - stored) < SLACK  # what Optuna writes for "now"
            assert model.datetime_start == from_stored(model._datetime_start_utc)  # what it reads back
            assert from_stored(None) is None
            assert abs(seconds_since(now - datetime.timedelta(minutes=10)) - 600) < 2
            assert abs(seconds_since(datetime.datetime.now(datetime.timezone.utc)
                                     - datetime.timedelta(minutes=10)) - 600) < 2  # aware as it says


def test_orphans_are_told_by_their_real_age(url, tz):
    """A RUNNING trial no worker has claimed (its worker died between Optuna's `ask` and the objective)
    is retried after ORPHAN_AFTER seconds, counted in real time: one started (by Optuna's code) a second
    ago is left alone, one started 10 minutes ago is retried, whatever the zone."""
    study = optuna.create_study(storage=BufferedStorage(open_storage(url, heartbeat=False)), study_name="orphans")
    outside = optuna.load_study(study_name="orphans", storage=_outside(url))
    young = outside.ask()
    old_start = datetime.datetime.now() - datetime.timedelta(seconds=ORPHAN_AFTER + 480)
    outside._storage.create_new_trial(outside._study_id, template_trial=FrozenTrial(
        number=0, state=TrialState.RUNNING, value=None, values=None, datetime_start=old_start,
        datetime_complete=None, params={}, distributions={}, user_attrs={}, system_attrs={},
        intermediate_values={}, trial_id=0))
    old = [t for t in outside.get_trials() if t.number != young.number][0]
    assert abs(seconds_since(old.datetime_start) - (ORPHAN_AFTER + 480)) < 5
    assert recover_dead_local_trials(study) == [old.number]
    states = {t.number: t.state for t in outside.get_trials()}
    assert states[young.number] == TrialState.RUNNING and states[old.number] == TrialState.FAIL
    close_storage(study._storage)


# ---------------------------------------------------------------------------------- version guard

@pytest.mark.parametrize("version, verified", [
    ("5.0.0", True), ("5.1.0", True), ("5.1.3", True), ("5.1.0.post1", True), ("5.2.0", False),
    ("5.1.0rc1", False), ("5.2.0.dev0", False), ("4.9.0", False), ("6.0.0", False), ("5.10.0", False)])
def test_fast_path_verified_versions(version, verified):
    assert fast_path_verified(version) is verified


def test_pyproject_bounds_optuna_to_the_verified_versions():
    """pyproject allows exactly the Optuna releases the fast path was verified on (`VERIFIED_OPTUNA`)."""
    [spec] = re.findall(r'^\s*"(optuna\s*[<>=!~][^"]*)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    low, high = sorted(VERIFIED_OPTUNA)[0], sorted(VERIFIED_OPTUNA)[-1]
    assert re.sub(r"\s", "", spec) == f"optuna>={low[0]}.{low[1]},<{high[0]}.{high[1] + 1}", spec
    assert fast_path_verified(), f"the installed optuna {optuna.__version__} is outside {sorted(VERIFIED_OPTUNA)}"


def test_an_unverified_optuna_gets_optunas_own_storage(tmp_path, monkeypatch, capsys, one_thread):
    """On an Optuna the fast path was not verified on, a real study runs on Optuna's own storage classes
    (nothing of nasopt.storage._fast._batch/_load writes or reads), with one notice on stderr, and its trials are whole."""
    monkeypatch.setattr(_load, "VERIFIED_OPTUNA", frozenset({(4, 9)}))
    _buffer._unverified_notice.cache_clear()

    def fast_path(*_args, **_kwargs):
        raise AssertionError("the fast path ran on an unverified Optuna")

    for module, name in ((_buffer, "write_batch"), (_buffer, "create_trial"), (_cache, "read_study")):
        monkeypatch.setattr(module, name, fast_path)
    db = tmp_path / "fallback.db"
    spec = nasopt.StudySpec(name="fallback", space=NanoSpace(C=8), dataset="digits",
                            objectives={"accuracy": "maximize", "params": "minimize"},
                            sampler=optuna.samplers.RandomSampler(seed=0), n_trials=2,
                            train=nasopt.TrainConfig(epochs=1, batch_size=128, lr=0.05), artifacts=str(tmp_path / "a"))
    capsys.readouterr()
    with local_tz(TOKYO):
        local0 = datetime.datetime.now()
        study = nasopt.run(spec, storage=f"sqlite:///{db}", progress=False)
        study = nasopt.run(spec, storage=f"sqlite:///{db}", n_trials=3, progress=False)  # a resume
        local1 = datetime.datetime.now()
        err = capsys.readouterr().err
        notices = [line for line in err.splitlines() if "fast storage path" in line]
        assert len(notices) == 1, err  # once per process
        assert f"optuna {optuna.__version__} is not one nasopt's fast storage path was verified on (4.9)" in notices[0]
        assert "Optuna's own RDBStorage" in notices[0]
        assert not isinstance(study._storage, BufferedStorage)
        trials = optuna.load_study(study_name="fallback", storage=_outside(f"sqlite:///{db}")).get_trials()
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
        for t in trials:
            assert 0 < t.values[0] <= 1 and t.values[1] == t.user_attrs["params"] > 0
            assert t.params and "curve" in t.user_attrs and WORKER_KEY in t.system_attrs
            assert _within(t.datetime_start, local0, local1) and _within(t.datetime_complete, local0, local1)


# ------------------------------------------------------------------ `nasopt run`, in another zone

def _env(zone: str) -> dict[str, str]:
    return {**os.environ, "TZ": zone, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def _nasopt(*args: object, cwd: Path, zone: str = TOKYO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nasopt.cli", "run", str(STUDY), "-q", "--set", "train.epochs=1",
                           *map(str, args)], cwd=cwd, env=_env(zone), capture_output=True, text=True, timeout=300)


_PLAIN_TRIAL = """
import sys, optuna
from optuna.storages.journal import JournalFileBackend, JournalStorage
url = sys.argv[1]
storage = JournalStorage(JournalFileBackend(url[len("journal:///"):])) if url.startswith("journal:") else url
study = optuna.load_study(study_name="tiny_nano", storage=storage)
study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
"""


def _plain_optuna_trial(storage: str, cwd: Path, zone: str = TOKYO) -> None:
    """One trial of plain Optuna (its own storage classes, in `zone`) in the study."""
    subprocess.run([sys.executable, "-c", _PLAIN_TRIAL, storage], cwd=cwd, env=_env(zone), check=True, timeout=120)


def _read(storage: str) -> list[FrozenTrial]:
    if storage.startswith("journal:///"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        backend: optuna.storages.BaseStorage = JournalStorage(JournalFileBackend(storage[len("journal:///"):]))
    else:
        backend = _outside(storage)
    return optuna.load_study(study_name="tiny_nano", storage=backend).get_trials()


def _assert_in_order(trials: list[FrozenTrial], low: datetime.datetime, high: datetime.datetime) -> None:
    """Every trial started and ended between `low` and `high` (this process's local time), one after the
    other: nasopt's trials and plain Optuna's agree (an hours-long slip breaks the order)."""
    for t in trials:
        assert _within(t.datetime_start, low, high), (t.number, t.datetime_start, low, high)
        assert _within(t.datetime_complete, low, high), (t.number, t.datetime_complete, low, high)
    ordered = sorted(trials, key=lambda t: t.number)
    for before, after in pairwise(ordered):
        assert before.datetime_start <= before.datetime_complete <= after.datetime_start + SLACK, \
            [(t.number, t.datetime_start, t.datetime_complete) for t in ordered]


@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_nasopt_run_in_tokyo_writes_optunas_times(kind, tmp_path, request):
    storage = f"journal:///{tmp_path / 'tz.log'}" if kind == "journal" else request.getfixturevalue("pg_url")
    low = datetime.datetime.now()
    result = _nasopt("--n-trials", 2, "--storage", storage, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    _plain_optuna_trial(storage, tmp_path)
    trials = _read(storage)
    assert [t.state in FINISHED for t in trials] == [True] * 3, [(t.number, t.state) for t in trials]
    _assert_in_order(trials, low, datetime.datetime.now())


def test_resume_in_tokyo_leaves_a_live_trial_of_another_worker_alone(tmp_path):
    """SQLite, TZ=Tokyo: a study run, one trial of plain Optuna, then a resume while a trial that plain
    Optuna has just started (no nasopt worker attribute: an orphan only after ORPHAN_AFTER seconds) runs.
    The resume must wait for that trial (read 9 h old, it was failed at once), then finish; every trial's
    times, written by nasopt or by Optuna, agree."""
    db = tmp_path / "nasopt.db"
    storage = f"sqlite:///{db}"
    low = datetime.datetime.now()
    result = _nasopt("--n-trials", 2, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    _plain_optuna_trial(storage, tmp_path)
    outside = optuna.load_study(study_name="tiny_nano", storage=_outside(storage))
    live = outside.ask()  # another tool's trial, started a moment ago, still running
    command = [sys.executable, "-m", "nasopt.cli", "run", str(STUDY), "-q", "--set", "train.epochs=1",
               "--n-trials", "5"]
    proc = subprocess.Popen(command, cwd=tmp_path, env=_env(TOKYO), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            states = [t.state for t in outside.get_trials()]
            assert TrialState.FAIL not in states, states
            if sum(state in FINISHED for state in states) == 4:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()  # it waits for the live trial...
        time.sleep(1.0)  # ...several polls long
        assert outside._storage.get_trial(live._trial_id).state == TrialState.RUNNING
        outside.tell(live, 0.5)  # its worker finishes it
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, err
    trials = outside.get_trials()
    assert [t.state in FINISHED for t in trials] == [True] * 5, [(t.number, t.state) for t in trials]
    assert trials[live.number].state == TrialState.COMPLETE and trials[live.number].value == 0.5
    assert not [t for t in trials if t.system_attrs.get("failed_trial") is not None]
    high = datetime.datetime.now()
    for t in trials:
        assert _within(t.datetime_start, low, high) and _within(t.datetime_complete, low, high), t.number
    _assert_in_order([t for t in trials if t.number != live.number], low, high)
    utc_low = low.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    utc_high = high.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    for number, (start, complete) in _raw_times(storage).items():  # the columns hold UTC (what pandas/SQL see)
        assert _within(start, utc_low, utc_high) and _within(complete, utc_low, utc_high), (number, start, complete)
