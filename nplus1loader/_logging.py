"""One log record per batch load, pointing at the user's code.

The logger name ``nplus1loader.NPlusOneLazyColumnLoader`` is part of the
public contract (it is the name the 2020 library used, and users filter on it).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from types import FrameType

import sqlalchemy

logger = logging.getLogger("nplus1loader.NPlusOneLazyColumnLoader")

_OWN_DIR = os.path.dirname(os.path.abspath(__file__))
_SQLALCHEMY_DIR = os.path.dirname(os.path.abspath(sqlalchemy.__file__))
_SKIPPED_DIRS = (_OWN_DIR + os.sep, _SQLALCHEMY_DIR + os.sep)


@dataclass(frozen=True)
class CallSite:
    """Where user code touched the attribute that started a batch."""

    filename: str
    lineno: int
    function: str

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno} in {self.function}()"


#: Code objects with made-up file names that are not user code: the import
#: system's, and the wrappers SQLAlchemy generates for its decorators
#: ("<sqlalchemy generated warned() wrapper for ...>").
_GENERATED_PREFIXES = ("<frozen", "<sqlalchemy")


def is_internal(filename: str) -> bool:
    """True for code of nplus1loader, SQLAlchemy or the interpreter."""
    return filename.startswith(_GENERATED_PREFIXES) or os.path.abspath(filename).startswith(
        _SKIPPED_DIRS
    )


def find_call_site() -> CallSite | None:
    """The innermost frame outside nplus1loader and SQLAlchemy.

    Walking frames is cheap next to the query a batch is about to run, and it
    is the one piece of information that tells a developer which loop to fix.
    """
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not is_internal(filename):
            return CallSite(os.path.abspath(filename), frame.f_lineno, frame.f_code.co_name)
        frame = frame.f_back
    return None


def log_batch(model: str, attribute: str, instances: int, site: CallSite | None) -> None:
    """Log one batch.  A batch of a single instance is not an N+1 pattern, so
    it is logged at DEBUG; real batches at WARNING, where they get noticed."""
    level = logging.WARNING if instances > 1 else logging.DEBUG
    if not logger.isEnabledFor(level):
        return
    where = f" at {site}" if site is not None else ""
    logger.log(
        level,
        "%s.%s: N+1 loading of %d instances%s",
        model,
        attribute,
        instances,
        where,
        extra={
            "nplus1_model": model,
            "nplus1_attribute": attribute,
            "nplus1_instances": instances,
            "nplus1_call_site": str(site) if site is not None else None,
        },
        stacklevel=1,
    )
