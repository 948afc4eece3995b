"""Every Python block of the README, run as written: each block is marked
``<!-- snippet: name -->`` and each test imports the blocks it needs as the
modules the README names (``blog_models.py``, ``library_models.py``,
``library_app.py``), pointed at the test database by the ``DATABASE_URL``
environment variable the snippets read where they read one.

The oracle is the same endpoint with nplus1loader switched off (stock lazy
loading): same JSON, one query per author instead of one for all.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, defaultload, joinedload

import nplus1loader
from nplus1loader import LazyLoadingAttributeError
from tests._db import QueryCounter, setup_schema
from tests.ergo_models import async_url

pytest_plugins = ["pytester"]

DOCS = Path(__file__).resolve().parents[2] / "README.md"
_SNIPPET = re.compile(r"<!-- snippet: (\w+) -->\n```python\n(.*?)```", re.DOTALL)
_module_numbers = itertools.count()

#: The module name each snippet is imported as: the file name the README
#: gives it, where other snippets import it by that name.
MODULE_NAMES = {
    "blog_models": "blog_models",
    "fastapi_models": "library_models",
    "fastapi_sync": "library_app",
    # Not asyncio.py: that would shadow the standard library's asyncio, and
    # import_snippets() would drop the real one from sys.modules.
    "asyncio": "asyncio_snippet",
}

AUTHORS = 7


def snippets() -> dict[str, str]:
    return dict(_SNIPPET.findall(DOCS.read_text(encoding="utf-8")))


def write_snippets(directory: Path, *names: str) -> list[Path]:
    """Each named snippet as the file the README names (``MODULE_NAMES``),
    or as ``<snippet>.py``."""
    found = snippets()
    paths = []
    for name in names:
        path = directory / f"{MODULE_NAMES.get(name, name)}.py"
        path.write_text(found[name], encoding="utf-8")
        paths.append(path)
    return paths


def import_snippets(tmp_path: Path, *names: str) -> ModuleType:
    """The named snippets written as their modules, the last one imported
    (fresh: the modules it imports are imported anew too).  For the tests'
    convenience it also carries the names of those modules (``Book``,
    ``Base``)."""
    directory = tmp_path / f"snippets_{next(_module_numbers)}"
    directory.mkdir()
    paths = write_snippets(directory, *names)
    for path in paths:
        # Only an earlier test's snippet module may be dropped here, never a
        # module of the process (a snippet file named after one shadows it).
        earlier = getattr(sys.modules.get(path.stem), "__file__", None) or ""
        assert path.stem not in sys.modules or "snippets_" in earlier, (
            f"snippet file {path.name} shadows the imported module {path.stem}"
        )
        sys.modules.pop(path.stem, None)
    sys.path.insert(0, str(directory))
    try:
        *_, last = paths
        name = f"ergo_docs_{last.stem}_{next(_module_numbers)}"
        spec = importlib.util.spec_from_file_location(name, last)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(directory))
        for path in paths[:-1]:
            imported = sys.modules.pop(path.stem, None)
            for key, value in vars(imported or ModuleType("none")).items():
                module.__dict__.setdefault(key, value)
    return module


def seed(session: Any, module: ModuleType) -> None:
    """Author ``a`` writes ``a % 3`` books, so some write none."""
    for a in range(1, AUTHORS + 1):
        books = [module.Book(id=10 * a + n, title=f"book {a}.{n}") for n in range(a % 3)]
        session.add(module.Author(id=a, name=f"author {a}", books=books))
    session.commit()


def test_every_documented_snippet_is_tested() -> None:
    text = DOCS.read_text(encoding="utf-8")
    # A Python block without a marker would be run by no test.
    assert text.count("```python\n") == len(_SNIPPET.findall(text)) == 12
    assert sorted(snippets()) == [
        "after_commit",
        "asyncio",
        "blog_models",
        "chaining",
        "configure",
        "enable",
        "fastapi_async",
        "fastapi_models",
        "fastapi_sync",
        "flask_app",
        "pytest_example",
        "quickstart",
    ]


def test_configure_snippet_sets_the_process_wide_settings(tmp_path: Path) -> None:
    from nplus1loader import _report

    assert _report.threshold() == 2
    try:
        import_snippets(tmp_path, "configure")
        assert _report.threshold() == 3
        assert _report._in_packages("pydantic.main", _report._skipped_packages)
        assert not _report._in_packages("app.views", _report._skipped_packages)
    finally:
        nplus1loader.configure(threshold=2, skip_packages=[])
    assert _report.threshold() == 2
    assert not _report._in_packages("pydantic.main", _report._skipped_packages)


@pytest.fixture
def database_url(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("NPLUS1LOADER_MODE", raising=False)
    url = engine.url.render_as_string(hide_password=False)
    monkeypatch.setenv("DATABASE_URL", url)
    return url


# -------------------------------------------------------- Flask-SQLAlchemy


@pytest.fixture
def flask_demo(database_url: str, tmp_path: Path) -> Iterator[ModuleType]:
    module = import_snippets(tmp_path, "flask_app")
    module.app.testing = True
    with module.app.app_context():
        setup_schema(module.db.engine, module.db.metadata)
        seed(module.db.session, module)
        module.db.session.remove()
    yield module
    with module.app.app_context():
        module.db.engine.dispose()


def flask_get(module: ModuleType) -> tuple[Any, int, str]:
    with module.app.app_context():
        engine = module.db.engine
    with QueryCounter(engine) as q:
        response = module.app.test_client().get("/authors")
    assert response.status_code == 200
    return response.get_json(), q.count, response.headers["X-Queries-Saved"]


def test_flask_sqlalchemy(flask_demo: ModuleType) -> None:
    nplus1loader.disable(flask_demo.db.session)
    expected, stock_count, _ = flask_get(flask_demo)
    nplus1loader.enable(flask_demo.db.session)
    assert stock_count == 1 + AUTHORS
    assert len(expected) == AUTHORS
    assert flask_get(flask_demo) == (expected, 2, str(stock_count - 2))


@pytest.mark.nplus1(mode="raise")
def test_flask_sqlalchemy_under_the_raise_marker(flask_demo: ModuleType) -> None:
    with pytest.raises(
        LazyLoadingAttributeError, match=r"^Author\.books: N\+1 pattern: touched on 1 of "
    ):
        flask_demo.app.test_client().get("/authors")


# ------------------------------------------------------------------ FastAPI


@pytest.fixture
def fastapi_sync(database_url: str, tmp_path: Path) -> Iterator[ModuleType]:
    module = import_snippets(tmp_path, "fastapi_models", "fastapi_sync")
    setup_schema(module.engine, module.Base.metadata)
    with module.SessionLocal() as session:
        seed(session, module)
    yield module
    module.engine.dispose()


def fastapi_get(module: ModuleType, engine: Any) -> tuple[Any, int]:
    with TestClient(module.app) as client, QueryCounter(engine) as q:
        response = client.get("/authors")
    assert response.status_code == 200
    return response.json(), q.count


def test_fastapi_sync(fastapi_sync: ModuleType) -> None:
    with nplus1loader.disabled():  # the block's context reaches the endpoint's thread
        expected, stock_count = fastapi_get(fastapi_sync, fastapi_sync.engine)
    assert (stock_count, len(expected)) == (1 + AUTHORS, AUTHORS)
    assert fastapi_get(fastapi_sync, fastapi_sync.engine) == (expected, 2)


def test_fastapi_sync_under_nplus1loader_mode_raise(
    fastapi_sync: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NPLUS1LOADER_MODE", "raise")
    with TestClient(fastapi_sync.app) as client, pytest.raises(LazyLoadingAttributeError):
        client.get("/authors")


@pytest.fixture
def fastapi_async(
    engine: Engine, db_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> ModuleType:
    monkeypatch.delenv("NPLUS1LOADER_MODE", raising=False)
    url = async_url(db_name, engine)
    monkeypatch.setenv("DATABASE_URL", url.render_as_string(hide_password=False))
    module = import_snippets(tmp_path, "fastapi_models", "fastapi_async")
    setup_schema(engine, module.Base.metadata)
    with Session(engine) as session:
        seed(session, module)
    return module


def test_fastapi_async(fastapi_async: ModuleType) -> None:
    """Stock lazy loading cannot run here at all (MissingGreenlet); the oracle
    is the same request with every author's books awaited one by one."""
    module = fastapi_async
    Author = module.Author

    @module.app.get("/stock-authors")
    async def stock_authors() -> list[dict[str, Any]]:
        async with module.SessionLocal() as session:
            with nplus1loader.disabled():
                found = (await session.scalars(select(Author).order_by(Author.id))).all()
            return [
                {"name": a.name, "books": [b.title for b in await a.awaitable_attrs.books]}
                for a in found
            ]

    with TestClient(module.app) as client:
        with QueryCounter(module.engine) as stock_q:
            expected = client.get("/stock-authors").json()
        with QueryCounter(module.engine) as q:
            response = client.get("/authors")
    assert (stock_q.count, len(expected)) == (1 + AUTHORS, AUTHORS)
    assert (response.status_code, response.json(), q.count) == (200, expected, 2)


@pytest.mark.nplus1(mode="raise")
def test_fastapi_async_under_the_raise_marker(fastapi_async: ModuleType) -> None:
    with TestClient(fastapi_async.app) as client, pytest.raises(LazyLoadingAttributeError):
        client.get("/authors")


# ------------------------------------------------------- the pytest example

def test_the_documented_pytest_example(
    fastapi_sync: ModuleType, request: pytest.FixtureRequest
) -> None:
    """The README's pytest module, run by pytest next to the FastAPI app's
    two modules it imports, on the database ``fastapi_sync`` seeded."""
    pytester: pytest.Pytester = request.getfixturevalue("pytester")  # after the database
    write_snippets(pytester.path, "fastapi_models", "fastapi_sync")
    # The app's engine pools a connection; give it back before the next test's DDL.
    pytester.makeconftest(
        "import library_app\n\n\ndef pytest_unconfigure():\n    library_app.engine.dispose()\n"
    )
    pytester.makepyfile(test_example=snippets()["pytest_example"])
    pytester.runpytest("--strict-markers").assert_outcomes(passed=2)


# ------------------------------------------ Quickstart, chaining, asyncio

USERS = 20


def seed_blog(session: Any, module: ModuleType) -> None:
    """User ``i`` writes one article; a few have a bio."""
    for i in range(USERS):
        article = module.Article(id=i + 1, title=f"article {i}")
        bio = f"bio {i}" if i % 3 == 0 else ""
        session.add(module.User(id=i + 1, name=f"user {i}", bio=bio, articles=[article]))
    session.commit()


def test_quickstart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Quickstart on its own in-memory SQLite database: the SELECTs its
    comments promise (stock lazy loading would send 63)."""
    monkeypatch.delenv("NPLUS1LOADER_MODE", raising=False)
    # The snippet creates its own engine, so the counter listens on the
    # Engine class: every engine's statements.
    with QueryCounter(Engine) as q:
        module = import_snippets(tmp_path, "blog_models", "quickstart")
    module.engine.dispose()
    selects = [s for s in q.statements if s.lstrip().upper().startswith("SELECT")]
    # users + their articles; users + .name + the refresh after commit; the last query.
    assert len(selects) == 2 + 3 + 1, "\n".join(selects)
    assert module.names == [f"user {i}" for i in range(USERS)]
    assert len(module.users) == USERS
    assert capsys.readouterr().out == "".join(f"user {i} 1\n" for i in range(USERS)) + "user 0\n"


def test_chaining(engine: Engine, tmp_path: Path) -> None:
    """The typed spellings are SQLAlchemy's own: the same cache key as the
    chain from ``joinedload()`` / ``defaultload()``, and the same batches."""
    module = import_snippets(tmp_path, "blog_models", "chaining")
    User, Article = module.User, module.Article
    same = {
        "joined_then_armed": select(User).options(joinedload(User.articles).nplus1loader("*")),
        "articles_raise": select(User).options(defaultload(User.articles).raiseload_all("*")),
        "authors_bio": select(Article).options(
            defaultload(Article.author).nplus1loader_cols("bio")
        ),
    }
    for name, stock_spelling in same.items():
        key = getattr(module, name)._generate_cache_key()
        assert key == stock_spelling._generate_cache_key(), name
    other = select(User).options(defaultload(User.articles).nplus1loader("*"))
    assert module.joined_then_armed._generate_cache_key() != other._generate_cache_key()

    setup_schema(engine, module.Base.metadata)
    with Session(engine) as session:
        seed_blog(session, module)
    expected = [f"bio {i}" if i % 3 == 0 else "" for i in range(USERS)]
    for stmt, bio_queries in (
        (module.authors_bio, 1),
        (select(Article).options(defaultload(Article.author)), USERS),  # the control
    ):
        with Session(engine) as session:
            articles = session.scalars(stmt.order_by(Article.id)).all()
            authors = [article.author for article in articles]  # stock: one query each
            with QueryCounter(engine) as q:
                assert [author.bio for author in authors] == expected
            assert q.count == bio_queries
    with Session(engine) as session:
        users = session.scalars(module.articles_raise.order_by(User.id)).all()
        article = users[0].articles[0]
        with pytest.raises(LazyLoadingAttributeError, match=r"^Article\.author is not"):
            article.author  # noqa: B018


def test_after_commit(engine: Engine, tmp_path: Path) -> None:
    module = import_snippets(tmp_path, "blog_models", "after_commit")
    setup_schema(engine, module.Base.metadata)
    with Session(engine) as session:
        seed_blog(session, module)
    expected = {f"user {i}": [f"article {i}"] for i in range(USERS)}
    with Session(engine) as session, QueryCounter(engine) as q:
        assert module.titles_after_commit(session) == expected
    # The users; after the commit, one refresh and one batch of articles.
    assert q.count == 3


def test_asyncio(engine: Engine, db_name: str, tmp_path: Path) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    module = import_snippets(tmp_path, "blog_models", "asyncio")
    setup_schema(engine, module.Base.metadata)
    with Session(engine) as session:
        seed_blog(session, module)
    async_engine = create_async_engine(async_url(db_name, engine))

    async def run() -> list[dict[str, Any]]:
        try:
            async with AsyncSession(async_engine) as session:
                return await module.list_users(session)
        finally:
            await async_engine.dispose()

    with QueryCounter(async_engine) as q:
        found = asyncio.run(run())
    assert sorted(found, key=lambda u: u["name"]) == sorted(
        ({"name": f"user {i}", "articles": [f"article {i}"]} for i in range(USERS)),
        key=lambda u: u["name"],
    )
    assert q.count == 2


def test_enable(tmp_path: Path) -> None:
    from nplus1loader._session import enabled_mode

    module = import_snippets(tmp_path, "enable")
    with module.SessionLocal() as session:
        assert enabled_mode(session) == "load"
    with Session(module.engine) as session:
        assert enabled_mode(session) is None


def test_no_snippet_shadows_the_package_name() -> None:
    """``import nplus1loader`` then ``from nplus1loader import nplus1loader``
    rebinds the module's name to the function, and ``nplus1loader.enable``
    fails: each block uses one spelling."""
    both = [
        name
        for name, source in snippets().items()
        if re.search(r"^import nplus1loader$", source, re.MULTILINE)
        and re.search(r"^from nplus1loader import .*\bnplus1loader\b", source, re.MULTILINE)
    ]
    assert both == []
    modules = [n for n, s in snippets().items() if "\nimport nplus1loader\n" in f"\n{s}"]
    assert sorted(modules) == [
        "configure",
        "enable",
        "fastapi_async",
        "fastapi_sync",
        "flask_app",
        "pytest_example",
    ]
