"""Relationships of every common shape (on the shape zoo,
``tests/zoo_models.py``) batch-load in one query, with exactly the values
stock lazy loading returns; named, class-bound and chained options
arm exactly what they name; ``nested`` decides whether the instances a batch
brings in are armed too.  Runs on every backend, through ``select()`` and
legacy ``Query``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, defaultload, joinedload, lazyload, selectinload

from nplus1loader import nplus1loader, nplus1loader_rels
from tests._shapes import zoo_sessions
from tests.core_models import (
    APIS,
    Article,
    User,
    load,
    loaded,
    stock,
    touch_all,
)
from tests.zoo_models import (
    ZooAuthor,
    ZooBook,
    ZooBookDetail,
    ZooNode,
    ZooRegion,
    ZooStore,
    ZooTag,
)

# (entity, attribute, filter) on the shape zoo: the filter keeps the
# parents out of the identity map (nodes above 10 have parents 3..8), so the
# batch has something to SELECT.
SHAPES = {
    "many-to-one": (ZooBook, "author", None),
    "one-to-many": (ZooAuthor, "books", None),
    "many-to-many": (ZooBook, "tags", None),
    "many-to-many-reverse": (ZooTag, "books", None),
    "one-to-one": (ZooBook, "detail", None),
    "one-to-one-reverse": (ZooBookDetail, "book", None),
    "self-many-to-one": (ZooNode, "parent", ZooNode.id > 10),
    "self-one-to-many": (ZooNode, "children", None),
    "composite-many-to-one": (ZooStore, "region", None),
    "composite-one-to-many": (ZooRegion, "stores", None),
}


def getter(key: str) -> Callable[[Any], Any]:
    return lambda obj: getattr(obj, key)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_relationship_shape_loads_in_one_query(engine: Engine, shape: str, api: str) -> None:
    entity, key, where = SHAPES[shape]
    with zoo_sessions(engine)() as session:
        objs = load(session, api, entity, nplus1loader("*"), where=where)
        assert len(objs) > 1
        assert not any(loaded(o, key) for o in objs)

        got = touch_all(engine, objs, getter(key))
        want = stock(engine, entity, getter(key), where=where)

        assert want.queries > 1  # stock really is N+1 here
        assert got.queries == 1, got.statements
        assert got.values == want.values
        assert all(loaded(o, key) for o in objs)
        assert touch_all(engine, objs, getter(key)).queries == 0


def test_one_to_one_with_and_without_a_row(engine: Engine, session: Session) -> None:
    users = load(session, "scalars", User, nplus1loader("*"))
    got = touch_all(engine, users, lambda u: u.profile)
    want = stock(engine, User, lambda u: u.profile)
    assert got.queries == 1
    assert got.values == want.values
    with_row = [k for k, v in got.values.items() if v is not None]
    without_row = [k for k, v in got.values.items() if v is None]
    assert with_row and without_row
    # "No row" is a loaded None, not a reason to query again.
    assert all(loaded(u, "profile") for u in users)


def test_many_to_one_targets_in_identity_map_cost_nothing(engine: Engine, session: Session) -> None:
    users = load(session, "scalars", User, nplus1loader("*"))
    got = touch_all(engine, users, lambda u: u.manager)
    want = stock(engine, User, lambda u: u.manager)
    assert got.queries == want.queries == 0
    assert got.values == want.values


def test_many_to_one_selects_only_missing_targets(engine: Engine, session: Session) -> None:
    present = load(session, "scalars", User, where=User.id <= 2)
    articles = load(session, "scalars", Article, nplus1loader("*"))
    got = touch_all(engine, articles, lambda a: a.author)
    want = stock(engine, Article, lambda a: a.author)
    assert got.queries == 1
    assert got.values == want.values
    authors = {a.author for a in articles}
    assert set(present) & authors  # some came from the identity map ...
    assert authors - set(present)  # ... and some from the one query


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(
    "option",
    [
        pytest.param(lambda: nplus1loader_rels("articles", "profile"), id="names"),
        pytest.param(lambda: nplus1loader_rels(User.articles, User.profile), id="class-bound"),
        pytest.param(lambda: nplus1loader("articles", "profile"), id="nplus1loader-names"),
    ],
)
def test_named_relationships_are_armed_and_nothing_else(
    engine: Engine, session: Session, api: str, option
) -> None:
    users = load(session, api, User, option())

    def touch(u: User) -> tuple[Any, ...]:
        return (u.articles, u.profile)

    got = touch_all(engine, users, touch)
    want = stock(engine, User, touch)
    assert want.queries == 2 * len(users)
    assert got.queries == 2, got.statements
    assert got.values == want.values

    # Not named: stock lazy loading, one query per instance.
    for key in ("groups", "bio"):
        got = touch_all(engine, users, getter(key))
        want = stock(engine, User, getter(key))
        assert got.queries == want.queries == len(users), key
        assert got.values == want.values


def test_nplus1loader_rels_wildcard_leaves_columns_alone(engine: Engine, session: Session) -> None:
    users = load(session, "scalars", User, nplus1loader_rels("*"))
    assert touch_all(engine, users, lambda u: u.groups).queries == 1
    got = touch_all(engine, users, lambda u: u.bio)
    want = stock(engine, User, lambda u: u.bio)
    assert got.queries == want.queries == len(users)
    assert got.values == want.values


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(lambda: (lazyload(User.articles), nplus1loader("*")), id="lazyload-first"),
        pytest.param(lambda: (nplus1loader("*"), lazyload(User.articles)), id="lazyload-last"),
    ],
)
def test_explicit_lazyload_is_armed_in_either_order(
    engine: Engine, session: Session, options
) -> None:
    users = load(session, "scalars", User, *options())
    got = touch_all(engine, users, lambda u: u.articles)
    want = stock(engine, User, lambda u: u.articles)
    assert got.queries == 1, got.statements
    assert got.values == want.values


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(lambda: (selectinload(User.articles), nplus1loader("*")), id="eager-first"),
        pytest.param(lambda: (nplus1loader("*"), selectinload(User.articles)), id="eager-last"),
    ],
)
def test_eager_loaded_relationship_is_not_armed(
    engine: Engine, session: Session, count_queries, options
) -> None:
    with count_queries() as q:
        users = load(session, "scalars", User, *options())
    assert q.count == 2  # users, then their articles by selectinload
    assert all(loaded(u, "articles") for u in users)
    got = touch_all(engine, users, lambda u: u.articles)
    want = stock(engine, User, lambda u: u.articles)
    assert got.queries == 0
    assert got.values == want.values


@pytest.mark.parametrize("api", APIS)
def test_chained_after_joinedload_arms_the_joined_entities(
    engine: Engine, session: Session, count_queries, api: str
) -> None:
    with count_queries() as q:
        users = load(session, api, User, joinedload(User.articles).nplus1loader("*"))
    assert q.count == 1

    def touch(u: User) -> list[Any]:
        return [(a.comments, a.body) for a in u.articles]

    got = touch_all(engine, users, touch)
    want = stock(engine, User, touch)
    assert got.queries == 2, got.statements  # comments, then the body group
    assert got.values == want.values

    # The chain armed the articles, not the users.
    got = touch_all(engine, users, lambda u: u.profile)
    assert got.queries == len(users)


def test_chained_after_defaultload_arms_what_stock_lazy_loads_bring_in(
    engine: Engine, session: Session
) -> None:
    users = load(session, "scalars", User, defaultload(User.articles).nplus1loader("*"))
    got = touch_all(engine, users, lambda u: u.articles)
    assert got.queries == len(users)  # User.articles itself is stock lazy loading
    articles = [a for u in users for a in u.articles]
    got = touch_all(engine, articles, lambda a: a.comments)
    want = stock(engine, Article, lambda a: a.comments)
    assert got.queries == 1, got.statements
    assert got.values == want.values


@pytest.mark.parametrize("api", APIS)
def test_nested_true_costs_one_query_per_level(engine: Engine, session: Session, api: str) -> None:
    users = load(session, api, User, nplus1loader("*"))

    def touch(u: User) -> list[Any]:
        return [(a.comments, [c.text for c in a.comments]) for a in u.articles]

    got = touch_all(engine, users, touch)
    want = stock(engine, User, touch)
    articles = sum(len(v) for v in want.values.values())
    assert want.queries == len(users) + articles
    assert got.queries == 2, got.statements  # articles, then comments
    assert got.values == want.values

    # Three levels deep, back up a many-to-one: in the identity map already.
    got = touch_all(engine, users, lambda u: [c.article for a in u.articles for c in a.comments])
    assert got.queries == 0


@pytest.mark.parametrize("api", APIS)
def test_nested_false_leaves_the_second_level_to_stock_lazy_loading(
    engine: Engine, session: Session, api: str
) -> None:
    users = load(session, api, User, nplus1loader("*", nested=False))

    def touch(u: User) -> list[Any]:
        return [a.comments for a in u.articles]

    got = touch_all(engine, users, touch)
    want = stock(engine, User, touch)
    articles = sum(len(v) for v in want.values.values())
    assert articles > 1
    assert got.queries == 1 + articles, got.statements  # N+1 at the second level
    assert got.values == want.values


def test_nested_arms_columns_of_loaded_targets(engine: Engine, session: Session) -> None:
    users = load(session, "scalars", User, nplus1loader("*"))
    got = touch_all(engine, users, lambda u: [a.body for a in u.articles])
    want = stock(engine, User, lambda u: [a.body for a in u.articles])
    assert got.queries == 2, got.statements  # articles, then the body group
    assert got.values == want.values


def test_nested_batch_arms_what_it_brings_in_and_keeps_what_was_there(
    engine: Engine, session: Session
) -> None:
    """A batch load arms the instances it creates (and those it refreshes);
    an instance already in the session keeps the arming it had, as it keeps
    SQLAlchemy's own load options: here an article an unarmed query loaded
    earlier, which stays with stock lazy loading."""
    earlier = session.scalars(select(Article).order_by(Article.id).limit(1)).one()
    users = load(session, "scalars", User, nplus1loader("*"))
    assert touch_all(engine, users, lambda u: u.articles).queries == 1
    articles = [a for u in users for a in u.articles]
    assert earlier in articles and len(articles) > 2
    brought_in = [a for a in articles if a is not earlier]

    got = touch_all(engine, brought_in, lambda a: a.comments)
    assert got.queries == 1, got.statements  # every article the batch created
    assert not loaded(earlier, "comments")
    earlier_got = touch_all(engine, [earlier], lambda a: a.comments)
    assert earlier_got.queries == 1  # stock lazy loading, as before the batch

    want = stock(engine, Article, lambda a: a.comments)
    seen = {**got.values, **earlier_got.values}
    assert seen == {key: want.values[key] for key in seen}
    assert len(seen) == len(articles)
