"""nasopt writes only into its own database, and refuses at once what it cannot write (issue 13, parts 2-4).

- Another application's database (SQLite file, PostgreSQL schema, MySQL/MariaDB database: other tables,
  no Optuna tables) is refused in one line naming the tables and the fix, and left byte-for-byte as it
  was; an empty one, and Optuna's own with the user's extra tables, are fine.
- Two `nasopt run` started at the same moment on one SQLite file (new or existing): one runs, the
  other is told that another run is running; never "tables but no schema version", never both.
- A read-only file or folder, and `sqlite:///` without a file name, fail at once (no outage retry).

The CLI cases run the real command in a subprocess, like tests/test_cli.py.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from test_cli import ENV, MOBILE, NANO, _make_db, assert_user_error, nasopt, snapshot

from nasopt.errors import UserError
from nasopt.storage import close_storage, open_storage
from nasopt.storage._outage import Outage as _Outage
from nasopt.storage._outage import sqlite_user_error as _sqlite_user_error
from nasopt.storage._outage import transient as _transient

QUICK = 100  # seconds: every refusal here comes at once; the outage retry would take OUTAGE_TIMEOUT (120 s)


def tree(folder: Path) -> dict[str, tuple[bytes, int] | None]:
    """`snapshot` plus the folders (an artifact folder made before a refusal would show)."""
    return {**snapshot(folder), **{str(p.relative_to(folder)): None for p in folder.rglob("*") if p.is_dir()}}


def foreign_sqlite(db: Path, tables: int = 8, alembic: bool = False) -> None:
    """Another application's SQLite file: `tables` tables with a row each, a view, maybe its own alembic."""
    with sqlite3.connect(db) as connection:
        for i in range(tables):
            connection.execute(f"CREATE TABLE t{i} (id INTEGER PRIMARY KEY, name TEXT)")
            connection.execute(f"INSERT INTO t{i} (name) VALUES ('row')")
        connection.execute("CREATE VIEW names AS SELECT name FROM t0")
        if alembic:  # an app migrated with alembic: its version table means nothing to Optuna
            connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
            connection.execute("INSERT INTO alembic_version VALUES ('1a2b3c4d5e6f')")
    connection.close()


# ---------------------------------------------------------------------------------------------- CLI cases

# id -> (set-up of the folder, args, words the error line must contain)
CASES: dict[str, tuple[str, list[str], list[str]]] = {
    "foreign_sqlite_default": ("foreign:nasopt.db", ["run", MOBILE],
                               ["nasopt.db", "other tables (names, t0, t1, t2, t3 and 4 more)", "no Optuna tables",
                                "sqlite:///nasopt-studies.db"]),
    "foreign_sqlite_named": ("foreign:app.db", ["run", MOBILE, "--storage", "sqlite:///app.db"],
                             ["app.db", "other tables", "and 4 more", "another application", "sqlite:///nasopt.db"]),
    "foreign_sqlite_alembic": ("foreign-alembic:app.db", ["run", MOBILE, "--storage", "sqlite:///app.db"],
                               ["app.db", "(alembic_version, names, t0, t1, t2 and 5 more)", "no Optuna tables", "sqlite:///nasopt.db"]),
    "foreign_sqlite_ls": ("foreign:nasopt.db", ["ls"], ["nasopt.db", "no Optuna tables", "not an nasopt/Optuna"]),
    "foreign_sqlite_show": ("foreign:nasopt.db", ["show", "tiny_mobile"], ["nasopt.db", "not an nasopt/Optuna"]),
    "foreign_sqlite_dashboard": ("foreign:nasopt.db", ["dashboard", "--port", "0"],
                                 ["nasopt.db", "not an nasopt/Optuna"]),
    "sqlite_no_file": ("", ["run", MOBILE, "--storage", "sqlite:///"], ["'sqlite:///'", "names no database file",
                                                                          "sqlite:///nasopt.db"]),
    "sqlite_no_path": ("", ["run", MOBILE, "--storage", "sqlite://"], ["'sqlite://'", "names no database file",
                                                                         "sqlite:///nasopt.db"]),
    "sqlite_memory": ("", ["run", MOBILE, "--storage", "sqlite:///:memory:"], ["names no database file"]),
    "sqlite_root_folder": ("", ["run", MOBILE, "--storage", "sqlite:////"], ["points to a directory",
                                                                              "sqlite:////nasopt.db"]),
    "ls_sqlite_no_file": ("", ["ls", "--storage", "sqlite:///"], ["names no database file"]),
}


def _set_up(folder: Path, how: str) -> None:
    if how:
        kind, name = how.split(":")
        foreign_sqlite(folder / name, alembic=kind == "foreign-alembic")


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[subprocess.CompletedProcess[str], dict, dict]]:
    folders = {}
    for case, (how, _, _) in CASES.items():
        cwd = tmp_path_factory.mktemp(case)
        _set_up(cwd, how)
        folders[case] = (cwd, tree(cwd))
    time.sleep(0.05)  # a write after the snapshot would show in the mtime

    def go(case: str) -> tuple[subprocess.CompletedProcess[str], dict, dict]:
        cwd, before = folders[case]
        return nasopt(*CASES[case][1], cwd=cwd, timeout=QUICK), before, tree(cwd)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(CASES, pool.map(go, CASES), strict=True))


@pytest.mark.parametrize("case", list(CASES))
def test_bad_storage_is_one_line_exit_2_and_touches_nothing(case, bad_runs):
    result, before, after = bad_runs[case]
    assert_user_error(result, *CASES[case][2])
    assert after == before  # the other application's file byte-for-byte (and mtime) as it was, nothing new


def test_an_empty_file_is_fine(tmp_path):
    (tmp_path / "nasopt.db").touch()  # zero bytes: SQLite's empty database
    result = nasopt("run", NANO, "-q", "--n-trials", 1, "--set", "train.epochs=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(optuna.load_study(study_name="tiny_nano", storage=f"sqlite:///{tmp_path / 'nasopt.db'}").trials) == 1


def test_optuna_tables_with_the_users_own_tables_beside_them_are_fine(tmp_path):
    db = tmp_path / "mine.db"
    optuna.create_study(study_name="old", storage=f"sqlite:///{db}")
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE my_notes (note TEXT)")
        connection.execute("INSERT INTO my_notes VALUES ('keep me')")
    connection.close()
    storage = open_storage(f"sqlite:///{db}", heartbeat=False)
    try:
        optuna.create_study(study_name="new", storage=storage)
        assert sorted(s.study_name for s in optuna.get_all_study_summaries(storage)) == ["new", "old"]
    finally:
        close_storage(storage)
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT note FROM my_notes").fetchall() == [("keep me",)]
    connection.close()


def test_foreign_sqlite_in_the_library_is_a_user_error(tmp_path):
    db = tmp_path / "app.db"
    foreign_sqlite(db, tables=2)
    before = db.read_bytes()
    for create in (True, False):
        with pytest.raises(UserError, match=r"other tables \(names, t0, t1\) and no Optuna tables"):
            open_storage(f"sqlite:///{db}", create=create)
    assert db.read_bytes() == before


def test_a_table_named_like_optunas_does_not_make_a_database_optunas(tmp_path):
    db = tmp_path / "clinic.db"
    with sqlite3.connect(db) as connection:  # an application of its own that happens to have a `studies` table
        connection.execute("CREATE TABLE studies (id INTEGER PRIMARY KEY, title TEXT)")
        connection.execute("CREATE TABLE patients (id INTEGER PRIMARY KEY)")
    connection.close()
    before = db.read_bytes()
    with pytest.raises(UserError, match=r"named like Optuna's \(studies\) but no Optuna schema version.*"
                                        r"sqlite:///nasopt.db"):
        open_storage(f"sqlite:///{db}")
    assert db.read_bytes() == before


# ---------------------------------------------------------------------------------------------- read-only

def _writable(path: Path) -> bool:
    """Whether this process can really write `path` (a file: open it for appending; a folder: make a file)."""
    try:
        if path.is_dir():
            probe = path / f".probe-{uuid.uuid4().hex}"
            probe.touch()
            probe.unlink()
        else:
            with open(path, "ab"):
                pass
        return True
    except OSError:
        return False


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """`path` (a file or folder) read-only for real: chmod for a user; for root, who ignores modes, the
    immutable flag (chattr +i). Skips, saying why, where neither works."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        undo = lambda: path.chmod(mode)  # noqa: E731
    else:
        chattr = shutil.which("chattr")
        done = chattr and subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode == 0
        if not done:
            pytest.skip("running as root, who writes whatever the mode, and `chattr +i` does not work here: "
                        "cannot make a file read-only")
        undo = lambda: subprocess.run([chattr, "-i", str(path)], check=True)  # noqa: E731
    try:
        if _writable(path):
            pytest.skip(f"cannot make {path} read-only for this user here")
        yield
    finally:
        undo()


def _read_only_case(tmp_path: Path, target: str, db: str, *args: str) -> tuple[subprocess.CompletedProcess[str], dict, dict]:
    work = tmp_path / "work"
    work.mkdir()
    if db:
        _make_db(work / db)
    before = tree(work)
    with read_only(work if target == "folder" else work / db):
        start = time.monotonic()
        result = nasopt(*args, cwd=work, timeout=QUICK)
        assert time.monotonic() - start < QUICK
        after = tree(work)
    return result, before, after


def test_read_only_database_file(tmp_path):
    result, before, after = _read_only_case(tmp_path, "file", "nasopt.db", "run", str(MOBILE))
    assert_user_error(result, "nasopt.db", "read-only", "chmod u+w nasopt.db", "--storage")
    assert after == before


def test_read_only_database_file_can_still_be_read(tmp_path):
    result, before, after = _read_only_case(tmp_path, "file", "nasopt.db", "ls")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("tiny_mobile\t")
    assert after == before


def test_database_in_a_read_only_folder(tmp_path):
    result, before, after = _read_only_case(tmp_path, "folder", "nasopt.db", "run", str(MOBILE))
    line = assert_user_error(result, "nasopt.db", "read-only", "journal", "writable folder")
    assert str(tmp_path / "work") in line  # the folder, by its full name
    assert after == before


def test_new_database_in_a_read_only_folder(tmp_path):
    result, before, after = _read_only_case(tmp_path, "folder", "", "run", str(MOBILE), "--storage",
                                            "sqlite:///new.db")
    line = assert_user_error(result, "cannot create storage file new.db", "not writable")
    assert str(tmp_path / "work") in line
    assert after == before == {}


def test_sqlite_errors_of_the_file_are_not_an_outage():
    """What os.access cannot see (an ACL, a root-squashed share): SQLite's own errors end the run at once."""
    def error(text: str) -> sa.exc.OperationalError:
        return sa.exc.OperationalError("INSERT INTO studies ...", {}, sqlite3.OperationalError(text))

    url = "sqlite:///some/where.db"
    for text, words in [("attempt to write a readonly database", ["some/where.db", "read-only", "writable"]),
                        ("unable to open database file", ["some/where.db", "journal", "writable"]),
                        ("database or disk is full", ["disk is full"]),
                        ("database disk image is malformed", ["damaged", "backup"])]:
        assert _transient(error(text)) is None, text
        message = str(_sqlite_user_error(error(text), url))
        assert all(w in message for w in words), message

        def fail(text: str = text) -> None:
            raise error(text)

        start = time.monotonic()
        with pytest.raises(UserError):
            _Outage(url).call(None, fail)  # type: ignore[arg-type]
        assert time.monotonic() - start < 1.0
    assert _transient(error("database is locked")) is not None  # another process: worth waiting for
    assert _sqlite_user_error(error("database is locked"), url) is None


# ---------------------------------------------------------------------------------------------- two runs

LAUNCH = """
import os, sys, time
from pathlib import Path
import nasopt.study._run, nasopt.cli.main, optuna, sqlalchemy, torch  # the slow imports before the barrier
barrier = Path(sys.argv[1])
(barrier / f"ready.{os.getpid()}").touch()
while len(list(barrier.glob("ready.*"))) < 2:
    time.sleep(0.002)
sys.exit(nasopt.cli.main.main(sys.argv[2:]))
"""


def _two_runs_at_once(cwd: Path) -> list[subprocess.CompletedProcess[str]]:
    barrier = cwd / "barrier"
    barrier.mkdir()
    args = ["run", str(NANO), "-q", "--n-trials", "3", "--set", "train.epochs=1"]
    procs = [subprocess.Popen([sys.executable, "-c", LAUNCH, str(barrier), *args], cwd=cwd, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    shutil.rmtree(barrier)
    return results


def _one_ran_one_refused(results: list[subprocess.CompletedProcess[str]], db: Path) -> None:
    assert sorted(r.returncode for r in results) == [0, 2], [(r.returncode, r.stderr) for r in results]
    winner = next(r for r in results if r.returncode == 0)
    loser = next(r for r in results if r.returncode == 2)
    line = assert_user_error(loser, "another nasopt run (pid", "is running study 'tiny_nano'")
    assert "no schema version" not in line
    assert "Traceback" not in winner.stderr, winner.stderr
    study = optuna.load_study(study_name="tiny_nano", storage=f"sqlite:///{db}")
    trials = study.get_trials()
    assert len(trials) == 3 and all(t.state.is_finished() for t in trials)
    assert len({t.system_attrs["nasopt:worker"]["pid"] for t in trials}) == 1  # all by the one that ran
    assert study._storage.get_study_system_attrs(study._study_id).get("nasopt:worker") is None  # its claim given back when it ended


@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "existing-file"])
def test_two_runs_started_together_on_one_sqlite_file(tmp_path, existing):
    for round_ in range(3):
        cwd = tmp_path / f"round{round_}"
        cwd.mkdir()
        if existing:  # Optuna's tables there already: both open at once, no creation to wait for
            optuna.create_study(study_name="another", storage=f"sqlite:///{cwd / 'nasopt.db'}")
        _one_ran_one_refused(_two_runs_at_once(cwd), cwd / "nasopt.db")


def test_a_finished_run_in_a_live_process_does_not_block_the_next(tmp_path):
    """The claim lasts while the run does: a notebook that ran the study earlier does not hold it."""
    import runpy

    from nasopt.study._run import run as run_study

    spec = runpy.run_path(str(NANO))["study"]
    spec = spec.replace(train=dataclasses.replace(spec.train, epochs=1))  # as --set train.epochs=1
    url = f"sqlite:///{tmp_path / 'nasopt.db'}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = run_study(spec, storage=url, n_trials=1, progress=False)
    assert study._storage.get_study_system_attrs(study._study_id).get("nasopt:worker") is None
    result = nasopt("run", NANO, "-q", "--n-trials", 2, "--set", "train.epochs=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_closing_a_run_storage_that_a_connection_still_writes_to_does_not_wait_out_the_busy_timeout(tmp_path):
    """A Ctrl-C can leave one of the run's connections mid-transaction (the exception's traceback keeps it):
    closing then waited the 60 s busy timeout to switch the file back from WAL. It gives up at once, keeps
    the WAL (SQLite folds it back in later) and loses nothing committed."""
    from nasopt.storage._open import fast_sqlite

    url = f"sqlite:///{tmp_path / 'nasopt.db'}"
    storage = open_storage(url)
    fast_sqlite(storage)  # as during `nasopt run`
    study = optuna.create_study(storage=storage, study_name="s")
    study.enqueue_trial({"x": 1})
    held = storage.engine.connect()
    held.begin()
    held.exec_driver_sql("UPDATE studies SET study_name = study_name")  # an interrupted write
    try:
        start = time.monotonic()
        close_storage(storage)
        assert time.monotonic() - start < 20  # not the 60 s busy timeout
    finally:
        held.close()
    assert len(optuna.load_study(study_name="s", storage=url).trials) == 1


# ---------------------------------------------------------------------------------------------- servers

def _tables(url: str, schema: str | None = None) -> list[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return sorted(sa.inspect(connection).get_table_names(schema=schema))
    finally:
        engine.dispose()


def _execute(url: str, *statements: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(sa.text(statement))
    finally:
        engine.dispose()


def test_postgresql_database_of_another_application_is_refused(pg_url, tmp_path):
    _execute(pg_url, "CREATE TABLE customers (id serial PRIMARY KEY, name text)",
             "INSERT INTO customers (name) VALUES ('ada')", "CREATE TABLE orders (id int)")
    for create, words in ((True, "CREATE DATABASE nasopt"), (False, "not an nasopt/Optuna database")):
        with pytest.raises(UserError, match=r"other tables \(customers, orders\) and no Optuna tables") as info:
            open_storage(pg_url, create=create)
        assert words in str(info.value) and "\n" not in str(info.value)
    assert _tables(pg_url) == ["customers", "orders"]  # nothing written
    result = nasopt("run", MOBILE, "--storage", pg_url, cwd=tmp_path, timeout=QUICK)
    assert_user_error(result, "customers, orders", "no Optuna tables", "CREATE DATABASE nasopt", "/nasopt")
    assert _tables(pg_url) == ["customers", "orders"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_postgresql_looks_only_at_the_schema_optuna_writes_into(pg_url):
    # another application's tables in a schema of their own: public is empty, Optuna's tables go there
    _execute(pg_url, "CREATE SCHEMA app", "CREATE TABLE app.customers (id int)")
    storage = open_storage(pg_url, heartbeat=False)
    close_storage(storage)
    assert "studies" in _tables(pg_url) and _tables(pg_url, "app") == ["customers"]


def test_postgresql_search_path_decides_the_schema(pg_url):
    # the other application's tables in public, but the search_path puts an empty schema first
    _execute(pg_url, "CREATE TABLE customers (id int)", "CREATE SCHEMA studies_here")
    url = pg_url + "?options=-csearch_path%3Dstudies_here"
    storage = open_storage(url, heartbeat=False)
    try:
        optuna.create_study(study_name="s", storage=storage)
    finally:
        close_storage(storage)
    assert _tables(pg_url) == ["customers"]  # public untouched
    assert "trials" in _tables(pg_url, "studies_here")


def test_postgresql_optuna_tables_plus_the_users_own_are_fine(pg_url):
    optuna.create_study(study_name="old", storage=pg_url)
    _execute(pg_url, "CREATE TABLE my_notes (note text)")
    storage = open_storage(pg_url, create=False, heartbeat=False)
    try:
        assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["old"]
    finally:
        close_storage(storage)


MYSQL_ADMIN = os.environ.get("NASOPT_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1/test")


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """A fresh MySQL/MariaDB database (skipped, saying why, without the pymysql driver or a server)."""
    pytest.importorskip("pymysql", reason="the MySQL/MariaDB tests need the pymysql driver")
    name = f"nasopt_test_{uuid.uuid4().hex[:12]}"
    try:
        _execute(MYSQL_ADMIN, f"CREATE DATABASE {name}")
    except sa.exc.OperationalError as e:
        pytest.skip(f"no MySQL/MariaDB server answers at {MYSQL_ADMIN} ({str(e.orig).splitlines()[0]}); "
                    "start one or point NASOPT_TEST_MYSQL at an admin URL")
    try:
        yield MYSQL_ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        _execute(MYSQL_ADMIN, f"DROP DATABASE IF EXISTS {name}")


def test_mysql_database_of_another_application_is_refused_and_an_empty_one_is_fine(mysql_url):
    _execute(mysql_url, "CREATE TABLE customers (id int)")
    with pytest.raises(UserError, match=r"other tables \(customers\) and no Optuna tables.*CREATE DATABASE"):
        open_storage(mysql_url)
    assert _tables(mysql_url) == ["customers"]
    _execute(mysql_url, "DROP TABLE customers")
    storage = open_storage(mysql_url, heartbeat=False)  # empty: Optuna's tables created (under a named lock)
    try:
        optuna.create_study(study_name="s", storage=storage)
    finally:
        close_storage(storage)
    assert "alembic_version" in _tables(mysql_url)
