"""The Flask-SQLAlchemy and FastAPI set-ups of the README, run as
written: each test imports the documentation's code blocks (marked
``<!-- snippet: name -->``) as a module, pointed at the test database by the
``DATABASE_URL`` environment variable the snippets read.

The oracle is the same endpoint with nplus1loader switched off (stock lazy
loading): same JSON, one query per author instead of one for all.
"""

from __future__ import annotations

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
from sqlalchemy.orm import Session

import nplus1loader
from nplus1loader import LazyLoadingAttributeError
from tests._db import QueryCounter, setup_schema
from tests.ergo_models import async_url

pytest_plugins = ["pytester"]

DOCS = Path(__file__).resolve().parent.parent / "README.md"
_SNIPPET = re.compile(r"<!-- snippet: (\w+) -->\n```python\n(.*?)```", re.DOTALL)
_module_numbers = itertools.count()

AUTHORS = 7


def snippets() -> dict[str, str]:
    return dict(_SNIPPET.findall(DOCS.read_text(encoding="utf-8")))


def import_snippets(tmp_path: Path, *names: str) -> ModuleType:
    """The named snippets, concatenated, imported as a fresh module."""
    found = snippets()
    source = "\n\n".join(found[name] for name in names)
    name = f"ergo_docs_{'_'.join(names)}_{next(_module_numbers)}"
    path = tmp_path / f"{name}.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def seed(session: Any, module: ModuleType) -> None:
    """Author ``a`` writes ``a % 3`` books, so some write none."""
    for a in range(1, AUTHORS + 1):
        books = [module.Book(id=10 * a + n, title=f"book {a}.{n}") for n in range(a % 3)]
        session.add(module.Author(id=a, name=f"author {a}", books=books))
    session.commit()


def test_every_documented_snippet_is_tested() -> None:
    assert sorted(snippets()) == [
        "fastapi_async",
        "fastapi_models",
        "fastapi_sync",
        "flask_app",
        "pytest_example",
    ]


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

PYTEST_EXAMPLE_HEADER = """
import os

from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import NullPool

import nplus1loader

engine = create_engine(os.environ["DATABASE_URL"], poolclass=NullPool)
SessionLocal = nplus1loader.enable(sessionmaker(engine))
expected_titles = {titles!r}
"""


def test_the_documented_pytest_example(
    fastapi_sync: ModuleType, request: pytest.FixtureRequest
) -> None:
    pytester: pytest.Pytester = request.getfixturevalue("pytester")  # after the database
    Author = fastapi_sync.Author
    with Session(fastapi_sync.engine) as session:
        authors = session.scalars(select(Author).order_by(Author.id)).all()
        titles = [[book.title for book in author.books] for author in authors]
    found = snippets()
    source = (
        found["fastapi_models"]
        + PYTEST_EXAMPLE_HEADER.format(titles=titles)
        + found["pytest_example"]
    )
    pytester.makepyfile(test_example=source)
    pytester.runpytest("--strict-markers").assert_outcomes(passed=2)
