"""The pytest plugin (``--nplus1-mode``, the ``nplus1_mode`` ini key, the
``nplus1`` marker, the query-counting fixtures) run through ``pytester``, and
:mod:`nplus1loader.testing` used without pytest.

The inner test runs use the outer run's database: the outer test builds and
fills the ``plugin_`` tables, the inner file maps them and reports, through
its outcome, which mode a touch of an armed attribute ran in.
"""

from __future__ import annotations

import asyncio
import json
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
        pytest.param(("--nplus1-mode=raise",), None, "warn", "warn", None, id="env-over-cli"),
        pytest.param((), "raise", "warn", "warn", None, id="marker-over-env"),
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
    """The marker, then the environment variable, then --nplus1-mode, then
    the ini key, then the code (issue 17: a test's marker outranks
    NPLUS1LOADER_MODE)."""
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
        f"Author.books: N+1 pattern: touched on 1 of {AUTHORS} Author loaded by the query at "
        f"*test_inner.py:{line - 1} in test_touch(); touched at *test_inner.py:{line} in "
        "test_touch(). Load it in that query: selectinload(Author.books)"
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
def test_bad_marker_fails_at_collection(inner: Inner, marker: str) -> None:
    """No test runs: a misspelt marker would run it in a mode nobody asked
    for."""
    pytester = inner.pytester
    pytester.makepyfile(
        test_inner=inner.header
        + f"\n\n@pytest.mark.{marker}\ndef test_it():\n    observed_mode()\n"
        "\n\ndef test_next():\n    assert observed_mode() == 'load'\n"
    )
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.assert_outcomes()
    result.stderr.fnmatch_lines(
        [
            "ERROR: test_inner.py::test_it: use @pytest.mark.nplus1(mode=...) with one of "
            "load, warn, raise; got Mark(name='nplus1'*"
        ]
    )


def test_bad_option_values_are_usage_errors(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result = pytester.runpytest("--nplus1-mode=loud")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--nplus1-mode: invalid choice: 'loud'*"])
    result = pytester.runpytest("--nplus1-enable=loud")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--nplus1-enable: invalid choice: 'loud'*"])
    pytester.makeini("[pytest]\nnplus1_mode = loud\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*nplus1_mode ini key: expected one of load, warn, raise*"])
    pytester.makeini("[pytest]\nnplus1_enable = loud\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: nplus1_enable ini key: expected one of load, warn, raise, true or false, "
            "got 'loud'"
        ]
    )


def test_bad_environment_variable_fails_at_start_up(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, "loud")
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "1 passed" not in result.stdout.str()
    result.stderr.fnmatch_lines(
        [f"ERROR: environment variable {ENV}: mode must be one of load, warn, raise, got 'loud'"]
    )


AUDIT_TESTS = """

def page():
    with SessionLocal() as session:
        authors = session.scalars(select(Author).order_by(Author.id)).all()  # the query
        for author in authors:
            author.books  # the touch
        return nplus1loader.stats(session).queries


def test_page():
    assert page() == 1


def test_page_again():
    assert page() == 1


def test_one_author():
    with SessionLocal() as session:
        author = session.scalars(select(Author).where(Author.id == 2)).one()
        assert [book.title for book in author.books] == ["book 2.0", "book 2.1"]
"""


def audit(inner: Inner, enabled_in_code: bool) -> tuple[pytest.Pytester, str, str]:
    """The inner module with AUDIT_TESTS; unless ``enabled_in_code`` its
    sessionmaker is a plain one, as in a project that never heard of
    nplus1loader.  Returns the query's and the touch's sites."""
    header = inner.header
    if not enabled_in_code:
        header = header.replace(
            "SessionLocal = nplus1loader.enable(sessionmaker(engine))",
            "SessionLocal = sessionmaker(engine)",
        )
    inner.pytester.makepyfile(test_inner=header + AUDIT_TESTS)
    path = inner.pytester.path / "test_inner.py"
    written = path.read_text().splitlines()
    query = next(n for n, text in enumerate(written, 1) if text.endswith("# the query"))
    touch = next(n for n, text in enumerate(written, 1) if text.endswith("# the touch"))
    return inner.pytester, f"{path}:{query} in page()", f"{path}:{touch} in page()"


EXPECTED_SUMMARY = [
    "*= nplus1loader: N+1 patterns =*",
    f"Author.books: {AUTHORS} instances, touched 2 times",
    "    query:   {query}",
    "    touched: {touch}",
    "    fix:     selectinload(Author.books)",
    "    tests:   test_inner.py::test_page, test_inner.py::test_page_again",
]


@pytest.mark.parametrize(
    ("args", "ini", "warnings"),
    [
        pytest.param(("--nplus1-enable",), None, 2, id="flag-warns"),
        pytest.param(("--nplus1-enable=load",), None, 0, id="flag-load"),
        pytest.param((), "nplus1_enable = true", 2, id="ini-true"),
        pytest.param((), "nplus1_enable = load", 0, id="ini-load"),
    ],
)
def test_enable_audits_a_suite_without_code_changes(
    inner: Inner, args: tuple[str, ...], ini: str | None, warnings: int
) -> None:
    """Every Session of the test process is enabled; the summary lists each
    pattern once, with the tests that hit it; one author is no pattern."""
    pytester, query, touch = audit(inner, enabled_in_code=False)
    if ini is not None:
        pytester.makeini(f"[pytest]\n{ini}\n")
    result = pytester.runpytest(*args)
    result.assert_outcomes(passed=3, warnings=warnings)
    mode = "warn" if warnings else "load"
    result.stdout.fnmatch_lines(
        [f"nplus1loader: every Session enabled, mode {mode} (--nplus1-enable)"]
    )
    result.stdout.fnmatch_lines(
        [line.format(query=query, touch=touch) for line in EXPECTED_SUMMARY]
    )
    # The summary's line, and pytest's own (one for identical warnings).
    assert result.stdout.str().count("Author.books: ") == (2 if warnings else 1)
    # The run put Session back as it found it.
    assert "_nplus1loader_mode" not in vars(Session)


def test_enable_raise_fails_the_n_plus_1_tests_only(inner: Inner) -> None:
    pytester, query, touch = audit(inner, enabled_in_code=False)
    result = pytester.runpytest("--nplus1-enable=raise")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            f"E*nplus1loader.LazyLoadingAttributeError: Author.books: N+1 pattern: touched "
            f"on 1 of {AUTHORS} Author loaded by the query at {query}; touched at {touch}. "
            "Load it in that query: selectinload(Author.books)"
        ]
    )
    result.stdout.fnmatch_lines(["    tests:   test_inner.py::test_page, *::test_page_again"])


def test_without_enable_nothing_is_armed_or_reported(inner: Inner) -> None:
    pytester, _, _ = audit(inner, enabled_in_code=False)
    result = pytester.runpytest()
    result.assert_outcomes(failed=2, passed=1)  # stock lazy loading: stats stay at 0
    assert "nplus1loader: N+1 patterns" not in result.stdout.str()
    assert Session.__dict__.get("_nplus1loader_mode") is None


def test_report_file_for_ci(inner: Inner) -> None:
    """``--nplus1-report`` collects what code enabled in load mode batches,
    query sites included, and writes it as JSON."""
    pytester, query, touch = audit(inner, enabled_in_code=True)
    report = pytester.path / "n1.json"
    result = pytester.runpytest(f"--nplus1-report={report}")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [line.format(query=query, touch=touch) for line in EXPECTED_SUMMARY]
        + [f"written to {report}"]
    )
    assert json.loads(report.read_text()) == {
        "patterns": [
            {
                "attribute": "Author.books",
                "kind": "relationship",
                "instances": AUTHORS,
                "touches": 2,
                "query_site": query,
                "touch_site": touch,
                "fix": "selectinload(Author.books)",
                "tests": ["test_inner.py::test_page", "test_inner.py::test_page_again"],
            }
        ]
    }


def test_report_file_without_patterns(inner: Inner) -> None:
    inner.pytester.makepyfile(test_inner=inner.header + "\n\ndef test_it():\n    pass\n")
    report = inner.pytester.path / "n1.json"
    result = inner.pytester.runpytest(f"--nplus1-report={report}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*= nplus1loader: N+1 patterns =*", "no N+1 pattern seen"])
    assert json.loads(report.read_text()) == {"patterns": []}


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


def test_assert_at_most_passes_at_the_limit_and_fails_above_it(seeded: Engine) -> None:
    """The ceiling form: N statements pass ``assert_at_most(N)`` (and any
    higher limit); N+1 fail with the same listing ``assert_count`` gives."""
    with count_queries(seeded) as q, seeded.connect() as conn:
        conn.execute(text("SELECT 1"))
        conn.execute(text("SELECT\n  2"))
    q.assert_at_most(2)
    q.assert_at_most(3)
    with pytest.raises(AssertionError) as info:
        q.assert_at_most(1)
    assert str(info.value) == (
        "expected at most 1 statements, got 2:\n  1. SELECT 1\n  2. SELECT 2"
    )
    with count_queries(seeded) as empty:
        pass
    empty.assert_at_most(0)


def test_count_queries_at_most_checks_on_leaving_the_block(seeded: Engine) -> None:
    """``count_queries(bind, at_most=N)`` asserts when the block ends, as
    pytest-django's ``django_assert_max_num_queries`` does; a block that
    raised keeps its own exception."""
    with count_queries(seeded, at_most=2) as q, seeded.connect() as conn:
        conn.execute(text("SELECT 1"))
        conn.execute(text("SELECT 2"))
    assert q.count == 2
    with (
        pytest.raises(AssertionError) as info,
        count_queries(seeded, at_most=1),
        seeded.connect() as conn,
    ):
        conn.execute(text("SELECT 1"))
        conn.execute(text("SELECT 2"))
    assert str(info.value) == (
        "expected at most 1 statements, got 2:\n  1. SELECT 1\n  2. SELECT 2"
    )
    with (
        pytest.raises(RuntimeError, match="the block's own error"),
        count_queries(seeded, at_most=0),
        seeded.connect() as conn,
    ):
        conn.execute(text("SELECT 1"))
        raise RuntimeError("the block's own error")


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
