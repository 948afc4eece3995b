"""``bulk_load_attribute_for_instance_states`` called directly: one query per
chunk for a column or a relationship of any shape, the number of statements
returned, and instances that already hold a value (or are not persistent in
this session) skipped.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, inspect
from sqlalchemy.orm import Session

from nplus1loader import bulk_load_attribute_for_instance_states
from tests._db import QueryCounter
from tests._shapes import zoo_sessions
from tests.core_models import (
    Article,
    User,
    load,
    loaded,
    stock,
    touch_all,
)
from tests.zoo_models import ZooBase, ZooRegion, ZooStore


def bulk(session: Session, objs: list[Any], key: str, **kw: Any) -> int:
    mapper = inspect(type(objs[0])).base_mapper
    return bulk_load_attribute_for_instance_states(
        session, mapper, [inspect(o) for o in objs], key, **kw
    )


CASES = [
    (User, "bio"),
    (User, "articles"),
    (User, "profile"),
    (User, "groups"),
    (User, "reports"),
    (Article, "author"),
    (Article, "summary"),
    # Composite keys, on the shape zoo: a collection and a deferred column of
    # a composite primary key, a many-to-one through a composite foreign key.
    (ZooRegion, "stores"),
    (ZooRegion, "description"),
    (ZooStore, "region"),
]


@pytest.mark.parametrize(("entity", "key"), CASES, ids=[f"{e.__name__}.{k}" for e, k in CASES])
def test_loads_every_given_instance_in_one_statement(
    engine: Engine, session: Session, entity: Any, key: str
) -> None:
    if issubclass(entity, ZooBase):
        with zoo_sessions(engine)() as zoo_session:
            check_bulk_load(engine, zoo_session, entity, key)
    else:
        check_bulk_load(engine, session, entity, key)


def check_bulk_load(engine: Engine, session: Session, entity: Any, key: str) -> None:
    # Loaded without any nplus1 option: the function does not need one.
    objs = load(session, "scalars", entity)
    assert not any(loaded(o, key) for o in objs)
    with QueryCounter(engine) as q:
        assert bulk(session, objs, key) == 1
    assert q.count == 1
    assert all(loaded(o, key) for o in objs)

    got = touch_all(engine, objs, lambda o: getattr(o, key))
    want = stock(engine, entity, lambda o: getattr(o, key))
    assert got.queries == 0
    assert got.values == want.values
    assert not session.dirty


@pytest.mark.parametrize(("chunk_size", "statements"), [(1, 6), (4, 2), (5, 2), (6, 1), (500, 1)])
def test_returns_one_statement_per_chunk(
    engine: Engine, session: Session, chunk_size: int, statements: int
) -> None:
    users = load(session, "scalars", User)
    with QueryCounter(engine) as q:
        assert bulk(session, users, "articles", chunk_size=chunk_size) == statements
    assert q.count == statements
    got = touch_all(engine, users, lambda u: u.articles)
    assert got.queries == 0
    assert got.values == stock(engine, User, lambda u: u.articles).values


@pytest.mark.parametrize("key", ["bio", "articles"])
def test_skips_instances_that_already_have_the_value(
    engine: Engine, session: Session, key: str
) -> None:
    users = load(session, "scalars", User)
    getattr(users[0], key)  # loaded the stock way
    if key == "bio":
        users[1].bio = "changed in memory"
    else:
        users[1].articles = []

    with QueryCounter(engine) as q:
        assert bulk(session, users, key, chunk_size=4) == 1  # 4 instances left: one chunk
    assert q.count == 1, q.statements

    with QueryCounter(engine) as q:
        assert bulk(session, users, key) == 0  # nothing left to load
    assert q.count == 0

    assert getattr(users[1], key) == ("changed in memory" if key == "bio" else [])
    got = touch_all(engine, users, lambda u: getattr(u, key))
    want = stock(engine, User, lambda u: getattr(u, key))
    assert got.queries == 0
    changed = inspect(users[1]).identity
    assert got.values == {**want.values, changed: got.values[changed]}
    assert got.values[changed] != want.values[changed]


def test_many_to_one_resolved_from_the_identity_map_costs_nothing(
    engine: Engine, session: Session
) -> None:
    users = load(session, "scalars", User)  # kept: the identity map holds weakly
    articles = load(session, "scalars", Article)
    with QueryCounter(engine) as q:
        assert bulk(session, articles, "author") == 0
    assert q.count == 0
    got = touch_all(engine, articles, lambda a: a.author)
    assert got.queries == 0
    assert got.values == stock(engine, Article, lambda a: a.author).values
    assert {a.author for a in articles} <= set(users)


def test_skips_instances_that_are_not_persistent_in_this_session(
    engine: Engine, session: Session
) -> None:
    users = load(session, "scalars", User)
    pending = User(id=1000, name="new", email="new@example.com")
    session.add(pending)
    detached = users.pop()
    session.expunge(detached)
    with Session(engine) as other_session:
        foreign = other_session.get(User, 1)
        with QueryCounter(engine) as q:
            assert bulk(session, [*users, pending, detached, foreign], "bio") == 1
        assert q.count == 1
        assert not loaded(foreign, "bio")
    assert not loaded(detached, "bio")
    assert not loaded(pending, "bio")
    assert pending in session.new  # and no autoflush
    assert all(loaded(u, "bio") for u in users)


def test_empty_input_emits_nothing(engine: Engine, session: Session) -> None:
    with QueryCounter(engine) as q:
        assert bulk_load_attribute_for_instance_states(session, inspect(User), [], "bio") == 0
    assert q.count == 0
