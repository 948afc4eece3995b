"""Per-session counters of the batch loads nplus1loader ran.

They live in ``session.info``, so they belong to one session (one request)
and need no lock: a Session is never shared between threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.orm import LoaderCallableStatus, PassiveFlag
from sqlalchemy.orm.state import InstanceState

from . import _compat

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
    """The counters of ``session`` (a ``Session`` or an ``AsyncSession``), to
    put in a log line, a metric or a response header at the end of a request."""
    sync = getattr(session, "sync_session", session)
    found = sync.info.get(_INFO_KEY)
    if found is None:
        found = sync.info[_INFO_KEY] = Stats()
    return found  # type: ignore[no-any-return]


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


def stock_queries(session: Any, prop: Any, states: Sequence[InstanceState[Any]]) -> int:
    """The statements stock lazy loading would emit to load ``prop`` for
    ``states``, one instance after the other; call it before the batch.

    One per instance, except for a many-to-one that SQLAlchemy loads by
    primary key: a NULL key or a target already in the identity map costs
    nothing, and each missing target costs one query only (the first load
    puts it in the identity map for the instances that share it).
    """
    if getattr(prop, "direction", None) is None or prop.direction.name != "MANYTOONE":
        return len(states)
    strategy = _compat.get_strategy(prop, (("lazy", "select"),))
    if not strategy.use_get:
        return len(states)
    target = prop.mapper
    missing: set[Any] = set()
    unknown = 0
    for state in states:
        ident = _compat.use_get_identity(strategy, session, state, PassiveFlag.PASSIVE_NO_FETCH)
        if any(value is marker for value in ident for marker in _UNKNOWN):
            unknown += 1  # its foreign key is not loaded either: one query at least
            continue
        if all(value is None for value in ident) or (
            not target.allow_partial_pks and any(value is None for value in ident)
        ):
            continue
        key = target.identity_key_from_primary_key(list(ident))
        hit = session.identity_map.get(key)
        if hit is None or inspect(hit).expired:
            missing.add(key)
    return len(missing) + unknown
