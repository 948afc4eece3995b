"""``relationship(lazy="nplus1loader")`` on a model (issue 15).

The mapping arms the relationship for every query, as
``nplus1loader_rels(Model.attr)`` written in each query would: the same
queries, the same values as stock lazy loading, nested arming of what a
batch brings in, batched refresh after a commit; options of the query
still decide (``selectinload()``, ``lazyload()``, ``raiseload()``,
``raiseload_rel()``).  ``lazy="nplus1loader_raise"`` is the mapping form of
``raiseload_rel()``.  Columns have no mapping-level equivalent:
``column_property()`` / ``mapped_column()`` choose their strategy from
``deferred`` and ``raiseload`` only.

Two mappings of the same tables: ``Stock*`` with SQLAlchemy's own lazy
loading, ``Armed*`` with ``lazy="nplus1loader"``.  Runs on every backend.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    insert,
    inspect,
    select,
)
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import (
    DeclarativeBase,
    Session,
    configure_mappers,
    joinedload,
    lazyload,
    raiseload,
    relationship,
    selectinload,
)

import nplus1loader
from nplus1loader import LazyLoadingAttributeError, enable, nplus1loader_rels, raiseload_rel
from nplus1loader._strategies import ArmedRelationshipLoader
from tests._db import QueryCounter, setup_schema

metadata = MetaData()


@dataclass(frozen=True)
class Tables:
    author: Table
    book: Table
    review: Table
    tag: Table
    book_tag: Table


def tables(prefix: str) -> Tables:
    """One copy of the schema per mapping (two mappings writing to one
    table would overlap)."""
    author = Table(
        f"{prefix}_author",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("name", String(50), nullable=False),
    )
    book = Table(
        f"{prefix}_book",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("author_id", ForeignKey(author.c.id), nullable=False, index=True),
        Column("title", String(50), nullable=False),
    )
    review = Table(
        f"{prefix}_review",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("book_id", ForeignKey(book.c.id), nullable=False, index=True),
        Column("text", String(50), nullable=False),
    )
    tag = Table(
        f"{prefix}_tag",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("label", String(50), nullable=False),
    )
    book_tag = Table(
        f"{prefix}_book_tag",
        metadata,
        Column("book_id", ForeignKey(book.c.id), primary_key=True),
        Column("tag_id", ForeignKey(tag.c.id), primary_key=True),
    )
    return Tables(author, book, review, tag, book_tag)


STOCK_TABLES = tables("mlz_s")
ARMED_TABLES = tables("mlz_a")


class StockBase(DeclarativeBase):
    metadata = metadata


_S = STOCK_TABLES


class StockAuthor(StockBase):
    __table__ = _S.author
    books = relationship("StockBook", back_populates="author", order_by=_S.book.c.id)


class StockBook(StockBase):
    __table__ = _S.book
    author = relationship(StockAuthor, back_populates="books")
    reviews = relationship("StockReview", back_populates="book", order_by=_S.review.c.id)
    tags = relationship("StockTag", secondary=_S.book_tag, order_by=_S.tag.c.id)


class StockReview(StockBase):
    __table__ = _S.review
    book = relationship(StockBook, back_populates="reviews", lazy="raise")


class StockTag(StockBase):
    __table__ = _S.tag


class ArmedBase(DeclarativeBase):
    metadata = metadata


_A = ARMED_TABLES


class ArmedAuthor(ArmedBase):
    __table__ = _A.author
    books = relationship(
        "ArmedBook", back_populates="author", order_by=_A.book.c.id, lazy="nplus1loader"
    )


class ArmedBook(ArmedBase):
    __table__ = _A.book
    author = relationship(ArmedAuthor, back_populates="books", lazy="nplus1loader")
    # Stock lazy loading in the mapping: armed only by nested arming.
    reviews = relationship("ArmedReview", back_populates="book", order_by=_A.review.c.id)
    tags = relationship(
        "ArmedTag", secondary=_A.book_tag, order_by=_A.tag.c.id, lazy="nplus1loader"
    )


class ArmedReview(ArmedBase):
    __table__ = _A.review
    book = relationship(ArmedBook, back_populates="reviews", lazy="nplus1loader_raise")


class ArmedTag(ArmedBase):
    __table__ = _A.tag


@dataclass(frozen=True)
class Models:
    Author: Any
    Book: Any
    Review: Any
    Tag: Any


STOCK = Models(StockAuthor, StockBook, StockReview, StockTag)
ARMED = Models(ArmedAuthor, ArmedBook, ArmedReview, ArmedTag)

AUTHORS = 10


_seeded: set[str] = set()


@pytest.fixture
def db(engine: Engine) -> Engine:
    """The rows, once per backend and run: no test writes any."""
    url = str(engine.url)
    if url not in _seeded:
        setup_schema(engine, metadata)
        books = [
            {"id": a * 10 + j, "author_id": a, "title": f"book {a * 10 + j}"}
            for a in range(1, AUTHORS + 1)
            for j in range(a % 4)
        ]
        with engine.begin() as conn:
            for t in (STOCK_TABLES, ARMED_TABLES):
                _insert(conn, t, books)
        _seeded.add(url)
    return engine


def _insert(conn: Any, t: Tables, books: list[dict[str, Any]]) -> None:
    conn.execute(
        insert(t.author),
        [{"id": a, "name": f"author {a}"} for a in range(1, AUTHORS + 1)],
    )
    conn.execute(insert(t.book), books)
    conn.execute(
        insert(t.review),
        [
            {"id": b["id"] * 10 + r, "book_id": b["id"], "text": f"review {r} of {b['id']}"}
            for b in books
            for r in range(b["id"] % 3)
        ],
    )
    conn.execute(insert(t.tag), [{"id": g, "label": f"tag {g}"} for g in (1, 2, 3)])
    conn.execute(
        insert(t.book_tag),
        [{"book_id": b["id"], "tag_id": g} for b in books for g in (1, 2, 3) if (b["id"] + g) % 3],
    )


def test_the_mapping_configures_with_the_nplus1_strategy() -> None:
    configure_mappers()
    for prop in (ArmedAuthor.books, ArmedBook.author, ArmedBook.tags, ArmedReview.book):
        assert isinstance(prop.property.strategy, ArmedRelationshipLoader)
    assert inspect(ArmedAuthor).attrs.books.lazy == "nplus1loader"


# ------------------------------------------------- the mapping versus options

Phase = Callable[[], Any]
#: (models, session, options) -> the phases of an N+1 loop, run in order.
Scenario = Callable[[Models, Session, tuple[Any, ...]], list[Phase]]


def one_to_many(m: Models, session: Session, options: tuple[Any, ...]) -> list[Phase]:
    stmt = select(m.Author).options(*options).order_by(m.Author.id)
    authors = session.scalars(stmt).unique().all()
    return [lambda: {a.id: [b.id for b in a.books] for a in authors}]


def many_to_one(m: Models, session: Session, options: tuple[Any, ...]) -> list[Phase]:
    books = session.scalars(select(m.Book).options(*options).order_by(m.Book.id)).all()
    return [lambda: {b.id: b.author.name for b in books}]


def many_to_many(m: Models, session: Session, options: tuple[Any, ...]) -> list[Phase]:
    books = session.scalars(select(m.Book).options(*options).order_by(m.Book.id)).all()
    return [lambda: {b.id: [t.label for t in b.tags] for b in books}]


def nested(m: Models, session: Session, options: tuple[Any, ...]) -> list[Phase]:
    authors = session.scalars(select(m.Author).options(*options).order_by(m.Author.id)).all()
    return [
        lambda: {a.id: [b.id for b in a.books] for a in authors},
        lambda: {b.id: [r.text for r in b.reviews] for a in authors for b in a.books},
    ]


def after_commit(m: Models, session: Session, options: tuple[Any, ...]) -> list[Phase]:
    authors = session.scalars(select(m.Author).options(*options).order_by(m.Author.id)).all()
    return [
        lambda: {a.id: [b.id for b in a.books] for a in authors},
        session.commit,
        lambda: {a.id: (a.name, [b.title for b in a.books]) for a in authors},
    ]


def through_a_join(m: Models, session: Session, options: tuple[Any, ...]) -> list[Phase]:
    stmt = select(m.Book).where(m.Book.id % 2 == 0).order_by(m.Book.id)
    books = session.scalars(stmt.options(joinedload(m.Book.author), *options)).unique().all()
    return [lambda: {b.id: [o.id for o in b.author.books] for b in books}]


def legacy_query(m: Models, session: Session, options: tuple[Any, ...]) -> list[Phase]:
    authors = session.query(m.Author).options(*options).order_by(m.Author.id).all()
    return [lambda: {a.id: [b.id for b in a.books] for a in authors}]


#: scenario, the options that arm a stock mapping alike, and the queries
#: of each phase with the nplus1 mapping.
SCENARIOS: dict[str, tuple[Scenario, Callable[[Models], tuple[Any, ...]], list[int]]] = {
    "one-to-many": (one_to_many, lambda m: (nplus1loader_rels(m.Author.books),), [1]),
    "many-to-one": (many_to_one, lambda m: (nplus1loader_rels(m.Book.author),), [1]),
    "many-to-many": (many_to_many, lambda m: (nplus1loader_rels(m.Book.tags),), [1]),
    "nested": (nested, lambda m: (nplus1loader_rels(m.Author.books),), [1, 1]),
    "after a commit": (after_commit, lambda m: (nplus1loader_rels(m.Author.books),), [1, 0, 2]),
    "through a joined load": (
        through_a_join,
        lambda m: (joinedload(m.Book.author).nplus1loader_rels("books"),),
        [1],
    ),
    "legacy Query": (legacy_query, lambda m: (nplus1loader_rels(m.Author.books),), [1]),
}


def run(engine: Engine, m: Models, scenario: Scenario, options: tuple[Any, ...]) -> Any:
    """Each phase's values and queries."""
    outcome = []
    with Session(engine) as session:
        for phase in scenario(m, session, options):
            with QueryCounter(engine) as q:
                values = phase()
            outcome.append((values, q.count))
    return outcome


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_the_mapping_arms_as_the_option_would(db: Engine, name: str) -> None:
    scenario, written, queries = SCENARIOS[name]
    stock = run(db, STOCK, scenario, ())
    option = run(db, STOCK, scenario, written(STOCK))
    mapping = run(db, ARMED, scenario, ())
    assert [values for values, _ in mapping] == [values for values, _ in stock]
    assert [values for values, _ in option] == [values for values, _ in stock]
    assert [count for _, count in mapping] == [count for _, count in option] == queries
    assert sum(count for _, count in stock) > sum(queries)  # stock is N+1 here


# ------------------------------------------------------- options still decide

OVERRIDES: dict[str, Callable[[Models], Any]] = {
    "selectinload": lambda m: selectinload(m.Author.books),
    "joinedload": lambda m: joinedload(m.Author.books),
    "lazyload": lambda m: lazyload(m.Author.books),
}


@pytest.mark.parametrize("name", list(OVERRIDES))
def test_a_loader_option_of_the_query_wins_over_the_mapping(db: Engine, name: str) -> None:
    make = OVERRIDES[name]
    stock = run(db, STOCK, one_to_many, (make(STOCK),))
    mapping = run(db, ARMED, one_to_many, (make(ARMED),))
    assert mapping == stock
    assert stock[0][1] == (AUTHORS if name == "lazyload" else 0)


@pytest.mark.parametrize(
    "make",
    [lambda m: raiseload(m.Author.books), lambda m: raiseload("*")],
    ids=["raiseload(Author.books)", "raiseload('*')"],
)
def test_raiseload_wins_over_the_mapping(db: Engine, make: Callable[[Models], Any]) -> None:
    for m in (STOCK, ARMED):
        with Session(db) as session:
            authors = session.scalars(select(m.Author).options(make(m))).all()
            with pytest.raises(InvalidRequestError, match="not available"):
                len(authors[0].books)


def test_raiseload_rel_and_raise_mode_options_win_over_the_mapping(db: Engine) -> None:
    with Session(db) as session:
        authors = session.scalars(select(ArmedAuthor).options(raiseload_rel("*"))).all()
        with pytest.raises(LazyLoadingAttributeError):
            len(authors[0].books)
    with Session(db) as session:
        option = nplus1loader.nplus1loader(ArmedAuthor.books, mode="raise")
        authors = session.scalars(select(ArmedAuthor).options(option)).all()
        with pytest.raises(LazyLoadingAttributeError):
            [len(a.books) for a in authors]


def test_an_enabled_session_batches_the_mapping_as_a_written_option(db: Engine) -> None:
    want = run(db, STOCK, one_to_many, ())
    with enable(Session(db)) as session:
        authors = session.scalars(select(ArmedAuthor).order_by(ArmedAuthor.id)).all()
        with QueryCounter(db) as q:
            got = {a.id: [b.id for b in a.books] for a in authors}
    assert [(got, q.count)] == [(want[0][0], 1)]


def test_lazy_nplus1loader_raise_is_raiseload_rel_in_the_mapping(db: Engine) -> None:
    for m, error in ((STOCK, InvalidRequestError), (ARMED, LazyLoadingAttributeError)):
        with Session(db) as session:
            reviews = session.scalars(select(m.Review).order_by(m.Review.id)).all()
            session.get(m.Book, reviews[0].book_id)  # in the identity map: still raises
            with pytest.raises(error, match="is not available due to"):
                reviews[0].book  # noqa: B018
    stock = run(db, STOCK, _reviews_books, (selectinload(StockReview.book),))
    mapping = run(db, ARMED, _reviews_books, (selectinload(ArmedReview.book),))
    assert mapping == stock


def _reviews_books(m: Models, session: Session, options: tuple[Any, ...]) -> list[Phase]:
    reviews = session.scalars(select(m.Review).options(*options).order_by(m.Review.id)).all()
    return [lambda: {r.id: r.book.title for r in reviews}]


def test_a_pickled_instance_of_the_mapping_loads_in_another_session(db: Engine) -> None:
    with Session(db) as session:
        author = session.get(ArmedAuthor, 3)
        assert author is not None
        copy = pickle.loads(pickle.dumps(author))
    with Session(db) as other:
        other.add(copy)
        assert [b.id for b in copy.books] == [30, 31, 32]
