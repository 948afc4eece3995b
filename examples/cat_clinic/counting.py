"""Count the SQL statements an engine sends, the way the demo and the page do."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event

__all__ = ["StatementCounter", "summarize"]


class StatementCounter:
    """Records, per thread, the statements ``engine`` executes inside
    :meth:`record` blocks (``before_cursor_execute``: one per round trip).

    ::

        counter = StatementCounter(engine)
        with counter.record() as statements:
            ...
        print(len(statements))

    Per thread, so that concurrent requests of a threaded web server each
    count their own queries.  Blocks do not nest: an inner block records
    what runs inside it, and the outer one resumes afterwards.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._local = threading.local()
        event.listen(engine, "before_cursor_execute", self._before_cursor_execute)

    def _before_cursor_execute(
        self,
        conn: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        recording = getattr(self._local, "statements", None)
        if recording is not None:
            recording.append(statement)

    @contextmanager
    def record(self) -> Iterator[list[str]]:
        outer = getattr(self._local, "statements", None)
        statements: list[str] = []
        self._local.statements = statements
        try:
            yield statements
        finally:
            self._local.statements = outer

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._before_cursor_execute)


def summarize(statements: list[str]) -> list[tuple[int, str]]:
    """Identical statements grouped, most frequent first, whitespace collapsed:
    an N+1 shows up as one statement repeated N times."""
    counts = Counter(" ".join(statement.split()) for statement in statements)
    return sorted(((n, sql) for sql, n in counts.items()), key=lambda item: -item[0])
