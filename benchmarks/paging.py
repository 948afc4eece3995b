"""The long-session scenario (issue 16): a paging worker in one session that
also holds N unrelated rows.

A worker pages through the parents, 100 per page, reads every child of
every parent of the page, and keeps what it processed (a batch job that
accumulates its results), all in one session that was first given N armed
rows of another mapper (a large lookup table loaded up front).  What is
measured is the paging loop alone: the unrelated rows are loaded before
the clock starts, and then frozen out of the garbage collector
(``gc.freeze()``), so that the figures show what the loaders cost, not
what Python's full collections over a million objects cost both of them.

Contenders: ``selectinload(Parent.children)`` on each page's query, and
``nplus1loader('*')``.  Both send the same statements (one query and one
children query per page) and must read the same checksum.  Between
rounds the loop's own objects are expunged (not timed), so every round
starts from the same session: the unrelated rows and nothing else.
"""

from __future__ import annotations

import functools
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, func, insert, select
from sqlalchemy.orm import Session, selectinload

from nplus1loader import nplus1loader

from .models import Filler, Owner, Parent

PAGE = 100
PAGED_PARENTS = 5000
FILLERS = (0, 100_000, 1_000_000)


@dataclass
class PagingRecord:
    fillers: int
    contender: str
    times: list[float] = field(default_factory=list)
    queries: int = 0
    checksum: int = 0
    problems: list[str] = field(default_factory=list)
    process: int = 1

    @property
    def median(self) -> float:
        return statistics.median(self.times)


CONTENDERS: dict[str, Any] = {
    "selectinload": lambda: selectinload(Parent.children),
    "nplus1loader": lambda: nplus1loader("*"),
}


def fill(engine: Engine, n: int) -> None:
    """Make ``bench_filler`` hold rows 1..n (kept between runs when it does)."""
    Filler.__table__.create(engine, checkfirst=True)  # type: ignore[attr-defined]
    with engine.begin() as conn:
        have = conn.execute(select(func.count()).select_from(Filler)).scalar_one()
        if have == n:
            return
        conn.execute(Filler.__table__.delete())  # type: ignore[attr-defined]
        owner = conn.execute(select(func.min(Owner.id))).scalar_one()
        for start in range(1, n + 1, 10_000):
            rows = [
                {"id": i, "name": f"filler {i}", "note": "n", "owner_id": owner}
                for i in range(start, min(start + 10_000, n + 1))
            ]
            conn.execute(insert(Filler), rows)


def walk(session: Session, option: Any, parents: int) -> tuple[int, list[Any]]:
    """The worker: every page's children, summed; what it kept."""
    checksum = 0
    kept: list[Any] = []
    for lo in range(1, parents + 1, PAGE):
        stmt = select(Parent).where(Parent.id.between(lo, lo + PAGE - 1)).options(option)
        page = session.scalars(stmt).all()
        checksum += sum(c.id for p in page for c in p.children)
        kept.extend(page)
    return checksum, kept


def measure(
    engine: Engine,
    count: Callable[[], int],
    fillers: tuple[int, ...] = FILLERS,
    *,
    parents: int = PAGED_PARENTS,
    rounds: int = 5,
    log: Callable[[str], None] = print,
) -> list[PagingRecord]:
    """Both contenders, interleaved round by round, at each filler count.
    ``count()`` gives the statements sent so far."""
    records: list[PagingRecord] = []
    fill(engine, max(fillers))
    for n in fillers:
        cell = {key: PagingRecord(n, key) for key in CONTENDERS}
        with Session(engine) as session:
            held = session.scalars(
                select(Filler).where(Filler.id <= n).options(nplus1loader("*"))
            ).all()
            gc.collect()
            gc.freeze()
            try:
                keys = list(CONTENDERS)
                for r in range(rounds + 1):  # round 0 warms up, untimed
                    for key in keys[r % 2 :] + keys[: r % 2]:
                        rec = cell[key]
                        before = count()
                        start = time.perf_counter()
                        checksum, kept = walk(session, CONTENDERS[key](), parents)
                        seconds = time.perf_counter() - start
                        queries = count() - before
                        for parent in kept:
                            for child in parent.children:
                                session.expunge(child)
                            session.expunge(parent)
                        del kept
                        gc.collect()
                        if r == 0:
                            rec.queries, rec.checksum = queries, checksum
                            continue
                        if (queries, checksum) != (rec.queries, rec.checksum):
                            rec.problems.append("statements or checksum vary between runs")
                        rec.times.append(seconds)
            finally:
                gc.unfreeze()
            assert len(held) == n
            del held
        if cell["nplus1loader"].checksum != cell["selectinload"].checksum:
            for rec in cell.values():
                rec.problems.append("checksums differ between contenders")
        for rec in cell.values():
            log(
                f"  paging fillers={n:<8,} {rec.contender:<13} {rec.median * 1000:8.1f} ms "
                f"x{len(rec.times)} {rec.queries} q"
                + ("  !! " + "; ".join(rec.problems) if rec.problems else "")
            )
        records += cell.values()
    return records


def _times(
    records: list[dict[str, Any]], fillers: int, contender: str, process: int | None = None
) -> list[float]:
    """The timed rounds of one contender at one filler count (of one process)."""
    return [
        t
        for r in records
        if r["fillers"] == fillers
        and r["contender"] == contender
        and process in (None, r.get("process", 1))
        for t in r["times"]
    ]


def render(records: list[dict[str, Any]], db_label: str, parents: int) -> list[str]:
    """The report's section for the long-session scenario.  With several
    processes (``run --processes``) the times are pooled and the ratio is
    the median of each process's own, with their range."""
    fillers = sorted({r["fillers"] for r in records})
    processes = sorted({r.get("process", 1) for r in records})
    lines = [
        "## A paging worker in one long session (issue 16)",
        "",
        f"{db_label}: {parents:,} parents, {PAGE} per page, each page's children read, "
        "pages kept; the session first holds N armed unrelated rows (frozen out of the "
        "garbage collector). Median of the timed rounds; target: nplus1loader at most "
        "1.15x `selectinload` at every N, and flat in N."
        + (
            f" The ratio is the median of the {len(processes)} processes' own (in "
            "parentheses the lowest and the highest)."
            if len(processes) > 1
            else ""
        ),
        "",
        "| unrelated rows N | selectinload | nplus1loader | ratio | statements |",
        "|---:|---:|---:|---:|---:|",
    ]
    for n in fillers:
        times = functools.partial(_times, records, n)
        queries = {r["contender"]: r["queries"] for r in records if r["fillers"] == n}
        sel_ms = statistics.median(times("selectinload")) * 1000
        n1_ms = statistics.median(times("nplus1loader")) * 1000
        ratio = f"{n1_ms / sel_ms:.2f}x"
        if len(processes) > 1:
            ratios = [
                statistics.median(times("nplus1loader", p))
                / statistics.median(times("selectinload", p))
                for p in processes
            ]
            ratio = f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}x to {max(ratios):.2f}x)"
        lines.append(
            f"| {n:,} | {sel_ms:.1f} ms | {n1_ms:.1f} ms | {ratio} "
            f"| {queries['nplus1loader']} / {queries['selectinload']} |"
        )
    lines.append("")
    return lines
