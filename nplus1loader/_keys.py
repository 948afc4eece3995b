"""How a batch names the instances it loads: the key condition and its
parameter, one chunk at a time.

Every batch of one attribute reuses one compiled statement whatever the
chunk length.  On PostgreSQL, with a single-column key of a plain type,
the keys travel as one array parameter (``key = ANY(CAST(:keys AS
INTEGER[]))``), so the server, too, sees one statement text for every
batch (its plan and prepared-statement caches hit).  Elsewhere, and for
composite keys, it is an expanding ``IN``: SQLAlchemy caches its
compiled form and renders the list at execution time.

With psycopg2, integer keys go as the text of an array literal
(``'{1,2,3}'``, which the same CAST reads): psycopg2 adapts a Python list
one element at a time, which costs about 1 ms per 500 keys, as much as
the rest of the statement.  Drivers that bind on the server (asyncpg,
psycopg 3) take the list itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Dialect,
    Integer,
    String,
    TypeDecorator,
    Uuid,
    any_,
    bindparam,
    cast,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.compiler import compiles

from . import _sqla

DEFAULT_CHUNK_SIZE = 500
"""Instances per query; the same default as SQLAlchemy's ``selectinload``."""

KEYS_PARAM = "nplus1loader_keys"

# Key types whose values the PostgreSQL drivers send as arrays that cast
# cleanly; anything else (enums, custom types) keeps the expanding IN.
_ARRAY_SAFE = (Integer, String, Uuid)


def key_filter(columns: Sequence[Any]) -> Any:
    """The condition selecting the rows of one chunk of keys.  It takes its
    form from the dialect it is compiled for (see :class:`KeyIn`), so it
    needs no bind, and prints with the default dialect."""
    if len(columns) > 1:
        return tuple_(*columns).in_(bindparam(KEYS_PARAM, expanding=True))
    return KeyIn(columns[0])


class KeyIn(ColumnElement[bool]):
    """``column IN (<keys>)``, compiled per dialect: on PostgreSQL, for a
    plain key type, ``column = ANY(CAST(:keys AS <type>[]))`` (one
    statement text whatever the number of keys); elsewhere an expanding
    ``IN``."""

    __visit_name__ = "nplus1loader_key_in"
    inherit_cache = True
    type = Boolean()

    def __init__(self, column: Any) -> None:
        clause = getattr(column, "__clause_element__", None)
        self.column = clause() if clause is not None else column


# A comparison, not a boolean value: rendered as is in WHERE, never "= 1".
_sqla.mark_implicitly_boolean(KeyIn)
_sqla.declare_cache_key(KeyIn, clauses=("column",))


@compiles(KeyIn)
def _compile_key_in(element: KeyIn, compiler: Any, **kw: Any) -> str:
    return compiler.process(  # type: ignore[no-any-return]
        element.column.in_(bindparam(KEYS_PARAM, expanding=True)), **kw
    )


@compiles(KeyIn, "postgresql")
def _compile_key_any(element: KeyIn, compiler: Any, **kw: Any) -> str:
    column = element.column
    column_type = column.type
    if not _array_safe(column_type):
        return _compile_key_in(element, compiler, **kw)
    array = ARRAY(column_type)
    if isinstance(column_type, Integer) and compiler.dialect.driver == "psycopg2":
        keys = bindparam(KEYS_PARAM, type_=IntegerArrayLiteral())
    else:
        keys = bindparam(KEYS_PARAM, type_=array)
    return compiler.process(column == any_(cast(keys, array)), **kw)  # type: ignore[no-any-return]


class IntegerArrayLiteral(TypeDecorator[Any]):
    """A list of integers bound as the text of one PostgreSQL array
    literal, ``'{1,2,3}'`` (see the module docstring)."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str:
        # int() first: nothing but digits and signs reaches the literal
        # (both maps at C speed).
        return "{" + ",".join(map(str, map(int, value))) + "}"


def _array_safe(column_type: Any) -> bool:
    return isinstance(column_type, _ARRAY_SAFE) and not isinstance(column_type, TypeDecorator)


def key_values(identities: Sequence[tuple[Any, ...]]) -> list[Any]:
    """The parameter value for a chunk of identity tuples."""
    if identities and len(identities[0]) == 1:
        return [ident[0] for ident in identities]
    return list(identities)


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def states_by_key(chunk: Sequence[Any], npk: int) -> dict[Any, Any]:
    """A chunk's states by identity, as rows hold it: the bare value for a
    one-column key, the identity tuple otherwise."""
    if npk == 1:
        return {state.key[1][0]: state for state in chunk}
    return {state.key[1]: state for state in chunk}


def chunk_params(by_key: dict[Any, Any], npk: int) -> dict[str, Any]:
    """The parameters of the statement for the chunk ``states_by_key`` made."""
    return {KEYS_PARAM: list(by_key) if npk == 1 else key_values(list(by_key))}
