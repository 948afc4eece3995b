"""Database helpers shared by the whole test suite.

Test modules import what they need from here::

    from tests._db import QueryCounter, setup_schema

and get engines through the fixtures in ``tests/conftest.py`` (``engine``,
``db_name``, ``count_queries``, ``engine_registry``).

Everything here is plain SQLAlchemy.  The one import from the package is
``nplus1loader.testing``, itself plain SQLAlchemy (an event listener and a
list): the suite's statement recorder is built on the public
``QueryCounter`` so that the counter users rely on is the one every count
here goes through, and the infrastructure can still be tested (and trusted)
without the loader.
"""

from __future__ import annotations

import gc
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
from sqlalchemy import Engine, MetaData, create_engine, event, inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import OperationalError

from nplus1loader import testing

#: Backend keys, in the order tests are parametrized.
BACKENDS: tuple[str, ...] = ("sqlite", "postgresql", "mysql")

#: Human-readable names used in skip/fail messages.
LABELS: dict[str, str] = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "mysql": "MySQL"}

#: Environment variable that overrides each backend's URL.
URL_ENV_VARS: dict[str, str] = {
    "sqlite": "NPLUS1_SQLITE_URL",
    "postgresql": "NPLUS1_POSTGRESQL_URL",
    "mysql": "NPLUS1_MYSQL_URL",
}

#: Server URLs used when the environment variable is unset.  SQLite has no
#: fixed default: it gets a fresh file in pytest's temporary directory.
DEFAULT_URLS: dict[str, str] = {
    "postgresql": "postgresql+psycopg2://postgres@127.0.0.1:5432/test",
    "mysql": "mysql+pymysql://root@127.0.0.1:3306/test",
}

#: Seconds to wait for a TCP connection before calling a server unreachable.
CONNECT_TIMEOUT = 10

#: Seconds DDL in setup_schema() waits for a lock before giving up, so that a
#: session leaked by an earlier test produces an error instead of a hang.
LOCK_TIMEOUT = 20

# DBAPI drivers known to accept a ``connect_timeout`` keyword (in seconds).
_DRIVERS_WITH_CONNECT_TIMEOUT = frozenset({"psycopg2", "psycopg", "pymysql", "mysqldb"})


# --------------------------------------------------------------------------
# configuration


def running_in_ci() -> bool:
    """True when the ``CI`` environment variable is ``true`` or ``1``."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def parse_backends(value: str) -> list[str]:
    """Parse a ``--nplus1-db`` value such as ``"sqlite,mysql"``.

    Returns the chosen backends in canonical order without duplicates; raises
    ``pytest.UsageError`` for an empty list or an unknown name.
    """
    names = {part.strip().lower() for part in value.split(",") if part.strip()}
    unknown = sorted(names.difference(BACKENDS))
    if unknown or not names:
        raise pytest.UsageError(
            f"--nplus1-db expects a comma-separated subset of {','.join(BACKENDS)}; got {value!r}"
        )
    return [name for name in BACKENDS if name in names]


def database_url(backend: str, sqlite_dir: Path | str | None = None) -> str:
    """The URL to test ``backend`` against: its env variable, else the default.

    The SQLite default is ``sqlite:///<sqlite_dir>/nplus1.db``, so
    ``sqlite_dir`` is required unless ``NPLUS1_SQLITE_URL`` is set.
    """
    if backend not in URL_ENV_VARS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    configured = os.environ.get(URL_ENV_VARS[backend], "").strip()
    if configured:
        return configured
    if backend == "sqlite":
        if sqlite_dir is None:
            raise ValueError("sqlite_dir is required when NPLUS1_SQLITE_URL is not set")
        return f"sqlite:///{Path(sqlite_dir) / 'nplus1.db'}"
    return DEFAULT_URLS[backend]


def safe_url(url: str) -> str:
    """``url`` with any password masked, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


# --------------------------------------------------------------------------
# engines and reachability


def _enable_sqlite_foreign_keys(dbapi_connection: Any, connection_record: Any) -> None:
    # SQLite ignores FOREIGN KEY clauses unless asked; enforce them so that
    # SQLite behaves like the two servers.  Runs on the raw DBAPI connection,
    # so it is never seen by before_cursor_execute / QueryCounter.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def make_engine(url: str, **kwargs: Any) -> Engine:
    """``create_engine(url)`` with test-suite defaults.

    * a connect timeout for the server drivers (unless the URL sets one);
    * foreign key enforcement on SQLite;
    * ``echo=True`` when ``NPLUS1_ECHO`` is ``1``/``true``.
    """
    parsed = make_url(url)
    connect_args: dict[str, Any] = dict(kwargs.pop("connect_args", {}))
    if (
        parsed.get_driver_name() in _DRIVERS_WITH_CONNECT_TIMEOUT
        and "connect_timeout" not in parsed.query
    ):
        connect_args.setdefault("connect_timeout", CONNECT_TIMEOUT)
    if os.environ.get("NPLUS1_ECHO", "").strip().lower() in ("true", "1"):
        kwargs.setdefault("echo", True)
    engine = create_engine(parsed, connect_args=connect_args, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _enable_sqlite_foreign_keys)
    return engine


def describe_error(error: BaseException) -> str:
    """A one-line description of a connection error."""
    original = getattr(error, "orig", None) or error
    message = " ".join(str(original).split()) or repr(original)
    return f"{type(original).__name__}: {message}"


def try_connect(backend: str, url: str) -> tuple[Engine | None, str]:
    """Create an engine for ``url`` and run ``SELECT 1`` on it once.

    Returns ``(engine, "")`` on success, ``(None, reason)`` on any failure
    (missing driver, refused connection, bad credentials, ...).  The first
    connection also lets SQLAlchemy run its dialect initialisation, so later
    QueryCounter blocks only ever see the statements a test causes.
    """
    engine: Engine | None = None
    try:
        engine = make_engine(url)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:
        if engine is not None:
            engine.dispose()
        return None, describe_error(error)
    return engine, ""


def report_unreachable(backend: str, url: str, reason: str) -> NoReturn:
    """Skip the current test because ``backend`` is unreachable, or fail it in CI.

    CI must never turn green by skipping a database, so with ``CI=true`` (or
    ``1``) this calls ``pytest.fail``; otherwise ``pytest.skip``.
    """
    message = f"{LABELS.get(backend, backend)} not reachable at {safe_url(url)}: {reason}"
    if running_in_ci():
        pytest.fail(
            message + "\n(CI is set: an unreachable database is an error, never a skip)",
            pytrace=False,
        )
    pytest.skip(message)


def connect_or_skip(backend: str, url: str) -> Engine:
    """An engine for ``url`` that has connected once; else skip (or fail in CI)."""
    engine, reason = try_connect(backend, url)
    if engine is None:
        report_unreachable(backend, url, reason)
    return engine


def isolation_requested() -> bool:
    """True when ``NPLUS1_ISOLATE`` is ``true`` or ``1``."""
    return os.environ.get("NPLUS1_ISOLATE", "").strip().lower() in ("true", "1")


def create_private_database(server: Engine) -> str:
    """Create a new, uniquely named database next to ``server``'s; return its name."""
    base = server.url.database or "test"
    name = f"{base}_nplus1_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    quoted = server.dialect.identifier_preparer.quote(name)
    with server.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {quoted}")
    return name


def drop_private_database(server: Engine, name: str) -> None:
    quoted = server.dialect.identifier_preparer.quote(name)
    force = " WITH (FORCE)" if server.dialect.name == "postgresql" else ""
    with server.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted}{force}")


class EngineRegistry:
    """One Engine per backend for the whole pytest session.

    Each backend's reachability is checked once: a backend that failed to
    connect is not retried, later requests skip (or fail) with the same reason.

    With ``isolate=True`` (``--nplus1-isolate`` / ``NPLUS1_ISOLATE=1``) the
    servers' tests run in a database of their own, created beside the URL's
    database for this session and dropped at its end, so that concurrent
    pytest runs against one server cannot trample each other's tables.
    """

    def __init__(
        self,
        sqlite_dir: Callable[[], Path] | Path | str | None = None,
        *,
        isolate: bool = False,
    ) -> None:
        self._sqlite_dir = sqlite_dir
        self.isolate = isolate
        self._engines: dict[str, Engine] = {}
        self._failures: dict[str, tuple[str, str]] = {}
        self._private: list[tuple[Engine, str]] = []  # (server engine, database name)

    def url(self, backend: str) -> str:
        sqlite_dir = self._sqlite_dir
        if (
            backend == "sqlite"
            and callable(sqlite_dir)
            and not os.environ.get(URL_ENV_VARS["sqlite"], "").strip()
        ):
            # Create the temporary directory only when SQLite is really used.
            sqlite_dir = self._sqlite_dir = sqlite_dir()
        return database_url(backend, None if callable(sqlite_dir) else sqlite_dir)

    def get(self, backend: str) -> Engine:
        """The session's Engine for ``backend``, connecting on first use."""
        if backend in self._engines:
            return self._engines[backend]
        if backend in self._failures:
            report_unreachable(backend, *self._failures[backend])
        url = self.url(backend)
        engine, reason = try_connect(backend, url)
        if engine is not None and self.isolate and backend != "sqlite":
            engine, url, reason = self._private_engine(backend, engine)
        if engine is None:
            self._failures[backend] = (url, reason)
            report_unreachable(backend, url, reason)
        self._engines[backend] = engine
        return engine

    def _private_engine(self, backend: str, server: Engine) -> tuple[Engine | None, str, str]:
        try:
            name = create_private_database(server)
        except Exception as error:
            server.dispose()
            url = server.url.render_as_string(hide_password=False)
            return None, url, f"cannot create a private database: {describe_error(error)}"
        self._private.append((server, name))
        server.dispose()
        url = server.url.set(database=name).render_as_string(hide_password=False)
        engine, reason = try_connect(backend, url)
        return engine, url, reason

    def dispose_all(self) -> None:
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()
        for server, name in self._private:
            try:
                drop_private_database(server, name)
            finally:
                server.dispose()
        self._private.clear()


# --------------------------------------------------------------------------
# counting statements


def keys_sent(value: Any) -> int | None:
    """How many keys one statement parameter carries, if it carries a list
    of them: a list or tuple (an expanding ``IN``, an array), or the text of
    a PostgreSQL array literal, ``'{1,2,3}'`` (psycopg2 batches); None for a
    plain value."""
    if isinstance(value, list | tuple):
        return len(value)
    if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
        return len(value[1:-1].split(",")) if value != "{}" else 0
    return None


@dataclass(frozen=True)
class Recorded:
    """One round trip as the cursor saw it: the SQL text, its parameters,
    and the compiled construct it came from (None for ``text()``-less driver
    statements), for the tests that need more than the text."""

    statement: str
    parameters: Any
    compiled: Any
    label: Any
    """Who sent it: the thread id unless the counter was given ``label=``
    (an asyncio task's context variable, say)."""


class QueryCounter(testing.QueryCounter):
    """The suite's one statement recorder: the public
    ``nplus1loader.testing.QueryCounter`` plus what tests of the package need
    beyond statement text.

    ::

        with QueryCounter(engine) as q:
            ...
        q.assert_count(2)     # the statements listed in the failure message
        q.assert_at_most(2)
        q.entries[0].parameters, q.keys_per_statement()

    Built on the public class so that the counter users are told to trust is
    the one every count in this suite goes through.  It adds ``start``/
    ``stop``/``reset`` for counters that span several blocks, ``entries``
    (parameters and compiled construct per statement) and a listing that
    keeps each statement's line breaks.
    """

    def __init__(
        self,
        engine: Any,
        *,
        at_most: int | None = None,
        label: Callable[[], Any] = threading.get_ident,
    ) -> None:
        super().__init__(engine, at_most=at_most)
        self.entries: list[Recorded] = []
        self.label = label

    @property
    def engine(self) -> Any:
        """The sync ``Engine`` or ``Connection`` listened to."""
        return self.bind

    def _record(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any = None,
        context: Any = None,
        executemany: bool = False,
    ) -> None:
        super()._record(conn, cursor, statement)
        compiled = getattr(context, "compiled", None)
        self.entries.append(Recorded(statement, parameters, compiled, self.label()))

    def count_for(self, label: Any) -> int:
        """How many statements the sender ``label`` (a thread id by default)
        sent so far: concurrency tests measure each thread on one counter."""
        return sum(1 for entry in list(self.entries) if entry.label == label)

    def start(self) -> QueryCounter:
        self.__enter__()
        return self

    def stop(self) -> None:
        self.__exit__(None, None, None)

    def __enter__(self) -> QueryCounter:
        super().__enter__()
        return self

    def reset(self) -> None:
        """Forget the statements recorded so far (keeps listening)."""
        self.statements.clear()
        self.entries.clear()

    def keys_per_statement(self) -> list[int]:
        """The number of keys each statement sent: an expanded ``IN`` list
        has one parameter per instance, PostgreSQL's ``= ANY(:keys)`` one
        array of them (or its literal); either way this shows a chunk's size."""
        sizes = []
        for entry in self.entries:
            params = entry.parameters
            values = params.values() if isinstance(params, dict) else params
            sizes.append(sum(keys_sent(v) or 1 for v in values))
        return sizes

    def format_statements(self) -> str:
        """The recorded statements, numbered, one block per statement."""
        lines = []
        for number, statement in enumerate(self.statements, start=1):
            body = "\n     ".join(statement.strip().splitlines())
            lines.append(f"{number:>3}. {body}")
        return "\n".join(lines) if lines else "  (none)"

    def _listing(self) -> str:
        return self.format_statements()

    def __repr__(self) -> str:
        return f"<QueryCounter count={self.count} listening={self._listening}>"


# --------------------------------------------------------------------------
# schema setup


def setup_schema(engine: Engine, metadata: MetaData) -> None:
    """Give ``metadata``'s tables a clean slate in ``engine``'s database.

    All test modules share one database per backend, and different modules
    may use the same table names with different columns.  So this drops every
    existing table that ``metadata`` names, plus any other table whose foreign
    keys point at one of those (a table left behind by another module, which
    rebuilds it in its own setup), then drops metadata-owned types/sequences
    and runs ``create_all``.  Drops ignore foreign key order (PostgreSQL
    ``CASCADE``, MySQL ``FOREIGN_KEY_CHECKS=0``, SQLite ``foreign_keys=OFF``).

    DDL waits at most ``LOCK_TIMEOUT`` seconds for locks.  If it times out --
    typically a Session from an earlier test was never closed -- garbage is
    collected and the rebuild retried once before giving up with an error.
    """
    _collect_leaked_connections(engine)
    try:
        _rebuild_schema(engine, metadata)
    except OperationalError as error:
        if not _is_lock_timeout(error):
            raise
        gc.collect()
        try:
            _rebuild_schema(engine, metadata)
        except OperationalError as again:
            if not _is_lock_timeout(again):
                raise
            raise RuntimeError(
                f"setup_schema(): timed out waiting for a lock on {sorted(metadata.tables)}; "
                "an earlier test probably left a Session or Connection open "
                "(use `with Session(...)` / `with engine.connect()`)"
            ) from again


def _collect_leaked_connections(engine: Engine) -> None:
    """Run the garbage collector if connections are still checked out.

    An unreferenced but unclosed Session keeps its connection (and on the
    servers, its locks) until it is collected.
    """
    checkedout = getattr(engine.pool, "checkedout", None)
    if checkedout is not None and checkedout() > 0:
        gc.collect()


def _is_lock_timeout(error: OperationalError) -> bool:
    original = error.orig
    if getattr(original, "pgcode", None) == "55P03":  # PostgreSQL lock_not_available
        return True
    args = getattr(original, "args", ())
    if args and args[0] == 1205:  # MySQL ER_LOCK_WAIT_TIMEOUT (row and metadata locks)
        return True
    return "database is locked" in str(original)  # SQLite busy timeout


def _rebuild_schema(engine: Engine, metadata: MetaData) -> None:
    with engine.begin() as conn:
        dialect = conn.dialect.name
        is_mysql = dialect in ("mysql", "mariadb")
        if dialect == "postgresql":
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}s'")
        elif is_mysql:
            conn.exec_driver_sql(f"SET SESSION lock_wait_timeout = {LOCK_TIMEOUT}")
        try:
            doomed = _tables_to_drop(conn, metadata)
            if doomed:
                _drop_tables(conn, doomed)
            # Tables are gone by now; this drops what metadata owns besides
            # tables (PostgreSQL ENUM types, sequences), if present.
            metadata.drop_all(conn, checkfirst=True)
            metadata.create_all(conn)
        finally:
            if is_mysql:
                conn.exec_driver_sql("SET SESSION lock_wait_timeout = DEFAULT")


def _tables_to_drop(conn: Connection, metadata: MetaData) -> list[tuple[str | None, str]]:
    """Existing tables named by ``metadata``, plus every table referencing them."""
    wanted = {(table.schema, table.name) for table in metadata.tables.values()}
    inspector = inspect(conn)
    existing: set[tuple[str | None, str]] = set()
    references: dict[tuple[str | None, str], set[tuple[str | None, str]]] = {}
    for schema in {schema for schema, _ in wanted}:
        for name in inspector.get_table_names(schema=schema):
            existing.add((schema, name))
        for (_, name), foreign_keys in inspector.get_multi_foreign_keys(schema=schema).items():
            for fk in foreign_keys:
                target = (fk.get("referred_schema") or schema, fk["referred_table"])
                references.setdefault(target, set()).add((schema, name))

    doomed = wanted & existing
    pending = list(doomed)
    while pending:
        for referrer in references.get(pending.pop(), ()):
            if referrer in existing and referrer not in doomed:
                doomed.add(referrer)
                pending.append(referrer)
    return sorted(doomed, key=lambda key: (key[0] or "", key[1]))


def _drop_tables(conn: Connection, tables: list[tuple[str | None, str]]) -> None:
    preparer = conn.dialect.identifier_preparer

    def qualified(schema: str | None, name: str) -> str:
        quoted = preparer.quote(name)
        return f"{preparer.quote_schema(schema)}.{quoted}" if schema else quoted

    names = [qualified(schema, name) for schema, name in tables]
    dialect = conn.dialect.name
    if dialect == "postgresql":
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {', '.join(names)} CASCADE")
    elif dialect in ("mysql", "mariadb"):
        conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 0")
        try:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {', '.join(names)}")
        finally:
            conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 1")
    elif dialect == "sqlite":
        # Only effective outside a transaction; pysqlite opens none for DDL.
        conn.exec_driver_sql("PRAGMA foreign_keys = OFF")
        try:
            for name in names:
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
        finally:
            conn.exec_driver_sql("PRAGMA foreign_keys = ON")
    else:
        for name in names:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
