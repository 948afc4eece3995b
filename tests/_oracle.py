"""The oracle: what stock SQLAlchemy returns, read in a fresh session.

Expected values are never written down in this suite.  A test runs its
reads twice: once through nplus1loader, once here, with SQLAlchemy's own
lazy loading in a session that has seen nothing else, and compares.  A
fresh session matters: the session under test already holds instances (and
whatever a batch put into them), so reading the "stock" values there would
compare nplus1loader with itself.  Stock options matter for the same reason:
the oracle's query carries exactly what the caller's ``load`` puts in it,
never an option of ours added here.

Every "what would stock give" in the suite goes through :func:`stock` (or
:func:`stock_async` for ``AsyncSession``), so there is one definition of
the oracle: open a fresh session, ``load`` (not counted), ``read`` (counted:
these statements are what stock lazy loading costs), close the session.
Helpers of the model modules (``core_models.stock``, ``ergo_models.stock``,
``_shapes.stock_values``) and of single test modules are thin wrappers that
say *what* is read; none opens its own oracle session.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import Select

from tests._db import QueryCounter

L = TypeVar("L")
V = TypeVar("V")


@dataclass(frozen=True)
class Reading(Generic[V]):
    """What the oracle read and what reading it cost."""

    values: V
    statements: list[str] = field(default_factory=list)
    """The statements ``read`` sent (the load's own query is not among them)."""

    @property
    def queries(self) -> int:
        return len(self.statements)


def _engine_of(bind: Engine | Connection | sessionmaker[Session]) -> Engine:
    if isinstance(bind, sessionmaker):
        bind = bind.kw["bind"]
    if isinstance(bind, Connection):
        return bind.engine
    assert isinstance(bind, Engine), f"no engine to count statements on: {bind!r}"
    return bind


def _open(bind: Engine | Connection | sessionmaker[Session]) -> Session:
    return bind() if isinstance(bind, sessionmaker) else Session(bind)


def stock(
    bind: Engine | Connection | sessionmaker[Session],
    load: Select[Any] | Callable[[Session], L],
    read: Callable[[L], V],
    *,
    counted: Engine | None = None,
) -> Reading[V]:
    """``read(load(session))`` with stock SQLAlchemy in a fresh session.

    ``bind`` is where the fresh session comes from: an Engine, a Connection
    (to see what another session flushed, uncommitted, on it) or a
    ``sessionmaker`` (the test's own session configuration).  ``load`` is a
    ``select()`` (its ``scalars()`` as a list) or a function of the session;
    its statements are not counted.  ``read`` gets what ``load`` returned;
    the statements it sends, counted on ``counted`` (default: ``bind``'s
    engine), are the cost of stock lazy loading.
    """
    with _open(bind) as session:
        loaded: Any = list(session.scalars(load)) if isinstance(load, Select) else load(session)
        with QueryCounter(counted if counted is not None else _engine_of(bind)) as q:
            values = read(loaded)
        return Reading(values, list(q.statements))


async def stock_async(
    bind: AsyncEngine | async_sessionmaker[AsyncSession],
    load: Callable[[AsyncSession], Awaitable[L]],
    read: Callable[[L], Awaitable[V]],
) -> Reading[V]:
    """:func:`stock` for ``AsyncSession``: ``await read(await load(session))``
    in a fresh ``AsyncSession`` on ``bind``, counting what ``read`` sends."""
    if isinstance(bind, async_sessionmaker):
        session = bind()
        engine = bind.kw["bind"]
    else:
        session, engine = AsyncSession(bind), bind
    async with session:
        loaded = await load(session)
        with QueryCounter(engine) as q:
            values = await read(loaded)
        return Reading(values, list(q.statements))
