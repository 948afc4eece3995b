"""Columns: whatever leaves a column unloaded (the model's ``deferred=True``,
``defer()``, ``load_only()``, ``nplus1loader_cols('name')``), the first touch
on one armed instance loads it for all of them in one query, with the values
stock lazy loading returns.  Runs on every backend, through ``select()`` and
legacy ``Query``.
"""

from __future__ import annotations

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, defer, load_only

from nplus1loader import default_columns, nplus1loader, nplus1loader_cols
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
from tests.zoo_models import N, ZooRegion, ZooVehicle


@pytest.mark.parametrize("api", APIS)
def test_model_deferred_column_loads_for_every_armed_instance_in_one_query(
    engine: Engine, session: Session, api: str
) -> None:
    users = load(session, api, User, nplus1loader("*"))
    assert not any(loaded(u, "bio") for u in users)

    got = touch_all(engine, users, lambda u: u.bio)
    want = stock(engine, User, lambda u: u.bio)

    assert want.queries == len(users) == 6  # the N+1 this removes
    assert got.queries == 1
    assert got.values == want.values
    assert None in got.values.values()  # a NULL is loaded too, not re-queried
    assert touch_all(engine, users, lambda u: u.bio).queries == 0


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(
    "options",
    [
        pytest.param(lambda: (defer(User.name), nplus1loader("*")), id="defer-first"),
        pytest.param(lambda: (nplus1loader("*"), defer(User.name)), id="defer-last"),
    ],
)
def test_defer_option_column_is_armed_in_either_order(
    engine: Engine, session: Session, api: str, options
) -> None:
    users = load(session, api, User, *options())
    assert not any(loaded(u, "name") for u in users)
    assert all(loaded(u, "email") for u in users)

    got = touch_all(engine, users, lambda u: u.name)
    want = stock(engine, User, lambda u: u.name, defer(User.name))

    assert want.queries == len(users)
    assert got.queries == 1, got.statements
    assert got.values == want.values


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(
    "options",
    [
        pytest.param(lambda: (load_only(User.id), nplus1loader("*")), id="load_only-first"),
        pytest.param(lambda: (nplus1loader("*"), load_only(User.id)), id="load_only-last"),
    ],
)
def test_load_only_leaves_the_rest_armed_in_either_order(
    engine: Engine, session: Session, api: str, options
) -> None:
    users = load(session, api, User, *options())
    assert all(loaded(u, "id") for u in users)
    for key in ("name", "email", "bio", "manager_id"):
        assert not any(loaded(u, key) for u in users), key

    def touch(u: User) -> tuple[object, ...]:
        return (u.name, u.email, u.bio)

    got = touch_all(engine, users, touch)
    want = stock(engine, User, touch, load_only(User.id))

    assert want.queries == 3 * len(users)
    assert got.queries == 3, got.statements  # one per column, not per instance
    assert got.values == want.values


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(
    "options",
    [
        pytest.param(lambda: (default_columns(User), nplus1loader("*")), id="default-first"),
        pytest.param(lambda: (nplus1loader("*"), default_columns(User)), id="default-last"),
        pytest.param(lambda: (default_columns(User).nplus1loader("*"),), id="chained"),
    ],
)
def test_default_columns_keeps_model_deferral_and_arms_it(
    engine: Engine, session: Session, api: str, options
) -> None:
    users = load(session, api, User, *options())
    assert all(loaded(u, "name") and loaded(u, "email") for u in users)
    assert not any(loaded(u, "bio") for u in users)

    got = touch_all(engine, users, lambda u: (u.name, u.bio))
    want = stock(engine, User, lambda u: (u.name, u.bio))

    assert want.queries == len(users)
    assert got.queries == 1, got.statements
    assert got.values == want.values


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(
    "option",
    [
        pytest.param(lambda: nplus1loader_cols("name", "bio"), id="names"),
        pytest.param(lambda: nplus1loader_cols(User.name, User.bio), id="class-bound"),
        pytest.param(lambda: nplus1loader("name", "bio"), id="nplus1loader-names"),
    ],
)
def test_named_columns_are_deferred_and_armed_and_nothing_else(
    engine: Engine, session: Session, api: str, option
) -> None:
    users = load(session, api, User, option())
    assert not any(loaded(u, "name") or loaded(u, "bio") for u in users)
    assert all(loaded(u, "email") for u in users)

    got = touch_all(engine, users, lambda u: (u.name, u.bio))
    want = stock(engine, User, lambda u: (u.name, u.bio), defer(User.name))
    assert want.queries == 2 * len(users)
    assert got.queries == 2, got.statements
    assert got.values == want.values

    # A relationship the option did not name keeps stock lazy loading.
    got = touch_all(engine, users, lambda u: u.articles)
    want = stock(engine, User, lambda u: u.articles)
    assert got.queries == want.queries == len(users)
    assert got.values == want.values


def test_nplus1loader_cols_wildcard_leaves_relationships_alone(
    engine: Engine, session: Session
) -> None:
    users = load(session, "scalars", User, nplus1loader_cols("*"))
    assert touch_all(engine, users, lambda u: u.bio).queries == 1
    got = touch_all(engine, users, lambda u: u.profile)
    want = stock(engine, User, lambda u: u.profile)
    assert got.queries == want.queries == len(users)
    assert got.values == want.values


@pytest.mark.parametrize("api", APIS)
def test_deferred_group_loads_whole_group_for_all_in_one_query(
    engine: Engine, session: Session, api: str
) -> None:
    articles = load(session, api, Article, nplus1loader("*"))
    assert len(articles) == 9

    def touch(a: Article) -> tuple[str, str]:
        return (a.body, a.summary)

    got = touch_all(engine, articles, touch)
    want = stock(engine, Article, touch)
    assert want.queries == len(articles)  # the group loads together, per instance
    assert got.queries == 1, got.statements
    assert got.values == want.values


@pytest.mark.parametrize("api", APIS)
def test_composite_primary_key_column_batch(engine: Engine, api: str) -> None:
    with zoo_sessions(engine)() as session:
        regions = load(session, api, ZooRegion, nplus1loader("*"))
        got = touch_all(engine, regions, lambda r: r.description)
        want = stock(engine, ZooRegion, lambda r: r.description)
        assert want.queries == len(regions) == N
        assert got.queries == 1, got.statements
        assert got.values == want.values


@pytest.mark.parametrize("api", APIS)
def test_polymorphic_entity_columns(engine: Engine, api: str) -> None:
    """A deferred column of a single-table base, over a result that mixes
    the base and its subclasses."""
    with zoo_sessions(engine)() as session:
        vehicles = load(session, api, ZooVehicle, nplus1loader("*"))
        assert {type(v).__name__ for v in vehicles} == {"ZooVehicle", "ZooCar", "ZooTruck"}
        assert all(loaded(v, "kind") for v in vehicles)  # the discriminator is always loaded
        got = touch_all(engine, vehicles, lambda v: v.notes)
        want = stock(engine, ZooVehicle, lambda v: v.notes)
        assert want.queries == len(vehicles)
        assert got.queries == 1, got.statements
        assert got.values == want.values


def test_columns_the_query_loads_are_not_armed(engine: Engine, session: Session) -> None:
    users = load(session, "scalars", User, nplus1loader("*"))
    assert all(loaded(u, "name") and loaded(u, "email") for u in users)
    got = touch_all(engine, users, lambda u: (u.id, u.name, u.email))
    want = stock(engine, User, lambda u: (u.id, u.name, u.email))
    assert got.queries == want.queries == 0
    assert got.values == want.values
