"""Equal aliases give equal cache keys (issue 15).

``select(a1).options(nplus1loader(a1.articles))`` and the same statement
with another ``aliased(User)`` are one statement to SQLAlchemy's compiled
cache, exactly when ``selectinload(a1.articles)`` and
``selectinload(a2.articles)`` are: two anonymous aliases are equal, aliases
named ``'x'`` and ``'y'`` are not.  The second execution then hits the
statement cache, and what its instances batch-load is what stock lazy
loading returns, for every alias.  Runs on every backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import (
    Load,
    Session,
    aliased,
    defaultload,
    defer,
    lazyload,
    raiseload,
    selectinload,
)

from nplus1loader import (
    nplus1loader,
    nplus1loader_cols,
    nplus1loader_rels,
    raiseload_all,
    raiseload_col,
    raiseload_rel,
)
from tests import _oracle as oracle
from tests._db import QueryCounter
from tests.core_models import User, ident, plain, seed

Entity = Any

#: (stock option, ours) on an entity: the stock option's cache keys are
#: what ours must match.
PAIRS: dict[str, tuple[Callable[[Entity], Any], Callable[[Entity], Any]]] = {
    "nplus1loader": (lambda e: selectinload(e.articles), lambda e: nplus1loader(e.articles)),
    "nplus1loader_rels": (
        lambda e: selectinload(e.articles),
        lambda e: nplus1loader_rels(e.articles),
    ),
    "nplus1loader_cols": (lambda e: defer(e.bio), lambda e: nplus1loader_cols(e.bio)),
    "raiseload_all": (lambda e: raiseload(e.articles), lambda e: raiseload_all(e.articles)),
    "raiseload_rel": (lambda e: raiseload(e.articles), lambda e: raiseload_rel(e.articles)),
    "raiseload_col": (lambda e: defer(e.bio, raiseload=True), lambda e: raiseload_col(e.bio)),
    "two attributes": (
        lambda e: (selectinload(e.articles), defer(e.bio)),
        lambda e: nplus1loader(e.articles, e.bio),
    ),
    "chained": (
        lambda e: defaultload(e.articles).selectinload("*"),
        lambda e: defaultload(e.articles).nplus1loader("*"),
    ),
    "chained and bound": (
        lambda e: Load(e).lazyload(e.articles),
        lambda e: Load(e).nplus1loader(e.articles),
    ),
}

#: Two entities each: (selected, option's) for the first and the second
#: statement, and whether SQLAlchemy gives the two statements equal keys.
CASES: dict[str, tuple[Callable[[], tuple[Entity, Entity, Entity, Entity]], bool]] = {
    "the class": (lambda: (User, User, User, User), True),
    "two anonymous aliases": (lambda: _two(aliased(User), aliased(User)), True),
    "two aliases named alike": (
        lambda: _two(aliased(User, name="x"), aliased(User, name="x")),
        True,
    ),
    "aliases named x and y": (
        lambda: _two(aliased(User, name="x"), aliased(User, name="y")),
        False,
    ),
    "anonymous and named": (lambda: _two(aliased(User), aliased(User, name="x")), False),
    "one alias selected, the other in the option": (
        lambda: _crossed(aliased(User), aliased(User)),
        False,
    ),
    "each selecting the other's alias": (lambda: _swapped(aliased(User), aliased(User)), True),
}


def _two(a1: Entity, a2: Entity) -> tuple[Entity, Entity, Entity, Entity]:
    return a1, a1, a2, a2


def _crossed(a1: Entity, a2: Entity) -> tuple[Entity, Entity, Entity, Entity]:
    # select(a2).options(x(a1.y)) against select(a2).options(x(a2.y))
    return a2, a1, a2, a2


def _swapped(a1: Entity, a2: Entity) -> tuple[Entity, Entity, Entity, Entity]:
    return a2, a1, a1, a2


def statement_key(selected: Entity, option: Any) -> Any:
    options = option if isinstance(option, tuple) else (option,)
    key = select(selected).options(*options)._generate_cache_key()
    assert key is not None
    return key.key


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("pair", list(PAIRS))
def test_cache_keys_are_equal_exactly_when_stocks_are(pair: str, case: str) -> None:
    stock_option, our_option = PAIRS[pair]
    make, equal = CASES[case]
    sel1, opt1, sel2, opt2 = make()
    stock_equal = statement_key(sel1, stock_option(opt1)) == statement_key(sel2, stock_option(opt2))
    ours_equal = statement_key(sel1, our_option(opt1)) == statement_key(sel2, our_option(opt2))
    assert stock_equal is equal  # what SQLAlchemy does, written down
    assert ours_equal is equal


def test_options_of_different_attributes_keep_different_keys() -> None:
    a1, a2 = aliased(User), aliased(User)
    keys = {
        statement_key(a1, nplus1loader(a1.articles)),
        statement_key(a2, nplus1loader(a2.groups)),
        statement_key(a1, nplus1loader_rels(a1.articles)),
        statement_key(a1, raiseload_rel(a1.articles)),
        statement_key(a1, nplus1loader(a1.articles, chunk_size=7)),
        statement_key(a1, nplus1loader(a1.articles, mode="raise")),
        statement_key(a1, nplus1loader("articles")),
        statement_key(a1, lazyload(a1.articles)),
    }
    assert len(keys) == 8


# ----------------------------------------------------------- on a database


def counting_cache(engine: Engine) -> tuple[Engine, dict[Any, Any]]:
    """An engine of its own compiled cache: its size says whether an
    execution compiled a statement or found it."""
    cache: dict[Any, Any] = {}
    return engine.execution_options(compiled_cache=cache), cache


def stock_values(engine: Engine, touch: Callable[[Any], Any]) -> dict[Any, Any]:
    return oracle.stock(
        engine,
        select(User).order_by(User.id),
        lambda users: {ident(u): plain(touch(u)) for u in users},
    ).values


@pytest.mark.parametrize("named", [False, True], ids=["anonymous", "named x and y"])
def test_a_second_alias_hits_the_statement_cache_and_batches(engine: Engine, named: bool) -> None:
    seed(engine, users=8)
    want = stock_values(engine, lambda u: u.articles)
    cached, cache = counting_cache(engine)
    if named:
        aliases = [aliased(User, name="x"), aliased(User, name="y")]
    else:
        aliases = [aliased(User), aliased(User)]
    sizes = []
    for alias in aliases:
        with Session(cached) as session:
            stmt = select(alias).options(nplus1loader(alias.articles)).order_by(alias.id)
            users = list(session.scalars(stmt))
            with QueryCounter(engine) as q:
                got = {ident(u): plain(u.articles) for u in users}
            assert (got, q.count) == (want, 1)
        sizes.append(len(cache))
    assert sizes[0] == 2  # the query and its batch
    # Anonymous aliases: both statements found in the cache.  Named ones are
    # other statements to SQLAlchemy (the batch names the alias in its
    # path), as with selectinload().
    assert sizes[1] == (4 if named else 2)


@pytest.mark.parametrize("names", [(None, None), ("x", "x"), ("x", "y")], ids=str)
def test_a_second_alias_hits_the_cache_as_with_selectinload(
    engine: Engine, names: tuple[str | None, str | None]
) -> None:
    seed(engine, users=8)
    grown: dict[Any, list[int]] = {}
    for make in (selectinload, nplus1loader):
        cached, cache = counting_cache(engine)
        for name in names:
            alias = aliased(User, name=name)
            with Session(cached) as session:
                stmt = select(alias).options(make(alias.articles)).order_by(alias.id)
                [len(u.articles) for u in session.scalars(stmt)]
            grown.setdefault(make, []).append(len(cache))
    # Each: its query and its SELECT IN, found again for an equal alias.
    assert grown[nplus1loader] == grown[selectinload]
    assert grown[nplus1loader] == ([2, 4] if names == ("x", "y") else [2, 2])


def test_a_chained_option_on_a_cached_alias_arms_what_lazy_loads_bring(engine: Engine) -> None:
    """On a cache hit the instances carry the cached statement's paths (the
    first alias); a chained option must apply along those paths when a
    lazy load replays it, as SQLAlchemy's own chained options do."""
    seed(engine, users=8)
    want = stock_values(engine, lambda u: [plain(a.comments) for a in u.articles])
    cached, _ = counting_cache(engine)
    counts = []
    for alias in (aliased(User), aliased(User)):
        with Session(cached) as session:
            option = defaultload(alias.articles).nplus1loader("*")
            users = list(session.scalars(select(alias).options(option).order_by(alias.id)))
            with QueryCounter(engine) as q:
                articles = {ident(u): u.articles for u in users}  # stock: a query each
            lazy = q.count
            with QueryCounter(engine) as q:
                got = {k: [plain(a.comments) for a in v] for k, v in articles.items()}
            assert got == want
            counts.append((lazy, q.count))
    assert counts[0] == counts[1] == (8, 1)
