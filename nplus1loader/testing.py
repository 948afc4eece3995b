"""Count the SQL statements a block of code sends: the measurement behind
every N+1 regression test.  Public, and usable without pytest::

    from nplus1loader.testing import count_queries

    with count_queries(engine) as q:
        render_authors_page(session)
    q.assert_count(2)  # or: assert q.count == 2

    with count_queries(engine, at_most=3):  # like django_assert_max_num_queries
        render_authors_page(session)

The pytest plugin serves the same function as the ``nplus1_count_queries``
fixture (and as ``count_queries`` where a project has no fixture of that
name).
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, event

__all__ = ["CountQueries", "QueryCounter", "count_queries"]


class QueryCounter:
    """Records the statements sent through an ``Engine`` or ``Connection``
    (or their asyncio equivalents) while it is active.

    It listens to ``before_cursor_execute``, so it counts round trips: one
    per ``cursor.execute()``/``executemany()``.  Statements from every
    thread using the engine are counted, so a test client that runs the
    application in a thread of its own (FastAPI's ``TestClient``) is
    measured too.
    """

    def __init__(self, bind: Any, *, at_most: int | None = None) -> None:
        self.at_most = at_most
        self.bind: Engine | Connection = getattr(bind, "sync_engine", None) or getattr(
            bind, "sync_connection", bind
        )
        self.statements: list[str] = []
        self._listening = False

    @property
    def count(self) -> int:
        """The number of statements recorded."""
        return len(self.statements)

    def __enter__(self) -> QueryCounter:
        if not self._listening:
            event.listen(self.bind, "before_cursor_execute", self._record)
            self._listening = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._listening:
            event.remove(self.bind, "before_cursor_execute", self._record)
            self._listening = False
        # A block that raised is reported by its own exception; a ceiling
        # failure on top would hide the cause.
        if exc_type is None and self.at_most is not None:
            self.assert_at_most(self.at_most)

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append(statement)

    def _listing(self) -> str:
        return (
            "\n".join(
                f"{number:>3}. {' '.join(sql.split())}"
                for number, sql in enumerate(self.statements, start=1)
            )
            or "  (none)"
        )

    def assert_count(self, expected: int) -> None:
        """Raise ``AssertionError`` unless exactly ``expected`` statements
        ran; the message lists them, which is what one needs to fix it."""
        if self.count != expected:
            raise AssertionError(
                f"expected {expected} statements, got {self.count}:\n{self._listing()}"
            )

    def assert_at_most(self, limit: int) -> None:
        """Raise ``AssertionError`` if more than ``limit`` statements ran,
        listing them.  For pages whose exact count legitimately varies
        (a cache, a database's own round trips) but must stay bounded:
        the N+1 regression it guards against grows with the rows."""
        if self.count > limit:
            raise AssertionError(
                f"expected at most {limit} statements, got {self.count}:\n{self._listing()}"
            )

    def __repr__(self) -> str:
        return f"<QueryCounter count={self.count}>"


class CountQueries(Protocol):
    """The type of :func:`count_queries`, as the pytest fixtures hand it out."""

    def __call__(self, bind: Any, *, at_most: int | None = None) -> QueryCounter: ...


def count_queries(bind: Any, *, at_most: int | None = None) -> QueryCounter:
    """A context manager counting the statements ``bind`` (an ``Engine``,
    ``Connection``, ``AsyncEngine`` or ``AsyncConnection``) sends in a block.

    With ``at_most``, leaving the block asserts the ceiling
    (``assert_at_most``) unless the block raised."""
    return QueryCounter(bind, at_most=at_most)
