"""Which mode an armed attribute runs in when it is touched.

Every option (and :func:`nplus1loader.enable`) declares a mode: ``"load"``
(batch), ``"warn"`` (batch and, for an N+1 pattern, emit
:class:`~nplus1loader.NPlusOneWarning`) or ``"raise"`` (raise for an N+1
pattern).  Overrides replace the declared mode when a touch happens, so the
same application code batches in production and raises in a test run.
Precedence, most important first (the README's "Modes" section says the
same, in the one place it is documented for users):

1. the mode of the running test, which only the pytest plugin sets (the
   ``@pytest.mark.nplus1(mode=...)`` marker): written next to the test, it
   is the most specific;
2. the ``NPLUS1LOADER_MODE`` environment variable, read at every touch;
3. the mode of the test run (``--nplus1-mode``, else the ``nplus1_mode``
   ini key), set by the pytest plugin;
4. the mode written in the code.
"""

from __future__ import annotations

import os

from sqlalchemy.exc import ArgumentError

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
#: The marker's mode for the running test (same reasons).
_test_mode: str | None = None


def check_mode(mode: str, where: str) -> str:
    if mode not in MODES:
        raise ArgumentError(f"{where}: mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def environment_mode() -> str | None:
    """``NPLUS1LOADER_MODE``, trimmed and lower-cased (None: unset or
    empty); an invalid value raises ``ArgumentError`` naming the variable."""
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return None
    return check_mode(value.lower(), f"environment variable {ENV_VAR}")


def effective_mode(declared: str) -> str:
    """The mode a touch runs in (see the module docstring)."""
    if _test_mode is not None:
        return _test_mode
    override = environment_mode()
    if override is not None:
        return override
    if _forced_mode is not None:
        return _forced_mode
    return declared


def forced_mode() -> str | None:
    """The mode the pytest plugin forces for the test run, if any."""
    return _forced_mode


def set_forced_mode(mode: str | None) -> str | None:
    """Force ``mode`` for the test run (``None``: stop forcing); returns the
    previous value so the caller can restore it."""
    global _forced_mode
    previous = _forced_mode
    _forced_mode = None if mode is None else check_mode(mode, "forced mode")
    return previous


def set_test_mode(mode: str | None) -> str | None:
    """Force ``mode`` for the running test, above ``NPLUS1LOADER_MODE``
    (the ``nplus1`` marker); returns the previous value."""
    global _test_mode
    previous = _test_mode
    _test_mode = None if mode is None else check_mode(mode, "@pytest.mark.nplus1")
    return previous
