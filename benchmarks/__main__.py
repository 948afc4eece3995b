"""``python -m benchmarks run|report|profile``: see docs/benchmarks.md."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy

from . import paging, report
from .data import populate
from .harness import DATABASES, LABELS, Probe, Record, make_engine, measure_cell, server_version
from .scenarios import BY_KEY, CONTENDERS, LATENCY_DEFAULT, SCENARIOS

RESULTS = Path(__file__).resolve().parent / "results"


def _csv(kind: type, choices: tuple[str, ...] | None = None, empty: bool = False):  # type: ignore[no-untyped-def]
    def parse(value: str) -> list[object]:
        items = [kind(v.strip()) for v in value.split(",") if v.strip()]
        bad = [v for v in items if choices is not None and v not in choices]
        if bad or not (items or empty):
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {choices}")
        return items

    return parse


def _quiet_library() -> None:
    """The library logs one WARNING per batch: the point of a benchmark, not
    of its output.  The mode override would change what is measured."""
    logging.getLogger("nplus1loader").setLevel(logging.ERROR)
    os.environ.pop("NPLUS1LOADER_MODE", None)


def _git_version() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "nplus1loader"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes" if dirty else "")


def _load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def _memory_dbs(args: argparse.Namespace) -> list[str]:
    chosen = [db for db in args.memory_dbs if db in args.dbs]
    return chosen or args.dbs[:1]


def cmd_run(args: argparse.Namespace) -> int:
    if args.processes > 1:
        return _run_in_processes(args)
    _quiet_library()
    args.out.mkdir(parents=True, exist_ok=True)
    scenarios = [BY_KEY[k] for k in args.scenarios]
    latency_scenarios = [BY_KEY[k] for k in args.latency_scenarios] if args.latency_ms else []
    started = time.time()
    meta: dict[str, object] = {
        "command": "python -m benchmarks " + " ".join(sys.argv[1:]),
        "started": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "python": platform.python_version(),
        "sqlalchemy": sqlalchemy.__version__,
        "git": _git_version(),
        "cpus": os.cpu_count(),
        "load_start": _load(),
        "repeat": args.repeat,
        "budget_s": args.budget,
        "stock_max_statements": args.stock_max_statements,
        "memory_dbs": _memory_dbs(args),
        "servers": {},
    }
    records: list[Record] = []
    records_have_problems = False
    for db in args.dbs:
        engine = make_engine(db)
        try:
            meta["servers"][db] = server_version(engine)  # type: ignore[index]
        except sqlalchemy.exc.OperationalError as exc:
            print(f"{LABELS[db]} is unreachable: {exc.orig}", file=sys.stderr)
            return 2
        probe = Probe(engine)
        for size in args.sizes:
            t0 = time.perf_counter()
            rows = populate(engine, size)
            print(
                f"{LABELS[db]}: {rows:,} rows for {size:,} parents "
                f"in {time.perf_counter() - t0:.1f} s",
                flush=True,
            )
            cells = [(s, 0.0) for s in scenarios] + [
                (s, args.latency_ms) for s in latency_scenarios
            ]
            for scenario, latency in cells:
                records += measure_cell(
                    engine,
                    probe,
                    db,
                    scenario,
                    size,
                    repeat=args.repeat,
                    budget=args.budget,
                    latency_ms=latency,
                    # Memory does not depend on the round trip, and hardly on
                    # the database: traced where asked, without latency.
                    trace_memory=db in meta["memory_dbs"] and not latency,  # type: ignore[operator]
                    stock_max_statements=args.stock_max_statements,
                )
                sys.stdout.flush()
            meta["load_end"] = _load()
            meta["duration_s"] = time.time() - started
            report.save(args.out / "results.json", meta, records)
        engine.dispose()
    for db in args.paging_dbs:
        engine = make_engine(db)
        probe = Probe(engine)
        t0 = time.perf_counter()
        populate(engine, paging.PAGED_PARENTS)
        print(f"{LABELS[db]}: paging worker, {paging.PAGED_PARENTS:,} parents", flush=True)
        found = paging.measure(
            engine,
            functools.partial(getattr, probe, "count"),
            tuple(args.paging_fillers),
            rounds=args.paging_rounds,
        )
        print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
        meta.setdefault("paging", {})[db] = {  # type: ignore[index]
            "parents": paging.PAGED_PARENTS,
            "records": [dataclasses.asdict(rec) for rec in found],
        }
        if any(rec.problems for rec in found):
            records_have_problems = True
        meta["duration_s"] = time.time() - started
        report.save(args.out / "results.json", meta, records)
        engine.dispose()
    md, png = report.write(args.out)
    print(f"wrote {md} and {png} in {(time.time() - started) / 60:.1f} minutes")
    return 1 if records_have_problems or any(r.problems for r in records) else 0


def _child_args(args: argparse.Namespace) -> list[str]:
    """The options of ``args`` for one child process of :func:`_run_in_processes`."""

    def joined(values: list[object]) -> str:
        return ",".join(str(v) for v in values)

    return [
        *("--sizes", joined(args.sizes), "--dbs", joined(args.dbs)),
        *("--repeat", str(args.repeat), "--latency-ms", str(args.latency_ms)),
        *("--scenarios", joined(args.scenarios)),
        *("--latency-scenarios", joined(args.latency_scenarios)),
        *("--budget", str(args.budget), "--stock-max-statements", str(args.stock_max_statements)),
        *("--memory-dbs", joined(args.memory_dbs), "--paging-dbs", joined(args.paging_dbs)),
        *("--paging-fillers", joined(args.paging_fillers)),
        *("--paging-rounds", str(args.paging_rounds)),
    ]


def _run_in_processes(args: argparse.Namespace) -> int:
    """The whole run, ``--processes`` times, each in a fresh interpreter,
    one after another; then one report of them all.

    On a small shared machine one process's figures carry that process's
    luck: where its memory landed, its hash seed, what else ran during its
    minutes.  Two runs of the same code put one cell's ratio 10% to 20%
    apart, so a 5% or 10% target was met or missed by the draw.  Contenders
    still run interleaved inside each process; the report takes each ratio
    per process and judges the median over processes, with their range."""
    started = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, object] = {}
    records: list[Record] = []
    paging_found: dict[str, dict[str, object]] = {}
    status = 0
    for process in range(1, args.processes + 1):
        out = args.out / f"process-{process}"
        print(f"process {process} of {args.processes}", flush=True)
        child = [sys.executable, "-m", "benchmarks", "run", *_child_args(args), "--out", str(out)]
        code = subprocess.run(child, check=False).returncode
        if code not in (0, 1):  # 1: a run that measured, and flagged problems
            return code
        status |= code
        child_meta, child_records = report.load(out / "results.json")
        records += [dataclasses.replace(rec, process=process) for rec in child_records]
        for db, found in child_meta.pop("paging", {}).items():
            into = paging_found.setdefault(db, {"parents": found["parents"], "records": []})
            into["records"] += [{**rec, "process": process} for rec in found["records"]]  # type: ignore[operator]
        if not meta:
            meta = child_meta
        meta["load_end"] = child_meta.get("load_end")
    meta["command"] = "python -m benchmarks " + " ".join(sys.argv[1:])
    meta["processes"] = args.processes
    meta["duration_s"] = time.time() - started
    if paging_found:
        meta["paging"] = paging_found
    report.save(args.out / "results.json", meta, records)
    md, png = report.write(args.out)
    print(f"wrote {md} and {png} in {(time.time() - started) / 60:.1f} minutes")
    return status


def cmd_report(args: argparse.Namespace) -> int:
    md, png = report.write(args.out)
    print(f"wrote {md} and {png}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from .profiling import profile

    _quiet_library()
    args.out.mkdir(parents=True, exist_ok=True)
    profile(
        args.db,
        args.size,
        BY_KEY[args.scenario],
        args.contender,
        args.tool,
        args.out,
        populate_first=not args.no_populate,
        latency_ms=args.latency_ms,
        cpu_time=args.cpu_time,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="directory for results.json, report.md and chart.png",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the suite, then write report.md and chart.png")
    run.add_argument(
        "--sizes",
        type=_csv(int),
        default=[1000, 10_000],
        help="numbers of parents (default 1000,10000; add 100000 for the long run)",
    )
    run.add_argument("--dbs", type=_csv(str, DATABASES), default=list(DATABASES))
    run.add_argument("--repeat", type=int, default=5, help="timed runs per contender")
    run.add_argument(
        "--latency-ms",
        type=float,
        default=1.0,
        help="simulated round trip per statement for the latency scenarios (0: skip them)",
    )
    run.add_argument(
        "--scenarios", type=_csv(str, tuple(BY_KEY)), default=[s.key for s in SCENARIOS]
    )
    run.add_argument(
        "--latency-scenarios", type=_csv(str, tuple(BY_KEY)), default=list(LATENCY_DEFAULT)
    )
    run.add_argument(
        "--budget",
        type=float,
        default=10.0,
        help="seconds: when stock lazy loading is slow, it runs budget / (first run) times",
    )
    run.add_argument(
        "--stock-max-statements",
        type=int,
        default=20_000,
        help="skip stock lazy loading where it would send more statements than this "
        "(default 20000: the three-level walk from 10,000 parents sends 110,001)",
    )
    run.add_argument(
        "--memory-dbs",
        type=_csv(str, DATABASES),
        default=["postgresql"],
        help="databases on which peak memory is traced (default postgresql; it hardly "
        "depends on the database)",
    )
    run.add_argument(
        "--paging-dbs",
        type=_csv(str, DATABASES, empty=True),
        default=["sqlite"],
        help="databases for the long-session paging scenario (default sqlite; '' skips it)",
    )
    run.add_argument(
        "--paging-fillers",
        type=_csv(int),
        default=list(paging.FILLERS),
        help="unrelated rows held by the paging worker's session (default 0,100000,1000000)",
    )
    run.add_argument("--paging-rounds", type=int, default=5, help="timed rounds per contender")
    run.add_argument(
        "--processes",
        type=int,
        default=1,
        help="run everything this many times, each in a fresh process, and judge each "
        "target by the median of its per-process ratios (3 for the README's figures)",
    )
    run.set_defaults(func=cmd_run)

    rep = sub.add_parser("report", help="re-render report.md and chart.png from results.json")
    rep.set_defaults(func=cmd_report)
    for command in (run, rep):
        # Also after the command (`run --out DIR`), as ./run-benchmarks passes it.
        command.add_argument("--out", type=Path, default=argparse.SUPPRESS, help="as above")

    prof = sub.add_parser("profile", help="profile one contender of one scenario")
    prof.add_argument("--db", choices=DATABASES, default="postgresql")
    prof.add_argument("--size", type=int, default=10_000)
    prof.add_argument("--scenario", choices=tuple(BY_KEY), default="one_to_many")
    prof.add_argument("--contender", choices=CONTENDERS, default="nplus1loader")
    prof.add_argument("--tool", choices=("cprofile", "pyinstrument"), default="cprofile")
    prof.add_argument("--latency-ms", type=float, default=0.0)
    prof.add_argument(
        "--cpu-time",
        action="store_true",
        help="cProfile with process CPU time instead of wall time",
    )
    prof.add_argument(
        "--no-populate", action="store_true", help="reuse the tables of the previous run"
    )
    prof.set_defaults(func=cmd_profile)

    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
