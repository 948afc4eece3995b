"""Column shapes: ``deferred()`` by the model, ``defer()`` / ``load_only()``
by the query, deferred groups (touching one column loads the whole group
for every peer in one query), ``column_property`` SQL expressions, and
``query_expression()`` / ``with_expression()`` left as SQLAlchemy defines
them.  Each check compares with stock lazy loading."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import defer, load_only, undefer_group, with_expression

from nplus1loader import nplus1loader, nplus1loader_cols
from tests import _oracle as oracle
from tests._db import QueryCounter
from tests._shapes import CHUNK, check_shape, chunks, identity, zoo_sessions
from tests.zoo_models import ZooArticle

ARTICLES = select(ZooArticle).order_by(ZooArticle.id)
GROUP = ("views", "likes", "shares")


@pytest.mark.parametrize(
    ("stmt", "attr"),
    [
        pytest.param(ARTICLES, "body", id="model-deferred"),
        pytest.param(ARTICLES.options(defer(ZooArticle.subtitle)), "subtitle", id="query-defer"),
        pytest.param(
            ARTICLES.options(load_only(ZooArticle.title)), "subtitle", id="query-load-only"
        ),
        pytest.param(
            ARTICLES.options(load_only(ZooArticle.title)), "body",
            id="load-only-model-deferred",
        ),
        pytest.param(ARTICLES, "title_upper", id="column-property-sql-expression"),
        pytest.param(ARTICLES, "comment_count", id="column-property-correlated-subquery"),
    ],
)
def test_columns(engine: Engine, stmt, attr: str) -> None:
    check_shape(engine, stmt, attr)


def test_named_column_is_deferred_and_armed(engine: Engine) -> None:
    check_shape(
        engine, ARTICLES, "subtitle", options=[nplus1loader_cols("subtitle", chunk_size=CHUNK)]
    )


@pytest.mark.parametrize(
    ("stmt", "touched"),
    [
        pytest.param(ARTICLES, "likes", id="model-deferred-group"),
        pytest.param(ARTICLES.options(load_only(ZooArticle.title)), "shares", id="load-only"),
    ],
)
def test_deferred_group_loads_whole_group_for_all_peers(
    engine: Engine, stmt, touched: str
) -> None:
    with zoo_sessions(engine)() as session:
        articles = session.scalars(stmt.options(nplus1loader("*", chunk_size=CHUNK))).all()
        with QueryCounter(engine) as q:
            getattr(articles[0], touched)
        q.assert_count(chunks(len(articles)))
        for statement in q.statements:
            assert all(f"zoo_article.{column}" in statement for column in GROUP), statement
        with QueryCounter(engine) as q:
            got = {identity(a): tuple(getattr(a, c) for c in GROUP) for a in articles}
        q.assert_count(0)
    stock = oracle.stock(
        zoo_sessions(engine),
        stmt,
        lambda articles: {identity(a): tuple(getattr(a, c) for c in GROUP) for a in articles},
    )
    expected = stock.values
    assert stock.queries == len(expected)  # stock: the group, one instance at a time
    assert got == expected
    assert len(set(got.values())) > 1


def test_undeferred_group_is_loaded_by_the_query(engine: Engine) -> None:
    check_shape(engine, ARTICLES.options(undefer_group("stats")), "likes", queries=0)


def test_query_expression_without_with_expression_stays_none(engine: Engine) -> None:
    """A ``query_expression()`` the query did not fill is None, without SQL,
    for stock and under nplus1loader: nothing to batch."""
    values = []
    for options in ([nplus1loader("*", chunk_size=CHUNK)], []):
        with zoo_sessions(engine)() as session:
            articles = session.scalars(ARTICLES.options(*options)).all()
            with QueryCounter(engine) as q:
                values.append({identity(a): a.score for a in articles})
            q.assert_count(0)
    assert values[0] == values[1]
    assert set(values[0].values()) == {None}


def test_with_expression_fills_query_expression(engine: Engine) -> None:
    stmt = ARTICLES.options(with_expression(ZooArticle.score, ZooArticle.id * 7 + 1))
    run = check_shape(engine, stmt, "score", queries=0)
    assert None not in run.values.values()


@pytest.mark.parametrize("first", ["nplus1loader", "with_expression"])
def test_with_expression_in_either_order(engine: Engine, first: str) -> None:
    expression = with_expression(ZooArticle.score, ZooArticle.id * 7 + 1)
    armed = nplus1loader("*", chunk_size=CHUNK)
    options = [armed, expression] if first == "nplus1loader" else [expression, armed]
    with zoo_sessions(engine)() as session:
        articles = session.scalars(ARTICLES.options(*options)).all()
        with QueryCounter(engine) as q:
            got = {identity(a): a.score for a in articles}
        q.assert_count(0)
        assert got == {identity(a): a.id * 7 + 1 for a in articles}
