"""Shared pytest fixtures: one parametrized ``engine`` per database backend.

Fixtures
--------
``db_name``
    The backend of the current test run: ``"sqlite"``, ``"postgresql"`` or
    ``"mysql"``.  Any test that uses it (directly or through ``engine``) is
    parametrized over the backends chosen with ``--nplus1-db`` (default: all),
    with test ids ``[sqlite]``, ``[postgresql]``, ``[mysql]``.  A test marked
    ``@pytest.mark.postgresql`` (etc.) runs only on the marked backend(s), and
    every parametrized run carries its backend's marker, so ``-m mysql``
    selects the MySQL runs.
``engine``
    The session-wide :class:`sqlalchemy.Engine` for ``db_name``.  Skips the
    test when the server is unreachable -- or fails it when ``CI`` is
    ``true``/``1``.  Reachability is checked once per backend per session.
``count_queries``
    :class:`tests._db.QueryCounter` bound to ``engine``:
    ``with count_queries() as q: ...; q.assert_count(2)``.
``session``
    A Session over freshly seeded ``tests.core_models`` data (``seed_users``
    users; a module overrides ``seed_users`` for another number).
``ergo_engine``
    ``engine`` over freshly seeded ``tests.ergo_models`` data.
``engine_registry``
    Session-scoped :class:`tests._db.EngineRegistry`; ``.get("mysql")``
    returns (or skips/fails for) a backend's engine, for session- or
    module-scoped fixtures of your own.

URLs come from ``NPLUS1_SQLITE_URL``, ``NPLUS1_POSTGRESQL_URL`` and
``NPLUS1_MYSQL_URL``; see ``tests/_db.py`` for the defaults.  All runs share
those databases; when several pytest processes use one server at the same
time, pass ``--nplus1-isolate`` (or set ``NPLUS1_ISOLATE=1``) so each session
works in a private database created and dropped around it.  Build your
tables per test module with ``tests._db.setup_schema``.
"""

from __future__ import annotations

import functools
import gc
import os
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from tests._db import (
    BACKENDS,
    URL_ENV_VARS,
    EngineRegistry,
    QueryCounter,
    database_url,
    isolation_requested,
    parse_backends,
    running_in_ci,
    safe_url,
)

_SELECTED_BACKENDS = pytest.StashKey[list[str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nplus1loader", "nplus1loader test databases")
    group.addoption(
        "--nplus1-db",
        action="store",
        dest="nplus1_db",
        default=",".join(BACKENDS),
        metavar="NAMES",
        help=(
            "comma-separated database backends to run against "
            f"(subset of {','.join(BACKENDS)}; default: all)"
        ),
    )
    group.addoption(
        "--nplus1-isolate",
        action="store_true",
        dest="nplus1_isolate",
        default=False,
        help=(
            "run PostgreSQL/MySQL tests in a private database created for this "
            "session and dropped afterwards (also NPLUS1_ISOLATE=1); use it when "
            "several pytest runs share one server"
        ),
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_SELECTED_BACKENDS] = parse_backends(config.getoption("nplus1_db"))
    _configure_hypothesis(config)


def _configure_hypothesis(config: pytest.Config) -> None:
    try:
        from hypothesis import settings
    except ImportError:
        return
    # Database round trips make timing-based deadlines flaky; in CI also run
    # a fixed sequence of examples so the same commit always tests the same.
    settings.register_profile("nplus1-dev", deadline=None)
    settings.register_profile(
        "nplus1-ci", deadline=None, derandomize=True, database=None, print_blob=True
    )
    # Local soak runs: --hypothesis-profile=nplus1-long (the fuzz modules run
    # this many examples instead of their bounded CI count).
    settings.register_profile("nplus1-long", deadline=None, max_examples=2000, print_blob=True)
    if config.getoption("hypothesis_profile", default=None) is None:
        settings.load_profile("nplus1-ci" if running_in_ci() else "nplus1-dev")


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = []
    for backend in config.stash[_SELECTED_BACKENDS]:
        if backend == "sqlite" and not _env_url_set(backend):
            url = "sqlite:///<session tmp dir>/nplus1.db"
        else:
            url = safe_url(database_url(backend, sqlite_dir="."))
        lines.append(f"nplus1 {backend}: {url}")
    mode = "unreachable databases FAIL (CI)" if running_in_ci() else "unreachable databases skip"
    if config.getoption("nplus1_isolate") or isolation_requested():
        mode += "; private database per session on the servers"
    lines.append(f"nplus1 mode: {mode}")
    return lines


def _env_url_set(backend: str) -> bool:
    return bool(os.environ.get(URL_ENV_VARS[backend], "").strip())


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db_name" not in metafunc.fixturenames:
        return
    selected = metafunc.config.stash[_SELECTED_BACKENDS]
    pinned = {mark.name for mark in metafunc.definition.iter_markers() if mark.name in BACKENDS}
    backends = [name for name in selected if not pinned or name in pinned]
    metafunc.parametrize(
        "db_name",
        [pytest.param(name, id=name, marks=getattr(pytest.mark, name)) for name in backends],
        indirect=True,
    )


@pytest.fixture(scope="session")
def engine_registry(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EngineRegistry]:
    isolate = bool(request.config.getoption("nplus1_isolate")) or isolation_requested()
    registry = EngineRegistry(
        sqlite_dir=lambda: tmp_path_factory.mktemp("nplus1-sqlite"), isolate=isolate
    )
    yield registry
    registry.dispose_all()


@pytest.fixture
def db_name(request: pytest.FixtureRequest) -> str:
    try:
        return request.param
    except AttributeError:
        raise RuntimeError(
            "db_name is parametrized by tests/conftest.py; do not parametrize it yourself"
        ) from None


@pytest.fixture
def engine(db_name: str, engine_registry: EngineRegistry) -> Iterator[Engine]:
    engine = engine_registry.get(db_name)
    yield engine
    # A Session that a test forgot to close keeps its connection -- and on the
    # servers, its locks -- until it is garbage collected.  Collect now, so
    # the next test's DDL does not wait on it.
    checkedout = getattr(engine.pool, "checkedout", None)
    if checkedout is not None and checkedout() > 0:
        gc.collect()


@pytest.fixture
def seed_users() -> int:
    """How many users ``session`` seeds; a module that needs another number
    overrides this fixture rather than the whole ``session``."""
    return 6


@pytest.fixture
def session(engine: Engine, seed_users: int) -> Iterator[Session]:
    """A Session on ``engine`` over the ``tests.core_models`` data, seeded
    afresh: the fixture the loading tests share (one definition, not one per
    module).  Modules with models of their own define their own ``session``."""
    from tests.core_models import seed  # here: its models load only where used

    seed(engine, users=seed_users)
    with Session(engine) as session:
        yield session


@pytest.fixture
def ergo_engine(engine: Engine) -> Engine:
    """``engine`` over the ``tests.ergo_models`` data (authors, books,
    reviews), seeded afresh: the engine the session-switch, modes, stats and
    patterns tests share.  A module that needs more around it (no forced
    mode, say) overrides it by the same name and requests this one."""
    from tests.ergo_models import seed  # here: its models load only where used

    seed(engine)
    return engine


@pytest.fixture
def count_queries(engine: Engine) -> functools.partial[QueryCounter]:
    return functools.partial(QueryCounter, engine)
