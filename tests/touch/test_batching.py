"""Which instances a batch loads, and how many queries it takes.

A touch loads the attribute for every persistent instance in the session of
that mapper (subclasses included) that is armed for it and still lacks it:
one query per 500 instances, or per ``chunk_size``.  Instances loaded without
an nplus1 option, or under a raiseload option, are left alone.
"""

from __future__ import annotations

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, load_only, selectinload, undefer

from nplus1loader import (
    LazyLoadingAttributeError,
    nplus1loader,
    nplus1loader_cols,
    nplus1loader_rels,
    raiseload_all,
)
from tests._db import QueryCounter
from tests._shapes import zoo_sessions
from tests.core_models import (
    Group,
    User,
    load,
    loaded,
    seed,
    stock,
    touch_all,
)
from tests.zoo_models import ZooCar, ZooTruck, ZooVehicle


@pytest.mark.parametrize(
    ("key", "eager"),
    [("bio", lambda: undefer(User.bio)), ("articles", lambda: selectinload(User.articles))],
    ids=["bio", "articles"],
)
def test_one_query_per_500_instances(engine: Engine, key: str, eager) -> None:
    seed(engine, users=1204)
    with Session(engine) as session:
        users = load(session, "scalars", User, nplus1loader("*"))
        assert len(users) == 1204
        with QueryCounter(engine) as params:
            got = touch_all(engine, users, lambda u: getattr(u, key))
    # The oracle is stock eager loading here: 1204 stock lazy loads take
    # seconds on the servers, and the small tests compare with them already.
    want = stock(engine, User, lambda u: getattr(u, key), eager())
    assert want.queries == 0
    assert got.queries == 3, got.statements
    assert params.keys_per_statement() == [500, 500, 204]
    assert got.values == want.values


@pytest.mark.parametrize(
    ("chunk_size", "queries"), [(1, 6), (2, 3), (4, 2), (6, 1), (7, 1), (None, 1)]
)
@pytest.mark.parametrize(
    ("make", "key"),
    [
        pytest.param(lambda size: nplus1loader("*", chunk_size=size), "bio", id="nplus1loader"),
        pytest.param(lambda size: nplus1loader_cols("bio", chunk_size=size), "bio", id="cols"),
        pytest.param(lambda size: nplus1loader_rels("*", chunk_size=size), "articles", id="rels"),
    ],
)
def test_chunk_size_is_configurable(
    engine: Engine, session: Session, make, key: str, chunk_size: int | None, queries: int
) -> None:
    users = load(session, "scalars", User, make(chunk_size))
    got = touch_all(engine, users, lambda u: getattr(u, key))
    want = stock(engine, User, lambda u: getattr(u, key))
    assert got.queries == queries, got.statements
    assert got.values == want.values


def test_chained_chunk_size(engine: Engine, session: Session) -> None:
    users = load(session, "scalars", User, load_only(User.id).nplus1loader("*", chunk_size=4))
    got = touch_all(engine, users, lambda u: u.name)
    want = stock(engine, User, lambda u: u.name)
    assert got.queries == 2, got.statements
    assert got.values == want.values


def test_nested_batches_keep_the_chunk_size(engine: Engine, session: Session) -> None:
    users = load(session, "scalars", User, nplus1loader("*", chunk_size=4))
    got = touch_all(engine, users, lambda u: [a.comments for a in u.articles])
    want = stock(engine, User, lambda u: [a.comments for a in u.articles])
    articles = sum(len(v) for v in want.values.values())
    assert articles == 9
    assert got.queries == 2 + 3, got.statements  # 6 users by 4, 9 articles by 4
    assert got.values == want.values


@pytest.mark.parametrize("key", ["bio", "articles"])
def test_instances_loaded_without_the_option_are_left_alone(
    engine: Engine, session: Session, key: str
) -> None:
    armed = load(session, "scalars", User, nplus1loader("*"), where=User.id <= 3)
    plain = load(session, "scalars", User, where=User.id > 3)

    got = touch_all(engine, armed, lambda u: getattr(u, key))
    assert got.queries == 1
    assert not any(loaded(u, key) for u in plain)

    # They still lazy load the stock way: one query each.
    got_plain = touch_all(engine, plain, lambda u: getattr(u, key))
    assert got_plain.queries == len(plain) == 3
    want = stock(engine, User, lambda u: getattr(u, key))
    assert {**got.values, **got_plain.values} == want.values


@pytest.mark.parametrize("key", ["bio", "articles"])
def test_instances_under_raiseload_are_left_alone(
    engine: Engine, session: Session, key: str
) -> None:
    armed = load(session, "scalars", User, nplus1loader("*"), where=User.id <= 3)
    raising = load(session, "scalars", User, raiseload_all("*"), where=User.id > 3)

    got = touch_all(engine, armed, lambda u: getattr(u, key))
    want = stock(engine, User, lambda u: getattr(u, key), where=User.id <= 3)
    assert got.queries == 1
    assert got.values == want.values
    for user in raising:
        assert not loaded(user, key)
        with pytest.raises(LazyLoadingAttributeError):
            getattr(user, key)


@pytest.mark.parametrize("key", ["bio", "articles"])
def test_armed_instances_of_several_queries_load_together(
    engine: Engine, session: Session, key: str
) -> None:
    first = load(session, "scalars", User, nplus1loader("*"), where=User.id <= 3)
    second = load(session, "query", User, nplus1loader("*"), where=User.id > 3)
    got = touch_all(engine, first + second, lambda u: getattr(u, key))
    want = stock(engine, User, lambda u: getattr(u, key))
    assert got.queries == 1, got.statements
    assert got.values == want.values


def test_expunged_instance_is_not_loaded_by_a_peer(engine: Engine, session: Session) -> None:
    users = load(session, "scalars", User, nplus1loader("*"))
    gone = users.pop(2)
    session.expunge(gone)
    got = touch_all(engine, users, lambda u: u.bio)
    assert got.queries == 1
    assert not loaded(gone, "bio")


def test_only_instances_of_the_touched_mapper_are_loaded(engine: Engine, session: Session) -> None:
    # Same attribute name on two unrelated mappers, both armed.
    users = load(session, "scalars", User, load_only(User.id), nplus1loader("*"))
    groups = load(session, "scalars", Group, load_only(Group.id), nplus1loader("*"))

    got = touch_all(engine, users, lambda u: u.name)
    assert got.queries == 1
    assert not any(loaded(g, "name") for g in groups)

    got = touch_all(engine, groups, lambda g: g.name)
    want = stock(engine, Group, lambda g: g.name)
    assert got.queries == 1
    assert got.values == want.values


@pytest.mark.parametrize("key", ["notes", "owner"])
def test_subclass_instances_are_peers(engine: Engine, key: str) -> None:
    """Instances of two subclasses of one single-table base (the shape zoo's
    cars and trucks), loaded by two queries, batch together."""
    with zoo_sessions(engine)() as session:
        cars = load(session, "scalars", ZooCar, nplus1loader("*"))
        trucks = load(session, "query", ZooTruck, nplus1loader("*"))
        assert cars and trucks

        got = touch_all(engine, cars[:1], lambda v: getattr(v, key))
        assert got.queries == 1, got.statements
        assert all(loaded(v, key) for v in cars + trucks)

        got = touch_all(engine, cars + trucks, lambda v: getattr(v, key))
        want = stock(
            engine, ZooVehicle, lambda v: getattr(v, key), where=ZooVehicle.kind != "vehicle"
        )
        assert got.queries == 0
        assert got.values == want.values
