"""Reading a study's trials for `nasopt.storage._fast._cache`: a narrow state query, then the changed trials in full,
in two Core statements whatever their number (Optuna's ORM read is six queries and their objects), on a
connection in autocommit mode. A worker reads every trial of the others, so with W workers this runs
W-1 times per trial.

This module is also where the fast path's knowledge of Optuna's internals is said once: which Optuna
releases it was verified on (`fast_path_verified`; on any other, nasopt uses Optuna's own storage
classes), and how those releases store a trial's times (`stored_now`, `from_stored`, `seconds_since`).
"""

from __future__ import annotations

import datetime
import json
import re
import weakref
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any, overload

from optuna import distributions
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

__all__ = ["read_study", "autocommit", "VERIFIED_OPTUNA", "fast_path_verified", "unverified_notice", "stored_now", "from_stored",
           "seconds_since"]

# Optuna releases (major, minor) the fast path (`nasopt.storage._fast._buffer`, `_cache`, `_batch`, this module) was verified on:
# the suite ran against them. On any other the runner uses Optuna's own storage classes (plain
# RDBStorage behind Optuna's cache) and says so once. pyproject's `optuna` bound matches this set.
VERIFIED_OPTUNA: frozenset[tuple[int, int]] = frozenset({(5, 0), (5, 1)})


def fast_path_verified(version: str | None = None) -> bool:
    """Whether `version` (default: the installed Optuna) is a final release of a verified (major, minor)."""
    import optuna

    found = re.fullmatch(r"(\d+)\.(\d+)\.\d+(\.post\d+)?", optuna.__version__ if version is None else version)
    return found is not None and (int(found[1]), int(found[2])) in VERIFIED_OPTUNA


def unverified_notice() -> str:
    """The one line that says the installed Optuna is not one the fast path was verified on."""
    import optuna

    verified = ", ".join(f"{major}.{minor}" for major, minor in sorted(VERIFIED_OPTUNA))
    return (f"nasopt: optuna {optuna.__version__} is not one nasopt's fast storage path was verified on "
            f"({verified}); using Optuna's own RDBStorage (correct, more transactions per trial)")


# A trial's times in the verified releases (Optuna's `TrialModel`, `RDBStorage`, `JournalStorage`): the
# `datetime_start`/`datetime_complete` columns hold naive UTC; a FrozenTrial (from every storage) holds
# naive local time. The heartbeat column holds the database server's clock (`now()`) on both sides.

def stored_now() -> datetime.datetime:
    """What Optuna's RDBStorage writes into a trial's time column for "now": naive UTC."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


@overload
def from_stored(value: datetime.datetime) -> datetime.datetime: ...
@overload
def from_stored(value: datetime.datetime | None) -> datetime.datetime | None: ...
def from_stored(value: datetime.datetime | None) -> datetime.datetime | None:
    """What Optuna's RDBStorage gives a FrozenTrial for a time column's `value`: naive local time."""
    if value is None:
        return None
    return value.replace(tzinfo=datetime.timezone.utc).astimezone().replace(tzinfo=None)


def seconds_since(when: datetime.datetime) -> float:
    """Seconds from a FrozenTrial's `when` (naive: local time, as Optuna gives it; aware: as it says) to now,
    in real time (a daylight-saving change in between does not count)."""
    return (datetime.datetime.now(datetime.timezone.utc) - when.astimezone(datetime.timezone.utc)).total_seconds()

_IN_LIMIT = 500  # ids per IN (...) list; longer lists are read in chunks
_DISTRIBUTIONS: dict[str, distributions.BaseDistribution] = {}  # JSON text -> distribution (immutable, shared)
_AUTOCOMMIT: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()  # engine -> its autocommit twin


def autocommit(backend: RDBStorage, fn: Callable[[Any], Any]) -> Any:
    """`fn(connection)` on a pooled connection in autocommit mode, retried through an outage: a read needs
    no transaction (under READ COMMITTED each statement has its own snapshot anyway), nor does a single
    statement, and BEGIN and COMMIT are two round trips of their own."""
    engine = _AUTOCOMMIT.get(backend.engine)
    if engine is None:  # the same pool, with autocommit set on each checkout (and reset on return)
        engine = _AUTOCOMMIT[backend.engine] = backend.engine.execution_options(isolation_level="AUTOCOMMIT")

    def attempt() -> Any:
        with engine.connect() as conn:
            return fn(conn)

    outage = getattr(backend, "_outage", None)
    return outage.call(backend, attempt) if outage is not None else attempt()


class _Statements:
    """The two reads, built once (SQLAlchemy then reuses their compiled form per dialect)."""

    def __init__(self) -> None:
        import sqlalchemy as sa
        from optuna.storages._rdb import models

        bp = sa.bindparam
        self.models = models
        t = models.TrialModel.__table__
        params, values = models.TrialParamModel.__table__, models.TrialValueModel.__table__
        user, system = models.TrialUserAttributeModel.__table__, models.TrialSystemAttributeModel.__table__
        steps = models.TrialIntermediateValueModel.__table__

        def count(table: Any) -> Any:
            return sa.select(sa.func.count()).select_from(table).where(table.c.trial_id == t.c.trial_id) \
                .scalar_subquery()

        # marks: a running trial's params + system attrs, counted (what a reader must see at once)
        marks = sa.case((t.c.state == TrialState.RUNNING, count(params) + count(system)), else_=0)
        self.states = sa.select(t.c.trial_id, t.c.number, t.c.state, t.c.datetime_start, t.c.datetime_complete,
                                marks.label("marks")).where(
            t.c.study_id == bp("b_study"), sa.or_(t.c.trial_id > bp("after"), t.c.trial_id.in_(bp("ids", expanding=True))))
        ids: Any = bp("ids", expanding=True)

        def part(kind: int, table: Any, key: Any, number: Any, index: Any, text: Any, order: Any) -> Any:
            def typed(column: Any, type_: Any) -> Any:
                return sa.cast(sa.null(), type_) if column is None else sa.cast(column, type_)

            return sa.select(sa.literal(kind, sa.Integer).label("kind"), table.c.trial_id,
                             typed(key, sa.String).label("key"), typed(number, sa.Float).label("number"),
                             typed(index, sa.Integer).label("idx"), typed(text, sa.Text).label("text"),
                             typed(order, sa.Integer).label("ord")).where(table.c.trial_id.in_(ids))

        # a trial's params, values, attributes and intermediate values: one statement, one row shape
        self.details = sa.union_all(
            part(0, params, params.c.param_name, params.c.param_value, None, params.c.distribution_json,
                 params.c.param_id),
            part(1, values, None, values.c.value, values.c.objective, values.c.value_type, None),
            part(2, user, user.c.key, None, None, user.c.value_json, None),
            part(3, system, system.c.key, None, None, system.c.value_json, None),
            part(4, steps, None, steps.c.intermediate_value, steps.c.step, steps.c.intermediate_value_type, None),
        ).order_by(sa.text("kind"), sa.text("ord"))


@cache
def _statements() -> _Statements:
    return _Statements()


def read_study(backend: RDBStorage, study_id: int, after: int, ids: Iterable[int],
               choose: Callable[[list[Any]], set[int]]) -> tuple[list[Any], list[FrozenTrial]]:
    """One read of a study: the states of its trials newer than `after` or listed in `ids` (rows of
    trial_id, number, state, datetime_start, datetime_complete as stored (`from_stored` turns them into a
    FrozenTrial's) and, for a running trial, its `marks`: params plus system attrs, counted), then, in one more statement, the details of the trials that
    `choose(rows)` names: those come back in full."""
    s = _statements()

    def read(conn: Any) -> tuple[list[Any], list[FrozenTrial]]:
        rows = conn.execute(s.states, {"b_study": study_id, "after": after, "ids": list(ids)}).all()
        load = choose(rows)
        return rows, _load(conn, [row for row in rows if row.trial_id in load]) if load else []

    return autocommit(backend, read)


def _load(conn: Any, heads: list[Any]) -> list[FrozenTrial]:
    """FrozenTrials of `heads` (rows of trial_id, number, state, datetime_start, datetime_complete), with
    their params, values, attributes and intermediate values read in one statement (per 500 trials)."""
    models = _statements().models
    built = {r.trial_id: FrozenTrial(
        number=r.number, state=r.state, value=None, values=None, datetime_start=from_stored(r.datetime_start),
        datetime_complete=from_stored(r.datetime_complete), params={}, distributions={}, user_attrs={},
        system_attrs={}, intermediate_values={}, trial_id=r.trial_id) for r in heads}
    found = list(built)
    values: dict[int, dict[int, float]] = {}
    value_type = models.TrialValueModel.TrialValueType
    step_type = models.TrialIntermediateValueModel.TrialIntermediateValueType
    for i in range(0, len(found), _IN_LIMIT):
        for kind, trial_id, key, number, index, text, _ in conn.execute(_statements().details,
                                                                        {"ids": found[i:i + _IN_LIMIT]}):
            trial = built[trial_id]
            if kind == 0:
                dist = _DISTRIBUTIONS.get(text)
                if dist is None:
                    dist = _DISTRIBUTIONS.setdefault(text, distributions.json_to_distribution(text))
                trial._params[key] = dist.to_external_repr(number)
                trial._distributions[key] = dist
            elif kind == 1:
                values.setdefault(trial_id, {})[index] = models.TrialValueModel.stored_repr_to_value(
                    number, value_type[text])
            elif kind == 4:
                trial.intermediate_values[index] = \
                    models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(number, step_type[text])
            else:
                (trial._user_attrs if kind == 2 else trial._system_attrs)[key] = json.loads(text)
    for trial_id, by_objective in values.items():
        built[trial_id]._values = [by_objective[i] for i in range(len(by_objective))]
    return list(built.values())
