"""pytest plugin, registered through the ``pytest11`` entry point.

* ``--nplus1-mode=load|warn|raise`` (or the ``nplus1_mode`` ini key) forces
  the mode of every armed attribute for the run, so a suite written against
  production code (``nplus1loader.enable(SessionLocal)``) raises on every
  N+1 pattern that production silently batches;
* ``@pytest.mark.nplus1(mode="raise")`` forces the mode for one test;
* the ``nplus1_count_queries`` fixture (also served as ``count_queries``
  unless the project defines a fixture of that name, which then wins)
  counts statements: ``with count_queries(engine) as q: ...``.

Precedence, most important first: the ``NPLUS1LOADER_MODE`` environment
variable, the marker, ``--nplus1-mode``, the ``nplus1_mode`` ini key, the
mode written in the code.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from . import _modes
from .testing import QueryCounter, count_queries

_HELP = "force the mode of every nplus1loader-armed attribute: load, warn or raise"
_PREVIOUS_RUN_MODE = pytest.StashKey[str | None]()
_PREVIOUS_TEST_MODE = pytest.StashKey[str | None]()


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
    parser.addini("nplus1_mode", _HELP, default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "nplus1(mode): force the nplus1loader mode (load, warn or raise) for this test",
    )
    mode = _run_mode(config)
    config.stash[_PREVIOUS_RUN_MODE] = _modes.set_forced_mode(mode)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _PREVIOUS_RUN_MODE in config.stash:
        _modes.set_forced_mode(config.stash[_PREVIOUS_RUN_MODE])


def pytest_report_header(config: pytest.Config) -> str | None:
    env = os.environ.get(_modes.ENV_VAR, "").strip()
    if env:
        return f"nplus1loader: mode {env} ({_modes.ENV_VAR})"
    mode = _run_mode(config)
    return f"nplus1loader: mode {mode} (--nplus1-mode / nplus1_mode)" if mode else None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("nplus1")
    if marker is None:
        return
    mode = marker.kwargs.get("mode", marker.args[0] if marker.args else None)
    if mode not in _modes.MODES or len(marker.args) + len(marker.kwargs) != 1:
        pytest.fail(
            f"{item.nodeid}: use @pytest.mark.nplus1(mode=...) with one of "
            f"{', '.join(_modes.MODES)}; got {marker}",
            pytrace=False,
        )
    item.stash[_PREVIOUS_TEST_MODE] = _modes.set_forced_mode(mode)


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    # After the fixtures are torn down: their teardown ran in the test's mode.
    yield
    if _PREVIOUS_TEST_MODE in item.stash:
        _modes.set_forced_mode(item.stash[_PREVIOUS_TEST_MODE])
        del item.stash[_PREVIOUS_TEST_MODE]


@pytest.fixture
def nplus1_count_queries() -> Callable[[Any], QueryCounter]:
    """``with nplus1_count_queries(engine) as q: ...``, then ``q.count``,
    ``q.statements`` or ``q.assert_count(n)``."""
    return count_queries


@pytest.fixture(name="count_queries")
def _count_queries_alias() -> Callable[[Any], QueryCounter]:
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
    return mode
