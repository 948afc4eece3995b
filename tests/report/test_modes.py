"""Modes ``load`` / ``warn`` / ``raise``, the ``NPLUS1LOADER_MODE`` override
and the forced mode of a test run (what the pytest plugin sets).

Precedence, most important first: ``NPLUS1LOADER_MODE``, the forced mode,
the mode written in the option (or given to ``enable()``).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, joinedload, selectinload, sessionmaker

from nplus1loader import (
    LazyLoadingAttributeError,
    NPlusOneWarning,
    _modes,
    enable,
    nplus1loader,
    nplus1loader_cols,
    nplus1loader_rels,
    raiseload_all,
)
from tests._db import QueryCounter
from tests.ergo_models import AUTHORS, BOOKS, READERS, Author, stock

ENV = "NPLUS1LOADER_MODE"


@pytest.fixture
def ergo_engine(ergo_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    # The suite itself may run under --nplus1-mode or NPLUS1LOADER_MODE:
    # these tests set both explicitly.
    monkeypatch.delenv(ENV, raising=False)
    previous = _modes.set_forced_mode(None)
    yield ergo_engine
    _modes.set_forced_mode(previous)


def observe(
    engine: Engine, reader: str, *options: Any, factory: Callable[[], Session] | None = None
) -> tuple[str, Any, int, list[warnings.WarningMessage]]:
    """Touch ``reader``'s attribute on every loaded instance: which mode ran
    (``raise``, ``warn`` or ``load``), the values, statements and warnings."""
    query, read = READERS[reader]
    with (factory or (lambda: Session(engine)))() as session:
        loaded = session.scalars(query.options(*options)).all()
        with QueryCounter(engine) as q, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                values = read(loaded)
            except LazyLoadingAttributeError:
                return "raise", None, q.count, list(caught)
    ours = [w for w in caught if issubclass(w.category, NPlusOneWarning)]
    return ("warn" if ours else "load"), values, q.count, ours


# --------------------------------------------------------- declared modes


@pytest.mark.parametrize(
    ("make", "reader"),
    [
        pytest.param(lambda mode: nplus1loader("*", mode=mode), "books", id="nplus1loader"),
        pytest.param(lambda mode: nplus1loader_rels("books", mode=mode), "books", id="rels"),
        pytest.param(
            lambda mode: selectinload(Author.books).nplus1loader("*", mode=mode),
            "reviews",
            id="chained",
        ),
    ],
)
@pytest.mark.parametrize("mode", ["load", "warn", "raise"])
def test_mode_keyword_of_the_options(
    ergo_engine: Engine, mode: str, make: Callable[[str], Any], reader: str
) -> None:
    expected, _ = stock(ergo_engine, reader)
    observed, values, count, _ = observe(ergo_engine, reader, make(mode))
    assert observed == mode
    assert (values, count) == ((expected, 1) if mode != "raise" else (None, 0))


@pytest.mark.parametrize("mode", ["load", "warn", "raise"])
def test_mode_keyword_of_the_column_option(ergo_engine: Engine, mode: str) -> None:
    expected, _ = stock(ergo_engine, "bio")
    observed, values, count, _ = observe(ergo_engine, "bio", nplus1loader_cols("bio", mode=mode))
    assert observed == mode
    assert (values, count) == ((expected, 1) if mode != "raise" else (None, 0))


@pytest.mark.parametrize("mode", ["load", "warn", "raise"])
def test_mode_of_enable(ergo_engine: Engine, mode: str) -> None:
    expected, _ = stock(ergo_engine, "books")
    factory = enable(sessionmaker(ergo_engine), mode=mode)
    observed, values, count, _ = observe(ergo_engine, "books", factory=factory)
    assert observed == mode
    assert (values, count) == ((expected, 1) if mode != "raise" else (None, 0))


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: nplus1loader("*", mode="batch"), id="nplus1loader"),
        pytest.param(lambda: nplus1loader_cols("bio", mode="Load"), id="cols"),
        pytest.param(lambda: nplus1loader_rels(mode=""), id="rels"),
        pytest.param(lambda: joinedload(Author.books).nplus1loader(mode="loud"), id="chained"),
    ],
)
def test_unknown_mode_is_rejected(make: Callable[[], Any]) -> None:
    with pytest.raises(ArgumentError, match="mode must be one of load, warn, raise"):
        make()


# ------------------------------------------------------------------ warn


def test_warning_names_the_attribute_and_the_call_site(ergo_engine: Engine) -> None:
    expected, _ = stock(ergo_engine, "books")
    values = []
    with Session(ergo_engine) as session:
        query_line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
        authors = session.scalars(AUTHORS.options(nplus1loader(mode="warn"))).all()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for author in authors:
                line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
                books = author.books
                values.append([book.title for book in books])
    assert values == expected
    assert issubclass(NPlusOneWarning, Warning)
    assert [w.category for w in caught] == [NPlusOneWarning]
    warning = caught[0]
    # Attributed to the line that touched the attribute, so that filters,
    # pytest's summary and -W error point at the loop to fix.
    assert (warning.filename, warning.lineno) == (__file__, line)
    function = "test_warning_names_the_attribute_and_the_call_site()"
    assert str(warning.message) == (
        f"Author.books: N+1 pattern: touched on 1 of {len(authors)} Author loaded by the "
        f"query at {__file__}:{query_line} in {function}; touched at {__file__}:{line} in "
        f"{function}. Load it in that query: selectinload(Author.books)"
    )


def test_warning_as_error_fails_at_the_touch(ergo_engine: Engine) -> None:
    """Under ``-W error::nplus1loader.NPlusOneWarning`` the touch raises (the
    warning is emitted once the batch has run, so the peers are loaded)."""
    expected, _ = stock(ergo_engine, "book_authors")
    with Session(ergo_engine) as session:
        books = session.scalars(BOOKS.options(nplus1loader(mode="warn"))).all()
        with warnings.catch_warnings(), QueryCounter(ergo_engine) as q:
            warnings.simplefilter("error", NPlusOneWarning)
            with pytest.raises(NPlusOneWarning, match=r"^Book\.author: N\+1 pattern: "):
                books[0].author  # noqa: B018
            assert [book.author.name for book in books] == expected
        assert q.count == 1


def test_one_warning_per_batch(ergo_engine: Engine) -> None:
    """Peers loaded by the batch read the value without a second warning."""
    _, _, _, caught = observe(ergo_engine, "book_authors", nplus1loader(mode="warn"))
    assert [str(w.message).split(":")[0] for w in caught] == ["Book.author"]


# ------------------------------------------------------ NPLUS1LOADER_MODE


@pytest.mark.parametrize("declared", ["load", "warn", "raise"])
@pytest.mark.parametrize("env", ["load", "warn", "raise"])
def test_environment_variable_overrides_the_declared_mode(
    ergo_engine: Engine, monkeypatch: pytest.MonkeyPatch, env: str, declared: str
) -> None:
    expected, _ = stock(ergo_engine, "books")
    monkeypatch.setenv(ENV, env)
    observed, values, count, _ = observe(ergo_engine, "books", nplus1loader(mode=declared))
    assert observed == env
    if env != "raise":
        assert (values, count) == (expected, 1)


def test_environment_variable_is_read_when_the_load_happens(
    ergo_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected, _ = stock(ergo_engine, "books")
    with Session(ergo_engine) as session:
        authors = session.scalars(AUTHORS.options(nplus1loader())).all()
        monkeypatch.setenv(ENV, "raise")
        with pytest.raises(LazyLoadingAttributeError):
            authors[0].books  # noqa: B018
        monkeypatch.setenv(ENV, "load")
        with QueryCounter(ergo_engine) as q:
            assert [[b.title for b in a.books] for a in authors] == expected
        assert q.count == 1


@pytest.mark.parametrize("value", [" RAISE ", "Raise\n"])
def test_environment_variable_is_trimmed_and_case_insensitive(
    ergo_engine: Engine, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(ENV, value)
    assert observe(ergo_engine, "books", nplus1loader())[0] == "raise"


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_environment_variable_is_ignored(
    ergo_engine: Engine, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(ENV, value)
    assert observe(ergo_engine, "books", nplus1loader(mode="warn"))[0] == "warn"


def test_bad_environment_variable_fails_at_the_touch(
    ergo_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Session(ergo_engine) as session:
        authors = session.scalars(AUTHORS.options(nplus1loader())).all()
        monkeypatch.setenv(ENV, "batch")
        with pytest.raises(ArgumentError, match=f"environment variable {ENV}: mode must be one"):
            authors[0].books  # noqa: B018


def test_environment_variable_turns_raiseload_into_batches(
    ergo_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``load`` overrides raise options too: production never crashes on a
    raiseload left in the code, it batches."""
    expected, _ = stock(ergo_engine, "bio")
    monkeypatch.setenv(ENV, "load")
    assert observe(ergo_engine, "bio", raiseload_all("*"))[:3] == ("load", expected, 1)


# ------------------------------------------------------------ forced mode


@pytest.mark.parametrize("declared", ["load", "warn", "raise"])
@pytest.mark.parametrize("forced", ["load", "warn", "raise"])
def test_forced_mode_overrides_the_declared_mode(
    ergo_engine: Engine, forced: str, declared: str
) -> None:
    _modes.set_forced_mode(forced)
    assert observe(ergo_engine, "books", nplus1loader(mode=declared))[0] == forced
    factory = enable(sessionmaker(ergo_engine), mode=declared)
    assert observe(ergo_engine, "books", factory=factory)[0] == forced


def test_environment_variable_wins_over_the_forced_mode(
    ergo_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _modes.set_forced_mode("raise")
    monkeypatch.setenv(ENV, "warn")
    assert observe(ergo_engine, "books", nplus1loader())[0] == "warn"
    monkeypatch.delenv(ENV)
    assert observe(ergo_engine, "books", nplus1loader())[0] == "raise"


def test_set_forced_mode_returns_the_previous_one_and_checks_its_argument() -> None:
    previous = _modes.set_forced_mode("warn")
    try:
        assert _modes.set_forced_mode("raise") == "warn"
        assert _modes.forced_mode() == "raise"
        with pytest.raises(ArgumentError):
            _modes.set_forced_mode("loud")
        assert _modes.forced_mode() == "raise"
    finally:
        _modes.set_forced_mode(previous)


def test_unarmed_attributes_are_not_affected_by_the_mode(
    ergo_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mode governs armed attributes; plain lazy loading stays stock."""
    expected, stock_count = stock(ergo_engine, "books")
    monkeypatch.setenv(ENV, "raise")
    assert observe(ergo_engine, "books")[:3] == ("load", expected, stock_count)
