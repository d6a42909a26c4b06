"""A trial's writes to an RDB storage, for `nasopt.storage._fast._buffer`, in SQLAlchemy Core on one connection instead
of ORM objects (a short trial's CPU was mostly ORM bookkeeping, and the database's CPU is shared by every
worker); the reads are in `nasopt.storage._fast._load`:

- `write_batch`: a trial's held writes (params, attributes, intermediate values, its first heartbeat
  and, at the end, its values and final state) in one transaction; on PostgreSQL in ONE statement
  (one round trip, `_PG_BATCH`);
- `create_trial`: a new trial in one transaction of two statements (and its worker record and first
  heartbeat, when given);
- `start_trial`: a queued trial taken (RUNNING) with its worker record and heartbeat, in one transaction.

Every statement is built once, with bound parameters (`_Statements`): building a statement and its
cache key cost more CPU than running it.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from optuna import distributions
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from nasopt.storage._fast._load import autocommit, from_stored, stored_now

__all__ = ["write_batch", "create_trial", "start_trial"]

_UNFINISHED = (TrialState.RUNNING, TrialState.WAITING)


class _Statements:
    """The statements, built once (SQLAlchemy then reuses their compiled form per dialect)."""

    def __init__(self) -> None:
        import sqlalchemy as sa
        from optuna.storages._rdb import models

        bp = sa.bindparam
        self.models = models
        t = self.trials = models.TrialModel.__table__
        params, values = models.TrialParamModel.__table__, models.TrialValueModel.__table__
        self.tables = {"params": params, "values": values, "user": models.TrialUserAttributeModel.__table__,
                       "system": models.TrialSystemAttributeModel.__table__,
                       "steps": models.TrialIntermediateValueModel.__table__,
                       "beats": models.TrialHeartbeatModel.__table__}
        one = t.c.trial_id == bp("b_trial")
        self.state = sa.select(t.c.state, t.c.datetime_complete, t.c.number).where(one)
        self.finish = sa.update(t).where(one, t.c.state.in_(_UNFINISHED)).values(
            state=bp("b_state"), datetime_complete=bp("b_complete"))
        self.stored_params = sa.select(params.c.param_name).where(params.c.trial_id == bp("b_trial"))
        self.insert_params = sa.insert(params)
        self.insert_values = sa.insert(values)
        studies = models.StudyModel.__table__
        self.lock_study = sa.select(studies.c.study_id).where(studies.c.study_id == bp("b_study")).with_for_update()
        self.insert_trial = sa.insert(t).values(
            number=sa.select(sa.func.count()).select_from(t).where(t.c.study_id == bp("b_study")).scalar_subquery(),
            study_id=bp("b_study"), state=bp("b_state"), datetime_start=bp("b_start")
        ).returning(t.c.trial_id, t.c.number)
        self.start = sa.update(t).where(one, t.c.state == TrialState.WAITING).values(
            state=TrialState.RUNNING, datetime_start=bp("b_start"))
        system = self.tables["system"]
        self.system_value = sa.select(system.c.value_json).where(system.c.trial_id == bp("b_trial"),
                                                                 system.c.key == bp("b_key"))
        self._upserts: dict[tuple[str, str], Any] = {}

    def upsert(self, dialect: str, kind: str) -> Any:
        """Insert-or-update of a trial's attributes (`kind` "user"/"system") or heartbeat ("beats"); None
        where the dialect has no upsert."""
        key = (dialect, kind)
        if key not in self._upserts:
            import sqlalchemy as sa
            from sqlalchemy.dialects import mysql, postgresql, sqlite

            module: Any = {"postgresql": postgresql, "sqlite": sqlite, "mysql": mysql}.get(dialect)
            statement = None
            if module is not None:
                insert: Any = module.insert(self.tables[kind])
                given = insert.inserted if dialect == "mysql" else insert.excluded
                if kind == "beats":
                    insert = insert.values(heartbeat=sa.func.now())
                    new, unique = {"heartbeat": sa.func.now()}, ["trial_id"]
                elif kind == "steps":
                    new = {"intermediate_value": given.intermediate_value,
                           "intermediate_value_type": given.intermediate_value_type}
                    unique = ["trial_id", "step"]
                else:
                    new, unique = {"value_json": given.value_json}, ["trial_id", "key"]
                statement = insert.on_duplicate_key_update(**new) if dialect == "mysql" else \
                    insert.on_conflict_do_update(index_elements=unique, set_=new)
            self._upserts[key] = statement
        return self._upserts[key]


@cache
def _statements() -> _Statements:
    return _Statements()


def _run(backend: RDBStorage, fn: Any) -> Any:
    """`fn(session, connection)` in one transaction, retried through an outage like every storage call."""
    from optuna.storages._rdb.storage import _create_scoped_session

    def attempt() -> Any:
        with _create_scoped_session(backend.scoped_session) as session:
            return fn(session, session.connection())

    outage = getattr(backend, "_outage", None)
    return outage.call(backend, attempt) if outage is not None else attempt()


def write_batch(backend: RDBStorage, trial_id: int, params: Sequence[tuple[str, float, Any]],
                user: Mapping[str, str], system: Mapping[str, str], intermediate: Mapping[int, float],
                state: TrialState | None = None, values: Sequence[float] | None = None, *,
                heartbeat: bool = False) -> datetime.datetime:
    """Write a trial's params, user/system attrs (JSON texts), intermediate values, with `heartbeat` its
    heartbeat (the server's clock, as Optuna's heartbeat thread writes it) and, with a finished `state`,
    its values and final state, in ONE transaction. Raises `UpdateFinishedTrialError` when the trial has
    already finished (another worker failed it). Returns the completion time written with the state, as
    a FrozenTrial holds it (the column holds `stored_now()`, as Optuna's own write would)."""
    s = _statements()
    models = s.models
    stamp = stored_now()
    when = from_stored(stamp)
    attempts = [0]

    def write(session: Any, conn: Any) -> datetime.datetime:
        retry = attempts[0] > 0
        attempts[0] += 1

        def check() -> Any:
            row = conn.execute(s.state, {"b_trial": trial_id}).one_or_none()
            if row is None:
                raise KeyError(models.NOT_FOUND_MSG)
            if row.state.is_finished() and not (retry and row.state == state):
                # (not Optuna's `check_trial_is_updatable`: its read would commit this session's writes)
                raise UpdateFinishedTrialError(f"Trial#{row.number} has already finished and can not be updated.")
            return row

        # a final write checks the state with its last statement (below); a flush and a retry look first
        if state is None or retry:
            row = check()
            if state is not None and row.state == state:  # the attempt that lost its connection had committed
                return from_stored(row.datetime_complete) or when
        todo = list(params)
        if retry and todo:  # an earlier attempt may have committed them before its connection dropped
            stored = set(conn.execute(s.stored_params, {"b_trial": trial_id}).scalars())
            todo = [p for p in todo if p[0] not in stored]
        if todo:
            _execute(conn, s.insert_params, [
                {"trial_id": trial_id, "param_name": name, "param_value": value,
                 "distribution_json": distributions.distribution_to_json(dist)} for name, value, dist in todo])
        for kind, attrs in (("user", user), ("system", system)):
            if attrs:
                _upsert(backend, session, conn, kind, trial_id, attrs)
        if intermediate:
            _upsert(backend, session, conn, "steps", trial_id, intermediate)
        if heartbeat:
            _upsert(backend, session, conn, "beats", trial_id, None)
        if state is not None:
            rows = []
            for objective, value in enumerate(values or ()):
                stored_value, value_type = models.TrialValueModel.value_to_stored_repr(value)
                rows.append({"trial_id": trial_id, "objective": objective, "value": stored_value,
                             "value_type": value_type})
            if rows:
                _execute(conn, s.insert_values, rows)
            # the state last, only if the trial is still unfinished (else all of this is rolled back):
            # another worker that fails the trial meanwhile (heartbeat-stale) holds the row's lock until
            # its commit, and then this update finds no row to change
            if conn.execute(s.finish, {"b_trial": trial_id, "b_state": state, "b_complete": stamp}).rowcount != 1:
                check()
                raise RuntimeError(f"trial {trial_id}: its state could not be set")  # not reached
        return when

    assert state is None or state.is_finished()
    if backend.engine.name == "postgresql":
        return _write_postgresql(backend, trial_id, params, user, system, intermediate, state, values,
                                 heartbeat, stamp)
    return _run(backend, write)


# PostgreSQL: a trial's whole batch as ONE statement (data-modifying CTEs over arrays, `unnest`), run in
# autocommit mode: one round trip instead of BEGIN + a statement per table + COMMIT. Every write depends
# on `ok`, the trial's row locked while unfinished: a trial another worker has finished gets nothing.
# Re-running it after a lost connection is harmless: params already there are kept, the rest are upserts
# (and a final state that had committed is recognised below).
_PG_BATCH = """
WITH ok AS (
  SELECT trial_id FROM trials WHERE trial_id = %(t)s AND state IN ('RUNNING', 'WAITING') FOR UPDATE
), p AS (
  INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json)
  SELECT ok.trial_id, v.n, v.x, v.d FROM ok, unnest(%(pn)s::text[], %(px)s::float8[], %(pd)s::text[]) AS v(n, x, d)
  ON CONFLICT (trial_id, param_name) DO NOTHING
), u AS (
  INSERT INTO trial_user_attributes (trial_id, key, value_json)
  SELECT ok.trial_id, v.k, v.j FROM ok, unnest(%(uk)s::text[], %(uj)s::text[]) AS v(k, j)
  ON CONFLICT (trial_id, key) DO UPDATE SET value_json = excluded.value_json
), s AS (
  INSERT INTO trial_system_attributes (trial_id, key, value_json)
  SELECT ok.trial_id, v.k, v.j FROM ok, unnest(%(sk)s::text[], %(sj)s::text[]) AS v(k, j)
  ON CONFLICT (trial_id, key) DO UPDATE SET value_json = excluded.value_json
), i AS (
  INSERT INTO trial_intermediate_values (trial_id, step, intermediate_value, intermediate_value_type)
  SELECT ok.trial_id, v.st, v.x, v.ty::trialintermediatevaluetype
  FROM ok, unnest(%(is)s::int[], %(ix)s::float8[], %(it)s::text[]) AS v(st, x, ty)
  ON CONFLICT (trial_id, step) DO UPDATE
  SET intermediate_value = excluded.intermediate_value, intermediate_value_type = excluded.intermediate_value_type
), h AS (
  INSERT INTO trial_heartbeats (trial_id, heartbeat) SELECT ok.trial_id, now() FROM ok WHERE %(beat)s
  ON CONFLICT (trial_id) DO UPDATE SET heartbeat = now()
), o AS (
  INSERT INTO trial_values (trial_id, objective, value, value_type)
  SELECT ok.trial_id, v.o, v.x, v.ty::trialvaluetype FROM ok, unnest(%(vo)s::int[], %(vx)s::float8[], %(vt)s::text[]) AS v(o, x, ty)
), f AS (
  UPDATE trials SET state = %(state)s::trialstate, datetime_complete = %(complete)s
  FROM ok WHERE trials.trial_id = ok.trial_id AND %(final)s
)
SELECT (SELECT count(*) FROM ok) AS ok
"""


def _write_postgresql(backend: RDBStorage, trial_id: int, params: Sequence[tuple[str, float, Any]],
                      user: Mapping[str, str], system: Mapping[str, str], intermediate: Mapping[int, float],
                      state: TrialState | None, values: Sequence[float] | None, heartbeat: bool,
                      stamp: datetime.datetime) -> datetime.datetime:
    """`write_batch` on PostgreSQL; `stamp`: the completion time as stored (`stored_now()`)."""
    models = _statements().models
    when = from_stored(stamp)
    stored_values = [models.TrialValueModel.value_to_stored_repr(v) for v in values or ()]
    stored_steps = {step: models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(v)
                    for step, v in intermediate.items()}
    arguments = {
        "t": trial_id, "pn": [p[0] for p in params], "px": [float(p[1]) for p in params],
        "pd": [distributions.distribution_to_json(p[2]) for p in params],
        "uk": list(user), "uj": list(user.values()), "sk": list(system), "sj": list(system.values()),
        "is": list(stored_steps), "ix": [None if v is None else float(v) for v, _ in stored_steps.values()],
        "it": [t.name for _, t in stored_steps.values()], "beat": heartbeat,
        "vo": list(range(len(stored_values))), "vx": [None if v is None else float(v) for v, _ in stored_values],
        "vt": [t.name for _, t in stored_values], "final": state is not None,
        "state": (state or TrialState.RUNNING).name, "complete": stamp if state is not None else None}
    attempts = [0]
    s = _statements()

    def write(conn: Any) -> datetime.datetime:
        retry = attempts[0] > 0
        attempts[0] += 1
        if conn.exec_driver_sql(_PG_BATCH, arguments).scalar_one() == 1:
            return when
        row = conn.execute(s.state, {"b_trial": trial_id}).one_or_none()  # why not: gone, or finished
        if row is None:
            raise KeyError(models.NOT_FOUND_MSG)
        if retry and row.state == state:  # the attempt that lost its connection had committed
            return from_stored(row.datetime_complete) or when
        raise UpdateFinishedTrialError(f"Trial#{row.number} has already finished and can not be updated.")

    return autocommit(backend, write)


def _execute(conn: Any, statement: Any, rows: list[dict[str, Any]]) -> None:
    """One row as a plain execute: the driver's executemany costs a pipeline round of its own."""
    conn.execute(statement, rows[0] if len(rows) == 1 else rows)


def _upsert(backend: RDBStorage, session: Any, conn: Any, kind: str, trial_id: int, attrs: Mapping[Any, Any] | None) -> None:
    """Insert-or-update several attributes (JSON texts) or intermediate values (`kind` "steps") of one trial
    in one executemany (`attrs` None: the trial's heartbeat, set to the server's clock); Optuna's own
    writes on a dialect without an upsert."""
    statement = _statements().upsert(backend.engine.name, kind)
    if statement is not None:
        if attrs is None:
            conn.execute(statement, {"trial_id": trial_id})
        elif kind == "steps":
            stored = _statements().models.TrialIntermediateValueModel.intermediate_value_to_stored_repr
            _execute(conn, statement, [{"trial_id": trial_id, "step": step, "intermediate_value": stored(value)[0],
                                      "intermediate_value_type": stored(value)[1]} for step, value in attrs.items()])
        else:
            _execute(conn, statement, [{"trial_id": trial_id, "key": key, "value_json": text}
                                     for key, text in attrs.items()])
    elif attrs is None:
        backend.record_heartbeat(trial_id)
    elif kind == "steps":
        for step, value in attrs.items():
            backend._set_trial_intermediate_value_without_commit(session, trial_id, step, value)
    else:
        model = _statements().models.TrialUserAttributeModel if kind == "user" else \
            _statements().models.TrialSystemAttributeModel
        for key, text in attrs.items():
            backend._set_trial_attr_without_commit(session, model, trial_id, key, json.loads(text))


def create_trial(backend: RDBStorage, study_id: int, system: Mapping[str, str] | None = None,
                 heartbeat: bool = False) -> FrozenTrial | None:
    """Optuna's `create_new_trial(study_id)` (no template) in one transaction of two statements instead of
    four: the study's row locked (trial numbers are counted under that lock, as Optuna does), then the
    trial inserted with its number counted in a subquery; with `system` (JSON texts: the worker record)
    and `heartbeat` (its first heartbeat, the server's clock) in the same transaction. None on a dialect
    where a statement may not read the table it inserts into (MySQL): the caller then uses Optuna's own."""
    if backend.engine.name not in ("postgresql", "sqlite") or (
            backend.engine.name == "sqlite" and getattr(backend.engine.dialect.dbapi, "sqlite_version_info", (0,)) < (3, 35)):
        return None  # (SQLite has RETURNING from 3.35)
    s = _statements()

    def create(session: Any, conn: Any) -> FrozenTrial:
        start = stored_now()  # what Optuna's own create writes; the FrozenTrial gets it as Optuna reads it
        if conn.execute(s.lock_study, {"b_study": study_id}).first() is None:
            raise KeyError(s.models.NOT_FOUND_MSG)
        row = conn.execute(s.insert_trial, {"b_study": study_id, "b_state": TrialState.RUNNING,
                                            "b_start": start}).one()
        if system:
            _upsert(backend, session, conn, "system", row.trial_id, system)
        if heartbeat:
            _upsert(backend, session, conn, "beats", row.trial_id, None)
        return FrozenTrial(number=row.number, state=TrialState.RUNNING, value=None, values=None,
                           datetime_start=from_stored(start), datetime_complete=None, params={}, distributions={},
                           user_attrs={}, system_attrs={k: json.loads(v) for k, v in (system or {}).items()},
                           intermediate_values={}, trial_id=row.trial_id)

    return _run(backend, create)


def start_trial(backend: RDBStorage, trial_id: int, system: Mapping[str, str], heartbeat: bool = False) -> bool:
    """Take the WAITING trial `trial_id` from the queue as Optuna's `set_trial_state_values(RUNNING)` does (True;
    False when another worker took it first; `UpdateFinishedTrialError` when it has finished), writing the
    `system` attrs (JSON texts: the worker record, which must name this process) and with `heartbeat` its
    first heartbeat in the same transaction."""
    s = _statements()
    attempts = [0]

    def start(session: Any, conn: Any) -> bool:
        retry = attempts[0] > 0
        attempts[0] += 1
        if conn.execute(s.start, {"b_trial": trial_id, "b_start": stored_now()}).rowcount == 1:
            if system:
                _upsert(backend, session, conn, "system", trial_id, system)
            if heartbeat:
                _upsert(backend, session, conn, "beats", trial_id, None)
            return True
        row = conn.execute(s.state, {"b_trial": trial_id}).one_or_none()
        if row is None:
            raise KeyError(s.models.NOT_FOUND_MSG)
        if row.state.is_finished():
            raise UpdateFinishedTrialError(f"Trial#{row.number} has already finished and can not be updated.")
        if retry and system:  # the attempt that lost its connection may have taken it: its record says so
            key, text = next(iter(system.items()))
            return conn.execute(s.system_value, {"b_trial": trial_id, "b_key": key}).scalar() == text
        return False

    return _run(backend, start)
