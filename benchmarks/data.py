"""Test data, written with Core bulk inserts (``executemany`` in batches):
the ORM unit of work would take longer than the benchmarks themselves.

Identifiers are deterministic, so every contender and every database sees
the same rows: parent ``p`` owns owner ``p``, children ``10(p-1)+1 ..
10p``, one grandchild per child, and three tags out of a pool of 1,000.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import Engine, insert, text

from .models import Base, Child, GrandChild, Owner, Parent, Tag, parent_tag

CHILDREN_PER_PARENT = 10
GRANDCHILDREN_PER_CHILD = 1
TAGS_PER_PARENT = 3
TAG_POOL = 1000
_BATCH = 10_000


def _batched(rows: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == _BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _owners(n: int) -> Iterator[dict[str, Any]]:
    for i in range(1, n + 1):
        yield {"id": i, "name": f"owner {i}"}


def _parents(n: int) -> Iterator[dict[str, Any]]:
    for i in range(1, n + 1):
        yield {
            "id": i,
            "name": f"parent {i}",
            "bio": f"biography of parent {i}. " * 8,
            "owner_id": i,
        }


def _children(n: int) -> Iterator[dict[str, Any]]:
    for i in range(1, n * CHILDREN_PER_PARENT + 1):
        yield {"id": i, "parent_id": (i - 1) // CHILDREN_PER_PARENT + 1, "name": f"child {i}"}


def _grandchildren(n: int) -> Iterator[dict[str, Any]]:
    per_parent = CHILDREN_PER_PARENT * GRANDCHILDREN_PER_CHILD
    for i in range(1, n * per_parent + 1):
        yield {
            "id": i,
            "child_id": (i - 1) // GRANDCHILDREN_PER_CHILD + 1,
            "name": f"grandchild {i}",
        }


def _tags(n: int) -> Iterator[dict[str, Any]]:
    for i in range(1, TAG_POOL + 1):
        yield {"id": i, "name": f"tag {i}"}


def _parent_tags(n: int) -> Iterator[dict[str, Any]]:
    step = TAG_POOL // TAGS_PER_PARENT
    for p in range(1, n + 1):
        for k in range(TAGS_PER_PARENT):
            yield {"parent_id": p, "tag_id": (p + k * step) % TAG_POOL + 1}


_TABLES: list[tuple[Any, Callable[[int], Iterator[dict[str, Any]]]]] = [
    (Owner.__table__, _owners),
    (Tag.__table__, _tags),
    (Parent.__table__, _parents),
    (Child.__table__, _children),
    (GrandChild.__table__, _grandchildren),
    (parent_tag, _parent_tags),
]


def populate(engine: Engine, n: int) -> int:
    """Drop and recreate the benchmark tables with ``n`` parents; returns
    the number of rows written."""
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    written = 0
    with engine.begin() as conn:
        for table, rows in _TABLES:
            for batch in _batched(rows(n)):
                conn.execute(insert(table), batch)
                written += len(batch)
    if engine.dialect.name != "sqlite":
        # Fresh statistics, as autovacuum / InnoDB would gather soon after a
        # bulk load.  Not on SQLite, where nothing gathers them by itself, and
        # where with them the planner scans the whole tag table once per
        # many-to-many batch (700 ms instead of 8 ms per 500 parents).
        keyword = "ANALYZE" if engine.dialect.name == "postgresql" else "ANALYZE TABLE"
        with engine.begin() as conn:
            for table in Base.metadata.sorted_tables:
                conn.execute(text(f"{keyword} {table.name}"))
    return written
