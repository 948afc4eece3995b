"""Faults in the middle of a batch (issue 9).

A batch is several statements (one per chunk, one per nesting level, a
refresh after commit).  When one of them fails -- the connection drops, a
statement times out -- the error must reach the caller, no instance may be
left with a half-set or wrong value (what a failed batch did not load stays
unloaded and armed), and touching the attribute again must work: after
``session.rollback()`` when SQLAlchemy requires one (a dropped connection),
without when it does not.

Failures are injected on the Nth statement, counted by a
``before_cursor_execute`` hook: the driver's own ``OperationalError`` is
raised as the statement executes (a ``do_execute`` hook, so that SQLAlchemy
2.0 and 2.1 both handle it as a real one), flagged as a disconnect through
``handle_error`` for the dropped-connection case; and on PostgreSQL the
backend is also killed for real with ``pg_terminate_backend()`` from another
connection.  Expected values always come from stock SQLAlchemy in a
fresh session.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Engine, ForeignKey, String, event, insert, inspect, select, text
from sqlalchemy.exc import OperationalError, PendingRollbackError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    deferred,
    mapped_column,
    relationship,
    sessionmaker,
)

from nplus1loader import nplus1loader
from tests import _oracle as oracle
from tests._db import QueryCounter, setup_schema


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "flt_author"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(40))
    bio: Mapped[str] = deferred(mapped_column(String(80)), group="profile")
    motto: Mapped[str] = deferred(mapped_column(String(80)), group="profile")
    posts: Mapped[list[Post]] = relationship(back_populates="author", order_by="Post.id")


class Post(Base):
    __tablename__ = "flt_post"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    author_id: Mapped[int] = mapped_column(ForeignKey("flt_author.id"))
    title: Mapped[str] = mapped_column(String(40))
    author: Mapped[Author] = relationship(back_populates="posts")
    comments: Mapped[list[Comment]] = relationship(order_by="Comment.id")


class Comment(Base):
    __tablename__ = "flt_comment"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    post_id: Mapped[int] = mapped_column(ForeignKey("flt_post.id"))
    text: Mapped[str] = mapped_column(String(40))


AUTHORS = 12
CHUNK = 5
"""12 authors in chunks of 5: every batch over them is 3 statements."""


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[Session]:
    setup_schema(engine, Base.metadata)
    with engine.begin() as conn:
        conn.execute(
            insert(Author.__table__),
            [
                {"id": i, "name": f"author {i}", "bio": f"bio {i}", "motto": f"motto {i}"}
                for i in range(1, AUTHORS + 1)
            ],
        )
        # Two posts per author, one comment on every other post.
        posts = [(i * 10 + j, i) for i in range(1, AUTHORS + 1) for j in (1, 2)]
        conn.execute(
            insert(Post.__table__),
            [{"id": p, "author_id": a, "title": f"post {p}"} for p, a in posts],
        )
        conn.execute(
            insert(Comment.__table__),
            [{"id": p * 10, "post_id": p, "text": f"comment {p}"} for p, _ in posts if p % 2],
        )
    return sessionmaker(engine)


# ------------------------------------------------------------ scenarios
# Each scenario loads instances with nplus1loader (chunk_size=CHUNK), names
# the attribute whose touch batch-loads, and reads it as plain values.


def _authors(session: Session) -> list[Any]:
    stmt = select(Author).order_by(Author.id).options(nplus1loader(chunk_size=CHUNK))
    return list(session.scalars(stmt))


def _posts(session: Session) -> list[Any]:
    stmt = select(Post).order_by(Post.id).options(nplus1loader(chunk_size=CHUNK))
    return list(session.scalars(stmt))


def _posts_of_authors(session: Session) -> list[Any]:
    """The posts the authors' batch brought (nested: armed in turn)."""
    authors = _authors(session)
    authors[0].posts  # noqa: B018 -- the first level: 3 statements
    return [post for author in authors for post in author.posts]


def _authors_after_commit(session: Session) -> list[Any]:
    authors = _authors(session)
    session.commit()
    return authors


class Scenario:
    def __init__(
        self,
        load: Callable[[Session], list[Any]],
        key: str,
        read: Callable[[Any], Any],
        group: tuple[str, ...] = (),
        per_chunk: bool = True,
    ) -> None:
        self.load = load
        self.key = key
        self.read = read
        self.group = group or (key,)
        # Does the batch store each chunk as it arrives (columns, the join
        # path) or everything at the end (many-to-one by identity)?
        self.per_chunk = per_chunk


SCENARIOS = {
    "deferred-group": Scenario(_authors, "bio", lambda a: (a.bio, a.motto), ("bio", "motto")),
    "collection": Scenario(_authors, "posts", lambda a: [p.id for p in a.posts]),
    "many-to-one": Scenario(_posts, "author", lambda p: p.author.id, per_chunk=False),
    "nested-collection": Scenario(
        _posts_of_authors, "comments", lambda p: [c.text for c in p.comments]
    ),
    "refresh-after-commit": Scenario(_authors_after_commit, "name", lambda a: a.name),
}


def stock_values(factory: sessionmaker[Session], scenario: Scenario) -> dict[Any, Any]:
    """What stock lazy loading reads for every instance, in a fresh session."""
    loader = {_authors: select(Author), _authors_after_commit: select(Author)}.get(
        scenario.load, select(Post)
    )
    return oracle.stock(
        factory, loader, lambda objs: {obj.id: scenario.read(obj) for obj in objs}
    ).values


def batches(instances: int) -> int:
    return math.ceil(instances / CHUNK)


# ------------------------------------------------------------ fault injection


@contextmanager
def fail_statement(engine: Engine, nth: int, how: str) -> Iterator[list[str]]:
    """Make the ``nth`` statement from now fail.

    ``error``: the driver raises OperationalError (a statement timeout: the
    connection stays usable).  ``disconnect``: the same, reported as a lost
    connection, so SQLAlchemy invalidates it.  ``terminate`` (PostgreSQL):
    the backend of the connection is killed from another connection just
    before the statement runs.  Yields the statements seen."""
    seen: list[str] = []
    failing = False

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        nonlocal failing
        if conn.info.get("fault-killer"):
            return
        seen.append(statement)
        if len(seen) != nth:
            return
        if how != "terminate":
            failing = True
            return
        pid = conn.connection.dbapi_connection.get_backend_pid()
        with engine.connect() as killer:
            killer.info["fault-killer"] = True
            try:
                stmt = text("SELECT pg_terminate_backend(:pid, 5000)")
                assert killer.execute(stmt, {"pid": pid}).scalar() is True
                killer.commit()
            finally:
                del killer.info["fault-killer"]

    def do_execute(cursor: Any, statement: str, parameters: Any, context: Any) -> None:
        # Raised where the driver raises, so SQLAlchemy treats it as it
        # treats a real failure (wrapped, handle_error) on 2.0 and 2.1 alike.
        nonlocal failing
        if failing:
            failing = False
            raise engine.dialect.dbapi.OperationalError(f"simulated {how} on statement {nth}")

    def handle_error(context: Any) -> None:
        if how == "disconnect" and "simulated disconnect" in str(context.original_exception):
            context.is_disconnect = True

    listeners = [
        (engine, "before_cursor_execute", before),
        (engine, "do_execute", do_execute),
        (engine, "handle_error", handle_error),
    ]
    for target, name, fn in listeners:
        event.listen(target, name, fn)
    try:
        yield seen
    finally:
        for target, name, fn in listeners:
            event.remove(target, name, fn)


def key_of(obj: Any) -> Any:
    """The primary key from the identity, without loading anything."""
    return inspect(obj).identity[0]


def check_nothing_half_set(objs: list[Any], scenario: Scenario, expected: dict[Any, Any]) -> int:
    """Every instance holds either the right value for the attribute (its
    whole group) or nothing at all.  Returns how many hold nothing."""
    unloaded = 0
    for obj in objs:
        state = inspect(obj)
        present = [key in state.dict for key in scenario.group]
        assert all(present) or not any(present), f"{key_of(obj)}: half of {scenario.group} set"
        if present[0]:
            assert scenario.read(obj) == expected[key_of(obj)]
        else:
            unloaded += 1
    return unloaded


def retry_cost(
    session: Session, objs: list[Any], scenario: Scenario, expected: dict[Any, Any]
) -> int:
    """Statements one batch needs for the instances still lacking the
    attribute: one per chunk of them, or for a many-to-one whose foreign
    keys are loaded, one per chunk of the targets not in the session."""
    lacking = [obj for obj in objs if scenario.key not in inspect(obj).dict]
    # A relationship's load reads the parent's join column first, as stock
    # does: where a rollback expired it, that is one refresh per chunk of
    # the armed instances with the same attributes expired (all of them).
    join_key = JOIN_KEYS.get(scenario.key)
    refresh = 0
    if join_key is not None and any(join_key not in inspect(o).dict for o in lacking):
        refresh = batches(sum(1 for o in objs if join_key not in inspect(o).dict))
    if scenario.key == "author":
        present = {key_of(a) for a in session.identity_map.values() if isinstance(a, Author)}
        # The authors' ids from stock's values: reading p.author_id here
        # would refresh it.
        wanted = {(expected[key_of(p)],) for p in lacking}
        return refresh + batches(len(wanted - present))
    return refresh + batches(len(lacking))


#: The parent column each relationship scenario's lazy clause reads.
JOIN_KEYS = {"posts": "id", "author": "author_id", "comments": "id"}


# ------------------------------------------------------------ tests

FAULTS = [pytest.param("error", id="statement-error"), pytest.param("disconnect", id="disconnect")]
NTH = pytest.mark.parametrize("nth", [1, 2, 3], ids=["first-chunk", "second-chunk", "last-chunk"])


@pytest.mark.parametrize("how", FAULTS)
@NTH
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_fault_mid_batch(
    factory: sessionmaker[Session], engine: Engine, name: str, nth: int, how: str
) -> None:
    run_fault(factory, engine, name, nth, how)


@pytest.mark.postgresql
@NTH
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_backend_killed_mid_batch(
    factory: sessionmaker[Session], engine: Engine, name: str, nth: int
) -> None:
    """A real lost connection: pg_terminate_backend() from another session."""
    run_fault(factory, engine, name, nth, "terminate")


def run_fault(
    factory: sessionmaker[Session], engine: Engine, name: str, nth: int, how: str
) -> None:
    scenario = SCENARIOS[name]
    expected = stock_values(factory, scenario)
    with factory() as session:
        objs = scenario.load(session)
        first = objs[0]
        with fail_statement(engine, nth, how) as seen, pytest.raises(OperationalError) as excinfo:
            getattr(first, scenario.key)
        assert len(seen) == nth  # the batch stopped at the failure
        assert excinfo.value.connection_invalidated == (how != "error")
        del excinfo  # its traceback holds what the failed chunk had fetched

        # What the chunks before the failure stored is right; the others
        # hold nothing (no default, no empty collection, no None).
        unloaded = check_nothing_half_set(objs, scenario, expected)
        stored = (nth - 1) * CHUNK if scenario.per_chunk else 0
        assert unloaded == len(objs) - stored

        if how != "error":
            # A lost connection: SQLAlchemy wants the transaction rolled
            # back first, and says so.
            lacking = next(o for o in objs if scenario.key not in inspect(o).dict)
            with pytest.raises(PendingRollbackError):
                getattr(lacking, scenario.key)
            session.rollback()

        # Retry: what is missing loads in one batch (the instances are still
        # armed, also after the rollback expired them).
        gc.collect()
        cost = retry_cost(session, objs, scenario, expected)
        with QueryCounter(engine) as q:
            values = [scenario.read(obj) for obj in objs]
        assert values == [expected[key_of(obj)] for obj in objs]
        q.assert_count(cost)


@pytest.mark.parametrize(
    "how",
    [*FAULTS, pytest.param("terminate", id="pg-terminate-backend", marks=pytest.mark.postgresql)],
)
def test_session_usable_after_rollback_of_failed_batch(
    factory: sessionmaker[Session], engine: Engine, how: str
) -> None:
    """After a batch failed and the session rolled back: armed instances are
    still armed (one batch per attribute), the session writes and commits,
    and a new query works."""
    if how == "terminate" and engine.dialect.name != "postgresql":
        return  # pg_terminate_backend is PostgreSQL's; the other two faults run here
    scenario = SCENARIOS["collection"]
    expected = stock_values(factory, scenario)
    with factory() as session:
        authors = _authors(session)
        with fail_statement(engine, 2, how), pytest.raises(OperationalError):
            authors[0].posts  # noqa: B018
        session.rollback()

        with QueryCounter(engine) as q:
            bios = [a.bio for a in authors]
        q.assert_count(batches(AUTHORS))
        with QueryCounter(engine) as q:
            assert {key_of(a): [p.id for p in a.posts] for a in authors} == expected
        # The rollback expired the authors' primary key, which the lazy
        # clause reads first, as stock does: one refresh per chunk, then the
        # collection.
        q.assert_count(2 * batches(AUTHORS))

        authors[0].name = "renamed"
        session.commit()
        assert session.scalar(select(Author.name).where(Author.id == 1)) == "renamed"
        assert [a.id for a in _authors(session)] == list(range(1, AUTHORS + 1))
        assert bios == [f"bio {i}" for i in range(1, AUTHORS + 1)]
