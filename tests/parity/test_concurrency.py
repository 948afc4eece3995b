"""Many threads batch-loading at once on one engine (issue 9).

Each thread has its own session and its own rows; they all start each phase
together (a barrier) so that their batches overlap on the server.  Every
thread must see exactly its own values (compared with stock lazy loading in
a fresh session), emit exactly its own statements, and keep its own mode
and counters: half the threads batch, the other half run with
``raiseload_all`` and must raise every time, whatever the others do.
Nothing is shared between the threads but the engine (and nplus1loader's
module-level state, which must not leak from one session into another).

PostgreSQL and MySQL only: SQLite serialises writers and its pysqlite
driver holds one connection per thread, so it would test little here.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, ForeignKey, String, insert, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, deferred, mapped_column, relationship

import nplus1loader
from nplus1loader import LazyLoadingAttributeError, raiseload_all
from nplus1loader import nplus1loader as nplus1
from tests import _oracle as oracle
from tests._db import QueryCounter, setup_schema


class Base(DeclarativeBase):
    pass


class Owner(Base):
    __tablename__ = "cc_owner"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(40))
    bio: Mapped[str] = deferred(mapped_column(String(80)))
    items: Mapped[list[Item]] = relationship(back_populates="owner", order_by="Item.id")


class Item(Base):
    __tablename__ = "cc_item"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    owner_id: Mapped[int] = mapped_column(ForeignKey("cc_owner.id"), index=True)
    label: Mapped[str] = mapped_column(String(40))
    owner: Mapped[Owner] = relationship(back_populates="items")


THREADS = 8
OWNERS = 30
ITEMS = 3
CHUNK = 7
ROUNDS = 3
CHUNKS = math.ceil(OWNERS / CHUNK)


def owner_ids(thread: int) -> range:
    """Each thread's own owners (ids never shared between threads)."""
    return range(thread * 1000 + 1, thread * 1000 + OWNERS + 1)


@pytest.fixture
def loaded(engine: Engine) -> Engine:
    setup_schema(engine, Base.metadata)
    with engine.begin() as conn:
        conn.execute(
            insert(Owner.__table__),
            [
                {"id": i, "name": f"owner {i}", "bio": f"bio of {i} (thread {t})"}
                for t in range(THREADS)
                for i in owner_ids(t)
            ],
        )
        conn.execute(
            insert(Item.__table__),
            [
                {"id": i * 10 + j, "owner_id": i, "label": f"item {i}.{j}"}
                for t in range(THREADS)
                for i in owner_ids(t)
                for j in range(ITEMS)
            ],
        )
    return engine


Snapshot = dict[int, tuple[str, list[str], list[int]]]


def read_all(owners: list[Any]) -> Snapshot:
    """The N+1 loop: bio, items and each item's owner, for every owner."""
    return {
        o.id: (o.bio, [i.label for i in o.items], [i.owner.id for i in o.items]) for o in owners
    }


def stock_snapshot(engine: Engine, thread: int) -> Snapshot:
    """What stock lazy loading reads for the thread's owners, single-threaded."""
    ids = owner_ids(thread)
    stmt = select(Owner).where(Owner.id.between(ids[0], ids[-1])).order_by(Owner.id)
    return oracle.stock(engine, stmt, read_all).values


def run_threads(target: Callable[[int], None]) -> None:
    errors: list[BaseException] = []

    def guarded(thread: int) -> None:
        try:
            target(thread)
        except BaseException as error:  # re-raised in the main thread
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive(), "a thread hung"
    if errors:
        raise errors[0]


@pytest.mark.postgresql
@pytest.mark.mysql
def test_threads_batch_load_without_cross_talk(loaded: Engine) -> None:
    engine = loaded
    expected = {t: stock_snapshot(engine, t) for t in range(THREADS)}
    counter = QueryCounter(engine)  # attributes each statement to its thread

    barrier = threading.Barrier(THREADS, timeout=60)
    results: dict[int, list[Any]] = {}

    def work(thread: int) -> None:
        raising = thread % 2 == 1
        option = raiseload_all("*") if raising else nplus1(chunk_size=CHUNK)
        ids = owner_ids(thread)
        outcome: list[Any] = []
        for _ in range(ROUNDS):
            with Session(engine) as session:
                barrier.wait()
                stmt = select(Owner).where(Owner.id.between(ids[0], ids[-1])).order_by(Owner.id)
                owners = list(session.scalars(stmt.options(option)))
                barrier.wait()
                start = counter.count_for(threading.get_ident())
                if raising:
                    raised = 0
                    for owner in owners:
                        for attr in ("bio", "items"):
                            with pytest.raises(LazyLoadingAttributeError):
                                getattr(owner, attr)
                            raised += 1
                    outcome.append(raised)
                else:
                    outcome.append(read_all(owners))
                spent = counter.count_for(threading.get_ident()) - start
                outcome.append(spent)
                counters = nplus1loader.stats(session)
                outcome.append((counters.batches, counters.instances, counters.queries))
                outcome.append(
                    sorted({o.id for o in session.identity_map.values() if isinstance(o, Owner)})
                )
        results[thread] = outcome

    with counter:
        run_threads(work)

    for thread in range(THREADS):
        if thread % 2:
            # Raised for every instance, every time; no statement, no batch.
            one_round = [OWNERS * 2, 0, (0, 0, 0), list(owner_ids(thread))]
        else:
            # bio: one query per chunk; items: one per chunk; item.owner: a
            # third batch, over every item, all found in the identity map.
            one_round = [
                expected[thread],
                2 * CHUNKS,
                (3, 2 * OWNERS + OWNERS * ITEMS, 2 * CHUNKS),
                list(owner_ids(thread)),
            ]
        assert results[thread] == one_round * ROUNDS, f"thread {thread}"
