"""``nplus1loader.stats(session)`` and the structured fields of the batch log
records: what logs and metrics get.

``queries_saved`` is checked against the oracle: the statements stock lazy
loading costs for the same reads in a fresh session, minus ours.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from dataclasses import asdict
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from nplus1loader import Stats, nplus1loader, raiseload_all, stats
from tests._db import QueryCounter
from tests.ergo_models import (
    AUTHORS,
    BOOKS,
    READERS,
    Author,
    async_url,
    read_bio,
    read_book_authors,
    read_books,
    stock,
)

LOGGER = "nplus1loader.NPlusOneLazyColumnLoader"


def loaded_instances(reader: str, loaded: list[Any]) -> int:
    """How many instances the batches fill: every armed instance at every
    level the reader walks (nested batches arm what they load)."""
    if reader == "reviews":
        return len(loaded) + sum(len(author.books) for author in loaded)
    return len(loaded)


@pytest.mark.parametrize(
    ("reader", "batches"),
    [
        pytest.param("books", 1, id="one-to-many"),
        pytest.param("bio", 1, id="column"),
        pytest.param("reviews", 2, id="nested"),
        pytest.param("book_authors", 1, id="many-to-one"),
    ],
)
def test_counters_match_the_oracle(ergo_engine: Engine, reader: str, batches: int) -> None:
    expected, stock_count = stock(ergo_engine, reader)
    query, read = READERS[reader]
    with Session(ergo_engine) as session:
        loaded = session.scalars(query.options(nplus1loader())).all()
        assert stats(session) == Stats()
        with QueryCounter(ergo_engine) as q:
            assert read(loaded) == expected
        assert asdict(stats(session)) == {
            "batches": batches,
            "instances": loaded_instances(reader, list(loaded)),
            "queries": q.count,
            "queries_saved": stock_count - q.count,
        }


@pytest.mark.parametrize(
    "held_ids",
    [
        pytest.param((), id="none"),
        pytest.param((1, 4), id="some"),
        pytest.param((1, 2, 4, 5), id="all"),
    ],
)
def test_many_to_one_targets_already_in_the_session(
    ergo_engine: Engine, held_ids: tuple[int, ...]
) -> None:
    """Stock lazy loading of a many-to-one costs one query per *missing*
    target, so that is what ``queries_saved`` is measured against."""

    def scenario(session: Session, *options: Any) -> tuple[list[str], int]:
        held = session.scalars(AUTHORS.where(Author.id.in_(held_ids))).all()
        books = session.scalars(BOOKS.options(*options)).all()
        with QueryCounter(ergo_engine) as q:
            names = read_book_authors(books)
        assert len(held) == len(held_ids)
        return names, q.count

    with Session(ergo_engine) as session:
        expected, stock_count = scenario(session)
    with Session(ergo_engine) as session:
        assert scenario(session, nplus1loader()) == (expected, min(stock_count, 1))
        assert asdict(stats(session)) == {
            "batches": 1,
            "instances": len(expected),
            "queries": min(stock_count, 1),
            "queries_saved": stock_count - min(stock_count, 1),
        }


@pytest.mark.parametrize("chunk_size", [1, 2, 4, 500])
def test_chunked_batches(ergo_engine: Engine, chunk_size: int) -> None:
    expected, stock_count = stock(ergo_engine, "books")
    with Session(ergo_engine) as session:
        authors = session.scalars(AUTHORS.options(nplus1loader(chunk_size=chunk_size))).all()
        with QueryCounter(ergo_engine) as q:
            assert read_books(authors) == expected
        assert q.count == -(-len(authors) // chunk_size)
        assert asdict(stats(session)) == {
            "batches": 1,
            "instances": len(authors),
            "queries": q.count,
            "queries_saved": stock_count - q.count,
        }


def test_counters_accumulate_per_session(ergo_engine: Engine) -> None:
    books, books_stock = stock(ergo_engine, "books")
    bios, bio_stock = stock(ergo_engine, "bio")
    with Session(ergo_engine) as session, Session(ergo_engine) as other:
        authors = session.scalars(AUTHORS.options(nplus1loader())).all()
        untouched = other.scalars(AUTHORS.options(nplus1loader())).all()
        assert (read_books(authors), read_bio(authors)) == (books, bios)
        counters = stats(session)
        assert counters is stats(session)
        assert asdict(counters) == {
            "batches": 2,
            "instances": 2 * len(authors),
            "queries": 2,
            "queries_saved": books_stock + bio_stock - 2,
        }
        assert stats(other) == Stats() and len(untouched) == len(authors)


def test_raise_mode_and_plain_lazy_loads_count_nothing(ergo_engine: Engine) -> None:
    expected, _ = stock(ergo_engine, "books")
    with Session(ergo_engine) as session:
        raising = session.scalars(AUTHORS.options(raiseload_all("*"))).all()
        with pytest.raises(Exception, match="not available due to raiseload"):
            read_books(raising)
        session.expunge_all()
        assert read_books(session.scalars(AUTHORS).all()) == expected
        assert stats(session) == Stats()


def test_async_session_shares_its_sync_session_counters(ergo_engine: Engine, db_name: str) -> None:
    expected, stock_count = stock(ergo_engine, "books")
    url = async_url(db_name, ergo_engine)

    async def main() -> tuple[Any, Stats, Stats]:
        async_engine = create_async_engine(url)
        try:
            async with AsyncSession(async_engine) as session:
                authors = (await session.scalars(AUTHORS.options(nplus1loader()))).all()
                values = await session.run_sync(lambda _: read_books(authors))
                return values, stats(session), stats(session.sync_session)
        finally:
            await async_engine.dispose()

    values, async_counters, sync_counters = asyncio.run(main())
    assert values == expected
    assert async_counters is sync_counters
    assert asdict(async_counters) == {
        "batches": 1,
        "instances": len(expected),
        "queries": 1,
        "queries_saved": stock_count - 1,
    }


# --------------------------------------------------------------- logging


def test_log_record_carries_structured_fields(
    ergo_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    with Session(ergo_engine) as session:
        authors = session.scalars(AUTHORS.options(nplus1loader())).all()
        caplog.set_level(logging.DEBUG, logger=LOGGER)
        line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
        authors[0].books  # noqa: B018
    site = f"{__file__}:{line} in test_log_record_carries_structured_fields()"
    [record] = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.WARNING
    assert {key: value for key, value in vars(record).items() if key.startswith("nplus1_")} == {
        "nplus1_model": "Author",
        "nplus1_attribute": "books",
        "nplus1_instances": len(authors),
        "nplus1_call_site": site,
        # The N+1 pattern report (issue 17); load mode records no query site.
        "nplus1_pattern": True,
        "nplus1_query_site": None,
        "nplus1_touch_site": site,
        "nplus1_fix": "selectinload(Author.books)",
        "nplus1_kind": "relationship",
    }
    assert record.getMessage() == f"Author.books: N+1 loading of {len(authors)} instances at {site}"


def test_a_lone_instance_loads_as_stock_and_is_not_logged(
    ergo_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """One instance is no N+1 pattern: it loads with stock's own statement,
    and nothing is reported."""
    with Session(ergo_engine) as session:
        author = session.scalars(AUTHORS.where(Author.id == 1).options(nplus1loader())).one()
        caplog.set_level(logging.DEBUG, logger=LOGGER)
        with QueryCounter(ergo_engine) as q:
            author.bio  # noqa: B018
    assert [r for r in caplog.records if r.name == LOGGER] == []
    assert q.count == 1
    assert " IN " not in q.statements[0]


def test_fields_survive_a_json_formatter(
    ergo_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """What a JSON log handler indexes: plain str/int values."""
    import json

    with Session(ergo_engine) as session:
        books = session.scalars(BOOKS.options(nplus1loader())).all()
        caplog.set_level(logging.WARNING, logger=LOGGER)
        books[0].author  # noqa: B018
    [record] = [r for r in caplog.records if r.name == LOGGER]
    fields = {key: value for key, value in vars(record).items() if key.startswith("nplus1_")}
    assert json.loads(json.dumps(fields)) == fields
    assert fields["nplus1_instances"] == len(books)
