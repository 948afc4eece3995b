"""What an N+1 pattern is reported as: the error of raise mode, the warning
of warn mode, the fields of the log record, and the patterns a test run
collects for the pytest plugin's summary and JSON report (issue 17).

A pattern is a touch of an armed attribute whose batch would load
``threshold`` instances or more (2 unless :func:`configure` says
otherwise): one instance alone is no N+1 pattern.  The report says what
happened, where the instances were loaded, where the attribute was touched,
and the option that loads it in that query.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import ArgumentError

from ._logging import CallSite, find_call_site
from ._logging import skip_packages as _skip_packages
from ._modes import LOAD, effective_mode

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
        _skip_packages((skip_packages,) if isinstance(skip_packages, str) else skip_packages)
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
        touched = str(self.touch_site) if self.touch_site is not None else "an unknown line"
        expired = "expired " if self.kind == EXPIRED else ""
        head = (
            f"{self.name}: N+1 pattern: touched on 1 of {self.instances} {expired}"
            f"{self.model} loaded by {loaded}; touched at {touched}. "
        )
        if self.kind == EXPIRED:
            return head + (
                "Expired instances (after commit() or expire()) refresh one at a time: "
                f"keep them loaded with expire_on_commit=False, or reload them in one "
                f"query with {self.fix}"
            )
        return head + f"Load it in that query: {self.fix}"

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
