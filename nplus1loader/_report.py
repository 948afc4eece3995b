"""How nplus1loader reports what it does: the log record of each batch,
the per-session counters, and, for an N+1 pattern, the error of raise mode,
the warning of warn mode and the entry a test run collects for the pytest
plugin's summary and JSON report.

Every message is written here, once.  A *pattern* is a touch of an armed
attribute whose batch would load ``threshold`` instances or more (2 unless
:func:`configure` says otherwise): one instance alone is no N+1 pattern.
The report says what happened, where the instances were loaded, where the
attribute was touched (the user's line: :func:`find_call_site`), and the
option that loads it in that query.

The logger name ``nplus1loader.NPlusOneLazyColumnLoader`` is part of the
public contract (it is the name the 2020 library used, and users filter
on it).  The counters live in ``session.info``, so they belong to one
session (one request) and need no lock: a Session is never shared between
threads.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import sqlalchemy
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, scoped_session

from ._modes import LOAD, effective_mode
from .exc import LazyLoadingAttributeError, NPlusOneWarning

# ------------------------------------------------------------- user lines

logger = logging.getLogger("nplus1loader.NPlusOneLazyColumnLoader")

_OWN_DIR = os.path.dirname(os.path.abspath(__file__))
_SQLALCHEMY_DIR = os.path.dirname(os.path.abspath(sqlalchemy.__file__))
_SKIPPED_DIRS = (_OWN_DIR + os.sep, _SQLALCHEMY_DIR + os.sep)
#: Packages whose frames are never the user's line, matched on the frame's
#: module name (``__name__`` in its globals): that also covers code a
#: package generates with ``exec``, such as SQLAlchemy 2.0's decorator
#: wrappers, whose file name is ``<string>`` (issue 17).
_OWN_PACKAGES = ("nplus1loader", "sqlalchemy")
_skipped_packages: tuple[str, ...] = _OWN_PACKAGES


@dataclass(frozen=True)
class CallSite:
    """A line of user code: where an attribute was touched, or where the
    query that armed it ran."""

    filename: str
    lineno: int
    function: str
    #: The frame's module name, for warnings (``warn_explicit``).
    module: str = field(default="", compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno} in {self.function}()"


#: Code objects with made-up file names that are not user code: the import
#: system's, and the wrappers SQLAlchemy generates for its decorators
#: ("<sqlalchemy generated warned() wrapper for ...>").
_GENERATED_PREFIXES = ("<frozen", "<sqlalchemy")


def set_skipped_packages(packages: Iterable[str]) -> tuple[str, ...]:
    """Also skip frames of ``packages`` (top-level or dotted names, such as
    ``"pydantic"``) when looking for the user's line; returns the previous
    extra packages, so a caller can restore them."""
    global _skipped_packages
    names = tuple(packages)
    for name in names:
        if not isinstance(name, str) or not all(p.isidentifier() for p in name.split(".")):
            raise ArgumentError(
                f"configure(): skip_packages expects package names such as 'pydantic', got {name!r}"
            )
    previous = _skipped_packages[len(_OWN_PACKAGES) :]
    _skipped_packages = _OWN_PACKAGES + names
    return previous


def _in_packages(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def is_internal(filename: str) -> bool:
    """True for code of nplus1loader, SQLAlchemy or the interpreter."""
    return filename.startswith(_GENERATED_PREFIXES) or os.path.abspath(filename).startswith(
        _SKIPPED_DIRS
    )


def is_internal_frame(frame: FrameType) -> bool:
    """True for a frame of nplus1loader, SQLAlchemy (generated code
    included), the interpreter or a package named in :func:`set_skipped_packages`."""
    module = frame.f_globals.get("__name__")
    if isinstance(module, str) and _in_packages(module, _skipped_packages):
        return True
    return is_internal(frame.f_code.co_filename)


def _parent_greenlet_frame() -> FrameType | None:
    """Under ``AsyncSession`` the ORM runs in a greenlet that SQLAlchemy's
    ``greenlet_spawn`` started; the coroutine that awaited it, with the
    user's line, is on the stack of the parent greenlet, suspended in
    ``greenlet_spawn`` (SQLAlchemy 2.0 and 2.1)."""
    greenlet = sys.modules.get("greenlet")
    if greenlet is None:
        return None  # no greenlet imported: no AsyncSession either
    parent = greenlet.getcurrent().parent
    return parent.gr_frame if parent is not None else None


def find_call_site(frame: FrameType | None = None) -> CallSite | None:
    """The innermost frame outside nplus1loader, SQLAlchemy and the skipped
    packages, following an ``AsyncSession``'s greenlet to the coroutine that
    awaited it.

    Walking frames is cheap next to the query a batch is about to run, and it
    is the one piece of information that tells a developer which loop to fix.
    """
    if frame is None:
        frame = sys._getframe(1)
    followed_parent = False
    while frame is not None:
        if not is_internal_frame(frame):
            code = frame.f_code
            module = frame.f_globals.get("__name__")
            return CallSite(
                os.path.abspath(code.co_filename),
                frame.f_lineno,
                code.co_name,
                module if isinstance(module, str) else "",
            )
        frame = frame.f_back
        if frame is None and not followed_parent:
            followed_parent = True
            frame = _parent_greenlet_frame()
    return None


# -------------------------------------------------------------- the log


def log_batch(
    model: str,
    attribute: str,
    instances: int,
    site: CallSite | None,
    fields: dict[str, Any] | None = None,
) -> None:
    """Log one batch.  A batch of a single instance is not an N+1 pattern, so
    it is logged at DEBUG; real batches at WARNING, where they get noticed.
    ``fields``: what the N+1 pattern report adds (query site, touch site,
    suggested option), as ``extra`` attributes of the record."""
    level = logging.WARNING if instances > 1 else logging.DEBUG
    if not logger.isEnabledFor(level):
        return
    where = f" at {site}" if site is not None else ""
    extra: dict[str, Any] = {
        "nplus1_model": model,
        "nplus1_attribute": attribute,
        "nplus1_instances": instances,
        "nplus1_call_site": str(site) if site is not None else None,
        "nplus1_pattern": False,
        "nplus1_query_site": None,
        "nplus1_touch_site": str(site) if site is not None else None,
        "nplus1_fix": None,
        "nplus1_kind": None,
    }
    if fields:
        extra.update(fields)
    logger.log(
        level,
        "%s.%s: N+1 loading of %d instances%s",
        model,
        attribute,
        instances,
        where,
        extra=extra,
        stacklevel=1,
    )


# ------------------------------------------------------------- warnings


def warn_at(message: str, site: CallSite | None, pattern: object = None) -> None:
    """Emit :class:`NPlusOneWarning` attributed to the user's line ``site``,
    not to SQLAlchemy's attribute machinery: warning filters by module,
    pytest's warnings summary and ``-W error`` then point at the loop to
    fix.  ``pattern`` is the warning's ``pattern`` attribute (the report's
    fields, as on the error).  ``warn_explicit``, because under ``AsyncSession`` the user's line
    is on another greenlet's stack, out of ``stacklevel``'s reach."""
    warning = NPlusOneWarning(message)
    warning.pattern = pattern
    if site is None:
        warnings.warn(warning, stacklevel=2)
        return
    module_globals = _globals_of(site)
    registry: Any = module_globals.setdefault("__warningregistry__", {}) if module_globals else None
    module = str(module_globals.get("__name__", "")) if module_globals else ""
    warnings.warn_explicit(
        warning,
        NPlusOneWarning,
        site.filename,
        site.lineno,
        module=module or None,
        registry=registry,
        module_globals=module_globals,
    )


def _globals_of(site: CallSite) -> dict[str, Any] | None:
    module = sys.modules.get(site.module) if site.module else None
    return vars(module) if module is not None else None


# ---------------------------------------------------------- the counters


_INFO_KEY = "nplus1loader.stats"


@dataclass
class Stats:
    """What nplus1loader did in one session, for logs and metrics.

    ``batches``: batch loads run; ``instances``: instances they loaded;
    ``queries``: SQL statements they emitted; ``queries_saved``: what stock
    lazy loading would have cost for the same instances, minus ``queries``.
    """

    batches: int = 0
    instances: int = 0
    queries: int = 0
    queries_saved: int = 0


def stats(session: Any) -> Stats:
    """The counters of ``session`` (a ``Session``, an ``AsyncSession``, or a
    scoped session: its current one), to put in a log line, a metric or a
    response header at the end of a request."""
    current = session
    if isinstance(current, scoped_session) or _is_async_scoped(current):
        current = current()  # the registry's session for this thread / task
    sync = getattr(current, "sync_session", current)
    if not isinstance(sync, Session):
        raise ArgumentError(
            "stats() expects a Session, an AsyncSession or a scoped session (the counters "
            f"are per session), got {session!r}"
        )
    found = sync.info.get(_INFO_KEY)
    if found is None:
        found = sync.info[_INFO_KEY] = Stats()
    return found


def _is_async_scoped(obj: Any) -> bool:
    try:
        from sqlalchemy.ext.asyncio import async_scoped_session
    except ImportError:  # SQLAlchemy 2.1 without greenlet: no asyncio sessions
        return False
    return isinstance(obj, async_scoped_session)


def record_batch(
    session: Any, instances: int, queries: int, stock_queries: int | None = None
) -> None:
    """Count one batch; ``stock_queries`` defaults to one per instance."""
    counters = stats(session)
    counters.batches += 1
    counters.instances += instances
    counters.queries += queries
    stock = instances if stock_queries is None else stock_queries
    counters.queries_saved += max(stock - queries, 0)


def report_batch(
    session: Any,
    *,
    model: str,
    attribute: str,
    instances: int,
    statements: int,
    stock_statements: int | None,
    site: CallSite | None,
    pattern: Pattern | None,
    warn: bool,
) -> None:
    """Everything a batch that ran reports, in one place: the counters, the
    log record, and in warn mode the warning of its N+1 pattern.  Called
    once the batch has run: a batch that failed (a lost connection,
    MissingGreenlet under asyncio) loaded nothing."""
    record_batch(session, instances, statements, stock_statements)
    log_batch(model, attribute, instances, site, pattern.log_fields() if pattern else None)
    if warn and pattern is not None:
        warn_at(pattern.message(), site, pattern)


# ------------------------------------------------------------- patterns


RELATIONSHIP = "relationship"
COLUMN = "column"
EXPIRED = "expired"

_threshold = 2


def configure(*, threshold: int | None = None, skip_packages: Iterable[str] | None = None) -> None:
    """Process-wide settings of the N+1 pattern report.

    :param threshold: how many instances a touch's batch must load to be an
        N+1 pattern, which ``mode="raise"`` raises for and ``mode="warn"``
        warns about (default 2: one instance alone loads as stock does).
    :param skip_packages: packages whose frames are never the line to
        report (``["pydantic"]``: a serialiser touching the attribute),
        besides nplus1loader's and SQLAlchemy's own.  Replaces the
        previous list.

    Settings left out keep their value::

        nplus1loader.configure(threshold=3, skip_packages=["pydantic"])
    """
    global _threshold
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1
    ):
        raise ArgumentError(f"configure(): threshold must be a positive integer, got {threshold!r}")
    if skip_packages is not None:
        set_skipped_packages((skip_packages,) if isinstance(skip_packages, str) else skip_packages)
    if threshold is not None:
        _threshold = threshold


def threshold() -> int:
    """How many instances a batch must load to be an N+1 pattern."""
    return _threshold


# ------------------------------------------------------------ query sites

#: Inside a batch (or a stock load with nested arming): the line of the
#: query that loaded the trigger, which the instances the batch brings in
#: inherit, so a nested touch names the query the fix goes in.
_origin: ContextVar[CallSite | None] = ContextVar("nplus1loader_origin", default=None)


def wants_query_site(declared_mode: str) -> bool:
    """Whether an arming query records its line: only where a touch could
    report it (raise or warn mode, or a test run collecting patterns), so
    load mode pays nothing for it."""
    return _recorder is not None or effective_mode(declared_mode) != LOAD


def arming_site() -> CallSite | None:
    """The line of the query arming instances now: the root query's inside
    a batch, else the innermost user frame."""
    return _origin.get() or find_call_site()


@contextmanager
def loading_for(site: CallSite | None) -> Iterator[None]:
    """Run a batch whose instances were loaded by the query at ``site``."""
    token = _origin.set(site)
    try:
        yield
    finally:
        _origin.reset(token)


# ---------------------------------------------------------------- patterns


@dataclass(frozen=True)
class Pattern:
    """One touch that is an N+1 pattern."""

    model: str
    attribute: str
    kind: str
    instances: int
    query_site: CallSite | None
    touch_site: CallSite | None
    fix: str

    @property
    def name(self) -> str:
        return f"{self.model}.{self.attribute}"

    def message(self) -> str:
        loaded = (
            f"the query at {self.query_site}"
            if self.query_site is not None
            else "a query whose line was not recorded"
        )
        expired = "expired " if self.kind == EXPIRED else ""
        return (
            f"{self.name}: N+1 pattern: touched on 1 of {self.instances} {expired}"
            f"{self.model} loaded by {loaded}; touched at {_where(self.touch_site)}. "
            + _advice(self.kind, self.fix, "in that query")
        )

    def error(self) -> LazyLoadingAttributeError:
        """What raise mode raises for this pattern."""
        return LazyLoadingAttributeError(self.model, self.attribute, self.message(), self)

    def log_fields(self) -> dict[str, Any]:
        return {
            "nplus1_pattern": True,
            "nplus1_query_site": _str(self.query_site),
            "nplus1_touch_site": _str(self.touch_site),
            "nplus1_fix": self.fix,
            "nplus1_kind": self.kind,
        }


def _str(site: CallSite | None) -> str | None:
    return str(site) if site is not None else None


def _where(site: CallSite | None) -> str:
    return str(site) if site is not None else "an unknown line"


def _advice(kind: str, fix: str, where: str) -> str:
    """How to load the attribute in the query instead (``where``: "in the
    query", "in that query")."""
    if kind == EXPIRED:
        return (
            "Expired instances (after commit() or expire()) refresh one at a time: "
            "keep them loaded with expire_on_commit=False, or reload them in one "
            f"query with {fix}"
        )
    return f"Load it {where}: {fix}"


def strict_error(
    model: str, key: str, kind: str, path: Any, prop: Any
) -> LazyLoadingAttributeError:
    """What a ``raiseload_*`` option raises on every touch of ``model.key``
    (``kind``: relationship, column or expired) by user code: the attribute,
    where it was touched, and the option that loads it in the query of
    load path ``path``."""
    expired = " (expired)" if kind == EXPIRED else ""
    return LazyLoadingAttributeError(
        model,
        key,
        f"{model}.{key} is not available due to raiseload{expired}; touched at "
        f"{_where(find_call_site())}. " + _advice(kind, fix_for(path, prop, kind), "in the query"),
    )


def _class_name(entity: Any) -> str:
    class_ = getattr(entity, "class_", None)
    return class_.__name__ if class_ is not None else str(entity)


def fix_for(path: Any, prop: Any, kind: str) -> str:
    """The option that loads ``prop`` in the query that loaded an instance
    at load path ``path``, spelled from the query's root entity:
    ``selectinload(Author.books).selectinload(Book.tags)``,
    ``undefer(Author.bio)``, ``undefer_group('text')``; for expired
    attributes, the query with ``populate_existing``."""
    steps = tuple(path.path) if path is not None else ()
    entity = steps[-1] if steps else prop.parent
    owner = prop.parent.class_ if prop.parent.isa(getattr(entity, "mapper", entity)) else None
    model = owner.__name__ if owner is not None else _class_name(entity)
    if kind == EXPIRED:
        root = _class_name(steps[0]) if steps else model
        return f"select({root}).execution_options(populate_existing=True)"
    chain = [
        f"selectinload({_class_name(steps[i - 1])}.{steps[i].key})" for i in range(1, len(steps), 2)
    ]
    if kind == COLUMN:
        group = getattr(prop, "group", None)
        chain.append(f"undefer_group({group!r})" if group else f"undefer({model}.{prop.key})")
    else:
        chain.append(f"selectinload({model}.{prop.key})")
    return ".".join(chain)


# --------------------------------------------------------------- recording


@dataclass
class Seen:
    """A pattern seen during a test run, with the tests that hit it."""

    pattern: Pattern
    instances: int = 0
    touches: int = 0
    tests: list[str] = field(default_factory=list)


class Recorder:
    """The patterns of one test run, keyed by what a fix is about: the
    attribute, the query site, the touch site and the suggested option."""

    def __init__(self) -> None:
        self.current_test: str | None = None
        self.seen: dict[tuple[Any, ...], Seen] = {}

    def add(self, pattern: Pattern) -> None:
        key = (pattern.name, pattern.query_site, pattern.touch_site, pattern.fix)
        found = self.seen.get(key)
        if found is None:
            found = self.seen[key] = Seen(pattern)
        found.touches += 1
        found.instances = max(found.instances, pattern.instances)
        test = self.current_test
        if test is not None and test not in found.tests:
            found.tests.append(test)

    def as_json(self) -> list[dict[str, Any]]:
        return [
            {
                "attribute": seen.pattern.name,
                "kind": seen.pattern.kind,
                "instances": seen.instances,
                "touches": seen.touches,
                "query_site": _str(seen.pattern.query_site),
                "touch_site": _str(seen.pattern.touch_site),
                "fix": seen.pattern.fix,
                "tests": list(seen.tests),
            }
            for seen in self.seen.values()
        ]


_recorder: Recorder | None = None


def start_recording() -> tuple[Recorder, Recorder | None]:
    """Collect patterns from now on (the pytest plugin); returns the new
    recorder and the previous one, for :func:`restore_recording`."""
    global _recorder
    previous = _recorder
    _recorder = Recorder()
    return _recorder, previous


def restore_recording(previous: Recorder | None) -> None:
    global _recorder
    _recorder = previous


def record(pattern: Pattern) -> None:
    if _recorder is not None:
        _recorder.add(pattern)
