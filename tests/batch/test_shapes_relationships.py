"""Relationship shapes: ``order_by``, ``set`` and keyed-dict collections,
``uselist=False`` with and without a row, self-referential one-to-many,
many-to-one and many-to-many, ``secondary`` with an extra ``secondaryjoin``
condition, the association-object pattern, ``viewonly``, a custom
``primaryjoin`` with an extra condition, joins that are not a foreign key
(ordered by a ``secondary`` column, through further tables, to an aliased
class over a subquery or a window function), ``lazy="dynamic"`` and
``lazy="write_only"`` left alone, and model defaults ``lazy="selectin"`` /
``"joined"`` kept.  Each check compares with stock lazy loading."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import selectinload
from sqlalchemy.orm.dynamic import AppenderQuery

from nplus1loader import nplus1loader, nplus1loader_rels
from tests import _oracle as oracle
from tests._db import QueryCounter
from tests._shapes import CHUNK, check_shape, chunks, identity, snapshot, targets, zoo_sessions
from tests.zoo_models import (
    ZooAuthor,
    ZooBook,
    ZooCatalogue,
    ZooEnrollment,
    ZooItem,
    ZooNode,
    ZooParent,
    ZooPublisher,
    ZooReview,
    ZooStudent,
    ZooT1,
)

AUTHORS = select(ZooAuthor).order_by(ZooAuthor.id)
BOOKS = select(ZooBook).order_by(ZooBook.id)
NODES = select(ZooNode).order_by(ZooNode.id)
STUDENTS = select(ZooStudent).order_by(ZooStudent.id)
ENROLLMENTS = select(ZooEnrollment).order_by(ZooEnrollment.student_id, ZooEnrollment.course_id)
PUBLISHERS = select(ZooPublisher).order_by(ZooPublisher.id)


@pytest.mark.parametrize(
    ("stmt", "attr", "ordered"),
    [
        pytest.param(AUTHORS, "books", True, id="order-by"),
        pytest.param(AUTHORS, "book_set", False, id="collection-class-set"),
        pytest.param(AUTHORS, "books_by_isbn", False, id="attribute-keyed-dict"),
        pytest.param(AUTHORS, "modern_books", True, id="viewonly-custom-primaryjoin"),
        pytest.param(AUTHORS, "hardcovers", True, id="custom-primaryjoin-extra-condition"),
        pytest.param(
            AUTHORS, "books_unless_3", True, id="custom-primaryjoin-condition-on-parent"
        ),
        pytest.param(AUTHORS, "all_books_view", True, id="viewonly-order-by-two-columns"),
        pytest.param(BOOKS, "detail", True, id="uselist-false-with-and-without-row"),
        pytest.param(BOOKS, "reviews", False, id="one-to-many-on-unique-non-key-column"),
        pytest.param(BOOKS, "same_year", True, id="viewonly-self-join-on-plain-column"),
        pytest.param(BOOKS, "tags", True, id="many-to-many-order-by"),
        pytest.param(BOOKS, "active_tags", False, id="secondary-extra-secondaryjoin"),
        pytest.param(NODES, "children", True, id="self-referential-one-to-many"),
        pytest.param(NODES, "links", False, id="self-referential-many-to-many"),
        pytest.param(STUDENTS, "enrollments", False, id="association-object-collection"),
        pytest.param(STUDENTS, "courses", True, id="viewonly-secondary-association-table"),
    ],
)
def test_collections_and_one_to_one(engine: Engine, stmt, attr: str, ordered: bool) -> None:
    check_shape(engine, stmt, attr, ordered=ordered)


def test_uselist_false_has_both_cases(engine: Engine) -> None:
    run = check_shape(engine, BOOKS, "detail")
    assert None in run.values.values()
    assert targets(run) > 1


def test_keyed_dict_is_keyed_by_attribute(engine: Engine) -> None:
    run = check_shape(engine, AUTHORS, "books_by_isbn")
    keys = [key for value in run.values.values() for key in value]
    assert keys and all(key.startswith("isbn-") for key in keys)
    assert {} in run.values.values()  # authors without books


@pytest.mark.parametrize(
    ("stmt", "attr"),
    [
        pytest.param(BOOKS, "author", id="many-to-one"),
        pytest.param(ENROLLMENTS, "course", id="association-object-to-target"),
        pytest.param(ENROLLMENTS, "student", id="association-object-to-source"),
        pytest.param(
            NODES.where(ZooNode.id > 2 * CHUNK), "parent", id="self-referential-parents-not-loaded"
        ),
    ],
)
def test_many_to_one(engine: Engine, stmt, attr: str) -> None:
    check_shape(engine, stmt, attr, queries=lambda run: chunks(targets(run)))


def test_self_referential_many_to_one_in_identity_map(engine: Engine) -> None:
    # Every parent is a node of the same result: no query at all.
    run = check_shape(engine, NODES, "parent", queries=0)
    assert None in run.values.values()


def test_association_object_column(engine: Engine) -> None:
    check_shape(engine, ENROLLMENTS, "note")


@pytest.mark.parametrize("attr", ["books_dynamic", "books_write_only"])
def test_dynamic_and_write_only_left_untouched(engine: Engine, attr: str) -> None:
    with zoo_sessions(engine)() as session, QueryCounter(engine) as q:
        authors = session.scalars(AUTHORS.options(nplus1loader("*"))).all()
        q.assert_count(1)
        handles = [getattr(author, attr) for author in authors]
        q.assert_count(1)  # the handle is a query object, nothing is loaded
        if attr == "books_dynamic":
            assert all(isinstance(handle, AppenderQuery) for handle in handles)
            got = {identity(a): snapshot(h.all()) for a, h in zip(authors, handles, strict=True)}
        else:
            got = {
                identity(a): snapshot(session.scalars(h.select().order_by(ZooBook.id)).all())
                for a, h in zip(authors, handles, strict=True)
            }
        q.assert_count(1 + len(authors))  # one query per instance, as stock
    expected = oracle.stock(
        zoo_sessions(engine),
        AUTHORS,
        lambda authors: {identity(a): snapshot(a.books_dynamic.all()) for a in authors},
    ).values
    assert got == expected
    assert len({repr(v) for v in got.values()}) > 1


@pytest.mark.parametrize("attr", ["books_dynamic", "books_write_only"])
def test_dynamic_and_write_only_cannot_be_named(attr: str) -> None:
    with pytest.raises(ArgumentError, match=attr):
        nplus1loader_rels(getattr(ZooAuthor, attr))


def test_model_eager_defaults_keep_working(engine: Engine) -> None:
    # nplus1loader('*') arms only what the query would leave unloaded: the
    # model's joined (home) and selectin (imprints) loads still run with the
    # query itself, and touching them costs nothing.
    attrs = ("home", "imprints")
    with zoo_sessions(engine)() as session, QueryCounter(engine) as q:
        publishers = session.scalars(PUBLISHERS.options(nplus1loader("*"))).unique().all()
        q.assert_count(2)
        got = {identity(p): [snapshot(getattr(p, attr)) for attr in attrs] for p in publishers}
        q.assert_count(2)
    expected = oracle.stock(
        zoo_sessions(engine),
        lambda session: session.scalars(PUBLISHERS).unique().all(),
        lambda publishers: {
            identity(p): [snapshot(getattr(p, attr)) for attr in attrs] for p in publishers
        },
    ).values
    assert got == expected
    assert len({repr(v) for v in got.values()}) > 1


def test_query_eager_options_keep_working(engine: Engine) -> None:
    stmt = AUTHORS.options(selectinload(ZooAuthor.books))
    check_shape(engine, stmt, "books", queries=0)


def test_batch_keeps_eager_defaults_of_loaded_targets(engine: Engine) -> None:
    """A batch of catalogues loads their ``entries`` (lazy="joined") in the
    same statement, as a stock lazy load does, and runs their ``owner``
    (lazy="selectin") loader, which a stock lazy load skips: the model asked
    for it eagerly, and skipping it would leave an N+1 behind."""
    with zoo_sessions(engine)() as session:
        publishers = session.scalars(PUBLISHERS.options(nplus1loader("*", chunk_size=CHUNK)))
        publishers = publishers.unique().all()
        with QueryCounter(engine) as q:
            assert publishers[0].catalogues
        with QueryCounter(engine) as after:
            got = {
                identity(c): (snapshot(c.entries), snapshot(c.owner))
                for p in publishers
                for c in p.catalogues
            }
        after.assert_count(0)
    expected = oracle.stock(
        zoo_sessions(engine),
        lambda session: session.scalars(select(ZooCatalogue)).unique().all(),
        lambda catalogues: {
            identity(c): (snapshot(c.entries), snapshot(c.owner)) for c in catalogues
        },
    ).values
    assert got == expected
    assert all(entries for entries, _ in got.values())
    # Per chunk of publishers: the batch (entries joined in), then the
    # selectin load of the owners, and in turn of the owners' imprints.
    q.assert_count(chunks(len(publishers)) * 3)
    assert sum("zoo_entry" in statement for statement in q.statements) == chunks(len(publishers))


def test_many_to_one_on_unique_non_key_column(engine: Engine) -> None:
    """Not a lookup by primary key: loaded through the join, one statement
    per chunk of parents (NULL keys included, as for stock)."""
    stmt = select(ZooReview).order_by(ZooReview.id)
    run = check_shape(engine, stmt, "book")
    assert None in run.values.values() and targets(run) > 1


# Relationships whose lazy clause stock SQLAlchemy builds from more than a
# foreign key (a secondary table's column in ORDER BY, joins through further
# tables, aliased classes over a subquery or a window function): the batch
# must reuse stock's own clause.  Two parents each, so stock costs two
# statements and the batch one.
NON_KEY_JOINS = [
    pytest.param(ZooItem, lambda o: [k.name for k in o.keywords], id="m2m-order-by-secondary"),
    pytest.param(ZooT1, lambda o: [t.data for t in o.t3s], id="viewonly-through-tables"),
    pytest.param(
        ZooParent, lambda o: sorted(c.id for c in o.open_children), id="aliased-subquery"
    ),
    pytest.param(ZooParent, lambda o: sorted(c.id for c in o.first_two), id="window-function"),
]


@pytest.mark.parametrize(("entity", "read"), NON_KEY_JOINS)
def test_every_shape_batches_to_stocks_values(engine: Engine, entity: Any, read: Any) -> None:
    stmt = select(entity).order_by(entity.id)
    want = oracle.stock(zoo_sessions(engine), stmt, lambda objs: [read(o) for o in objs])
    with zoo_sessions(engine)() as session:
        objs = session.scalars(stmt.options(nplus1loader("*"))).all()
        with QueryCounter(engine) as q:
            got = [read(o) for o in objs]
    assert got == want.values
    assert want.queries == 2
    assert q.count == 1
