"""The fixed cost of arming a small query: what ``nplus1loader('*')`` adds
to a 20-row query that touches nothing, per execution.

The scenarios of ``run`` load thousands of rows, where arming costs a few
percent; a web request more often runs many small queries, where what an
armed execution sets up once (its row populator, the registry's queue,
the per-attribute decisions) is what counts.  This measures it alone, on
SQLite in memory (no network: the setup is all there is to see), in four
variants: a session reused (``expunge_all()`` between queries) or new per
query, the option object reused or built per query.

Blocks of 100 queries alternate between the contenders (the query without
the option, and with it), for ``--rounds`` rounds; the figures are each
contender's median time per query, their difference (the option's fixed
cost), and the median of the per-round ratios.

    python -m benchmarks.small_query [--rounds 25] [--rows 20]

To measure another version of the library beside this one, put a folder
holding only its ``nplus1loader`` package first on ``PYTHONPATH`` and run
from outside the checkout (``cd /tmp && PYTHONPATH=/other:/path/to/checkout
python -m benchmarks.small_query``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from nplus1loader import __version__, nplus1loader

from .data import populate
from .models import Parent

BLOCK = 100
VARIANTS = (
    ("reused session, reused option", False, False),
    ("reused session, new option", False, True),
    ("new session, reused option", True, False),
    ("new session, new option", True, True),
)


def _block(engine: Any, session: Session, stmt: Callable[[], Any], new_session: bool) -> float:
    """Seconds per query over one block."""
    start = time.perf_counter()
    for _ in range(BLOCK):
        if new_session:
            with Session(engine) as fresh:
                fresh.scalars(stmt()).all()
        else:
            session.scalars(stmt()).all()
            session.expunge_all()
    return (time.perf_counter() - start) / BLOCK


def measure(rounds: int, rows: int) -> list[tuple[str, float, float, float]]:
    """(variant, plain µs, armed µs, median per-round ratio) per variant."""
    engine = create_engine("sqlite://")
    populate(engine, rows)
    plain_stmt = select(Parent).where(Parent.id <= rows)
    armed_stmt = plain_stmt.options(nplus1loader("*"))

    def plain() -> Any:
        return plain_stmt

    def armed_reused() -> Any:
        return armed_stmt

    def armed_new() -> Any:
        return plain_stmt.options(nplus1loader("*"))

    found = []
    with Session(engine) as session:
        for label, new_session, new_option in VARIANTS:
            armed = armed_new if new_option else armed_reused
            for _ in range(3):  # warm-up: compiled statements, class-level hooks
                _block(engine, session, plain, new_session)
                _block(engine, session, armed, new_session)
            plains, armeds = [], []
            for _ in range(rounds):
                plains.append(_block(engine, session, plain, new_session))
                armeds.append(_block(engine, session, armed, new_session))
            found.append(
                (
                    label,
                    statistics.median(plains) * 1e6,
                    statistics.median(armeds) * 1e6,
                    statistics.median(a / p for a, p in zip(armeds, plains, strict=True)),
                )
            )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--rows", type=int, default=20)
    args = parser.parse_args()
    print(
        f"nplus1loader {__version__}: a {args.rows}-row query on SQLite, {BLOCK}-query blocks, "
        f"{args.rounds} rounds"
    )
    print(f"{'variant':32s} {'without':>10s} {'with':>10s} {'extra':>10s} {'ratio':>7s}")
    for label, plain, armed, ratio in measure(args.rounds, args.rows):
        print(f"{label:32s} {plain:8.0f}us {armed:8.0f}us {armed - plain:+8.0f}us {ratio:6.2f}x")


if __name__ == "__main__":
    main()
