"""Errors match stock SQLAlchemy: a detached instance raises
``DetachedInstanceError``, a row deleted behind the session raises
``ObjectDeletedError`` for that instance only (never a ``RecursionError``),
and bad input in an option raises ``ArgumentError`` naming model and
attribute.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, inspect
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, joinedload
from sqlalchemy.orm.exc import DetachedInstanceError, ObjectDeletedError

from nplus1loader import (
    bulk_load_attribute_for_instance_states,
    default_columns,
    nplus1loader,
    nplus1loader_cols,
    nplus1loader_rels,
    raiseload_all,
    raiseload_col,
    raiseload_rel,
)
from tests import _oracle as oracle
from tests._db import QueryCounter
from tests.core_models import (
    APIS,
    User,
    delete_user_behind_session,
    ident,
    load,
    loaded,
    seed,
    stock,
    touch_all,
)


def without_addresses(message: str) -> str:
    return re.sub(r"0x[0-9a-fA-F]+", "0x?", message)


def stock_error(engine: Engine, user_id: int, key: str, detach: Callable[[Session, Any], None]):
    """The exception stock lazy loading raises in the same situation."""

    def detached(session: Session) -> Any:
        user = session.get(User, user_id)
        detach(session, user)
        return user

    def touch(user: Any) -> BaseException:
        with pytest.raises(Exception) as info:
            getattr(user, key)
        return info.value

    return oracle.stock(engine, detached, touch).values


# ------------------------------------------------------------- detached


@pytest.mark.parametrize("key", ["bio", "articles", "profile", "manager"])
@pytest.mark.parametrize(
    "detach",
    [
        pytest.param(lambda session, obj: session.expunge(obj), id="expunged"),
        pytest.param(lambda session, obj: session.close(), id="closed"),
    ],
)
def test_detached_armed_instance_raises_like_stock(
    engine: Engine, session: Session, key: str, detach
) -> None:
    users = load(session, "scalars", User, nplus1loader("*"))
    user = users[3]
    detach(session, user)

    with QueryCounter(engine) as q, pytest.raises(DetachedInstanceError) as info:
        getattr(user, key)
    assert q.count == 0
    want = stock_error(engine, user.id, key, detach)
    assert type(info.value) is type(want)
    assert without_addresses(str(info.value)) == without_addresses(str(want))


# ---------------------------------------------------- deleted behind us


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("first", ["deleted", "other"])
def test_row_deleted_behind_the_session_raises_for_that_instance_only(
    engine: Engine, api: str, first: str
) -> None:
    seed(engine)
    want = stock(engine, User, lambda u: u.bio)
    # expire_on_commit=False and a commit before the delete: the next read
    # runs in a new transaction, which sees the delete even under MySQL's
    # REPEATABLE READ.
    with Session(engine, expire_on_commit=False) as session:
        users = load(session, api, User, nplus1loader("*"))
        session.commit()
        victim = users[2]
        delete_user_behind_session(engine, victim.id)
        others = [u for u in users if u is not victim]

        if first == "other":
            got = touch_all(engine, others[:1], lambda u: u.bio)
            assert got.queries == 1
        for _ in range(2):  # and again: never a RecursionError, nor a stale value
            with pytest.raises(ObjectDeletedError):
                victim.bio  # noqa: B018
        assert not loaded(victim, "bio")

        got = touch_all(engine, others, lambda u: u.bio)
        assert got.queries == 0  # loaded by the one batch, whichever came first
        assert got.values == {k: v for k, v in want.values.items() if k != ident(victim)}

    with Session(engine) as stock_session:
        gone = stock_session.get(User, ident(victim))
        assert gone is None  # the oracle agrees: the row is gone


def test_stock_raises_object_deleted_error_in_the_same_situation(engine: Engine) -> None:
    seed(engine)
    with Session(engine, expire_on_commit=False) as session:
        users = load(session, "scalars", User)
        session.commit()
        delete_user_behind_session(engine, users[2].id)
        with pytest.raises(ObjectDeletedError):
            users[2].bio  # noqa: B018


def test_relationship_of_a_deleted_row_loads_like_stock(engine: Engine) -> None:
    seed(engine)
    with Session(engine, expire_on_commit=False) as session:
        users = load(session, "scalars", User, nplus1loader("*"))
        session.commit()
        victim = users[2]
        delete_user_behind_session(engine, victim.id)
        got = touch_all(engine, users, lambda u: u.articles)
        assert got.queries == 1
    with Session(engine, expire_on_commit=False) as session:
        # Stock lazy loading of a deleted row's collection finds no rows.
        users = load(session, "scalars", User, where=User.id != ident(victim)[0])
        want = touch_all(engine, users, lambda u: u.articles)
    assert got.values == {**want.values, ident(victim): []}


# ------------------------------------------------------------- bad input


BAD_OPTIONS = {
    "unknown-name": (lambda: nplus1loader("nope"), ("User", "'nope'")),
    "unknown-name-cols": (lambda: nplus1loader_cols("nope"), ("User", "'nope'")),
    "unknown-name-raiseload": (lambda: raiseload_all("nope"), ("User", "'nope'")),
    "column-to-rels": (lambda: nplus1loader_rels("name"), ("User.name",)),
    "column-to-raiseload_rel": (lambda: raiseload_rel("name"), ("User.name",)),
    "relationship-to-cols": (lambda: nplus1loader_cols("articles"), ("User.articles",)),
    "relationship-to-raiseload_col": (lambda: raiseload_col("articles"), ("User.articles",)),
    "bound-column-to-rels": (lambda: nplus1loader_rels(User.bio), ("User.bio",)),
    "bound-relationship-to-cols": (lambda: nplus1loader_cols(User.profile), ("User.profile",)),
    "chained-unknown-name": (
        lambda: joinedload(User.articles).nplus1loader("nope"),
        ("Article", "'nope'"),
    ),
    "chained-column-to-rels": (
        lambda: joinedload(User.articles).nplus1loader_rels("title"),
        ("Article.title",),
    ),
    "not-an-attribute": (lambda: nplus1loader(3), ("3",)),
    "default_columns-not-mapped": (lambda: default_columns(object), ("object", "not a mapped")),
    "default_columns-string": (lambda: default_columns("User"), ("'User'", "not a mapped")),
    "chunk_size-zero": (lambda: nplus1loader(chunk_size=0), ("chunk_size", "0")),
    "chunk_size-negative": (lambda: nplus1loader_rels(chunk_size=-5), ("chunk_size", "-5")),
    "chunk_size-float": (lambda: nplus1loader_cols(chunk_size=2.5), ("chunk_size", "2.5")),
    "chunk_size-string": (lambda: nplus1loader(chunk_size="100"), ("chunk_size", "'100'")),
    "chunk_size-bool": (lambda: nplus1loader(chunk_size=True), ("chunk_size", "True")),
    "chunk_size-chained": (
        lambda: joinedload(User.articles).nplus1loader(chunk_size=0),
        ("chunk_size", "0"),
    ),
    "mode": (lambda: nplus1loader(mode="bogus"), ("mode", "'bogus'")),
    "mode-chained": (
        lambda: joinedload(User.articles).nplus1loader_rels(mode="LOAD"),
        ("mode", "'LOAD'"),
    ),
}


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_option_input_raises_argument_error_naming_it(
    engine: Engine, session: Session, case: str, api: str
) -> None:
    make, fragments = BAD_OPTIONS[case]
    with QueryCounter(engine) as q, pytest.raises(ArgumentError) as info:
        # Raised when the option is built, or at the latest when the query
        # that carries it is compiled: before any SQL.
        load(session, api, User, make())
    assert q.count == 0
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


BAD_BULK = {
    "unknown-attribute": ({"attr_name": "nope"}, ("User", "'nope'")),
    "chunk_size-zero": ({"chunk_size": 0}, ("chunk_size", "0")),
    "chunk_size-negative": ({"chunk_size": -1}, ("chunk_size", "-1")),
    "chunk_size-string": ({"chunk_size": "5"}, ("chunk_size", "'5'")),
}


@pytest.mark.parametrize("case", list(BAD_BULK))
def test_bulk_load_bad_input_raises_argument_error(
    engine: Engine, session: Session, case: str
) -> None:
    users = load(session, "scalars", User)
    kwargs: dict[str, Any] = {"attr_name": "bio", **BAD_BULK[case][0]}
    with QueryCounter(engine) as q, pytest.raises(ArgumentError) as info:
        bulk_load_attribute_for_instance_states(
            session, inspect(User), [inspect(u) for u in users], **kwargs
        )
    assert q.count == 0
    for fragment in BAD_BULK[case][1]:
        assert fragment in str(info.value), (fragment, str(info.value))
