"""One log record per batch load, pointing at the user's code.

The logger name ``nplus1loader.NPlusOneLazyColumnLoader`` is part of the
public contract (it is the name the 2020 library used, and users filter on it).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import sqlalchemy
from sqlalchemy.exc import ArgumentError

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


def skip_packages(packages: Iterable[str]) -> tuple[str, ...]:
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
    included), the interpreter or a package named in :func:`skip_packages`."""
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
