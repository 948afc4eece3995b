"""N+1 patterns (issue 17): raise and warn modes act only on a touch whose
batch would load ``threshold`` instances or more; the error, the warning and
the log record say where the instances were loaded, where the attribute was
touched and which option loads it; the strict ``raiseload_*`` options keep
raising on every touch; call sites are the user's line for reads, flushes,
commits and ``AsyncSession``.

Lines are found by the tag comment they carry, so the expected messages
spell out the exact file, line and function.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import types
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, ForeignKey, String, Text, select
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    deferred,
    mapped_column,
    relationship,
    selectinload,
    sessionmaker,
)

import nplus1loader
from nplus1loader import (
    LazyLoadingAttributeError,
    NPlusOneWarning,
    _modes,
    _report,
    configure,
    default_columns,
    enable,
    nplus1loader_cols,
    raiseload_all,
    stats,
)
from nplus1loader import nplus1loader as nplus1
from tests._db import QueryCounter, setup_schema
from tests.ergo_models import AUTHORS, Author, Book, stock
from tests.ergo_models import async_url as ergo_async_url

ENV = "NPLUS1LOADER_MODE"
HERE = __file__
LOGGER = "nplus1loader.NPlusOneLazyColumnLoader"


def line(tag: str) -> int:
    """The line of this file that carries the comment ``# <tag>`` (last, or
    before a ``# noqa``)."""
    with open(HERE, encoding="utf-8") as source:
        found = [
            n
            for n, text in enumerate(source, 1)
            if text.rstrip().endswith(f"# {tag}") or f"# {tag}  # noqa" in text
        ]
    assert len(found) == 1, (tag, found)
    return found[0]


def site(tag: str, function: str) -> str:
    return f"{HERE}:{line(tag)} in {function}()"


@pytest.fixture
def ergo_engine(ergo_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """The shared ``ergo_engine`` with no mode forced from outside: the suite
    itself may run under --nplus1-mode or NPLUS1LOADER_MODE."""
    monkeypatch.delenv(ENV, raising=False)
    previous = _modes.set_forced_mode(None)
    previous_test = _modes.set_test_mode(None)
    yield ergo_engine
    _modes.set_forced_mode(previous)
    _modes.set_test_mode(previous_test)
    configure(threshold=2, skip_packages=())


# ------------------------------------------------------------ raise mode


def test_raise_names_query_touch_and_fix(ergo_engine: Engine) -> None:
    """A loop over the query's instances raises at the first touch, before
    any SQL, with the full diagnosis."""
    with Session(ergo_engine) as session:
        authors = session.scalars(AUTHORS.options(nplus1(mode="raise"))).all()  # q-rel
        with QueryCounter(ergo_engine) as q, pytest.raises(LazyLoadingAttributeError) as info:
            for author in authors:
                author.books  # t-rel  # noqa: B018
    fn = "test_raise_names_query_touch_and_fix"
    assert str(info.value) == (
        f"Author.books: N+1 pattern: touched on 1 of 6 Author loaded by the query at "
        f"{site('q-rel', fn)}; touched at {site('t-rel', fn)}. "
        "Load it in that query: selectinload(Author.books)"
    )
    assert q.count == 0
    pattern = info.value.pattern
    assert (pattern.instances, pattern.fix, pattern.kind) == (
        6,
        "selectinload(Author.books)",
        "relationship",
    )


def test_raise_for_a_column_names_undefer(ergo_engine: Engine) -> None:
    with Session(ergo_engine) as session:
        authors = session.scalars(AUTHORS.options(nplus1loader_cols("bio", mode="raise"))).all()
        with pytest.raises(LazyLoadingAttributeError) as info:
            authors[2].bio  # noqa: B018
    message = str(info.value)
    assert message.startswith("Author.bio: N+1 pattern: touched on 1 of 6 Author loaded by ")
    assert message.endswith(". Load it in that query: undefer(Author.bio)")


def test_raise_for_a_nested_touch_spells_the_path_from_the_root(ergo_engine: Engine) -> None:
    query = AUTHORS.options(selectinload(Author.books).nplus1loader("*", mode="raise"))
    with Session(ergo_engine) as session:
        authors = session.scalars(query).all()  # q-nested
        books = [book for author in authors for book in author.books]
        with pytest.raises(LazyLoadingAttributeError) as info:
            books[0].reviews  # t-nested  # noqa: B018
    fn = "test_raise_for_a_nested_touch_spells_the_path_from_the_root"
    assert str(info.value) == (
        f"Book.reviews: N+1 pattern: touched on 1 of {len(books)} Book loaded by the query "
        f"at {site('q-nested', fn)}; touched at {HERE}:{line('t-nested')} in "
        f"{fn}(). Load it in that "
        "query: selectinload(Author.books).selectinload(Book.reviews)"
    )


def test_one_instance_loads_as_stock_in_raise_mode(ergo_engine: Engine) -> None:
    """One instance is no N+1 pattern: it loads with stock's statements
    (same SQL, same count), without an error or a warning."""
    one = select(Author).where(Author.id == 4)

    def touch(*options: Any) -> tuple[list[str], list[str], list[Any]]:
        with Session(ergo_engine) as session:
            author = session.scalars(one.options(*options)).one()
            with QueryCounter(ergo_engine) as q, warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                titles = [book.title for book in author.books]
            assert stats(session) == nplus1loader.Stats()
        return titles, q.statements, caught

    stock_titles, stock_statements, _ = touch()
    assert stock_titles == ["book 4.0"] and len(stock_statements) == 1
    for mode in ("raise", "warn"):
        assert touch(nplus1(mode=mode)) == (stock_titles, stock_statements, [])


def test_one_instance_of_enable_raise_loads_as_stock(ergo_engine: Engine) -> None:
    """The issue's case: ``session.get(...)`` then a relationship."""
    with enable(Session(ergo_engine), mode="raise") as session:
        session.scalars(select(Author).where(Author.id == 1)).one()
        author = session.get(Author, 1)
        assert author is not None
        with QueryCounter(ergo_engine) as q:
            assert [b.title for b in author.books] == ["book 1.0"]
        assert q.count == 1


def test_strict_options_raise_for_one_instance(ergo_engine: Engine) -> None:
    with Session(ergo_engine) as session:
        author = session.scalars(
            select(Author).where(Author.id == 1).options(raiseload_all("*"))
        ).one()
        with pytest.raises(LazyLoadingAttributeError) as info:
            author.books  # t-strict  # noqa: B018
    assert str(info.value) == (
        "Author.books is not available due to raiseload; touched at "
        f"{site('t-strict', 'test_strict_options_raise_for_one_instance')}. "
        "Load it in the query: selectinload(Author.books)"
    )


def test_threshold_is_a_setting(ergo_engine: Engine) -> None:
    """Below the threshold raise mode batches, as load mode does."""
    expected, _ = stock(ergo_engine, "books")
    configure(threshold=7)
    for mode in ("raise", "warn"):
        with Session(ergo_engine) as session:
            authors = session.scalars(AUTHORS.options(nplus1(mode=mode))).all()
            with QueryCounter(ergo_engine) as q, warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                assert [[b.title for b in a.books] for a in authors] == expected
            assert (q.count, caught) == (1, [])
    configure(threshold=6)
    with Session(ergo_engine) as session:
        authors = session.scalars(AUTHORS.options(nplus1(mode="raise"))).all()
        with pytest.raises(LazyLoadingAttributeError, match="touched on 1 of 6 Author"):
            authors[0].books  # noqa: B018


def test_threshold_one_reports_every_lazy_load(ergo_engine: Engine) -> None:
    """``threshold=1`` makes a lone instance a pattern too: warn mode warns
    after stock's load, raise mode raises."""
    configure(threshold=1)
    one = select(Author).where(Author.id == 1)
    with Session(ergo_engine) as session:
        author = session.scalars(one.options(nplus1(mode="warn"))).one()
        with QueryCounter(ergo_engine) as q, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert [b.title for b in author.books] == ["book 1.0"]
        assert q.count == 1
        assert [str(w.message).split(":")[:2] for w in caught] == [
            ["Author.books", " N+1 pattern"]
        ]
    with Session(ergo_engine) as session:
        author = session.scalars(one.options(nplus1(mode="raise"))).one()
        with pytest.raises(LazyLoadingAttributeError, match="touched on 1 of 1 Author"):
            author.books  # noqa: B018


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
def test_threshold_must_be_a_positive_integer(value: Any) -> None:
    with pytest.raises(ArgumentError) as info:
        configure(threshold=value)
    assert str(info.value) == f"configure(): threshold must be a positive integer, got {value!r}"
    assert _report.threshold() == 2


def test_expired_attributes_say_so(ergo_engine: Engine) -> None:
    with Session(ergo_engine) as session:
        authors = session.scalars(AUTHORS.options(nplus1(mode="raise"))).all()  # q-expired
        session.commit()
        with QueryCounter(ergo_engine) as q, pytest.raises(LazyLoadingAttributeError) as info:
            authors[1].name  # t-expired  # noqa: B018
    fn = "test_expired_attributes_say_so"
    assert str(info.value) == (
        f"Author.name: N+1 pattern: touched on 1 of 6 expired Author loaded by the query at "
        f"{site('q-expired', fn)}; touched at {site('t-expired', fn)}. Expired instances "
        "(after commit() or expire()) refresh one at a time: keep them loaded with "
        "expire_on_commit=False, or reload them in one query with "
        "select(Author).execution_options(populate_existing=True)"
    )
    assert q.count == 0


def test_expired_single_instance_refreshes_as_stock(ergo_engine: Engine) -> None:
    with Session(ergo_engine) as session:
        author = session.scalars(
            select(Author).where(Author.id == 2).options(nplus1(mode="raise"))
        ).one()
        session.commit()
        with QueryCounter(ergo_engine) as q:
            assert author.name == "author 2"
        assert q.count == 1


# ------------------------------------------------------------- warn mode


def test_warning_and_log_record_carry_the_same_fields(
    ergo_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    with Session(ergo_engine) as session:
        authors = session.scalars(AUTHORS.options(nplus1(mode="warn"))).all()  # q-warn
        with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
            warnings.simplefilter("always")
            authors[0].books  # t-warn  # noqa: B018
    fn = "test_warning_and_log_record_carry_the_same_fields"
    [warning] = [w for w in caught if issubclass(w.category, NPlusOneWarning)]
    assert (warning.filename, warning.lineno) == (HERE, line("t-warn"))
    assert str(warning.message) == (
        f"Author.books: N+1 pattern: touched on 1 of 6 Author loaded by the query at "
        f"{site('q-warn', fn)}; touched at {site('t-warn', fn)}. "
        "Load it in that query: selectinload(Author.books)"
    )
    pattern = warning.message.pattern  # type: ignore[union-attr]
    assert (pattern.instances, str(pattern.query_site), str(pattern.touch_site)) == (
        6,
        site("q-warn", fn),
        site("t-warn", fn),
    )
    assert (pattern.fix, pattern.kind) == ("selectinload(Author.books)", "relationship")
    [record] = [r for r in caplog.records if r.name == LOGGER]
    fields = {k: v for k, v in record.__dict__.items() if k.startswith("nplus1_")}
    assert fields == {
        "nplus1_model": "Author",
        "nplus1_attribute": "books",
        "nplus1_instances": 6,
        "nplus1_call_site": f"{site('t-warn', fn)}",
        "nplus1_pattern": True,
        "nplus1_query_site": site("q-warn", fn),
        "nplus1_touch_site": f"{site('t-warn', fn)}",
        "nplus1_fix": "selectinload(Author.books)",
        "nplus1_kind": "relationship",
    }


def test_nested_batch_reports_the_root_query(ergo_engine: Engine) -> None:
    """Books a batch brought in were loaded for the root query: a touch on
    them names that query and the path from its root entity."""
    with enable(Session(ergo_engine), mode="warn") as session:
        authors = session.scalars(AUTHORS).all()  # q-root
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            books = [book for author in authors for book in author.books]
            books[0].reviews  # t-deep  # noqa: B018
    fn = "test_nested_batch_reports_the_root_query"
    messages = [str(w.message) for w in caught if issubclass(w.category, NPlusOneWarning)]
    assert messages[1] == (
        f"Book.reviews: N+1 pattern: touched on 1 of {len(books)} Book loaded by the query "
        f"at {site('q-root', fn)}; touched at {HERE}:{line('t-deep')} in "
        f"{fn}(). Load it in that query: selectinload(Author.books).selectinload(Book.reviews)"
    )
    assert len(messages) == 2


def test_load_mode_records_no_query_site(ergo_engine: Engine) -> None:
    """Load mode with no test run collecting pays nothing for query sites."""
    with Session(ergo_engine) as session:
        authors = session.scalars(AUTHORS.options(nplus1())).all()
        profile = nplus1loader._arming.profile_of(authors[0]._sa_instance_state)  # type: ignore[attr-defined]
        assert profile is not None and profile.query_site is None


# ---------------------------------------------------------- deferred group


class GroupBase(DeclarativeBase):
    pass


class Note(GroupBase):
    __tablename__ = "pattern_note"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(String(50))
    body: Mapped[str] = deferred(mapped_column(Text), group="text")
    summary: Mapped[str] = deferred(mapped_column(Text), group="text")


def test_raise_for_a_deferred_group_names_undefer_group(engine: Engine) -> None:
    setup_schema(engine, GroupBase.metadata)
    with Session(engine) as session:
        session.add_all(Note(id=n, title=f"t{n}", body=f"b{n}", summary=f"s{n}") for n in (1, 2))
        session.commit()
    with Session(engine) as session:
        notes = session.scalars(select(Note).order_by(Note.id).options(nplus1(mode="raise"))).all()
        with pytest.raises(LazyLoadingAttributeError) as info:
            notes[0].body  # noqa: B018
    assert str(info.value).endswith(". Load it in that query: undefer_group('text')")
    assert str(info.value).startswith("Note.body: N+1 pattern: touched on 1 of 2 Note ")


# ------------------------------------------------------------- call sites

_SERIALISER = '''
def dump(authors):
    out = []
    for author in authors:
        out.append([book.title for book in author.books])
    return out
'''


def test_skip_packages_reports_the_caller_of_a_serialiser(ergo_engine: Engine) -> None:
    module = types.ModuleType("fake_serialiser")
    exec(compile(_SERIALISER, "/virtual/fake_serialiser.py", "exec"), module.__dict__)
    sys.modules["fake_serialiser"] = module
    try:
        configure(skip_packages=["fake_serialiser"])
        with Session(ergo_engine) as session:
            authors = session.scalars(AUTHORS.options(nplus1(mode="raise"))).all()
            with pytest.raises(LazyLoadingAttributeError) as info:
                module.dump(authors)  # t-serialiser
        fn = "test_skip_packages_reports_the_caller_of_a_serialiser"
        assert f"; touched at {site('t-serialiser', fn)}. " in str(info.value)
        configure(skip_packages=())
        with Session(ergo_engine) as session:
            authors = session.scalars(AUTHORS.options(nplus1(mode="raise"))).all()
            with pytest.raises(LazyLoadingAttributeError) as info:
                module.dump(authors)
        assert "; touched at /virtual/fake_serialiser.py:5 in dump()" in str(info.value)
    finally:
        del sys.modules["fake_serialiser"]


def test_skip_packages_pydantic_serialiser(ergo_engine: Engine) -> None:
    """A pydantic model validated from ORM objects touches the relationship
    inside ``pydantic.main``; skipping pydantic reports the user's call."""
    pydantic = pytest.importorskip("pydantic")  # installed with fastapi, a test extra

    class BookOut(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(from_attributes=True)
        title: str

    class AuthorOut(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(from_attributes=True)
        name: str
        books: list[BookOut]

    def touch_site() -> str:
        # Warn mode: pydantic would wrap an error in its ValidationError.
        with Session(ergo_engine) as session:
            authors = session.scalars(AUTHORS.options(nplus1(mode="warn"))).all()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                AuthorOut.model_validate(authors[0])  # t-pydantic
        [message] = [str(w.message) for w in caught if issubclass(w.category, NPlusOneWarning)]
        return message.partition("; touched at ")[2].partition(". Load it")[0]

    pydantic_dir = os.path.dirname(pydantic.__file__)
    found = touch_site()
    assert found.startswith(pydantic_dir + os.sep) and found.endswith(" in model_validate()")
    configure(skip_packages=["pydantic"])
    assert touch_site() == site("t-pydantic", "touch_site")


@pytest.mark.parametrize("value", ["", "pydantic.", "two words", 3])
def test_skip_packages_checks_names(value: Any) -> None:
    with pytest.raises(ArgumentError, match="skip_packages expects package names"):
        configure(skip_packages=[value])


class FlushBase(DeclarativeBase):
    pass


class Team(FlushBase):
    __tablename__ = "pattern_team"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    heroes: Mapped[list[Hero]] = relationship()


class Hero(FlushBase):
    __tablename__ = "pattern_hero"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    team_id: Mapped[int | None] = mapped_column(ForeignKey("pattern_team.id"))


def test_batch_started_by_a_commit_names_the_commit_line(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """On SQLAlchemy 2.0 the flush runs through generated code
    (``<string>:2 in _prepare_impl()``): skipped, as SQLAlchemy's own."""
    setup_schema(engine, FlushBase.metadata)
    with Session(engine) as session:
        session.add_all([Team(id=1, heroes=[Hero(id=1)]), Team(id=2, heroes=[Hero(id=2)])])
        session.commit()
    with enable(Session(engine)) as session, caplog.at_level(logging.WARNING, LOGGER):
        teams = session.scalars(select(Team).order_by(Team.id)).all()
        session.delete(teams[0])
        session.commit()  # t-commit
    [record] = [r for r in caplog.records if r.name == LOGGER]
    assert record.nplus1_call_site == site(  # type: ignore[attr-defined]
        "t-commit", "test_batch_started_by_a_commit_names_the_commit_line"
    )


def test_async_call_sites(
    ergo_engine: Engine, db_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Under ``AsyncSession`` (aiosqlite, asyncpg, aiomysql) the query site
    and the touch site are the awaiting coroutine's lines."""
    url = ergo_async_url(db_name, ergo_engine)

    async def main() -> list[str]:
        async_engine = create_async_engine(url)
        try:
            async with AsyncSession(async_engine) as session:
                authors = (
                    await session.scalars(AUTHORS.options(nplus1(mode="warn")))  # q-async
                ).all()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    await authors[0].awaitable_attrs.books  # t-async
                    await authors[0].awaitable_attrs.bio  # t-async-col
        finally:
            await async_engine.dispose()
        return [str(w.message) for w in caught if issubclass(w.category, NPlusOneWarning)]

    with caplog.at_level(logging.WARNING, LOGGER):
        messages = asyncio.run(main())
    assert messages == [
        f"Author.books: N+1 pattern: touched on 1 of 6 Author loaded by the query at "
        f"{site('q-async', 'main')}; touched at {site('t-async', 'main')}. Load it in that "
        "query: selectinload(Author.books)",
        f"Author.bio: N+1 pattern: touched on 1 of 6 Author loaded by the query at "
        f"{site('q-async', 'main')}; touched at {site('t-async-col', 'main')}. Load it in "
        "that query: undefer(Author.bio)",
    ]
    sites = [r.nplus1_call_site for r in caplog.records if r.name == LOGGER]  # type: ignore[attr-defined]
    assert sites == [site("t-async", "main"), site("t-async-col", "main")]


def test_async_batch_started_by_a_commit_names_the_awaited_commit(
    engine: Engine, db_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """r12 under ``AsyncSession``: the flush of ``await session.commit()``
    loads ``Team.heroes`` of the deleted team for its peers."""
    setup_schema(engine, FlushBase.metadata)
    with Session(engine) as session:
        session.add_all([Team(id=1, heroes=[Hero(id=1)]), Team(id=2, heroes=[Hero(id=2)])])
        session.commit()
    url = ergo_async_url(db_name, engine)

    async def main() -> None:
        async_engine = create_async_engine(url)
        try:
            async with AsyncSession(async_engine) as session:
                enable(session)
                teams = (await session.scalars(select(Team).order_by(Team.id))).all()
                await session.delete(teams[0])
                await session.commit()  # t-async-commit
        finally:
            await async_engine.dispose()

    with caplog.at_level(logging.WARNING, LOGGER):
        asyncio.run(main())
    [record] = [r for r in caplog.records if r.name == LOGGER]
    assert record.nplus1_call_site == site("t-async-commit", "main")  # type: ignore[attr-defined]
    assert record.nplus1_instances == 2  # type: ignore[attr-defined]


# ---------------------------------------------------------- bad input


def test_enable_fails_fast_on_a_bad_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV, "loud")
    with pytest.raises(ArgumentError) as info:
        enable(sessionmaker())
    assert str(info.value) == (
        f"environment variable {ENV}: mode must be one of load, warn, raise, got 'loud'"
    )


def test_first_query_fails_on_a_bad_environment_variable(
    ergo_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, "batch")
    with Session(ergo_engine) as session, pytest.raises(ArgumentError) as info:
        session.scalars(AUTHORS.options(nplus1())).all()
    assert str(info.value) == (
        f"environment variable {ENV}: mode must be one of load, warn, raise, got 'batch'"
    )


def test_stats_says_what_it_accepts(engine: Engine) -> None:
    with pytest.raises(ArgumentError) as info:
        stats(engine)
    assert str(info.value) == (
        "stats() expects a Session, an AsyncSession or a scoped session (the counters are "
        f"per session), got {engine!r}"
    )


def test_default_columns_says_what_it_accepts(ergo_engine: Engine) -> None:
    with Session(ergo_engine) as session:
        author = session.get(Author, 1)
        with pytest.raises(ArgumentError) as info:
            default_columns(author)
    assert str(info.value) == (
        "default_columns() expects a mapped class (or its Mapper, or an aliased class), "
        f"got {author!r}: an instance, not a class"
    )
    assert default_columns(Book) is not None
