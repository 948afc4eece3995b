"""Per-session counters of the batch loads nplus1loader ran.

They live in ``session.info``, so they belong to one session (one request)
and need no lock: a Session is never shared between threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import LoaderCallableStatus, Session, scoped_session

_INFO_KEY = "nplus1loader.stats"
_UNKNOWN = (LoaderCallableStatus.PASSIVE_NO_RESULT, LoaderCallableStatus.NEVER_SET)


@dataclass
class Stats:
    """What nplus1loader did in one session, for logs and metrics.

    ``batches``: batch loads run; ``instances``: instances they loaded;
    ``queries``: SQL statements they emitted; ``queries_saved``: what stock
    lazy loading would have cost for the same instances, minus ``queries``.
    """

    batches: int = 0
    instances: int = 0
    queries: int = 0
    queries_saved: int = 0


def stats(session: Any) -> Stats:
    """The counters of ``session`` (a ``Session``, an ``AsyncSession``, or a
    scoped session: its current one), to put in a log line, a metric or a
    response header at the end of a request."""
    current = session
    if isinstance(current, scoped_session) or _is_async_scoped(current):
        current = current()  # the registry's session for this thread / task
    sync = getattr(current, "sync_session", current)
    if not isinstance(sync, Session):
        raise ArgumentError(
            "stats() expects a Session, an AsyncSession or a scoped session (the counters "
            f"are per session), got {session!r}"
        )
    found = sync.info.get(_INFO_KEY)
    if found is None:
        found = sync.info[_INFO_KEY] = Stats()
    return found


def _is_async_scoped(obj: Any) -> bool:
    try:
        from sqlalchemy.ext.asyncio import async_scoped_session
    except ImportError:  # SQLAlchemy 2.1 without greenlet: no asyncio sessions
        return False
    return isinstance(obj, async_scoped_session)


def record_batch(
    session: Any, instances: int, queries: int, stock_queries: int | None = None
) -> None:
    """Count one batch; ``stock_queries`` defaults to one per instance."""
    counters = stats(session)
    counters.batches += 1
    counters.instances += instances
    counters.queries += queries
    stock = instances if stock_queries is None else stock_queries
    counters.queries_saved += max(stock - queries, 0)
