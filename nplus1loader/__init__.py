"""nplus1loader: end the N+1 queries problem in SQLAlchemy 2.x.

Load options arm the attributes a query leaves unloaded; the first touch on
one instance loads the attribute for every armed peer in the session, one
query per 500 instances (:func:`nplus1loader`), or raises so a test suite
sees the N+1 pattern (:func:`raiseload_all`).

Importing the package registers its loader strategies with SQLAlchemy.
"""

from __future__ import annotations

import logging

from . import _strategies as _strategies  # registers the loader strategies with SQLAlchemy
from ._batch import DEFAULT_CHUNK_SIZE as DEFAULT_CHUNK_SIZE
from ._batch import (
    bulk_load_attribute_for_instance_states as bulk_load_attribute_for_instance_states,
)
from ._options import Mode as Mode
from ._options import Nplus1Load as Nplus1Load
from ._options import Nplus1Option as Nplus1Option
from ._options import default_columns as default_columns
from ._options import nplus1loader as nplus1loader
from ._options import nplus1loader_cols as nplus1loader_cols
from ._options import nplus1loader_rels as nplus1loader_rels
from ._options import raiseload_all as raiseload_all
from ._options import raiseload_col as raiseload_col
from ._options import raiseload_rel as raiseload_rel
from ._report import Stats as Stats
from ._report import configure as configure
from ._report import stats as stats
from ._session import disable as disable
from ._session import disabled as disabled
from ._session import enable as enable
from .exc import LazyLoadingAttributeError as LazyLoadingAttributeError
from .exc import NPlusOneWarning as NPlusOneWarning

__version__ = "2.0.0"

# Logging's rule for libraries: a NullHandler on the package logger, so an
# application that never configured logging prints nothing (rather than the
# last-resort handler writing each batch's WARNING to stderr); the
# application decides where the records go.
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "LazyLoadingAttributeError",
    "Mode",
    "NPlusOneWarning",
    "Nplus1Load",
    "Nplus1Option",
    "Stats",
    "bulk_load_attribute_for_instance_states",
    "configure",
    "default_columns",
    "disable",
    "disabled",
    "enable",
    "nplus1loader",
    "nplus1loader_cols",
    "nplus1loader_rels",
    "raiseload_all",
    "raiseload_col",
    "raiseload_rel",
    "stats",
]
