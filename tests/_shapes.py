"""Shared machinery of the ``test_shapes_*`` modules.

Every shape is checked the same way (:func:`check_shape`): load instances
with ``nplus1loader('*')``, touch the attribute on one of them and count the
statements of that touch; then read the attribute on every instance (no
more SQL allowed) and compare with what stock SQLAlchemy lazy loading
returns for the same query in a fresh session.  Values are compared through
:func:`snapshot`, which turns ORM instances into ``(class, primary key)`` so
that two sessions can be compared.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, inspect
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import Select

from nplus1loader import nplus1loader
from tests import _oracle as oracle
from tests._db import QueryCounter, setup_schema
from tests.zoo_models import ZooBase, populate

CHUNK = 5
"""The chunk size the shape tests use: the zoo's 12 instances make 3 chunks."""

_ready: set[str] = set()


def zoo_sessions(engine: Engine) -> sessionmaker[Session]:
    """A session factory on the zoo, built once per backend per test run.

    The shape tests never commit, so the data stays as :func:`populate` made it.
    """
    url = engine.url.render_as_string(hide_password=False)
    if url not in _ready:
        setup_schema(engine, ZooBase.metadata)
        with Session(engine) as session, session.begin():
            populate(session)
        _ready.add(url)
    return sessionmaker(engine, autoflush=True)


def chunks(instances: int, size: int = CHUNK) -> int:
    """Statements a batch of ``instances`` costs: one per chunk."""
    return math.ceil(instances / size)


def targets(run: BatchRun) -> int:
    """Distinct instances a many-to-one batch pointed at (None excluded)."""
    return len({value for value in run.values.values() if value is not None})


def identity(obj: Any) -> tuple[str, tuple[Any, ...]]:
    """An ORM instance as something two sessions can compare."""
    state = inspect(obj)
    return (type(obj).__name__, tuple(state.mapper.primary_key_from_instance(obj)))


def snapshot(value: Any, ordered: bool = True) -> Any:
    """``value`` with every ORM instance replaced by :func:`identity`.

    Lists keep their order when ``ordered`` (a relationship with
    ``order_by``), else they are sorted: without ``order_by`` the database
    returns rows in any order, to stock lazy loading as well.
    """
    if value is None or isinstance(value, str | int | float | bytes | bool):
        return value
    if isinstance(value, dict):
        return {key: snapshot(item) for key, item in value.items()}
    if isinstance(value, set | frozenset):
        return frozenset(snapshot(item) for item in value)
    if isinstance(value, list | tuple):
        items = [snapshot(item) for item in value]
        return items if ordered else sorted(items, key=repr)
    try:
        return identity(value)
    except Exception:
        return value


@dataclass
class BatchRun:
    """What touching an armed attribute once did."""

    instances: int
    """Instances of the result that have the attribute."""
    statements: list[str] = field(default_factory=list)
    values: dict[Any, Any] = field(default_factory=dict)

    @property
    def queries(self) -> int:
        return len(self.statements)


def _has(obj: Any, attr: str) -> bool:
    return attr in inspect(obj).mapper.attrs


def _results(session: Session, stmt: Select[Any]) -> list[Any]:
    return list(session.scalars(stmt).unique().all())


def batch_run(
    engine: Engine,
    stmt: Select[Any],
    attr: str,
    *,
    options: Iterable[Any] | None = None,
    ordered: bool = True,
    prepare: Callable[[Session, list[Any]], None] | None = None,
) -> BatchRun:
    """Load ``stmt`` with nplus1loader (``options``, default
    ``nplus1loader('*', chunk_size=CHUNK)``), touch ``attr`` on the first
    instance that has it and record the statements; then read it everywhere.

    ``prepare(session, instances)`` runs between the query and the touch.
    """
    if options is None:
        options = [nplus1loader("*", chunk_size=CHUNK)]
    with zoo_sessions(engine)() as session:
        instances = [o for o in _results(session, stmt.options(*options)) if _has(o, attr)]
        if prepare is not None:
            prepare(session, instances)
        run = BatchRun(len(instances))
        with QueryCounter(engine) as q:
            getattr(instances[0], attr)
        run.statements = list(q.statements)
        with QueryCounter(engine) as after:
            run.values = {identity(o): snapshot(getattr(o, attr), ordered) for o in instances}
        assert after.count == 0, (
            f"reading {attr} after the batch ran SQL:\n{after.format_statements()}"
        )
    return run


def stock_values(
    engine: Engine, stmt: Select[Any], attr: str, *, ordered: bool = True
) -> dict[Any, Any]:
    """What stock lazy loading gives for ``attr``, in a fresh session: one
    lazy load per instance (:func:`tests._oracle.stock`)."""
    return oracle.stock(
        zoo_sessions(engine),
        lambda session: [o for o in _results(session, stmt) if _has(o, attr)],
        lambda instances: {identity(o): snapshot(getattr(o, attr), ordered) for o in instances},
    ).values


def check_shape(
    engine: Engine,
    stmt: Select[Any],
    attr: str,
    *,
    queries: int | Callable[[BatchRun], int] | None = None,
    ordered: bool = True,
    options: Iterable[Any] | None = None,
    stock_stmt: Select[Any] | None = None,
    prepare: Callable[[Session, list[Any]], None] | None = None,
) -> BatchRun:
    """Batch-load ``attr`` over ``stmt``'s result and check it against stock.

    ``queries`` is the statement count the touch must cost (default: one per
    chunk of the instances).  The values must differ between instances, so a
    check cannot pass by returning one constant.  ``prepare`` runs between
    the query and the touch (see :func:`batch_run`).
    """
    run = batch_run(engine, stmt, attr, options=options, ordered=ordered, prepare=prepare)
    expected = stock_values(engine, stock_stmt if stock_stmt is not None else stmt, attr,
                            ordered=ordered)
    assert run.values == expected
    assert len({repr(v) for v in expected.values()}) > 1, f"{attr}: the data cannot tell"
    if queries is None:
        want = chunks(run.instances)
    elif callable(queries):
        want = queries(run)
    else:
        want = queries
    assert run.queries == want, (
        f"expected {want} statements for {run.instances} instances, got {run.queries}:\n"
        + "\n".join(run.statements)
    )
    return run


def check_fallback(
    engine: Engine, stmt: Select[Any], attr: str, *, ordered: bool = True
) -> dict[Any, Any]:
    """A shape nplus1loader leaves to SQLAlchemy: under
    ``nplus1loader('*')`` reading ``attr`` on every instance costs one query
    per instance, as stock, and gives the stock values."""
    with zoo_sessions(engine)() as session:
        options = [nplus1loader("*", chunk_size=CHUNK)]
        instances = [o for o in _results(session, stmt.options(*options)) if _has(o, attr)]
        with QueryCounter(engine) as q:
            values = {identity(o): snapshot(getattr(o, attr), ordered) for o in instances}
        q.assert_count(len(instances))
    assert values == stock_values(engine, stmt, attr, ordered=ordered)
    assert len({repr(v) for v in values.values()}) > 1, f"{attr}: the data cannot tell"
    return values
