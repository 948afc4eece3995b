"""Measuring: engines, statement counting, interleaved timed rounds, peak
memory.

For one cell (database, size, scenario, latency) every contender runs once
to warm the caches (compiled statements, connection pool, server buffers),
then the contenders take turns, round after round, in an order that rotates
each round, so a slow minute of a shared machine hurts all of them alike.
Wall time is measured from opening the session to closing it, with the
garbage collector on, as in production.  Peak memory comes from one more run
under ``tracemalloc`` (which slows Python down, so it is never timed).
Statement counts come from a ``before_cursor_execute`` listener and are
checked to be identical across runs; checksums of what each contender read
must agree.
"""

from __future__ import annotations

import gc
import os
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session

from .scenarios import STOCK, Contender, Scenario

DEFAULT_URLS = {
    "sqlite": "sqlite:///" + os.path.join(tempfile.gettempdir(), "nplus1loader-bench.sqlite"),
    "postgresql": "postgresql+psycopg2://postgres@127.0.0.1:5432/test",
    "mysql": "mysql+pymysql://root@127.0.0.1:3306/test",
}
URL_ENV_VARS = {
    "sqlite": "NPLUS1_BENCH_SQLITE_URL",
    "postgresql": "NPLUS1_POSTGRESQL_URL",
    "mysql": "NPLUS1_MYSQL_URL",
}
DATABASES = tuple(DEFAULT_URLS)
LABELS = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "mysql": "MySQL (MariaDB)"}

#: Parents loaded by the warm-up run of each contender.
WARMUP_SIZE = 200
#: A traced run is this many times slower than a timed one (roughly).
TRACE_SLOWDOWN = 3.0


class Probe:
    """Counts the statements an engine sends and, when ``latency`` is set,
    sleeps that long before each one: a simulated network round trip."""

    def __init__(self, engine: Engine) -> None:
        self.count = 0
        self.latency = 0.0
        event.listen(engine, "before_cursor_execute", self._before)

    def _before(self, *args: Any) -> None:
        self.count += 1
        if self.latency:
            time.sleep(self.latency)


def make_engine(db: str) -> Engine:
    url = os.environ.get(URL_ENV_VARS[db]) or DEFAULT_URLS[db]
    return create_engine(url)


def server_version(engine: Engine) -> str:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            return "SQLite " + conn.execute(text("select sqlite_version()")).scalar_one()
        return str(conn.execute(text("select version()")).scalar_one()).split(" on ")[0]


@dataclass
class Run:
    seconds: float
    queries: int
    checksum: int
    peak_bytes: int | None = None


def run_once(
    engine: Engine, probe: Probe, body: Callable[[Session, int], int], n: int, trace: bool = False
) -> Run:
    """One unit of work in a fresh session, from opening it to closing it."""
    gc.collect()
    probe.count = 0
    if trace:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    with Session(engine) as session:
        checksum = body(session, n)
    seconds = time.perf_counter() - start
    peak = None
    if trace:
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
    return Run(seconds, probe.count, checksum, peak)


@dataclass
class Record:
    """What one contender measured in one cell; what report.md is made of."""

    db: str
    size: int
    scenario: str
    latency_ms: float
    contender: str
    label: str
    times: list[float] = field(default_factory=list)
    queries: int = 0
    expected_queries: int = 0
    checksum: int = 0
    peak_bytes: int | None = None
    problems: list[str] = field(default_factory=list)
    skipped: str | None = None
    #: Which of the run's processes measured it (``run --processes``).
    process: int = 1

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def measure_cell(
    engine: Engine,
    probe: Probe,
    db: str,
    scenario: Scenario,
    n: int,
    *,
    repeat: int,
    budget: float,
    latency_ms: float,
    trace_memory: bool,
    stock_max_statements: int,
    log: Callable[[str], None] = print,
) -> list[Record]:
    """All contenders of one scenario, interleaved (see module docstring).

    A slow contender runs fewer times: when its first run takes more than
    ``budget / rounds`` seconds, it runs ``budget / first run`` times, but
    at least 3 times (stock lazy loading: at least once, and its memory is
    only traced when that fits the budget too).  Stock is 5 to 100 times
    slower than the others, so its noise does not move a ratio, and without
    the cap the N+1 cells would take most of the run.  Each record says how
    many runs it got.  Stock is not run at all when it would send more than
    ``stock_max_statements`` statements (its count is known exactly).
    """
    probe.latency = latency_ms / 1000.0
    records = {
        c.key: Record(
            db, n, scenario.key, latency_ms, c.key, c.label, expected_queries=c.expected_queries(n)
        )
        for c in scenario.contenders
    }
    contenders: list[Contender] = []
    for c in scenario.contenders:
        if c.key == STOCK and c.expected_queries(n) > stock_max_statements:
            records[c.key].skipped = f"more than {stock_max_statements:,} statements"
        else:
            contenders.append(c)
    try:
        for c in contenders:
            run_once(engine, probe, c.body, min(n, WARMUP_SIZE))
        rounds = repeat * scenario.repeat_factor
        allowed = dict.fromkeys(records, rounds)
        for r in range(rounds):
            shift = r % len(contenders)
            for c in (*contenders[shift:], *contenders[:shift]):
                rec = records[c.key]
                if len(rec.times) >= allowed[c.key]:
                    continue
                run = run_once(engine, probe, c.body, n)
                _check(rec, run, first=not rec.times)
                rec.times.append(run.seconds)
                if r == 0:
                    fits = int(budget // max(run.seconds, 1e-9))
                    least = 1 if c.key == STOCK else min(3, rounds)
                    allowed[c.key] = max(least, min(rounds, fits))
        for c in contenders if trace_memory else ():
            rec = records[c.key]
            if c.key != STOCK or rec.median * TRACE_SLOWDOWN <= budget:
                run = run_once(engine, probe, c.body, n, trace=True)
                _check(rec, run, first=False)
                rec.peak_bytes = run.peak_bytes
    finally:
        probe.latency = 0.0
    measured = [records[c.key] for c in contenders]
    checksums = {rec.checksum for rec in measured}
    if len(checksums) != 1:
        for rec in measured:
            rec.problems.append(f"checksums differ between contenders: {sorted(checksums)}")
    for rec in measured:
        if rec.queries != rec.expected_queries:
            rec.problems.append(f"{rec.queries} queries, expected {rec.expected_queries}")
    for rec in records.values():
        log(_line(rec))
    return list(records.values())


def _line(rec: Record) -> str:
    head = f"  {rec.db:<10} n={rec.size:<7} {rec.scenario:<16} lat={rec.latency_ms:g}ms "
    if rec.skipped:
        return f"{head}{rec.contender:<12} skipped: {rec.skipped}"
    peak = f"{rec.peak_bytes / 2**20:7.1f} MiB" if rec.peak_bytes is not None else "      —"
    return (
        f"{head}{rec.contender:<12} {rec.median * 1000:9.1f} ms x{len(rec.times)} "
        f"{rec.queries:>7} q  {peak}" + ("  !! " + "; ".join(rec.problems) if rec.problems else "")
    )


def _check(rec: Record, run: Run, *, first: bool) -> None:
    if first:
        rec.queries, rec.checksum = run.queries, run.checksum
        return
    if run.queries != rec.queries:
        rec.problems.append(f"query count varies between runs: {rec.queries} then {run.queries}")
    if run.checksum != rec.checksum:
        rec.problems.append("checksum varies between runs")
