"""Nothing is lost: a batch never autoflushes, never overwrites what the user
changed, stores what it loads as committed state, and honours SQLAlchemy's
passive flags (no SQL during backref handling, flush or history inspection
where stock lazy loading emits none).
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, inspect
from sqlalchemy.orm import Session

from nplus1loader import nplus1loader
from tests._db import QueryCounter
from tests.core_models import (
    APIS,
    Article,
    User,
    ident,
    load,
    loaded,
    stock,
    touch_all,
)

# ------------------------------------------------------------- autoflush


def _with_pending(session: Session, users: list[Any]) -> User:
    newcomer = User(id=1000, name="new", email="new@example.com")
    session.add(newcomer)
    session.add(Article(id=1000, author_id=users[1].id, title="pending", body="b", summary="s"))
    return newcomer


@pytest.mark.parametrize("key", ["bio", "articles"])
def test_batch_autoflushes_once_before_its_first_statement_as_stock_does(
    engine: Engine, session: Session, key: str
) -> None:
    """Stock's first lazy load flushes pending changes; so does the batch,
    once, and it then sees them exactly as stock does."""
    session.close()
    connection = engine.connect()
    outer = connection.begin()
    try:
        with Session(connection) as session:
            users = load(session, "scalars", User, nplus1loader("*"))
            newcomer = _with_pending(session, users)
            with QueryCounter(engine) as q:
                getattr(users[0], key)
            kinds = [s.lstrip().split()[0].upper() for s in q.statements]
            assert kinds == ["INSERT", "INSERT", "SELECT"], q.statements
            assert newcomer not in session.new
            got = touch_all(engine, users, lambda u: getattr(u, key))
            assert got.queries == 0
        outer.rollback()
        outer = connection.begin()
        with Session(connection) as session:
            users = load(session, "scalars", User)
            _with_pending(session, users)
            want = touch_all(engine, users, lambda u: getattr(u, key))
        assert got.values == want.values
        if key == "articles":
            assert (1000,) in got.values[ident(users[1])]
    finally:
        outer.rollback()
        connection.close()


@pytest.mark.parametrize("key", ["bio", "articles"])
def test_batch_under_no_autoflush_does_not_flush(
    engine: Engine, session: Session, key: str
) -> None:
    users = load(session, "scalars", User, nplus1loader("*"))
    newcomer = _with_pending(session, users)
    with session.no_autoflush, QueryCounter(engine) as q:
        getattr(users[0], key)
    assert q.count == 1, q.statements
    assert q.statements[0].lstrip().upper().startswith("SELECT")
    assert newcomer in session.new


# ------------------------------------------- changes are never overwritten


def test_changed_column_on_a_peer_is_kept_with_its_history(
    engine: Engine, session: Session
) -> None:
    # Without autoflush (which would write the change, as stock's would):
    # the change stays in memory, and the batch must not overwrite it.
    session.autoflush = False
    users = load(session, "scalars", User, nplus1loader("*"))
    users[1].bio = "changed in memory"

    got = touch_all(engine, users[:1], lambda u: u.bio)
    assert got.queries == 1

    assert users[1].bio == "changed in memory"
    history = inspect(users[1]).attrs.bio.history
    assert list(history.added) == ["changed in memory"]
    assert list(session.dirty) == [users[1]]
    got = touch_all(engine, users, lambda u: u.bio)
    want = stock(engine, User, lambda u: u.bio)
    assert got.queries == 0
    assert got.values == {**want.values, ident(users[1]): "changed in memory"}


def test_changed_many_to_one_on_a_peer_is_kept_with_its_history(
    engine: Engine, session: Session
) -> None:
    # Without autoflush (which would write the change, as stock's would):
    # the change stays in memory, and the batch must not overwrite it.
    session.autoflush = False
    articles = load(session, "scalars", Article, nplus1loader("*"))
    other = session.get(User, 6)
    assert other is not None
    with QueryCounter(engine) as q:
        articles[1].author = other
    assert q.count == 0

    got = touch_all(engine, articles, lambda a: a.author)
    want = stock(engine, Article, lambda a: a.author)
    assert got.queries == 1, got.statements
    assert articles[1].author is other
    assert list(inspect(articles[1]).attrs.author.history.added) == [other]
    assert articles[1] in session.dirty
    assert got.values == {**want.values, ident(articles[1]): ident(other)}


# ------------------------------------------------ loads are committed state


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("key", ["bio", "articles", "profile", "groups", "manager"])
def test_loaded_values_are_committed_state(
    engine: Engine, session: Session, api: str, key: str
) -> None:
    users = load(session, api, User, nplus1loader("*"))
    getattr(users[0], key)
    assert all(loaded(u, key) for u in users)
    assert not session.dirty
    for user in users:
        history = inspect(user).attrs[key].history
        assert not history.added and not history.deleted, (user, history)
        assert not session.is_modified(user)
    with QueryCounter(engine) as q:
        session.flush()
    assert q.count == 0


# ---------------------------------------------------------- passive flags


def test_backref_assignment_emits_no_sql(engine: Engine, session: Session) -> None:
    users = load(session, "scalars", User, nplus1loader("*"))
    articles = load(session, "scalars", Article, nplus1loader("*"))
    article, new_author = articles[0], users[5]
    assert article.author_id != new_author.id
    assert not loaded(article, "author") and not loaded(new_author, "articles")

    with QueryCounter(engine) as q:
        article.author = new_author
    assert q.count == 0, q.statements
    # The armed collections on the other side were not loaded by the backref.
    assert not any(loaded(u, "articles") for u in users)

    # Stock lazy loading emits nothing either.
    with Session(engine) as fresh:
        stock_article = fresh.get(Article, article.id)
        stock_user = fresh.get(User, new_author.id)
        with QueryCounter(engine) as stock_q:
            stock_article.author = stock_user
        assert stock_q.count == 0


def test_flush_after_reassigning_a_many_to_one_emits_only_the_update(
    engine: Engine, session: Session
) -> None:
    users = load(session, "scalars", User, nplus1loader("*"))
    articles = load(session, "scalars", Article, nplus1loader("*"))
    article, new_author = articles[0], users[5]
    article.author = new_author

    with QueryCounter(engine) as q:
        session.flush()
    assert q.count == 1, q.statements
    assert q.statements[0].lstrip().upper().startswith("UPDATE")
    assert not any(loaded(u, "articles") for u in users)

    # Afterwards the collection loads in one batch, with the moved article.
    got = touch_all(engine, users, lambda u: u.articles)
    assert got.queries == 1
    assert article in new_author.articles
    # Stock lazy loading in the same transaction sees the flushed UPDATE too.
    want = stock(engine, User, lambda u: u.articles, bind=session.connection())
    assert got.values == want.values


@pytest.mark.parametrize("key", ["bio", "articles", "manager"])
def test_history_of_an_unloaded_armed_attribute_does_not_load_it(
    engine: Engine, session: Session, key: str
) -> None:
    users = load(session, "scalars", User, nplus1loader("*"))
    user = users[3]
    with QueryCounter(engine) as q:
        history = inspect(user).attrs[key].history
    assert q.count == 0
    assert not loaded(user, key)
    assert not history.added and not history.deleted

    with Session(engine) as fresh:
        stock_user = fresh.get(User, user.id)
        with QueryCounter(engine) as stock_q:
            inspect(stock_user).attrs[key].history  # noqa: B018
        assert stock_q.count == 0


@pytest.mark.parametrize("key", ["bio", "articles"])
def test_load_history_loads_like_stock_does_but_for_all_peers(
    engine: Engine, session: Session, key: str
) -> None:
    users = load(session, "scalars", User, nplus1loader("*"))
    with QueryCounter(engine) as q:
        history = inspect(users[3]).attrs[key].load_history()
    assert q.count == 1
    assert all(loaded(u, key) for u in users)

    with Session(engine) as fresh:
        stock_user = fresh.get(User, users[3].id)
        with QueryCounter(engine) as stock_q:
            stock_history = inspect(stock_user).attrs[key].load_history()
        assert stock_q.count == 1
        assert [getattr(v, "id", v) for v in history.unchanged] == [
            getattr(v, "id", v) for v in stock_history.unchanged
        ]
