"""pytest plugin, registered through the ``pytest11`` entry point.

* ``--nplus1-enable[=MODE]`` (or the ``nplus1_enable`` ini key) enables
  every ``Session`` of the test process (``nplus1loader.enable(Session)``),
  in mode ``warn`` unless a mode is given, so a suite is audited for N+1
  patterns without changing its code;
* while sessions are enabled that way, or ``--nplus1-report=FILE.json``
  is given, every N+1 pattern seen is collected: the terminal summary
  lists each (attribute, instances, query site, touch site, suggested
  option, tests) and the report file gets them as JSON, for CI;
* ``--nplus1-mode=load|warn|raise`` (or the ``nplus1_mode`` ini key) forces
  the mode of every armed attribute for the run, so a suite written against
  production code (``nplus1loader.enable(SessionLocal)``) raises on every
  N+1 pattern that production silently batches;
* ``@pytest.mark.nplus1(mode="raise")`` forces the mode for one test;
* the ``nplus1_count_queries`` fixture (also served as ``count_queries``
  unless the project defines a fixture of that name, which then wins)
  counts statements: ``with count_queries(engine) as q: ...``.

Precedence of modes, most important first (documented for users in the
README's "Modes" section): the marker, the ``NPLUS1LOADER_MODE``
environment variable, ``--nplus1-mode``, the ``nplus1_mode`` ini key, the
mode written in the code.  An invalid mode anywhere stops the run before
any test runs (a marker's at collection), naming the valid values.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest

from . import _modes, _report
from ._options import Mode
from ._session import enable_every_session
from .testing import CountQueries, count_queries

_HELP = "force the mode of every nplus1loader-armed attribute: load, warn or raise"
_ENABLE_HELP = (
    "enable nplus1loader on every Session of the test process (mode: load, warn or "
    "raise; default warn) and list the N+1 patterns seen at the end"
)
_REPORT_HELP = "write the N+1 patterns seen to this JSON file"
_DEFAULT_ENABLE_MODE: Mode = "warn"
_PREVIOUS_RUN_MODE = pytest.StashKey[str | None]()
_PREVIOUS_TEST_MODE = pytest.StashKey[str | None]()
_RESTORE = pytest.StashKey[list[Callable[[], None]]]()
_RECORDER = pytest.StashKey[_report.Recorder]()
_ENABLED_MODE = pytest.StashKey[str | None]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nplus1loader")
    group.addoption(
        "--nplus1-mode",
        action="store",
        dest="nplus1_mode",
        default=None,
        choices=_modes.MODES,
        help=_HELP + " (overrides the nplus1_mode ini key)",
    )
    group.addoption(
        "--nplus1-enable",
        action="store",
        dest="nplus1_enable",
        nargs="?",
        const=_DEFAULT_ENABLE_MODE,
        default=None,
        metavar="MODE",
        choices=_modes.MODES,
        help=_ENABLE_HELP + " (overrides the nplus1_enable ini key)",
    )
    group.addoption(
        "--nplus1-report",
        action="store",
        dest="nplus1_report",
        default=None,
        metavar="FILE.json",
        help=_REPORT_HELP,
    )
    parser.addini("nplus1_mode", _HELP, default="")
    parser.addini(
        "nplus1_enable",
        _ENABLE_HELP + "; 'true' means warn, 'false' or empty: off",
        default="",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "nplus1(mode): force the nplus1loader mode (load, warn or raise) for this test; "
        "it outranks the NPLUS1LOADER_MODE environment variable",
    )
    try:
        _modes.environment_mode()
    except Exception as error:
        raise pytest.UsageError(str(error)) from None
    restore: list[Callable[[], None]] = []
    config.stash[_RESTORE] = restore
    previous_run_mode = _modes.set_forced_mode(_run_mode(config))

    def unforce() -> None:
        _modes.set_forced_mode(previous_run_mode)

    restore.append(unforce)
    enabled = _enable_mode(config)
    config.stash[_ENABLED_MODE] = enabled
    if enabled is not None:
        restore.append(enable_every_session(enabled))
    if enabled is not None or config.getoption("nplus1_report"):
        recorder, previous_recorder = _report.start_recording()
        config.stash[_RECORDER] = recorder
        restore.append(lambda: _report.restore_recording(previous_recorder))


def pytest_unconfigure(config: pytest.Config) -> None:
    undos: list[Callable[[], None]] = config.stash.get(_RESTORE, [])
    for undo in reversed(undos):
        undo()
    config.stash[_RESTORE] = []


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    lines = []
    enabled = config.stash.get(_ENABLED_MODE, None)
    if enabled is not None:
        lines.append(f"nplus1loader: every Session enabled, mode {enabled} (--nplus1-enable)")
    env = os.environ.get(_modes.ENV_VAR, "").strip()
    mode = _run_mode(config)
    if env:
        lines.append(f"nplus1loader: mode {env} ({_modes.ENV_VAR})")
    elif mode:
        lines.append(f"nplus1loader: mode {mode} (--nplus1-mode / nplus1_mode)")
    return lines or None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A misspelt marker mode stops the run at collection, before a test
    runs under a mode nobody asked for."""
    problems = []
    for item in items:
        marker = item.get_closest_marker("nplus1")
        if marker is not None and _marker_mode(marker) is None:
            problems.append(f"{item.nodeid}: {_marker_problem(marker)}")
    if problems:
        raise pytest.UsageError("\n".join(problems))


def _marker_mode(marker: pytest.Mark) -> str | None:
    mode = marker.kwargs.get("mode", marker.args[0] if marker.args else None)
    if mode not in _modes.MODES or len(marker.args) + len(marker.kwargs) != 1:
        return None
    return str(mode)


def _marker_problem(marker: pytest.Mark) -> str:
    return f"use @pytest.mark.nplus1(mode=...) with one of {', '.join(_modes.MODES)}; got {marker}"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    recorder = item.config.stash.get(_RECORDER, None)
    if recorder is not None:
        recorder.current_test = item.nodeid
    marker = item.get_closest_marker("nplus1")
    if marker is None:
        return
    mode = _marker_mode(marker)
    if mode is None:  # a marker added after collection
        pytest.fail(f"{item.nodeid}: {_marker_problem(marker)}", pytrace=False)
    item.stash[_PREVIOUS_TEST_MODE] = _modes.set_test_mode(mode)


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    # After the fixtures are torn down: their teardown ran in the test's mode.
    yield
    if _PREVIOUS_TEST_MODE in item.stash:
        _modes.set_test_mode(item.stash[_PREVIOUS_TEST_MODE])
        del item.stash[_PREVIOUS_TEST_MODE]
    recorder = item.config.stash.get(_RECORDER, None)
    if recorder is not None:
        recorder.current_test = None


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    recorder = config.stash.get(_RECORDER, None)
    if recorder is None:
        return
    patterns = recorder.as_json()
    terminalreporter.section("nplus1loader: N+1 patterns")
    if not patterns:
        terminalreporter.write_line("no N+1 pattern seen")
    for found in patterns:
        for line in _summary_lines(found):
            terminalreporter.write_line(line)
    path = config.getoption("nplus1_report")
    if path:
        terminalreporter.write_line(f"written to {path}")


def pytest_sessionfinish(session: pytest.Session) -> None:
    recorder = session.config.stash.get(_RECORDER, None)
    path = session.config.getoption("nplus1_report")
    if recorder is None or not path:
        return
    with open(path, "w", encoding="utf-8") as out:
        json.dump({"patterns": recorder.as_json()}, out, indent=2)
        out.write("\n")


def _summary_lines(found: dict[str, Any]) -> list[str]:
    touches = found["touches"]
    return [
        f"{found['attribute']}: {found['instances']} instances"
        + (f", touched {touches} times" if touches > 1 else ""),
        f"    query:   {found['query_site'] or 'not recorded'}",
        f"    touched: {found['touch_site'] or 'unknown'}",
        f"    fix:     {found['fix']}",
        f"    tests:   {', '.join(found['tests']) or '(outside tests)'}",
    ]


@pytest.fixture
def nplus1_count_queries() -> CountQueries:
    """``with nplus1_count_queries(engine) as q: ...``, then ``q.count``,
    ``q.statements``, ``q.assert_count(n)`` or ``q.assert_at_most(n)``
    (``nplus1_count_queries(engine, at_most=n)`` checks at the block's end)."""
    return count_queries


@pytest.fixture(name="count_queries")
def _count_queries_alias() -> CountQueries:
    """Same as ``nplus1_count_queries``; a project fixture named
    ``count_queries`` (in a conftest.py) takes precedence over this one."""
    return count_queries


def _run_mode(config: pytest.Config) -> str | None:
    mode = config.getoption("nplus1_mode") or str(config.getini("nplus1_mode")).strip()
    if not mode:
        return None
    if mode not in _modes.MODES:
        raise pytest.UsageError(
            f"nplus1_mode ini key: expected one of {', '.join(_modes.MODES)}, got {mode!r}"
        )
    return str(mode)


def _enable_mode(config: pytest.Config) -> Mode | None:
    """The mode ``--nplus1-enable`` or the ini key asks for (its option has
    ``choices``; the ini value is checked here)."""
    mode = config.getoption("nplus1_enable")
    if mode:
        return cast(Mode, str(mode))
    value = str(config.getini("nplus1_enable")).strip().lower()
    if value in ("", "false", "0", "no", "off"):
        return None
    if value in ("true", "1", "yes", "on"):
        return _DEFAULT_ENABLE_MODE
    if value not in _modes.MODES:
        raise pytest.UsageError(
            f"nplus1_enable ini key: expected one of {', '.join(_modes.MODES)}, true or "
            f"false, got {value!r}"
        )
    return cast(Mode, value)
