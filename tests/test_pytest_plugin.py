"""The pytest plugin (``--nplus1-mode``, the ``nplus1_mode`` ini key, the
``nplus1`` marker, the query-counting fixtures) run through ``pytester``, and
:mod:`nplus1loader.testing` used without pytest.

The inner test runs use the outer run's database: the outer test builds and
fills the ``plugin_`` tables, the inner file maps them and reports, through
its outcome, which mode a touch of an armed attribute ran in.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pytest
from sqlalchemy import Engine, ForeignKey, String, select, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from nplus1loader import _modes
from nplus1loader.testing import QueryCounter, count_queries
from tests._db import setup_schema
from tests.ergo_models import async_url

pytest_plugins = ["pytester"]

ENV = "NPLUS1LOADER_MODE"


class Base(DeclarativeBase):
    pass


class PluginAuthor(Base):
    __tablename__ = "plugin_author"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50))
    books: Mapped[list[PluginBook]] = relationship(order_by="PluginBook.id")


class PluginBook(Base):
    __tablename__ = "plugin_book"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    author_id: Mapped[int] = mapped_column(ForeignKey("plugin_author.id"))
    title: Mapped[str] = mapped_column(String(50))


AUTHORS = 4

# The inner test module: ``observed_mode()`` touches an armed relationship on
# every author and says what happened.
INNER_HEADER = """
import warnings

import pytest
from sqlalchemy import ForeignKey, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker
from sqlalchemy.pool import NullPool

import nplus1loader


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "plugin_author"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    books = relationship("Book", order_by="Book.id")


class Book(Base):
    __tablename__ = "plugin_book"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("plugin_author.id"))
    title: Mapped[str] = mapped_column(String(50))


engine = create_engine({url!r}, poolclass=NullPool)
SessionLocal = nplus1loader.enable(sessionmaker(engine))


def observed_mode():
    with SessionLocal() as session:
        authors = session.scalars(select(Author).order_by(Author.id)).all()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                titles = [[book.title for book in author.books] for author in authors]
            except nplus1loader.LazyLoadingAttributeError:
                return "raise"
        assert titles == {titles!r}
        assert nplus1loader.stats(session).queries == 1
    warned = [w for w in caught if issubclass(w.category, nplus1loader.NPlusOneWarning)]
    return "warn" if warned else "load"
"""

MODE_TESTS = """

def test_unmarked():
    assert observed_mode() == {run!r}


@pytest.mark.nplus1(mode="raise")
def test_marked_raise():
    assert observed_mode() == {marked_raise!r}


@pytest.mark.nplus1("warn")
def test_marked_warn_positionally():
    assert observed_mode() == {marked_warn!r}


@pytest.mark.nplus1(mode="load")
class TestMarkedClass:
    def test_in_class(self):
        assert observed_mode() == {marked_load!r}


@pytest.fixture
def mode_seen_by_a_fixture():
    yield observed_mode()


@pytest.mark.nplus1(mode="raise")
def test_fixtures_run_in_the_marked_mode(mode_seen_by_a_fixture):
    assert mode_seen_by_a_fixture == {marked_raise!r}


def test_unmarked_after_marked_ones():
    assert observed_mode() == {run!r}
"""


@pytest.fixture
def seeded(engine: Engine) -> Engine:
    setup_schema(engine, Base.metadata)
    with Session(engine) as session:
        session.add_all(
            PluginAuthor(
                id=a,
                name=f"author {a}",
                books=[PluginBook(id=10 * a + n, title=f"book {a}.{n}") for n in range(a % 3)],
            )
            for a in range(1, AUTHORS + 1)
        )
        session.commit()
    return engine


@dataclass
class Inner:
    """A pytester set up after the outer database, and the inner module's
    header for that database (with stock lazy loading's titles as oracle)."""

    pytester: pytest.Pytester
    header: str


@pytest.fixture
def inner(seeded: Engine, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Inner:
    # pytester snapshots sys.modules when it is set up and restores it
    # afterwards: set it up only once the database (and so its dialect
    # modules) exists, or the dialect would be imported again later.
    pytester: pytest.Pytester = request.getfixturevalue("pytester")
    monkeypatch.delenv(ENV, raising=False)
    with Session(seeded) as session:
        authors = session.scalars(select(PluginAuthor).order_by(PluginAuthor.id)).all()
        titles = [[book.title for book in author.books] for author in authors]
    url = seeded.url.render_as_string(hide_password=False)
    return Inner(pytester, INNER_HEADER.format(url=url, titles=titles))


@pytest.fixture(autouse=True)
def outer_mode_is_restored() -> Any:
    before = _modes.forced_mode()
    yield
    assert _modes.forced_mode() == before


# ------------------------------------------------------------------ modes


@pytest.mark.parametrize(
    ("args", "ini", "env", "run", "marked"),
    [
        pytest.param((), None, None, "load", None, id="default"),
        pytest.param(("--nplus1-mode=warn",), None, None, "warn", None, id="cli-warn"),
        pytest.param(("--nplus1-mode=raise",), None, None, "raise", None, id="cli-raise"),
        pytest.param((), "raise", None, "raise", None, id="ini-raise"),
        pytest.param(("--nplus1-mode=load",), "raise", None, "load", None, id="cli-over-ini"),
        pytest.param(("--nplus1-mode=raise",), None, "warn", "warn", "warn", id="env-over-all"),
    ],
)
def test_mode_precedence(
    monkeypatch: pytest.MonkeyPatch,
    inner: Inner,
    args: tuple[str, ...],
    ini: str | None,
    env: str | None,
    run: str,
    marked: str | None,
) -> None:
    """Environment variable, then marker, then --nplus1-mode, then the ini
    key, then the code."""
    pytester = inner.pytester
    pytester.makepyfile(
        test_inner=inner.header
        + MODE_TESTS.format(
            run=run,
            marked_raise=marked or "raise",
            marked_warn=marked or "warn",
            marked_load=marked or "load",
        )
    )
    if ini is not None:
        pytester.makeini(f"[pytest]\nnplus1_mode = {ini}\n")
    if env is not None:
        monkeypatch.setenv(ENV, env)
    result = pytester.runpytest("--strict-markers", *args)
    result.assert_outcomes(passed=6)


WARN_TEST = """

def test_touch():
    with SessionLocal() as session:
        authors = session.scalars(select(Author).order_by(Author.id)).all()
        authors[0].books  # the line the warning points at
"""


@pytest.mark.parametrize("as_error", [False, True], ids=["summary", "error"])
def test_warn_mode_points_at_the_test_line(inner: Inner, as_error: bool) -> None:
    """In warn mode pytest's summary (or ``-W error::...``) names the test's
    own line, not SQLAlchemy's."""
    inner.pytester.makepyfile(test_inner=inner.header + WARN_TEST)
    args = ["--nplus1-mode=warn"]
    if as_error:
        args += ["-W", "error::nplus1loader.NPlusOneWarning"]
    result = inner.pytester.runpytest(*args)
    written = (inner.pytester.path / "test_inner.py").read_text().splitlines()
    line = written.index("        authors[0].books  # the line the warning points at") + 1
    message = (
        f"Author.books: N+1 loading of {AUTHORS} instances at *test_inner.py:{line} in test_touch()"
    )
    if as_error:
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines([f"*NPlusOneWarning: {message}"])
    else:
        result.assert_outcomes(passed=1, warnings=1)
        result.stdout.fnmatch_lines([f"*test_inner.py:{line}: NPlusOneWarning: {message}"])


@pytest.mark.parametrize(
    "marker",
    [
        pytest.param('nplus1(mode="loud")', id="unknown-mode"),
        pytest.param("nplus1()", id="no-mode"),
        pytest.param('nplus1("load", mode="raise")', id="two-modes"),
    ],
)
def test_bad_marker_errors_the_test(inner: Inner, marker: str) -> None:
    pytester = inner.pytester
    pytester.makepyfile(
        test_inner=inner.header
        + f"\n\n@pytest.mark.{marker}\ndef test_it():\n    observed_mode()\n"
        "\n\ndef test_next():\n    assert observed_mode() == 'load'\n"
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["*use @pytest.mark.nplus1(mode=...) with one of load, warn, raise*"]
    )


def test_bad_option_values_are_usage_errors(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result = pytester.runpytest("--nplus1-mode=loud")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--nplus1-mode: invalid choice: 'loud'*"])
    pytester.makeini("[pytest]\nnplus1_mode = loud\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*nplus1_mode ini key: expected one of load, warn, raise*"])


def test_marker_is_documented(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.nplus1(mode): force the nplus1loader mode*"])


@pytest.mark.parametrize(
    ("args", "env", "header"),
    [
        pytest.param((), None, None, id="none"),
        pytest.param(
            ("--nplus1-mode=raise",), None, "mode raise (--nplus1-mode / nplus1_mode)", id="cli"
        ),
        pytest.param(("--nplus1-mode=raise",), "warn", f"mode warn ({ENV})", id="env"),
    ],
)
def test_report_header(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    args: tuple[str, ...],
    env: str | None,
    header: str | None,
) -> None:
    monkeypatch.delenv(ENV, raising=False)
    if env is not None:
        monkeypatch.setenv(ENV, env)
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result = pytester.runpytest(*args)
    lines = [line for line in result.stdout.lines if line.startswith("nplus1loader:")]
    assert lines == ([f"nplus1loader: {header}"] if header else [])


# -------------------------------------------------------------- registration


def test_registered_through_the_pytest11_entry_point(pytester: pytest.Pytester) -> None:
    [found] = [ep for ep in entry_points(group="pytest11") if ep.name == "nplus1loader"]
    assert found.value == "nplus1loader.pytest_plugin"
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result = pytester.runpytest("-p", "no:nplus1loader", "--nplus1-mode=raise")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unrecognized arguments: --nplus1-mode=raise*"])


# ------------------------------------------------------------------ fixtures

COUNTING_TESTS = """

def test_plugin_fixtures(count_queries, nplus1_count_queries):
    with SessionLocal() as session:
        with count_queries(engine) as q, nplus1_count_queries(engine) as q2:
            authors = session.scalars(select(Author).order_by(Author.id)).all()
            [author.books for author in authors]
    assert q.count == q2.count == 2
    assert [s.split()[0] for s in q.statements] == ["SELECT", "SELECT"]
    q.assert_count(2)
    with pytest.raises(AssertionError, match="expected 1 statements, got 2"):
        q.assert_count(1)
"""

PROJECT_CONFTEST = """
import pytest


@pytest.fixture
def count_queries():
    return "the project's own fixture"
"""

OVERRIDDEN_TESTS = """

def test_project_fixture_wins(count_queries, nplus1_count_queries):
    assert count_queries == "the project's own fixture"
    with nplus1_count_queries(engine) as q:
        with SessionLocal() as session:
            session.scalars(select(Author)).all()
    assert q.count == 1
"""


def test_count_queries_fixtures(inner: Inner) -> None:
    inner.pytester.makepyfile(test_inner=inner.header + COUNTING_TESTS)
    inner.pytester.runpytest().assert_outcomes(passed=1)


def test_a_project_count_queries_fixture_takes_precedence(inner: Inner) -> None:
    inner.pytester.makeconftest(PROJECT_CONFTEST)
    inner.pytester.makepyfile(test_inner=inner.header + OVERRIDDEN_TESTS)
    inner.pytester.runpytest().assert_outcomes(passed=1)


# ------------------------------------------------- nplus1loader.testing


def test_counter_without_pytest(seeded: Engine) -> None:
    with Session(seeded) as session:
        counter = count_queries(seeded)
        assert isinstance(counter, QueryCounter)
        with counter as q:
            session.execute(text("SELECT 1"))
            session.scalars(select(PluginAuthor)).all()
        session.execute(text("SELECT 2"))
    assert q.count == 2
    assert q.statements[0] == "SELECT 1"
    assert "plugin_author" in q.statements[1]
    assert repr(q) == "<QueryCounter count=2>"


def test_failure_message_lists_the_statements(seeded: Engine) -> None:
    with count_queries(seeded) as q, seeded.connect() as conn:
        conn.execute(text("SELECT 1"))
        conn.execute(text("SELECT\n  2"))
    with pytest.raises(AssertionError) as info:
        q.assert_count(1)
    assert str(info.value) == "expected 1 statements, got 2:\n  1. SELECT 1\n  2. SELECT 2"
    with count_queries(seeded) as empty:
        pass
    with pytest.raises(AssertionError, match=r"got 0:\n  \(none\)$"):
        empty.assert_count(3)


def test_counter_on_a_connection_counts_that_connection_only(seeded: Engine) -> None:
    with seeded.connect() as mine, seeded.connect() as other, count_queries(mine) as q:
        mine.execute(text("SELECT 1"))
        other.execute(text("SELECT 2"))
    assert q.statements == ["SELECT 1"]


def test_counter_counts_every_thread(seeded: Engine) -> None:
    """A test client may run the application in a thread of its own."""

    def query() -> None:
        with seeded.connect() as conn:
            conn.execute(text("SELECT 1"))

    with count_queries(seeded) as q:
        threads = [threading.Thread(target=query) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert q.count == 3


def test_counter_on_async_engine_and_connection(seeded: Engine, db_name: str) -> None:
    url = async_url(db_name, seeded)

    async def main() -> tuple[int, int]:
        async_engine = create_async_engine(url)
        try:
            with count_queries(async_engine) as on_engine:
                async with async_engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
                    with count_queries(conn) as on_connection:
                        await conn.execute(text("SELECT 2"))
            return on_engine.count, on_connection.count
        finally:
            await async_engine.dispose()

    assert asyncio.run(main()) == (2, 1)
