"""One transaction for a trial's held writes (`nasopt._buffer`): params, attributes, intermediate values
and, at the end, its values and final state, in a few Core statements instead of one ORM round trip each.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from typing import Any

from optuna import distributions
from optuna.storages import RDBStorage
from optuna.trial import TrialState

__all__ = ["write_batch"]


def write_batch(backend: RDBStorage, trial_id: int, params: Sequence[tuple[str, float, Any]],
                user: Mapping[str, str], system: Mapping[str, str], intermediate: Mapping[int, float],
                state: TrialState | None = None, values: Sequence[float] | None = None) -> datetime.datetime:
    """Write a trial's params, user/system attrs (JSON texts), intermediate values and, with `state`, its
    values and final state, in ONE transaction of a few statements (Core, not ORM objects: a short
    trial's CPU is mostly ORM bookkeeping), retried through an outage like every storage call.
    Raises `UpdateFinishedTrialError` when the trial has already finished (another worker failed it).
    Returns the completion time written with a final state."""
    import sqlalchemy as sa
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    trials = models.TrialModel.__table__
    when = datetime.datetime.now()
    attempts = [0]

    def write() -> datetime.datetime:
        retry = attempts[0] > 0
        attempts[0] += 1
        with _create_scoped_session(backend.scoped_session) as session:
            query = sa.select(trials.c.state, trials.c.datetime_complete).where(trials.c.trial_id == trial_id)
            row = session.execute(query.with_for_update() if state is not None else query).one_or_none()
            if row is None:
                raise KeyError(models.NOT_FOUND_MSG)
            if retry and state is not None and row.state == state:
                return row.datetime_complete or when  # the attempt that lost its connection had committed
            backend.check_trial_is_updatable(trial_id, row.state)
            todo = list(params)
            if retry and todo:  # an earlier attempt may have committed them before its connection dropped
                table = models.TrialParamModel.__table__
                stored = set(session.execute(sa.select(table.c.param_name).where(table.c.trial_id == trial_id))
                             .scalars())
                todo = [p for p in todo if p[0] not in stored]
            if todo:
                session.execute(sa.insert(models.TrialParamModel.__table__), [
                    {"trial_id": trial_id, "param_name": name, "param_value": value,
                     "distribution_json": distributions.distribution_to_json(dist)} for name, value, dist in todo])
            for model, attrs in ((models.TrialUserAttributeModel, user), (models.TrialSystemAttributeModel, system)):
                if attrs:
                    _upsert(backend, session, model, trial_id, attrs)
            for step, value in intermediate.items():
                backend._set_trial_intermediate_value_without_commit(session, trial_id, step, value)
            if state is not None:
                rows = []
                for objective, value in enumerate(values or ()):
                    stored_value, value_type = models.TrialValueModel.value_to_stored_repr(value)
                    rows.append({"trial_id": trial_id, "objective": objective, "value": stored_value,
                                 "value_type": value_type})
                if rows:
                    session.execute(sa.insert(models.TrialValueModel.__table__), rows)
                change: dict[str, Any] = {"state": state}
                if state.is_finished():
                    change["datetime_complete"] = when
                session.execute(sa.update(trials).where(trials.c.trial_id == trial_id).values(**change))
        return when

    outage = getattr(backend, "_outage", None)
    return outage.call(backend, write) if outage is not None else write()


_UPSERTS: dict[tuple[str, Any], Any] = {}  # one compiled-once statement per dialect and attribute table


def _upsert(backend: RDBStorage, session: Any, model: Any, trial_id: int, attrs: Mapping[str, str]) -> None:
    """Insert-or-update several attributes of one trial in one executemany, where the dialect has an upsert
    (the statement is built once: SQLAlchemy caches its compiled form; building it per call cost ~2 ms)."""
    rows = [{"trial_id": trial_id, "key": key, "value_json": text} for key, text in attrs.items()]
    name = backend.engine.name
    statement = _UPSERTS.get((name, model))
    if statement is None and name in ("postgresql", "sqlite"):
        from sqlalchemy.dialects import postgresql, sqlite

        insert: Any = (postgresql if name == "postgresql" else sqlite).insert(model)
        statement = insert.on_conflict_do_update(index_elements=[model.trial_id, model.key],
                                                 set_={"value_json": insert.excluded.value_json})
    elif statement is None and name == "mysql":
        from sqlalchemy.dialects import mysql

        insert = mysql.insert(model)
        statement = insert.on_duplicate_key_update(value_json=insert.inserted.value_json)
    if statement is None:
        for key, text in attrs.items():
            backend._set_trial_attr_without_commit(session, model, trial_id, key, json.loads(text))
        return
    _UPSERTS[name, model] = statement
    session.execute(statement, rows)
