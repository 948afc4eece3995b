"""report.md and chart.png, rendered from the raw results (results.json).

The targets are the ones of issue 7, checked at 10,000 parents on
PostgreSQL (or the largest size measured, said so in the report).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from . import paging
from .harness import DATABASES, LABELS, Record
from .scenarios import BY_KEY, NPLUS1, OPTIMUM, STOCK

RELATIONSHIP_SCENARIOS = ("many_to_one", "one_to_many", "many_to_many", "nested_walk")
TARGET_DB = "postgresql"
TARGET_SIZE = 10_000


# ----------------------------------------------------------------- storage


def save(path: Path, meta: dict[str, Any], records: Iterable[Record]) -> None:
    data = {"meta": meta, "records": [asdict(r) for r in records]}
    path.write_text(json.dumps(data, indent=1))


def load(path: Path) -> tuple[dict[str, Any], list[Record]]:
    data = json.loads(path.read_text())
    return data["meta"], [Record(**r) for r in data["records"]]


# ------------------------------------------------------------------ lookup


class Results:
    """The records of a run, looked up by cell and contender.  A run of
    several processes (``run --processes``) has one record per process:
    :meth:`get` pools them (every timed run of every process, for the
    tables and the chart), :meth:`get_in` gives one process's own."""

    def __init__(self, records: list[Record]) -> None:
        self.records = records
        self._index: dict[tuple[str, int, str, float, str], list[Record]] = {}
        for r in records:
            self._index.setdefault(
                (r.db, r.size, r.scenario, r.latency_ms, r.contender), []
            ).append(r)

    def get(
        self, db: str, size: int, scenario: str, latency: float, contender: str
    ) -> Record | None:
        found = self._index.get((db, size, scenario, latency, contender))
        if not found:
            return None
        if len(found) == 1:
            return found[0]
        peaks = [r.peak_bytes for r in found if r.peak_bytes is not None]
        return replace(
            found[0],
            times=[t for r in found for t in r.times],
            peak_bytes=int(statistics.median(peaks)) if peaks else None,
            problems=[p for r in found for p in r.problems],
        )

    def get_in(
        self, process: int, db: str, size: int, scenario: str, latency: float, contender: str
    ) -> Record | None:
        found = self._index.get((db, size, scenario, latency, contender), [])
        return next((r for r in found if r.process == process), None)

    def processes(self) -> list[int]:
        return sorted({r.process for r in self.records})

    def dbs(self) -> list[str]:
        present = {r.db for r in self.records}
        return [db for db in DATABASES if db in present]

    def sizes(self, db: str | None = None) -> list[int]:
        return sorted({r.size for r in self.records if db is None or r.db == db})

    def cells(self, db: str) -> list[tuple[str, float, int]]:
        """(scenario, latency, size), in scenario order, latency runs last."""
        keys = {(r.scenario, r.latency_ms, r.size) for r in self.records if r.db == db}
        order = list(BY_KEY)
        return sorted(keys, key=lambda k: (k[1] > 0, order.index(k[0]), k[1], k[2]))


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _median(rec: Record | None) -> float | None:
    return rec.median if rec is not None and rec.times else None


def _round_ratio(a: Record | None, b: Record | None) -> float | None:
    """``a`` against ``b``: the median of their per-round ratios when both
    ran every round, else the ratio of their medians.

    The contenders of one round run back to back (harness.measure_cell), so
    a round's ratio cancels what disturbed the machine for that second; on
    this shared machine one run can take 1.6x its neighbour.  For the same
    10,000-row query with and without the option (armed, never touched),
    eight windows of 15 rounds gave ratios of medians from 0.78 to 1.21 and
    medians of per-round ratios from 0.97 to 1.04.
    Stock lazy loading, cut short by the budget, ran fewer rounds: its single
    slow run is compared with the other's median."""
    if a is None or b is None or not a.times or not b.times:
        return None
    if len(a.times) != len(b.times):
        return _ratio(a.median, b.median)
    return statistics.median(x / y for x, y in zip(a.times, b.times, strict=True))


def _peak(rec: Record | None) -> float | None:
    return float(rec.peak_bytes) if rec is not None and rec.peak_bytes is not None else None


# -------------------------------------------------------------- formatting


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    ms = seconds * 1000
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.1f}"


def _x(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.2f}x" if ratio < 10 else f"{ratio:,.0f}x"


def _mib(peak: float | None) -> str:
    return "—" if peak is None else f"{peak / 2**20:.1f}"


def _time_cell(rec: Record | None) -> str:
    if rec is None:
        return "—"
    if rec.skipped:
        return f"not run ({rec.expected_queries:,} q)"
    runs = "" if len(rec.times) > 1 else " (1 run)"
    return f"{_ms(rec.median)} ms / {rec.queries:,} q{runs}"


def _title(scenario: str, latency: float) -> str:
    title = BY_KEY[scenario].title if scenario in BY_KEY else scenario
    return f"{title}, +{latency:g} ms per statement" if latency else title


# ------------------------------------------------------------------ report


def render(meta: dict[str, Any], records: list[Record]) -> str:
    res = Results(records)
    out: list[str] = ["# nplus1loader benchmarks", ""]
    out += _intro(meta)
    out += _targets(res)
    for db in res.dbs():
        out += _db_table(res, db)
    for db, found in meta.get("paging", {}).items():
        out += paging.render(found["records"], LABELS[db], found["parents"])
    out += _problems(records)
    return "\n".join(out) + "\n"


def _intro(meta: dict[str, Any]) -> list[str]:
    servers = ", ".join(f"{LABELS[db]}: {v}" for db, v in meta.get("servers", {}).items())
    return [
        f"Generated by `{meta.get('command', 'python -m benchmarks run')}` on "
        f"{meta.get('started', '?')} ({meta.get('duration_s', 0) / 60:.1f} minutes).",
        "",
        f"- Python {meta.get('python')}, SQLAlchemy {meta.get('sqlalchemy')}, "
        f"nplus1loader at `{meta.get('git', '?')}`",
        f"- {servers}",
        f"- {meta.get('cpus')} CPUs, load average {meta.get('load_start')} at the start and "
        f"{meta.get('load_end')} at the end (other processes share the machine: compare the "
        "contenders of one row, which ran interleaved, rather than rows)",
        f"- Each figure is the median wall time of {meta.get('repeat')} interleaved runs "
        f'(10 times as many for "armed but never touched")'
        + (
            f" in each of {meta['processes']} fresh processes run one after another "
            "(the tables pool the runs of all of them; the targets are judged per process)"
            if meta.get("processes", 1) > 1
            else ""
        )
        + ", from opening the session to "
        "closing it: the query, the walk over the attributes, and the session close. "
        f"A contender whose first run takes longer than {meta.get('budget_s'):g} s / "
        f"{meta.get('repeat')} gets ⌊{meta.get('budget_s'):g} s / first run⌋ runs instead, at "
        "least 3 (stock lazy loading: at "
        'least 1; "(1 run)" marks it). `q` is the exact number of statements sent. Peak '
        "memory is measured in one more run under tracemalloc, on "
        f"{', '.join(LABELS[db] for db in meta.get('memory_dbs', ()))} only (it hardly "
        "depends on the database) and without simulated latency (— : not traced; stock "
        "lazy loading is not traced when too slow). Stock lazy loading is not run where it "
        f"would send more than {meta.get('stock_max_statements', 0):,} statements; "
        "its count is shown.",
        "- Contenders: **stock** lazy loading (the N+1 pattern), **nplus1loader** "
        "(`nplus1loader('*')` added to the query), and the hand-written **optimum** "
        "(`selectinload`, `undefer`, or a re-query with `populate_existing` after commit).",
        "",
    ]


def _best(rec: Record | None) -> float | None:
    return min(rec.times) if rec is not None and rec.times else None


#: (scenario, what, latency, bound): what is compared, and the limit; a
#: negative bound is a minimum, None a figure shown but not judged.
Target = tuple[str, str, float, float | None]


def _target_value(
    res: Results,
    db: str,
    size: int,
    target: Target,
    stat: Any,
    process: int | None = None,
) -> float | None:
    """One target's ratio, within one ``process`` or (a run of one
    process) over its runs: by rounds (:func:`_round_ratio`) for ``_median``,
    else of ``stat`` (the fastest runs)."""
    scenario, what, latency, _ = target

    def rec(contender: str) -> Record | None:
        if process is None:
            return res.get(db, size, scenario, latency, contender)
        return res.get_in(process, db, size, scenario, latency, contender)

    def compare(a: str, b: str) -> float | None:
        if stat is _median:
            return _round_ratio(rec(a), rec(b))
        return _ratio(stat(rec(a)), stat(rec(b)))

    if what == "time_vs_optimum":
        return compare(NPLUS1, OPTIMUM)
    if what == "speedup_vs_stock":
        return compare(STOCK, NPLUS1)
    if what == "ceiling":
        return compare(STOCK, OPTIMUM)
    if what == "overhead":
        ratio = compare(NPLUS1, STOCK)
        return None if ratio is None else ratio - 1
    if what == "memory_vs_optimum":
        return _ratio(_peak(rec(NPLUS1)), _peak(rec(OPTIMUM)))
    raise ValueError(what)


def _target_rows(res: Results) -> list[tuple[str, str, Target]]:
    """(label, limit, target) for every row of the targets table.

    Commit then read is judged against the hand-written re-query, as every
    other target is against its optimum.  Its speed-up over stock is judged
    with a network round trip; on loopback it is shown beside its ceiling,
    stock / re-query, which no reload after a commit can pass and which on
    this machine ranges from 12x to 22x from one hour to the next.  The
    limit is the deferred column's, for the same reason: the optimum sends
    1 or 2 statements where an after-the-fact batch sends 1 + ⌈N/500⌉ (21 at
    10,000 parents), and with the garbage collector off those 19 statements
    alone are 0.18x of the re-query on loopback."""
    rows: list[tuple[str, str, Target]] = [
        (f"{BY_KEY[s].title}: time vs selectinload", "≤ 1.10x", (s, "time_vs_optimum", 0.0, 1.1))
        for s in RELATIONSHIP_SCENARIOS
    ]
    rows.append(
        (
            "deferred column: time vs undefer",
            "≤ 1.5x",
            ("deferred_column", "time_vs_optimum", 0.0, 1.5),
        )
    )
    rows.append(
        (
            "commit then read: time vs a re-query with populate_existing",
            "≤ 1.5x",
            ("commit_then_read", "time_vs_optimum", 0.0, 1.5),
        )
    )
    latencies = sorted({r.latency_ms for r in res.records if r.scenario == "commit_then_read"})
    for latency in latencies:
        if latency:
            rows.append(
                (
                    f"commit then read, +{latency:g} ms per statement: "
                    "stock time / nplus1loader time",
                    "≥ 20x",
                    ("commit_then_read", "speedup_vs_stock", latency, -20.0),
                )
            )
            continue
        rows.append(
            (
                "commit then read: stock time / nplus1loader time",
                "(not judged: see the next row)",
                ("commit_then_read", "speedup_vs_stock", 0.0, None),
            )
        )
        rows.append(
            (
                "commit then read: stock time / re-query time (the ceiling on loopback)",
                "(not judged)",
                ("commit_then_read", "ceiling", 0.0, None),
            )
        )
    rows.append(
        ("armed but never touched: extra time", "≤ 5%", ("armed_untouched", "overhead", 0.0, 0.05))
    )
    rows += [
        (
            f"{BY_KEY[s].title}: peak memory vs selectinload",
            "≤ 1.10x",
            (s, "memory_vs_optimum", 0.0, 1.1),
        )
        for s in RELATIONSHIP_SCENARIOS
    ]
    return rows


def _targets(res: Results) -> list[str]:
    sizes = res.sizes(TARGET_DB) or res.sizes()
    size = TARGET_SIZE if TARGET_SIZE in sizes else (sizes[-1] if sizes else TARGET_SIZE)
    dbs = res.dbs()
    processes = res.processes()
    head = [f"## Targets (issue 7), at {size:,} parents", ""]
    if size != TARGET_SIZE:
        head += [f"**{TARGET_SIZE:,} parents were not measured; showing {size:,}.**", ""]
    if len(processes) > 1:
        how = (
            f"Each ratio is taken within each of the {len(processes)} processes: the median "
            "of the ratios of the rounds (whose contenders ran back to back), or where stock "
            "lazy loading ran fewer rounds, the ratio of medians. The median over the "
            "processes is judged; in parentheses the lowest and the highest process."
        )
    else:
        how = (
            "Ratios are the medians of the ratios of the rounds (whose contenders ran back to "
            "back), or where stock lazy loading ran fewer rounds, of medians; in parentheses, "
            "the ratio of the fastest runs, which on a shared machine is the less disturbed "
            "estimate (interference only ever adds time)."
        )
    head += [
        "The targets apply to PostgreSQL; the other databases are shown for comparison. " + how,
        "",
        "| target | limit | " + " | ".join(LABELS[db] for db in dbs) + " |",
        "|---|---|" + "---|" * len(dbs),
    ]
    for label, limit, target in _target_rows(res):
        cells = []
        for db in dbs:
            aside: float | tuple[float, float] | None
            if len(processes) > 1:
                values = [
                    v
                    for p in processes
                    if (v := _target_value(res, db, size, target, _median, p)) is not None
                ]
                value = statistics.median(values) if values else None
                aside = (min(values), max(values)) if values else None
            else:
                value = _target_value(res, db, size, target, _median)
                aside = _target_value(res, db, size, target, _best)
            cells.append(_target_cell(value, aside, target, db == TARGET_DB))
        head.append(f"| {label} | {limit} | " + " | ".join(cells) + " |")
    head += _query_target(res)
    head += _latency_summary(res)
    return head


def _target_cell(
    value: float | None,
    aside: float | tuple[float, float] | None,
    target: Target,
    judged: bool,
) -> str:
    if value is None:
        return "—"
    _, what, _, bound = target

    def fmt(v: float) -> str:
        return f"{v * 100:+.1f}%" if what == "overhead" else _x(v)

    text = fmt(value)
    if judged and bound is not None:
        ok = value >= -bound if bound < 0 else value <= bound
        text = f"**{text}** {'✅' if ok else '❌'}"
    if aside is None or what == "memory_vs_optimum":
        return text
    if isinstance(aside, tuple):
        return text + f" ({fmt(aside[0])} to {fmt(aside[1])})"
    return text + f" ({fmt(aside)})"
    return text


def _query_target(res: Results) -> list[str]:
    checked = [r for r in res.records if r.contender == NPLUS1]
    wrong = [r for r in checked if r.queries != r.expected_queries]
    lines = [
        "",
        "Statements: nplus1loader must send exactly 1 + ⌈N/500⌉ per attribute walked "
        "(one more ⌈10N/500⌉ for the grandchildren of the three-level walk; 1 when "
        f"nothing is touched). {len(checked) - len(wrong)} of {len(checked)} "
        "nplus1loader measurements match exactly" + ("." if not wrong else ", these do not:"),
    ]
    for r in wrong:
        lines.append(
            f"- {LABELS[r.db]}, {r.size:,} parents, {r.scenario}: "
            f"{r.queries} statements, expected {r.expected_queries}"
        )
    return [*lines, ""]


def _latency_summary(res: Results) -> list[str]:
    lat = sorted({(r.scenario, r.latency_ms) for r in res.records if r.latency_ms})
    if not lat:
        return []
    lines = ["With a simulated network round trip (a sleep before every statement):", ""]
    lines += [
        "| database | N | scenario | stock | nplus1loader | optimum | "
        "stock / nplus1loader | nplus1loader / optimum |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for db in res.dbs():
        for scenario, latency in lat:
            for size in res.sizes(db):
                s, n, o = (
                    res.get(db, size, scenario, latency, c) for c in (STOCK, NPLUS1, OPTIMUM)
                )
                if n is None:
                    continue
                lines.append(
                    f"| {LABELS[db]} | {size:,} | {_title(scenario, latency)} | "
                    f"{_time_cell(s)} | {_time_cell(n)} | {_time_cell(o)} | "
                    f"{_x(_ratio(_median(s), _median(n)))} | {_x(_ratio(_median(n), _median(o)))} |"
                )
    return [*lines, ""]


def _db_table(res: Results, db: str) -> list[str]:
    lines = [
        f"## {LABELS[db]}",
        "",
        "| scenario | N | stock | nplus1loader | optimum | stock / nplus1loader | "
        "nplus1loader / optimum | peak MiB (stock / nplus1loader / optimum) | "
        "memory nplus1loader / optimum |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario, latency, size in res.cells(db):
        s, n, o = (res.get(db, size, scenario, latency, c) for c in (STOCK, NPLUS1, OPTIMUM))
        lines.append(
            f"| {_title(scenario, latency)} | {size:,} | {_time_cell(s)} | {_time_cell(n)} | "
            f"{_time_cell(o)} | {_x(_ratio(_median(s), _median(n)))} | "
            f"{_x(_ratio(_median(n), _median(o)))} | "
            f"{_mib(_peak(s))} / {_mib(_peak(n))} / {_mib(_peak(o))} | "
            f"{_x(_ratio(_peak(n), _peak(o)))} |"
        )
    return [*lines, ""]


def _problems(records: list[Record]) -> list[str]:
    """Everything a run flagged, except nplus1loader's statement counts
    (listed with the targets)."""
    lines = []
    for r in records:
        shown = [p for p in r.problems if not (r.contender == NPLUS1 and "expected" in p)]
        if shown:
            lines.append(
                f"- {LABELS[r.db]}, {r.size:,} parents, {r.scenario}, "
                f"{r.contender}: " + "; ".join(shown)
            )
    if not lines:
        return [
            "All contenders of every row returned the same checksum, and every "
            "contender sent the same statements in every run.",
            "",
        ]
    return ["## Problems", "", *lines, ""]


# ------------------------------------------------------------------- chart


def chart(records: list[Record], path: Path) -> None:
    """Median wall time per contender at the largest size, one panel per
    database (log scale: stock is orders of magnitude slower)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = Results(records)
    dbs = res.dbs()
    fig, axes = plt.subplots(len(dbs), 1, figsize=(11, 3.6 * len(dbs)), squeeze=False)
    colors = {STOCK: "#c0504d", NPLUS1: "#4f81bd", OPTIMUM: "#9bbb59"}
    names = {
        STOCK: "stock lazy (N+1)",
        NPLUS1: "nplus1loader('*')",
        OPTIMUM: "hand-written optimum",
    }
    for ax, db in zip(axes[:, 0], dbs, strict=True):
        size = res.sizes(db)[-1]
        cells = [(s, lat) for s, lat, n in res.cells(db) if n == size]
        width = 0.27
        for i, contender in enumerate((STOCK, NPLUS1, OPTIMUM)):
            xs, ys = [], []
            for j, (scenario, latency) in enumerate(cells):
                rec = res.get(db, size, scenario, latency, contender)
                if rec is not None and rec.times:
                    xs.append(j + (i - 1) * width)
                    ys.append(rec.median * 1000)
                elif rec is not None and rec.skipped:
                    ax.annotate(
                        "not run",
                        (j + (i - 1) * width, 0.03),
                        xycoords=("data", "axes fraction"),
                        ha="center",
                        va="bottom",
                        rotation=90,
                        fontsize=7,
                        color=colors[contender],
                    )
            ax.bar(xs, ys, width, color=colors[contender], label=names[contender])
        ax.set_yscale("log")
        ax.set_ylabel("median wall time, ms")
        ax.set_title(f"{LABELS[db]}, {size:,} parents")
        ax.set_xticks(range(len(cells)))
        ax.set_xticklabels([_short(s, lat) for s, lat in cells], fontsize=8)
        ax.grid(axis="y", which="major", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=3, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.25 / len(dbs) / 3.6))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _short(scenario: str, latency: float) -> str:
    text = scenario.replace("_", " ")
    text = {
        "armed untouched": "armed,\nuntouched",
        "commit then read": "commit,\nthen read",
        "deferred column": "deferred\ncolumn",
        "nested walk": "3-level\nwalk",
    }.get(text, text)
    return f"{text}\n+{latency:g} ms RTT" if latency else text


def write(out_dir: Path) -> tuple[Path, Path]:
    meta, records = load(out_dir / "results.json")
    report, png = out_dir / "report.md", out_dir / "chart.png"
    report.write_text(render(meta, records))
    chart(records, png)
    return report, png


__all__ = ["chart", "load", "render", "save", "write"]
