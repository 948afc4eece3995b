"""A batch looks at its candidates, not at the session (issue 16).

The peers of a batch are searched among the session's candidates for the
touched attribute: instances armed for it that may still lack it.  These
tests count what a search examines (every state handed to a scan, loaded
or not) and hold it to what could be in the batch, whatever else the
session holds, while the batches load exactly what stock lazy loading
loads, in the same number of queries as before.
"""

from __future__ import annotations

import gc
from typing import Any

import pytest
from sqlalchemy import Engine, inspect, select
from sqlalchemy.orm import Session

from nplus1loader import nplus1loader
from nplus1loader._registry import Candidates, Registry, registry_of
from tests import _oracle as oracle
from tests.core_models import Article, Comment, Group, User

USERS = 60


@pytest.fixture
def seed_users() -> int:
    """The conftest ``session`` seeds this many users here."""
    return USERS


@pytest.fixture
def examined(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many states each scan of a bucket examined."""
    sizes: list[int] = []
    live = Candidates.live

    def counting(self: Candidates) -> list[Any]:
        sizes.append(len(self))
        return live(self)

    monkeypatch.setattr(Candidates, "live", counting)
    return sizes


def stock_titles(engine: Engine, lo: int, hi: int) -> dict[int, list[str]]:
    """What stock lazy loading gives for users lo..hi, in a fresh session."""
    return oracle.stock(
        engine,
        select(User).where(User.id.between(lo, hi)),
        lambda users: {u.id: [a.title for a in u.articles] for u in users},
    ).values


def page(session: Session, lo: int, hi: int) -> list[User]:
    stmt = select(User).where(User.id.between(lo, hi)).order_by(User.id)
    return list(session.scalars(stmt.options(nplus1loader())).all())


def test_unrelated_armed_rows_are_not_examined(
    session: Session, engine: Engine, count_queries: Any, examined: list[int]
) -> None:
    # The session first takes in plenty of armed rows of other mappers...
    session.scalars(select(Article).options(nplus1loader())).all()
    session.scalars(select(Comment).options(nplus1loader())).all()
    session.scalars(select(Group).options(nplus1loader())).all()
    held = len(session.identity_map)
    users = page(session, 1, 10)
    assert len(session.identity_map) == held + 10
    with count_queries() as queries:
        titles = {u.id: [a.title for a in u.articles] for u in users}
    # ...but the batch of User.articles examines its 10 candidates only.
    assert examined == [10]
    assert queries.count == 1
    assert titles == stock_titles(engine, 1, 10)


def test_paging_in_one_session_examines_each_page_once(
    session: Session, engine: Engine, count_queries: Any, examined: list[int]
) -> None:
    seen: dict[int, list[str]] = {}
    kept: list[User] = []  # a worker that accumulates what it processed
    with count_queries() as queries:
        for lo in range(1, USERS + 1, 10):
            users = page(session, lo, lo + 9)
            seen.update({u.id: [a.title for a in u.articles] for u in users})
            kept.extend(users)
    # Six pages, each one query and one batch, each batch examining its own
    # page: the pages already processed, loaded now, are never looked at again.
    assert queries.count == 6 + 6
    assert examined == [10] * 6
    assert len(session.identity_map) >= USERS
    assert seen == stock_titles(engine, 1, USERS)


def test_a_commit_makes_every_armed_instance_a_candidate_again(
    session: Session, engine: Engine, count_queries: Any
) -> None:
    users = page(session, 1, 30)
    stock = stock_titles(engine, 1, 30)
    assert [len(u.articles) for u in users] == [len(stock[u.id]) for u in users]
    session.commit()
    with count_queries() as queries:
        titles = {u.id: [a.title for a in u.articles] for u in users}
    # One refresh of the expired users' columns, one batch of articles.
    assert queries.count == 2
    assert titles == stock_titles(engine, 1, 30)


def test_expiring_one_attribute_of_each_instance_still_batches(
    session: Session, engine: Engine, count_queries: Any
) -> None:
    users = page(session, 1, 30)
    for u in users:
        assert u.articles is not None
    for u in users:
        session.expire(u, ["articles"])
    with count_queries() as queries:
        titles = {u.id: [a.title for a in u.articles] for u in users}
    assert queries.count == 1
    assert titles == stock_titles(engine, 1, 30)


def test_expunge_all_empties_the_log(session: Session) -> None:
    kept = page(session, 1, 30)
    registry = registry_of(session)
    assert len(registry.entries()) == 30
    session.expunge_all()
    users = page(session, 31, 40)
    assert registry_of(session) is not registry
    states = [inspect(u) for u in users]
    assert registry_of(session).entries() == states
    assert registry_of(session).lacking_candidates(User.articles.property) == states
    assert len(kept) == 30


def test_the_log_holds_no_instance_the_user_dropped(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Instances never touched again go with the user's references: the
    log holds states (which refer to their objects weakly) and is compacted
    whenever it doubles, so it stays within twice what is alive."""
    monkeypatch.setattr("nplus1loader._registry._MIN_COMPACT", 8)
    kept = page(session, 1, 10)
    for lo in range(11, USERS + 1, 10):
        page(session, lo, lo + 9)  # dropped at once, never touched
        gc.collect()
        assert len(registry_of(session).entries()) <= 2 * 10 + 10  # twice the alive, one page
    assert len(session.identity_map) == 10
    registry = registry_of(session)
    assert [s.obj() for s in registry.entries() if s.obj() is not None] == kept
    # Touching one: the batch is the 10 alive, in one query.
    assert [len(u.articles) for u in kept] == [u.id % 4 for u in kept]
    assert registry.lacking_candidates(User.articles.property) == []


def test_a_session_that_only_grows_is_never_compacted(
    session: Session, engine: Engine, monkeypatch: pytest.MonkeyPatch, count_queries: Any
) -> None:
    """One big query, or pages that are all kept, leave nothing to drop:
    the log passes its limit without being walked (compaction is for
    instances gone and repeats), and stays within twice what is alive."""
    monkeypatch.setattr("nplus1loader._registry._MIN_COMPACT", 8)
    compactions: list[int] = []
    compact = Registry._compact

    def counting(self: Registry) -> None:
        compactions.append(len(self.log))
        compact(self)

    monkeypatch.setattr(Registry, "_compact", counting)
    kept = [user for lo in range(1, USERS + 1, 10) for user in page(session, lo, lo + 9)]
    registry = registry_of(session)
    assert compactions == []
    assert registry.entries() == [inspect(user) for user in kept]
    assert registry.limit <= 2 * len(kept)
    with count_queries() as queries:
        titles = {u.id: [a.title for a in u.articles] for u in kept}
    assert queries.count == 1
    assert titles == stock_titles(engine, 1, USERS)
    # The batch armed the articles it brought in: still only growth.
    assert compactions == []
    logged = len(registry.entries())
    assert logged > USERS
    # Once most of them are gone, the next growth compacts.
    del kept
    gc.collect()
    again = page(session, 1, 30)
    # Read, the log takes in what the query queued (see Registry.attach).
    assert registry.entries() == [inspect(user) for user in again]
    assert len(compactions) == 1
    assert compactions[0] > logged


def test_every_commit_logs_again_without_growing_for_ever(
    session: Session, monkeypatch: pytest.MonkeyPatch, count_queries: Any
) -> None:
    monkeypatch.setattr("nplus1loader._registry._MIN_COMPACT", 8)
    users = page(session, 1, 10)
    for commits in range(20):
        with count_queries() as queries:
            assert [len(u.articles) for u in users] == [u.id % 4 for u in users]
        # The batch; after a commit, the refresh of the users' columns first.
        assert queries.count == (2 if commits else 1)
        session.commit()
    # Each cycle logs the 10 users twice (the expire, the refresh) and the 15
    # articles of the batch: 700 entries in all, without compaction.  Repeats
    # of an instance armed alike, and instances gone, are compacted away.
    assert len(registry_of(session).entries()) <= 2 * 8 + 35


def test_an_armed_query_into_an_empty_session_queues_its_rows(
    session: Session, engine: Engine, count_queries: Any
) -> None:
    """Rows that need nothing but logging go to a queue whose put SQLAlchemy
    calls as their row populator (at C speed); the registry takes them in,
    in row order, when it is next read."""
    users = page(session, 1, 30)
    registry = registry_of(session)
    assert len(registry.pending) == 1
    assert registry.log == [inspect(users[0])]  # the first row decided, and was logged
    assert registry.entries() == [inspect(u) for u in users]
    with count_queries() as queries:
        titles = {u.id: [a.title for a in u.articles] for u in users}
    assert queries.count == 1
    assert titles == stock_titles(engine, 1, 30)


def test_two_results_set_up_in_an_empty_session_batch_every_armed_row(
    session: Session, engine: Engine, count_queries: Any
) -> None:
    """Two results executed before either is read: both were set up while
    the session was empty, so both queue their rows, and the registry logs
    each queue as a run of its own; every row of both is a candidate of
    the one batch."""

    def result(where: Any) -> Any:
        stmt = select(User).where(where).order_by(User.id).options(nplus1loader())
        return session.scalars(stmt).yield_per(5)

    first, second = result(User.id <= USERS // 2), result(User.id > USERS // 2)
    users = [user for pair in zip(first, second, strict=True) for user in pair]
    assert len(users) == USERS
    with count_queries() as queries:
        titles = {u.id: [a.title for a in u.articles] for u in users}
    assert queries.count == 1
    assert titles == stock_titles(engine, 1, USERS)
