"""Which mode an armed attribute runs in when it is touched.

Every option (and :func:`nplus1loader.enable`) declares a mode: ``"load"``
(batch), ``"warn"`` (batch and emit :class:`~nplus1loader.NPlusOneWarning`) or
``"raise"``.  Two overrides replace the declared mode when a touch happens,
so the same application code batches in production and raises in a test run:

1. the ``NPLUS1LOADER_MODE`` environment variable, read at every touch;
2. otherwise the *forced mode* of a test run, which only the pytest plugin
   sets (``--nplus1-mode``, the ``nplus1_mode`` ini key, the
   ``@pytest.mark.nplus1`` marker).

The environment variable wins because it is the one switch that sits outside
the code and the test configuration (a CI job sets it for the whole run).
"""

from __future__ import annotations

import os
import sys
import warnings

from sqlalchemy.exc import ArgumentError

from ._logging import is_internal
from .exc import NPlusOneWarning

LOAD = "load"
WARN = "warn"
RAISE = "raise"
MODES = (LOAD, WARN, RAISE)
ENV_VAR = "NPLUS1LOADER_MODE"

# Not a ContextVar on purpose: a test's mode must also reach the threads the
# code under test starts (a thread pool, the server thread of a test
# client), and a new thread starts with an empty context.  It is test-run
# configuration, set and restored by the pytest plugin around each test,
# never per-request state.
_forced_mode: str | None = None


def check_mode(mode: str, where: str) -> str:
    if mode not in MODES:
        raise ArgumentError(f"{where}: mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def effective_mode(declared: str) -> str:
    """The mode a touch runs in: ``NPLUS1LOADER_MODE`` if set, else the
    forced mode of the test run if any, else ``declared``."""
    override = os.environ.get(ENV_VAR, "").strip()
    if override:
        return check_mode(override.lower(), f"environment variable {ENV_VAR}")
    if _forced_mode is not None:
        return _forced_mode
    return declared


def forced_mode() -> str | None:
    """The mode the pytest plugin forces for the current test, if any."""
    return _forced_mode


def set_forced_mode(mode: str | None) -> str | None:
    """Force ``mode`` (``None``: stop forcing); returns the previous value so
    the caller can restore it."""
    global _forced_mode
    previous = _forced_mode
    _forced_mode = None if mode is None else check_mode(mode, "forced mode")
    return previous


def warn_at_call_site(message: str) -> None:
    """Emit :class:`NPlusOneWarning` attributed to the user's line, not to
    SQLAlchemy's attribute machinery: warning filters by module, pytest's
    warnings summary and ``-W error`` then point at the loop to fix."""
    stacklevel = 2
    frame = sys._getframe(1)
    while frame.f_back is not None and is_internal(frame.f_code.co_filename):
        frame = frame.f_back
        stacklevel += 1
    warnings.warn(NPlusOneWarning(message), stacklevel=stacklevel)

