"""Models, data and oracles shared by the ergonomics tests (issue 6:
``session/test_switch.py``, ``report/test_modes.py``, ``report/test_stats.py``).

Authors write books, books get reviews; ``Author.bio`` is a deferred column.
Tables are prefixed ``ergo_`` because every test module shares one database
per backend.  Expected values are never written down: :func:`stock` runs the
same reader with stock SQLAlchemy lazy loading in a fresh session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Engine, ForeignKey, String, Text, select, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncAttrs, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from tests import _oracle as oracle
from tests._db import describe_error, report_unreachable, setup_schema


class Base(AsyncAttrs, DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "ergo_author"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50))
    bio: Mapped[str] = mapped_column(Text, deferred=True)

    books: Mapped[list[Book]] = relationship(back_populates="author", order_by="Book.id")


class Book(Base):
    __tablename__ = "ergo_book"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    author_id: Mapped[int] = mapped_column(ForeignKey("ergo_author.id"))
    title: Mapped[str] = mapped_column(String(100))

    author: Mapped[Author] = relationship(back_populates="books")
    reviews: Mapped[list[Review]] = relationship(order_by="Review.id")


class Review(Base):
    __tablename__ = "ergo_review"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    book_id: Mapped[int] = mapped_column(ForeignKey("ergo_book.id"))
    stars: Mapped[int]


AUTHORS = select(Author).order_by(Author.id)
BOOKS = select(Book).order_by(Book.id)


def seed(engine: Engine, authors: int = 6) -> None:
    """Author ``a`` writes ``a % 3`` books (so some write none), book ``b``
    has ``b % 3`` reviews."""
    setup_schema(engine, Base.metadata)
    with Session(engine) as session:
        for a in range(1, authors + 1):
            books = []
            for n in range(a % 3):
                b = 10 * a + n
                reviews = [Review(id=10 * b + r, stars=1 + (b + r) % 5) for r in range(b % 3)]
                books.append(Book(id=b, title=f"book {a}.{n}", reviews=reviews))
            session.add(Author(id=a, name=f"author {a}", bio=f"bio of {a}", books=books))
        session.commit()


# -------------------------------------------------------------- readers


def read_books(authors: Sequence[Author]) -> list[list[str]]:
    return [[book.title for book in author.books] for author in authors]


def read_bio(authors: Sequence[Author]) -> list[str]:
    return [author.bio for author in authors]


def read_reviews(authors: Sequence[Author]) -> list[list[list[int]]]:
    return [[[r.stars for r in book.reviews] for book in author.books] for author in authors]


def read_book_authors(books: Sequence[Book]) -> list[str]:
    return [book.author.name for book in books]


READERS: dict[str, tuple[Any, Callable[[Any], Any]]] = {
    "books": (AUTHORS, read_books),
    "bio": (AUTHORS, read_bio),
    "reviews": (AUTHORS, read_reviews),
    "book_authors": (BOOKS, read_book_authors),
}


def stock(engine: Engine, reader: str) -> tuple[Any, int]:
    """The oracle (:func:`tests._oracle.stock`): what ``reader`` returns with
    stock lazy loading in a fresh session, and how many statements it costs
    after the first query."""
    query, read = READERS[reader]
    reading = oracle.stock(engine, query, read)
    return reading.values, reading.queries


# ---------------------------------------------------------------- asyncio

ASYNC_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg", "mysql": "aiomysql"}
_probed: dict[str, str] = {}


def async_url(db_name: str, engine: Engine) -> URL:
    """The sync engine's URL with the backend's async driver; an unusable
    driver skips (fails under CI=true) as an unreachable server does."""
    url = engine.url.set(drivername=f"{engine.url.get_backend_name()}+{ASYNC_DRIVERS[db_name]}")
    if db_name not in _probed:

        async def probe() -> None:
            async_engine = create_async_engine(url)
            try:
                async with async_engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            finally:
                await async_engine.dispose()

        try:
            asyncio.run(probe())
            _probed[db_name] = ""
        except Exception as error:
            _probed[db_name] = describe_error(error)
    if _probed[db_name]:
        report_unreachable(db_name, url.render_as_string(hide_password=False), _probed[db_name])
    return url
