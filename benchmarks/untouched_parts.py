"""Where an armed query that touches nothing spends its extra time.

The "armed but never touched" cell of ``run`` times a 10,000-row query,
a walk over one loaded column, and the session close as one figure.  This
times the three parts apart, for the query without the option and with
``nplus1loader('*')``, in interleaved rounds: the query and the walk, the
program dropping the objects (stock frees each state with its object), and
``session.close()`` (where the candidate registry's queue frees the states
it still holds).  The part that moves is the last, and by how cold the
states are by then, so ``--used-heap`` first runs every other scenario's
contenders twice, as the full run has before this cell.

    python -m benchmarks.untouched_parts [--db postgresql] [--rounds 60]
        [--collector-off] [--used-heap]

It populates the benchmark's tables first (``populate``, as ``run`` does).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from typing import Any

from sqlalchemy.orm import Session

from nplus1loader import __version__, nplus1loader

from .data import populate
from .harness import Probe, make_engine, run_once
from .scenarios import SCENARIOS, STOCK, _names, _parents

ROWS = 10_000
PARTS = ("query and walk", "drop the objects", "session close", "total")


def _parts(engine: Any, options: tuple[Any, ...], collector_off: bool) -> tuple[float, ...]:
    """Seconds of each part of one unit of work, in a fresh session: the
    cell's own query and walk (``scenarios._parents``, ``_names``)."""
    gc.collect()
    if collector_off:
        gc.disable()
    try:
        start = time.perf_counter()
        session = Session(engine)
        parents = _parents(session, ROWS, *options)
        checksum = _names(parents)
        walked = time.perf_counter()
        del parents
        dropped = time.perf_counter()
        session.close()
        closed = time.perf_counter()
    finally:
        gc.enable()
    assert checksum > 0
    return walked - start, dropped - walked, closed - dropped, closed - start


def _use_the_heap(engine: Any) -> None:
    probe = Probe(engine)
    for scenario in SCENARIOS:
        if scenario.key == "armed_untouched":
            continue
        for contender in scenario.contenders:
            if contender.key != STOCK:
                for _ in range(2):
                    run_once(engine, probe, contender.body, ROWS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="postgresql")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--collector-off", action="store_true")
    parser.add_argument("--used-heap", action="store_true")
    args = parser.parse_args(argv)
    engine = make_engine(args.db)
    populate(engine, ROWS)
    if args.used_heap:
        _use_the_heap(engine)
    contenders = ((), (nplus1loader("*"),))
    for _ in range(5):
        for options in contenders:
            _parts(engine, options, args.collector_off)
    stock: list[tuple[float, ...]] = []
    armed: list[tuple[float, ...]] = []
    for _ in range(args.rounds):
        stock.append(_parts(engine, contenders[0], args.collector_off))
        armed.append(_parts(engine, contenders[1], args.collector_off))
    print(
        f"nplus1loader {__version__}, {args.db}, {ROWS:,} rows, {args.rounds} rounds, "
        f"collector {'off' if args.collector_off else 'on'}, "
        f"{'used' if args.used_heap else 'fresh'} heap; medians in ms"
    )
    for index, part in enumerate(PARTS):
        without = statistics.median(run[index] for run in stock) * 1e3
        with_option = statistics.median(run[index] for run in armed) * 1e3
        print(f"  {part:<17} {without:8.2f}  {with_option:8.2f}  {with_option - without:+7.2f}")
    ratio = statistics.median(a[3] / s[3] for a, s in zip(armed, stock, strict=True))
    print(f"  total, median of the per-round ratios: {ratio - 1:+.1%}")


if __name__ == "__main__":
    main()
