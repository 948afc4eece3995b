"""``nplus1loader.enable()`` / ``disable()`` / ``disabled()``: the session-wide
switch that makes every ORM SELECT behave as if it carried
``nplus1loader('*')``.

Every test compares values with stock lazy loading in a fresh session
(:func:`tests.ergo_models.stock`) and asserts the exact statement count.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from typing import Any

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.exc import ArgumentError, InvalidRequestError
from sqlalchemy.ext.asyncio import (
    AsyncSession,
    async_scoped_session,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import (
    Session,
    defer,
    joinedload,
    raiseload,
    scoped_session,
    selectinload,
    sessionmaker,
)

import nplus1loader
from nplus1loader import LazyLoadingAttributeError, disable, disabled, enable, stats
from nplus1loader._session import _on_do_orm_execute
from tests._db import QueryCounter
from tests.ergo_models import (
    AUTHORS,
    READERS,
    Author,
    async_url,
    read_bio,
    read_books,
    stock,
)

#: Statements the enabled session needs for each reader, after the first
#: query: one batch per level of the object graph.
BATCHES = {"books": 1, "bio": 1, "reviews": 2, "book_authors": 1}


# ------------------------------------------------------------------ targets

Opener = Callable[[], AbstractContextManager[Session]]


def _session_target(engine: Engine) -> tuple[Any, Opener]:
    session = Session(engine)
    return session, lambda: session


def _sessionmaker_target(engine: Engine) -> tuple[Any, Opener]:
    factory = sessionmaker(engine)
    return factory, factory


def _subclass_target(engine: Engine) -> tuple[Any, Opener]:
    cls = type("ErgoSession", (Session,), {})
    return cls, lambda: cls(engine)


def _scoped_target(engine: Engine) -> tuple[Any, Opener]:
    registry = scoped_session(sessionmaker(engine))

    class Scope:
        def __enter__(self) -> Session:
            return registry()

        def __exit__(self, *exc: object) -> None:
            registry.remove()

    return registry, Scope


SYNC_TARGETS = {
    "session": _session_target,
    "sessionmaker": _sessionmaker_target,
    "session_subclass": _subclass_target,
    "scoped_session": _scoped_target,
}


def holder_of(target: Any) -> Any:
    """Where the listener sits, to check it is registered exactly once."""
    if isinstance(target, scoped_session):
        target = target.session_factory
    return target.class_ if isinstance(target, sessionmaker) else target


def run(engine: Engine, open_session: Opener, reader: str, *options: Any) -> tuple[Any, int]:
    query, read = READERS[reader]
    with open_session() as session:
        loaded = session.scalars(query.options(*options)).all()
        with QueryCounter(engine) as q:
            values = read(loaded)
    return values, q.count


# -------------------------------------------------------------- enable


@pytest.mark.parametrize("reader", list(BATCHES))
@pytest.mark.parametrize("kind", list(SYNC_TARGETS))
def test_enable_batches_every_query(ergo_engine: Engine, kind: str, reader: str) -> None:
    """Each target kind arms its queries, nested levels included."""
    expected, stock_count = stock(ergo_engine, reader)
    target, open_session = SYNC_TARGETS[kind](ergo_engine)
    assert enable(target) is target
    assert run(ergo_engine, open_session, reader) == (expected, BATCHES[reader])
    assert stock_count > BATCHES[reader]


@pytest.mark.parametrize("kind", list(SYNC_TARGETS))
def test_disable_restores_stock_loading(ergo_engine: Engine, kind: str) -> None:
    expected, stock_count = stock(ergo_engine, "books")
    target, open_session = SYNC_TARGETS[kind](ergo_engine)
    enable(target)
    disable(target)
    assert not event.contains(holder_of(target), "do_orm_execute", _on_do_orm_execute)
    assert run(ergo_engine, open_session, "books") == (expected, stock_count)


def test_only_the_enabled_factory_is_affected(ergo_engine: Engine) -> None:
    expected, stock_count = stock(ergo_engine, "books")
    enabled_factory = enable(sessionmaker(ergo_engine))
    other_factory = sessionmaker(ergo_engine)
    assert run(ergo_engine, enabled_factory, "books") == (expected, 1)
    assert run(ergo_engine, other_factory, "books") == (expected, stock_count)
    assert run(ergo_engine, lambda: Session(ergo_engine), "books") == (expected, stock_count)


def test_enabling_again_changes_the_mode_without_a_second_listener(ergo_engine: Engine) -> None:
    expected, _ = stock(ergo_engine, "books")
    factory = enable(enable(sessionmaker(ergo_engine)), mode="raise")
    with factory() as session:
        authors = session.scalars(AUTHORS).all()
        with pytest.raises(
            LazyLoadingAttributeError, match=r"^Author\.books: N\+1 pattern: touched on 1 of "
        ):
            read_books(authors)
    enable(factory)
    with factory() as session:
        authors = session.scalars(AUTHORS).all()
        with QueryCounter(ergo_engine) as q:
            assert read_books(authors) == expected
        assert q.count == 1
        assert stats(session).batches == 1
    disable(factory)
    assert not event.contains(factory.class_, "do_orm_execute", _on_do_orm_execute)


def test_disabling_one_session_of_an_enabled_factory(ergo_engine: Engine) -> None:
    expected, stock_count = stock(ergo_engine, "books")
    factory = enable(sessionmaker(ergo_engine))
    opted_out = factory()
    disable(opted_out)
    assert run(ergo_engine, lambda: opted_out, "books") == (expected, stock_count)
    assert run(ergo_engine, factory, "books") == (expected, 1)
    enable(opted_out)
    assert run(ergo_engine, lambda: opted_out, "books") == (expected, 1)


def test_disabling_a_subclass_of_an_enabled_class(ergo_engine: Engine) -> None:
    expected, stock_count = stock(ergo_engine, "books")
    base = enable(type("ErgoBase", (Session,), {}))
    child = type("ErgoChild", (base,), {})
    grandchild = type("ErgoGrandchild", (child,), {})
    disable(child)
    assert run(ergo_engine, lambda: base(ergo_engine), "books") == (expected, 1)
    assert run(ergo_engine, lambda: child(ergo_engine), "books") == (expected, stock_count)
    assert run(ergo_engine, lambda: grandchild(ergo_engine), "books") == (expected, stock_count)
    enable(grandchild, mode="raise")
    with grandchild(ergo_engine) as session:
        authors = session.scalars(AUTHORS).all()
        with pytest.raises(LazyLoadingAttributeError):
            read_books(authors)


def test_a_session_and_its_factory_both_enabled_add_one_option(ergo_engine: Engine) -> None:
    """The most specific setting wins, and the statement is armed once."""
    factory = enable(sessionmaker(ergo_engine))
    statements: list[Any] = []

    @event.listens_for(factory.class_, "do_orm_execute")
    def spy(orm_execute_state: Any) -> None:  # registered after ours: sees the result
        statements.append(orm_execute_state.statement)

    with factory() as session:
        enable(session, mode="raise")
        authors = session.scalars(AUTHORS).all()
        with pytest.raises(LazyLoadingAttributeError):
            read_books(authors)
    assert len(statements) == 1
    added = [o for o in statements[0]._with_options if type(o).__name__ == "SessionWideOption"]
    assert [o.mode for o in added] == ["raise"]


def test_session_get_and_legacy_query_are_armed(ergo_engine: Engine) -> None:
    expected, _ = stock(ergo_engine, "books")
    with enable(Session(ergo_engine)) as session:
        first, second = session.get(Author, 1), session.get(Author, 2)
        legacy = session.query(Author).filter(Author.id > 2).order_by(Author.id).all()
        with QueryCounter(ergo_engine) as q:
            values = read_books([first, second, *legacy])
        assert (values, q.count) == (expected, 1)


def test_instances_loaded_before_enable_are_not_armed(ergo_engine: Engine) -> None:
    expected, stock_count = stock(ergo_engine, "books")
    with Session(ergo_engine) as session:
        authors = session.scalars(AUTHORS).all()
        enable(session)
        with QueryCounter(ergo_engine) as q:
            assert read_books(authors) == expected
        assert q.count == stock_count


# ------------------------------------------------- explicit options win


@pytest.mark.parametrize(
    ("options", "reader", "outcome"),
    [
        pytest.param((nplus1loader.raiseload_all("*"),), "books", "raise", id="raiseload_all-rel"),
        pytest.param((nplus1loader.raiseload_all("*"),), "bio", "raise", id="raiseload_all-col"),
        pytest.param(
            (nplus1loader.nplus1loader("books", mode="raise"),), "books", "raise", id="named-raise"
        ),
        pytest.param(
            (nplus1loader.nplus1loader("books", mode="raise"),), "bio", 1, id="named-raise-other"
        ),
        pytest.param((nplus1loader.raiseload_col("bio"),), "books", 1, id="raiseload_col-other"),
        pytest.param((joinedload(Author.books),), "books", 0, id="joinedload"),
        pytest.param((selectinload(Author.books),), "books", 0, id="selectinload"),
        pytest.param((raiseload(Author.books),), "books", "sqlalchemy-raise", id="sa-raiseload"),
        pytest.param((defer(Author.name),), "name", 1, id="defer-is-armed"),
        pytest.param(
            (defer(Author.bio, raiseload=True),), "bio", "sqlalchemy-raise", id="defer-raiseload"
        ),
    ],
)
def test_options_written_in_the_query_win(
    ergo_engine: Engine, options: tuple[Any, ...], reader: str, outcome: Any
) -> None:
    factory = enable(sessionmaker(ergo_engine))
    if reader == "name":
        with Session(ergo_engine) as session:
            expected = [a.name for a in session.scalars(AUTHORS)]
        read: Callable[[Any], Any] = lambda authors: [a.name for a in authors]  # noqa: E731
    else:
        expected, _ = stock(ergo_engine, reader)
        read = READERS[reader][1]
    with factory() as session:
        authors = session.scalars(AUTHORS.options(*options)).unique().all()
        if outcome == "raise":
            with pytest.raises(LazyLoadingAttributeError):
                read(authors)
        elif outcome == "sqlalchemy-raise":
            with pytest.raises(InvalidRequestError) as info:
                read(authors)
            assert not isinstance(info.value, LazyLoadingAttributeError)
        else:
            with QueryCounter(ergo_engine) as q:
                assert read(authors) == expected
            assert q.count == outcome


def test_a_written_load_option_wins_over_a_raising_session(ergo_engine: Engine) -> None:
    expected, _ = stock(ergo_engine, "books")
    factory = enable(sessionmaker(ergo_engine), mode="raise")
    assert run(ergo_engine, factory, "books", nplus1loader.nplus1loader("*")) == (expected, 1)
    with factory() as session:
        authors = session.scalars(AUTHORS.options(nplus1loader.nplus1loader("books"))).all()
        with pytest.raises(LazyLoadingAttributeError, match=r"^Author\.bio: N\+1 pattern: "):
            read_bio(authors)


# ------------------------------------------------------------ disabled()


def test_disabled_block(ergo_engine: Engine) -> None:
    expected, stock_count = stock(ergo_engine, "books")
    factory = enable(sessionmaker(ergo_engine))
    with disabled():
        assert run(ergo_engine, factory, "books") == (expected, stock_count)
        with disabled():
            assert run(ergo_engine, factory, "books") == (expected, stock_count)
        assert run(ergo_engine, factory, "books") == (expected, stock_count)
    assert run(ergo_engine, factory, "books") == (expected, 1)


def test_disabled_block_is_restored_after_an_exception(ergo_engine: Engine) -> None:
    expected, _ = stock(ergo_engine, "books")
    factory = enable(sessionmaker(ergo_engine))
    with pytest.raises(RuntimeError), disabled():
        raise RuntimeError
    assert run(ergo_engine, factory, "books") == (expected, 1)


def test_instances_armed_before_the_block_stay_armed(ergo_engine: Engine) -> None:
    expected, _ = stock(ergo_engine, "books")
    with enable(Session(ergo_engine)) as session:
        authors = session.scalars(AUTHORS).all()
        with disabled(), QueryCounter(ergo_engine) as q:
            assert read_books(authors) == expected
        assert q.count == 1


def test_written_options_work_inside_the_block(ergo_engine: Engine) -> None:
    expected, _ = stock(ergo_engine, "books")
    factory = enable(sessionmaker(ergo_engine))
    with disabled():
        assert run(ergo_engine, factory, "books", nplus1loader.nplus1loader("*")) == (expected, 1)


# ---------------------------------------------------------- bad targets


@pytest.mark.parametrize(
    "target",
    [
        pytest.param(object(), id="object"),
        pytest.param(Author, id="mapped-class"),
        pytest.param(AsyncSession, id="async-session-class-sharing-Session"),
    ],
)
def test_enable_rejects_what_it_cannot_switch(target: Any) -> None:
    with pytest.raises(ArgumentError):
        enable(target)


def test_enable_rejects_an_unknown_mode(ergo_engine: Engine) -> None:
    with pytest.raises(ArgumentError, match="mode must be one of load, warn, raise"):
        enable(sessionmaker(ergo_engine), mode="batch")


# ---------------------------------------------------------------- asyncio


def _async_session_target(url: Any) -> tuple[Any, Any, Any]:
    engine = create_async_engine(url)
    session = AsyncSession(engine)
    return engine, session, lambda: session


def _async_sessionmaker_target(url: Any) -> tuple[Any, Any, Any]:
    engine = create_async_engine(url)
    factory = async_sessionmaker(engine)
    return engine, factory, factory


def _async_scoped_target(url: Any) -> tuple[Any, Any, Any]:
    engine = create_async_engine(url)
    registry = async_scoped_session(async_sessionmaker(engine), scopefunc=asyncio.current_task)

    class Scope:
        async def __aenter__(self) -> AsyncSession:
            return registry()

        async def __aexit__(self, *exc: object) -> None:
            await registry.remove()

    return engine, registry, Scope


def _async_subclass_target(url: Any) -> tuple[Any, Any, Any]:
    engine = create_async_engine(url)
    sync_class = type("ErgoSyncSession", (Session,), {})
    cls = type("ErgoAsyncSession", (AsyncSession,), {"sync_session_class": sync_class})
    return engine, cls, lambda: cls(engine)


ASYNC_TARGETS = {
    "async_session": _async_session_target,
    "async_sessionmaker": _async_sessionmaker_target,
    "async_scoped_session": _async_scoped_target,
    "async_session_subclass": _async_subclass_target,
}


@pytest.mark.parametrize("reader", list(BATCHES))
@pytest.mark.parametrize("kind", list(ASYNC_TARGETS))
def test_enable_async_targets(ergo_engine: Engine, db_name: str, kind: str, reader: str) -> None:
    expected, stock_count = stock(ergo_engine, reader)
    url = async_url(db_name, ergo_engine)
    query, read = READERS[reader]

    async def main() -> tuple[Any, int, Any, int]:
        async_engine, target, open_session = ASYNC_TARGETS[kind](url)
        try:
            enable(target)
            async with open_session() as session:
                loaded = (await session.scalars(query)).all()
                with QueryCounter(async_engine) as q:
                    values = await session.run_sync(lambda _: read(loaded))
            disable(target)
            async with open_session() as session:
                loaded = (await session.scalars(query)).all()
                with QueryCounter(async_engine) as stock_q:
                    stock_values = await session.run_sync(lambda _: read(loaded))
            return values, q.count, stock_values, stock_q.count
        finally:
            await async_engine.dispose()

    assert asyncio.run(main()) == (expected, BATCHES[reader], expected, stock_count)


def test_enabling_an_async_sessionmaker_enables_nothing_else(
    ergo_engine: Engine, db_name: str
) -> None:
    """An async_sessionmaker shares ``Session`` as its sync class; enable()
    gives it one of its own instead of switching every Session."""
    expected, stock_count = stock(ergo_engine, "books")
    url = async_url(db_name, ergo_engine)

    async def main() -> list[tuple[Any, int]]:
        async_engine = create_async_engine(url)
        try:
            enabled_factory = enable(async_sessionmaker(async_engine))
            counts = []
            for factory in (enabled_factory, async_sessionmaker(async_engine)):
                async with factory() as session:
                    authors = (await session.scalars(AUTHORS)).all()
                    with QueryCounter(async_engine) as q:
                        values = await session.run_sync(lambda _, a=authors: read_books(a))
                counts.append((values, q.count))
            return counts
        finally:
            await async_engine.dispose()

    assert asyncio.run(main()) == [(expected, 1), (expected, stock_count)]
    assert run(ergo_engine, lambda: Session(ergo_engine), "books") == (expected, stock_count)


# ------------------------------------------------- threads and tasks

WORKERS = 8


@pytest.fixture
def per_thread_counts(ergo_engine: Engine) -> Iterator[QueryCounter]:
    """The statements of ``ergo_engine``, attributed to the thread that sent them."""
    with QueryCounter(ergo_engine) as counter:
        yield counter


def test_threads_keep_their_own_switch(
    ergo_engine: Engine, per_thread_counts: QueryCounter
) -> None:
    """Half the threads run inside disabled() while the others query and
    touch at the same moments: each sees only its own setting."""
    expected, stock_count = stock(ergo_engine, "books")
    factory = enable(sessionmaker(ergo_engine))
    barrier = threading.Barrier(WORKERS, timeout=60)

    def work(index: int) -> tuple[Any, int, int]:
        block = disabled() if index % 2 else nullcontext()
        with block, factory() as session:
            barrier.wait()  # every thread is inside its block
            authors = session.scalars(AUTHORS).all()
            barrier.wait()  # every thread has loaded, none has touched
            before = per_thread_counts.count_for(threading.get_ident())
            values = read_books(authors)
            touched = per_thread_counts.count_for(threading.get_ident()) - before
            return values, touched, stats(session).batches

    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(work, range(WORKERS)))
    assert results == [
        (expected, stock_count, 0) if index % 2 else (expected, 1, 1) for index in range(WORKERS)
    ]


_task_label: ContextVar[int] = ContextVar("ergo_task_label", default=-1)


def test_asyncio_tasks_keep_their_own_switch(ergo_engine: Engine, db_name: str) -> None:
    """Concurrent tasks, half inside disabled(); statements are attributed to
    tasks through a context variable, which also proves SQLAlchemy's greenlet
    runs the batch in the task's context."""
    expected, stock_count = stock(ergo_engine, "books")
    url = async_url(db_name, ergo_engine)

    async def main() -> list[tuple[Any, int, int]]:
        async_engine = create_async_engine(url, pool_size=WORKERS)
        counts = QueryCounter(async_engine, label=_task_label.get).start()
        factory = enable(async_sessionmaker(async_engine))
        arrived = [0, 0]
        gates = [asyncio.Event(), asyncio.Event()]

        async def rendezvous(step: int) -> None:
            arrived[step] += 1
            if arrived[step] == WORKERS:
                gates[step].set()
            await asyncio.wait_for(gates[step].wait(), 60)

        async def work(index: int) -> tuple[Any, int, int]:
            _task_label.set(index)
            block = disabled() if index % 2 else nullcontext()
            with block:
                async with factory() as session:
                    await rendezvous(0)
                    authors = (await session.scalars(AUTHORS)).all()
                    await rendezvous(1)
                    before = counts.count_for(index)
                    values = await session.run_sync(lambda _: read_books(authors))
                    return values, counts.count_for(index) - before, stats(session).batches

        try:
            return list(await asyncio.gather(*(work(i) for i in range(WORKERS))))
        finally:
            counts.stop()
            await async_engine.dispose()

    assert asyncio.run(main()) == [
        (expected, stock_count, 0) if index % 2 else (expected, 1, 1) for index in range(WORKERS)
    ]


def test_the_switch_never_touches_a_plain_select(ergo_engine: Engine) -> None:
    """Column and Core SELECTs through an enabled session run unchanged."""
    with enable(Session(ergo_engine)) as session, QueryCounter(ergo_engine) as q:
        names = session.scalars(select(Author.name).order_by(Author.id)).all()
        rows = session.execute(select(Author.__table__.c.id).order_by(Author.id)).all()
    with Session(ergo_engine) as session:
        assert names == session.scalars(select(Author.name).order_by(Author.id)).all()
        assert [r.id for r in rows] == session.scalars(select(Author.id).order_by(Author.id)).all()
    assert q.count == 2
