"""``with_loader_criteria`` on the original query: a stock lazy load
applies the criteria the query propagated to its instances, so the batch
must too, and never return a row the user filtered out.  Each check
compares with stock lazy loading of the same query."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import lazyload, with_loader_criteria

from nplus1loader import nplus1loader
from tests._db import QueryCounter
from tests._shapes import (
    CHUNK,
    check_fallback,
    check_shape,
    chunks,
    identity,
    snapshot,
    stock_values,
    targets,
    zoo_sessions,
)
from tests.zoo_models import (
    ZooArticle,
    ZooAuthor,
    ZooBook,
    ZooComment,
    ZooEmployee,
    ZooNode,
    ZooTag,
    ZooTask,
)

AUTHORS = select(ZooAuthor).order_by(ZooAuthor.id)
BOOKS = select(ZooBook).order_by(ZooBook.id)
ARTICLES = select(ZooArticle).order_by(ZooArticle.id)
MODERN = with_loader_criteria(ZooBook, ZooBook.year >= 2000)


def _since(year: int):
    # A lambda with a closure: its bound value is a parameter, not SQL text.
    return with_loader_criteria(ZooBook, lambda cls: cls.year >= year)


NODES = select(ZooNode).order_by(ZooNode.id)
EMPLOYEES = select(ZooEmployee).order_by(ZooEmployee.id)


@pytest.mark.parametrize(
    ("stmt", "criteria", "attr", "ordered"),
    [
        pytest.param(AUTHORS, MODERN, "books", True, id="one-to-many"),
        pytest.param(AUTHORS, MODERN, "book_set", False, id="set-collection"),
        pytest.param(AUTHORS, MODERN, "books_by_isbn", False, id="keyed-dict"),
        pytest.param(AUTHORS, MODERN, "hardcovers", True, id="custom-primaryjoin"),
        pytest.param(AUTHORS, _since(2010), "books", True, id="lambda-with-closure"),
        pytest.param(
            BOOKS, with_loader_criteria(ZooTag, ZooTag.name != "tag 2"), "tags", True,
            id="many-to-many",
        ),
        pytest.param(
            NODES, with_loader_criteria(ZooNode, ZooNode.id % 3 != 0, include_aliases=True),
            "children", True, id="self-referential-include-aliases",
        ),
        pytest.param(
            EMPLOYEES, with_loader_criteria(ZooTask, ZooTask.id % 2 == 0), "tasks", False,
            id="polymorphic-parents",
        ),
        pytest.param(
            ARTICLES, with_loader_criteria(ZooComment, ZooComment.approved == True),  # noqa: E712
            "comments", True, id="criteria-on-target",
        ),
        pytest.param(
            ARTICLES, with_loader_criteria(ZooComment, ZooComment.approved == True),  # noqa: E712
            "comment_count", True, id="column-property-subquery",
        ),
    ],
)
def test_criteria_filter_what_is_batched(
    engine: Engine, stmt, criteria, attr: str, ordered: bool
) -> None:
    run = check_shape(engine, stmt.options(criteria), attr, ordered=ordered)
    unfiltered = stock_values(engine, stmt, attr, ordered=ordered)
    common = run.values.keys() & unfiltered.keys()
    assert common
    # The criteria filtered something out of the values the batch loaded.
    assert any(run.values[key] != unfiltered[key] for key in common)


def test_criteria_filter_many_to_one_targets(engine: Engine) -> None:
    """A filtered-out target is None, as for stock.  Its key is asked for by
    primary key, found missing, and the join confirms it: one statement per
    chunk of keys, plus one per chunk of the parents whose target is gone."""
    stmt = BOOKS.options(with_loader_criteria(ZooAuthor, ZooAuthor.id > 4))
    with zoo_sessions(engine)() as session:
        keys = set(session.scalars(select(ZooBook.author_id)))
    expected_none = None

    def expected(run) -> int:
        nonlocal expected_none
        expected_none = sum(value is None for value in run.values.values())
        return chunks(len(keys)) + chunks(expected_none)

    run = check_shape(engine, stmt, "author", queries=expected)
    assert expected_none and targets(run) < len(keys)


def test_criteria_not_propagated_are_not_applied(engine: Engine) -> None:
    # propagate_to_loaders=False: stock lazy loads ignore the criteria.
    stmt = AUTHORS.options(
        with_loader_criteria(ZooBook, ZooBook.year >= 2000, propagate_to_loaders=False)
    )
    run = check_shape(engine, stmt, "books")
    assert run.values == stock_values(engine, AUTHORS, "books")


def test_peers_from_queries_with_other_criteria_are_not_mixed(engine: Engine) -> None:
    """Two queries in one session, different criteria: touching one batch
    loads only the instances armed under the same criteria."""
    first = AUTHORS.where(ZooAuthor.id <= 6).options(_since(2000))
    second = AUTHORS.where(ZooAuthor.id > 6).options(_since(1990))
    options = [nplus1loader("*", chunk_size=CHUNK)]
    with zoo_sessions(engine)() as session:
        one = session.scalars(first.options(*options)).all()
        two = session.scalars(second.options(*options)).all()
        with QueryCounter(engine) as q:
            assert one[0].books is not None
        q.assert_count(chunks(len(one)))
        assert all("books" not in author.__dict__ for author in two)
        with QueryCounter(engine) as q:
            assert two[0].books is not None
        q.assert_count(chunks(len(two)))
        got = {identity(a): snapshot(a.books) for a in one + two}
    expected = {}
    for stmt in (first, second):
        with zoo_sessions(engine)() as session:
            expected.update(
                {identity(a): snapshot(a.books) for a in session.scalars(stmt).all()}
            )
    assert got == expected


def test_criteria_added_by_session_event(engine: Engine) -> None:
    """The documented multi-tenant pattern: a ``do_orm_execute`` listener
    adds the criteria to every top-level query (including our batches,
    which is harmless: the same criteria)."""

    def add_criteria(execute_state) -> None:
        if execute_state.is_select and not execute_state.is_relationship_load:
            execute_state.statement = execute_state.statement.options(
                with_loader_criteria(ZooBook, ZooBook.hardcover == True)  # noqa: E712
            )

    values = []
    for options in ([nplus1loader("*", chunk_size=CHUNK)], []):
        with zoo_sessions(engine)() as session:
            event.listen(session, "do_orm_execute", add_criteria)
            authors = session.scalars(AUTHORS.options(*options)).all()
            with QueryCounter(engine) as q:
                values.append({identity(a): snapshot(a.books) for a in authors})
            q.assert_count(chunks(len(authors)) if options else len(authors))
    assert values[0] == values[1]
    with zoo_sessions(engine)() as session:
        unfiltered = {identity(a): snapshot(a.books) for a in session.scalars(AUTHORS)}
    assert values[0] != unfiltered


def test_relationship_and_criteria_fall_back_to_stock(engine: Engine) -> None:
    """``lazyload(Author.books.and_(...))``: the criteria belong to that
    one lazy load; nplus1loader leaves it to SQLAlchemy, one query per
    instance, rather than risk returning filtered-out rows."""
    stmt = AUTHORS.options(lazyload(ZooAuthor.books.and_(ZooBook.hardcover == True)))  # noqa: E712
    values = check_fallback(engine, stmt, "books")
    assert values != stock_values(engine, AUTHORS, "books")
