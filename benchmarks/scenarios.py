"""The scenarios: one unit of work each, written three ways.

Every contender of a scenario loads ``n`` parents and walks the same
attributes; it returns a checksum of what it read, which must be the same
for all contenders (the harness checks), so a contender cannot win by
loading less.  The three ways:

* ``stock``: the query as most code writes it; SQLAlchemy lazy-loads each
  attribute on first access, one instance at a time (the N+1 pattern);
* ``nplus1loader``: the same query with ``nplus1loader('*')``, the one
  option the library asks users to add;
* ``optimum``: what a careful developer writes by hand once the access
  pattern is known (``selectinload``, ``undefer``, a re-query with
  ``populate_existing``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, undefer

from nplus1loader import DEFAULT_CHUNK_SIZE, nplus1loader

from .data import CHILDREN_PER_PARENT
from .models import Child, Parent

Body = Callable[[Session, int], int]
Expected = Callable[[int], int]

STOCK = "stock"
NPLUS1 = "nplus1loader"
OPTIMUM = "optimum"
CONTENDERS = (STOCK, NPLUS1, OPTIMUM)


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    body: Body
    expected_queries: Expected


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    contenders: tuple[Contender, ...]
    #: Extra rounds for scenarios whose figure of merit is a small difference.
    repeat_factor: int = 1

    def contender(self, key: str) -> Contender | None:
        return next((c for c in self.contenders if c.key == key), None)


def _batches(n: int) -> int:
    return math.ceil(n / DEFAULT_CHUNK_SIZE)


def _parents(session: Session, n: int, *options: Any) -> Sequence[Parent]:
    stmt = select(Parent).where(Parent.id <= n).options(*options)
    return session.scalars(stmt).all()


# ------------------------------------------------------------------ walks


def _owners(parents: Sequence[Parent]) -> int:
    return sum(p.owner.id for p in parents)


def _children(parents: Sequence[Parent]) -> int:
    return sum(c.id for p in parents for c in p.children)


def _tags(parents: Sequence[Parent]) -> int:
    return sum(t.id for p in parents for t in p.tags)


def _bios(parents: Sequence[Parent]) -> int:
    return sum(len(p.bio) for p in parents)


def _names(parents: Sequence[Parent]) -> int:
    return sum(len(p.name) for p in parents)


def _grandchildren(parents: Sequence[Parent]) -> int:
    return sum(g.id for p in parents for c in p.children for g in c.grandchildren)


def _walk(walk: Callable[[Sequence[Parent]], int], *options: Any) -> Body:
    def body(session: Session, n: int) -> int:
        return walk(_parents(session, n, *options))

    return body


def _commit_then(walk: Callable[[Sequence[Parent]], int], *options: Any) -> Body:
    def body(session: Session, n: int) -> int:
        parents = _parents(session, n, *options)
        session.commit()  # expire_on_commit: every column of every parent expires
        return walk(parents)

    return body


def _commit_then_requery(session: Session, n: int) -> int:
    parents = _parents(session, n)
    session.commit()
    stmt = select(Parent).where(Parent.id <= n).execution_options(populate_existing=True)
    session.scalars(stmt).all()
    return _names(parents)


# -------------------------------------------------------------- scenarios


def _relationship(
    key: str, title: str, walk: Callable[[Sequence[Parent]], int], optimum: Any
) -> Scenario:
    return Scenario(
        key,
        title,
        (
            Contender(STOCK, "lazy (N+1)", _walk(walk), lambda n: 1 + n),
            Contender(
                NPLUS1,
                "nplus1loader('*')",
                _walk(walk, nplus1loader("*")),
                lambda n: 1 + _batches(n),
            ),
            Contender(OPTIMUM, "selectinload", _walk(walk, optimum), lambda n: 1 + _batches(n)),
        ),
    )


SCENARIOS: tuple[Scenario, ...] = (
    _relationship("many_to_one", "many-to-one (parent.owner)", _owners, selectinload(Parent.owner)),
    _relationship(
        "one_to_many",
        f"one-to-many (parent.children, {CHILDREN_PER_PARENT} each)",
        _children,
        selectinload(Parent.children),
    ),
    _relationship(
        "many_to_many", "many-to-many (parent.tags, 3 each)", _tags, selectinload(Parent.tags)
    ),
    Scenario(
        "deferred_column",
        "deferred column (parent.bio)",
        (
            Contender(STOCK, "lazy (N+1)", _walk(_bios), lambda n: 1 + n),
            Contender(
                NPLUS1,
                "nplus1loader('*')",
                _walk(_bios, nplus1loader("*")),
                lambda n: 1 + _batches(n),
            ),
            Contender(OPTIMUM, "undefer", _walk(_bios, undefer(Parent.bio)), lambda n: 1),
        ),
    ),
    Scenario(
        "commit_then_read",
        "commit then read (expired columns)",
        (
            Contender(STOCK, "lazy (N+1)", _commit_then(_names), lambda n: 1 + n),
            Contender(
                NPLUS1,
                "nplus1loader('*')",
                _commit_then(_names, nplus1loader("*")),
                lambda n: 1 + _batches(n),
            ),
            Contender(OPTIMUM, "re-query, populate_existing", _commit_then_requery, lambda n: 2),
        ),
    ),
    Scenario(
        "nested_walk",
        "three-level walk (parent.children[].grandchildren)",
        (
            Contender(
                STOCK,
                "lazy (N+1)",
                _walk(_grandchildren),
                lambda n: 1 + n + CHILDREN_PER_PARENT * n,
            ),
            Contender(
                NPLUS1,
                "nplus1loader('*')",
                _walk(_grandchildren, nplus1loader("*")),
                lambda n: 1 + _batches(n) + _batches(CHILDREN_PER_PARENT * n),
            ),
            Contender(
                OPTIMUM,
                "selectinload chain",
                _walk(
                    _grandchildren, selectinload(Parent.children).selectinload(Child.grandchildren)
                ),
                lambda n: 1 + _batches(n) + _batches(CHILDREN_PER_PARENT * n),
            ),
        ),
    ),
    Scenario(
        "armed_untouched",
        "armed but never touched (query with the option vs without)",
        (
            Contender(STOCK, "no option", _walk(_names), lambda n: 1),
            Contender(NPLUS1, "nplus1loader('*')", _walk(_names, nplus1loader("*")), lambda n: 1),
        ),
        # Its figure of merit, a few percent, is a tenth of the run-to-run
        # noise of one 10,000-row query here: 50 rounds cost 15 s a process.
        repeat_factor=10,
    ),
)

BY_KEY = {s.key: s for s in SCENARIOS}

#: Scenarios run again with a simulated network round trip per statement.
LATENCY_DEFAULT = ("one_to_many", "commit_then_read")
