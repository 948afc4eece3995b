"""Raiseload options: touching an unloaded attribute they cover raises
:class:`LazyLoadingAttributeError` every time, emits no SQL, and leaves what
the query loaded (or what they do not cover) working as usual.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import Session, defaultload, joinedload

from nplus1loader import LazyLoadingAttributeError, raiseload_all, raiseload_col, raiseload_rel
from tests._db import QueryCounter
from tests.core_models import (
    APIS,
    Article,
    User,
    load,
    loaded,
    stock,
    touch_all,
)

#: How an option for the articles loaded at User.articles is spelled.
UNDER = "selectinload(User.articles)"


def assert_raises_every_time(engine: Engine, objs: list[Any], key: str, fix: str) -> None:
    """Every instance raises on ``key``, twice, with the exact message (the
    touch's line and ``fix``, the option that loads it), and no SQL is
    emitted."""
    model = type(objs[0]).__name__
    with QueryCounter(engine) as q:
        for obj in objs:
            for _ in range(2):
                touch_line = inspect.currentframe().f_lineno + 2  # type: ignore[union-attr]
                with pytest.raises(LazyLoadingAttributeError) as info:
                    getattr(obj, key)
                assert str(info.value) == (
                    f"{model}.{key} is not available due to raiseload; touched at "
                    f"{__file__}:{touch_line} in assert_raises_every_time(). "
                    f"Load it in the query: {fix}"
                )
                assert isinstance(info.value, InvalidRequestError)
            assert not loaded(obj, key)
    assert q.count == 0, q.statements


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("key", ["articles", "profile", "groups", "manager", "reports", "bio"])
def test_raiseload_all_raises_for_every_unloaded_attribute(
    engine: Engine, session: Session, api: str, key: str
) -> None:
    users = load(session, api, User, raiseload_all("*"))
    fix = f"undefer(User.{key})" if key == "bio" else f"selectinload(User.{key})"
    assert_raises_every_time(engine, users, key, fix)


@pytest.mark.parametrize("api", APIS)
def test_raiseload_all_leaves_loaded_columns_alone(
    engine: Engine, session: Session, api: str
) -> None:
    users = load(session, api, User, raiseload_all("*"))

    def touch(u: User) -> tuple[Any, ...]:
        return (u.id, u.name, u.email, u.manager_id)

    got = touch_all(engine, users, touch)
    want = stock(engine, User, touch)
    assert got.queries == want.queries == 0
    assert got.values == want.values


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(
    "option",
    [
        pytest.param(lambda: raiseload_col("name", "bio"), id="names"),
        pytest.param(lambda: raiseload_col(User.name, User.bio), id="class-bound"),
    ],
)
def test_raiseload_col_makes_named_columns_unloaded_and_raising(
    engine: Engine, session: Session, api: str, option
) -> None:
    users = load(session, api, User, option())
    assert not any(loaded(u, "name") for u in users)  # not loaded by the query
    assert_raises_every_time(engine, users, "name", "undefer(User.name)")
    assert_raises_every_time(engine, users, "bio", "undefer(User.bio)")

    # Other columns are loaded; relationships keep stock lazy loading.
    got = touch_all(engine, users, lambda u: (u.email, u.articles))
    want = stock(engine, User, lambda u: (u.email, u.articles))
    assert got.queries == want.queries == len(users)
    assert got.values == want.values


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(
    "option",
    [
        pytest.param(lambda: raiseload_rel("articles", "profile"), id="names"),
        pytest.param(lambda: raiseload_rel(User.articles, User.profile), id="class-bound"),
    ],
)
def test_raiseload_rel_raises_for_named_relationships_only(
    engine: Engine, session: Session, api: str, option
) -> None:
    users = load(session, api, User, option())
    assert_raises_every_time(engine, users, "articles", "selectinload(User.articles)")
    assert_raises_every_time(engine, users, "profile", "selectinload(User.profile)")

    got = touch_all(engine, users, lambda u: (u.groups, u.bio))
    want = stock(engine, User, lambda u: (u.groups, u.bio))
    assert got.queries == want.queries == 2 * len(users)
    assert got.values == want.values


def test_raiseload_col_wildcard_covers_only_unloaded_columns(
    engine: Engine, session: Session
) -> None:
    users = load(session, "scalars", User, raiseload_col("*"))
    assert_raises_every_time(engine, users, "bio", "undefer(User.bio)")
    got = touch_all(engine, users, lambda u: (u.name, u.articles))
    want = stock(engine, User, lambda u: (u.name, u.articles))
    assert got.queries == want.queries == len(users)
    assert got.values == want.values


def test_raiseload_rel_wildcard_covers_only_relationships(engine: Engine, session: Session) -> None:
    users = load(session, "scalars", User, raiseload_rel("*"))
    assert_raises_every_time(engine, users, "groups", "selectinload(User.groups)")
    got = touch_all(engine, users, lambda u: u.bio)
    want = stock(engine, User, lambda u: u.bio)
    assert got.queries == want.queries == len(users)
    assert got.values == want.values


@pytest.mark.parametrize("api", APIS)
def test_chained_after_defaultload_raises_below_stock_lazy_loads(
    engine: Engine, session: Session, api: str
) -> None:
    users = load(session, api, User, defaultload(User.articles).raiseload_all("*"))

    # User.articles itself is untouched by the chain: stock lazy loading.
    got = touch_all(engine, users, lambda u: u.articles)
    want = stock(engine, User, lambda u: u.articles)
    assert got.queries == want.queries == len(users)
    assert got.values == want.values

    articles = [a for u in users for a in u.articles]
    assert len(articles) == 9
    assert_raises_every_time(
        engine, articles, "comments", f"{UNDER}.selectinload(Article.comments)"
    )
    assert_raises_every_time(
        engine, articles, "body", f"{UNDER}.undefer_group('content')"
    )
    # Even with the target in the identity map, as stock raiseload('*') does.
    assert_raises_every_time(
        engine, articles, "author", f"{UNDER}.selectinload(Article.author)"
    )
    got = touch_all(engine, articles, lambda a: (a.title, a.author_id))
    want = stock(engine, Article, lambda a: (a.title, a.author_id))
    assert got.queries == 0
    assert got.values == want.values

    # The users themselves were not covered.
    got = touch_all(engine, users, lambda u: u.profile)
    assert got.queries == len(users)


def test_chained_after_joinedload_raises_on_the_joined_entities(
    engine: Engine, session: Session
) -> None:
    users = load(session, "scalars", User, joinedload(User.articles).raiseload_all("*"))
    articles = [a for u in users for a in u.articles]
    assert len(articles) == 9
    assert_raises_every_time(
        engine, articles, "comments", f"{UNDER}.selectinload(Article.comments)"
    )
