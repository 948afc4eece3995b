"""``python -m benchmarks profile``: where one contender spends its time.

Runs the contender once to warm up, once plainly (the reference time), then
once under cProfile (exact call counts, inflated cost of small calls) or
pyinstrument (sampling: proportions close to the real run).  The raw
profile is kept next to the report (``profile-*.pstats`` / ``.txt``).
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time
from pathlib import Path

from .data import populate
from .harness import WARMUP_SIZE, Probe, make_engine, run_once
from .scenarios import Scenario


def profile(
    db: str,
    size: int,
    scenario: Scenario,
    contender_key: str,
    tool: str,
    out: Path,
    *,
    populate_first: bool = True,
    latency_ms: float = 0.0,
    cpu_time: bool = False,
) -> None:
    contender = scenario.contender(contender_key)
    if contender is None:
        raise SystemExit(f"{scenario.key} has no {contender_key} contender")
    engine = make_engine(db)
    probe = Probe(engine)
    if populate_first:
        populate(engine, size)
    probe.latency = latency_ms / 1000.0
    run_once(engine, probe, contender.body, min(size, WARMUP_SIZE))
    plain = run_once(engine, probe, contender.body, size)
    print(
        f"{scenario.key} / {contender.label} on {db}, {size:,} parents: "
        f"{plain.seconds * 1000:.0f} ms, {plain.queries} statements (unprofiled)"
    )
    stem = out / f"profile-{scenario.key}-{contender_key}-{db}-{size}"
    if tool == "cprofile":
        # CPU time leaves out the database and, on a busy machine, the time
        # other processes hold the CPU: the Python cost alone.
        prof = cProfile.Profile(time.process_time) if cpu_time else cProfile.Profile()
        prof.enable()
        run_once(engine, probe, contender.body, size)
        prof.disable()
        prof.dump_stats(str(stem) + ".pstats")
        text = io.StringIO()
        stats = pstats.Stats(prof, stream=text)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats("nplus1loader", 40)
        report = text.getvalue()
        path = Path(str(stem) + ".cprofile.txt")
    else:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005)
        profiler.start()
        run_once(engine, probe, contender.body, size)
        profiler.stop()
        report = profiler.output_text(unicode=True, color=False)
        path = Path(str(stem) + ".pyinstrument.txt")
    path.write_text(report)
    print(report)
    print(f"written to {path}")
    engine.dispose()
