"""Memory: arming holds no instance alive, and big sessions do not leak
(issue 9).

nplus1loader keeps profiles (on the nplus1 option an instance's stamped
load options hold, or on the instance state), a few per-instance hooks
(``state.callables``), and finds peers in the session's identity map, which
holds instances weakly.  So an instance the user drops must be collected,
whatever was armed on it, and loading, batch-loading and expunging 100,000
instances again and again must not grow memory.
"""

from __future__ import annotations

import gc
import tracemalloc
import weakref
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, ForeignKey, String, insert, select
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    deferred,
    mapped_column,
    relationship,
    sessionmaker,
)

from nplus1loader import nplus1loader, raiseload_all
from tests._db import setup_schema


class Base(DeclarativeBase):
    pass


class Group(Base):
    __tablename__ = "mem_group"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(40))


class Row(Base):
    __tablename__ = "mem_row"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(40))
    bio: Mapped[str] = deferred(mapped_column(String(40)))
    group_id: Mapped[int] = mapped_column(ForeignKey("mem_group.id"))
    group: Mapped[Group] = relationship()


GROUPS = 10


def fill(engine: Engine, rows: int) -> None:
    """Core bulk insert: fast even for 100,000 rows."""
    setup_schema(engine, Base.metadata)
    with engine.begin() as conn:
        conn.execute(insert(Group.__table__), [{"id": i, "name": f"g{i}"} for i in range(GROUPS)])
        conn.execute(
            insert(Row.__table__),
            [
                {"id": i, "name": f"n{i}", "bio": f"b{i}", "group_id": i % GROUPS}
                for i in range(rows)
            ],
        )


# ------------------------------------------------------------ dropped instances


def _armed(session: Session) -> list[Any]:
    return list(session.scalars(select(Row).order_by(Row.id).options(nplus1loader())))


def _after_batches(session: Session) -> list[Any]:
    rows = _armed(session)
    rows[0].bio  # noqa: B018 -- a column batch
    rows[0].group  # noqa: B018 -- a relationship batch: the groups are armed in turn
    return [*rows, *(row.group for row in rows)]


def _after_commit(session: Session) -> list[Any]:
    rows = _armed(session)
    session.commit()  # expired: the profile re-arms them
    return rows


def _raise_armed(session: Session) -> list[Any]:
    return list(session.scalars(select(Row).order_by(Row.id).options(raiseload_all())))


LOADS: dict[str, Callable[[Session], list[Any]]] = {
    "armed": _armed,
    "after-batches": _after_batches,
    "after-commit": _after_commit,
    "raise-armed": _raise_armed,
}


@pytest.mark.parametrize("load", list(LOADS))
def test_dropped_armed_instances_are_collected(engine: Engine, load: str) -> None:
    """The session stays open: only the user's references go."""
    fill(engine, 50)
    with sessionmaker(engine)() as session:
        objs = LOADS[load](session)
        refs = [weakref.ref(obj) for obj in objs]
        assert len(session.identity_map) == len({id(o) for o in objs})
        del objs
        gc.collect()
        assert [ref for ref in refs if ref() is not None] == []
        assert len(session.identity_map) == 0
        # And the session goes on working: a new query arms afresh.
        rows = _armed(session)
        assert [row.bio for row in rows] == [f"b{i}" for i in range(50)]


# ------------------------------------------------------------ 100,000 instances

BIG = 100_000
TRACED_CYCLES = 3
RETAINED_TOLERANCE = 64 * 1024
"""Bytes the retained memory may grow over the traced cycles.  A leak of
even one small object (16 bytes and up) per instance and cycle would retain
1.6 MB per cycle, 25 times this; what does vary is a handful of bytes of
interpreter and SQLAlchemy bookkeeping (measured: well under 1 KB a cycle)."""

PEAK_TOLERANCE = 0.01
"""Relative growth the peak may show between traced cycles.  The peak is
about 170 MB (the 100,000 instances with their states); it varies by a few
KB between identical cycles.  Instances of a previous cycle still alive
would add at least their ~1.7 KB each, far more than 1 %."""


def _cycle(session: Session) -> None:
    """Load and arm 100,000 instances, batch-load a column for all of them
    (200 statements), check the values, expunge everything.  (Relationship
    batches and nested arming are left to the test above: tracing makes
    every allocation slow, and this one must stay affordable.)"""
    rows = session.scalars(select(Row).order_by(Row.id).options(nplus1loader())).all()
    assert rows[0].bio == "b0"
    assert rows[-1].bio == f"b{BIG - 1}"
    session.expunge_all()
    del rows
    gc.collect()


@pytest.mark.sqlite
@pytest.mark.slow
def test_big_session_does_not_grow_across_load_expunge_cycles(engine: Engine) -> None:
    fill(engine, BIG)
    with sessionmaker(engine)() as session:
        # Warm-up, not traced: compiled statements, mapper caches, pools.
        _cycle(session)
        assert len(session.identity_map) == 0
        retained: list[int] = []
        peaks: list[int] = []
        tracemalloc.start()
        try:
            for _ in range(TRACED_CYCLES):
                tracemalloc.reset_peak()
                _cycle(session)
                current, peak = tracemalloc.get_traced_memory()
                retained.append(current)
                peaks.append(peak)
        finally:
            tracemalloc.stop()
    assert retained[-1] - retained[0] <= RETAINED_TOLERANCE, retained
    assert max(peaks) <= peaks[0] * (1 + PEAK_TOLERANCE), peaks
    # The cycles did load 100,000 instances: the peak shows them.
    assert peaks[0] > BIG * 1000, peaks


# ------------------------------------------------------------ reference cycles


def _stock(session: Session) -> list[Any]:
    rows = list(session.scalars(select(Row).order_by(Row.id)))
    rows[0].bio  # noqa: B018 -- stock: one deferred load
    rows[0].group  # noqa: B018 -- stock: one lazy load
    session.commit()
    return rows


def _cyclic_garbage(load: Callable[[Session], list[Any]], engine: Engine) -> list[str]:
    """The type names of what one ``load`` in a session of its own leaves
    to the cycle collector, once its session and objects are dropped."""

    def once() -> None:
        with Session(engine) as session:
            load(session)

    once()  # warm-up: compiled statements, mapper caches, class-level hooks
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        once()
        gc.collect()
        return sorted(type(obj).__name__ for obj in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


@pytest.mark.parametrize("load", list(LOADS))
def test_armed_queries_leave_no_reference_cycles(engine: Engine, load: str) -> None:
    """Everything one query, its batches and a commit create is freed as
    soon as it goes, as stock's is: a reference cycle would keep the
    session's log of armed instances alive until the collector runs, and
    give it work on every query (a per-execution cycle through the row
    populator once doubled the fixed cost of a small armed query)."""
    fill(engine, 50)
    assert _cyclic_garbage(_stock, engine) == []
    assert _cyclic_garbage(LOADS[load], engine) == []
