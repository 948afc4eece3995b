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
from sqlalchemy.orm import Mapper, Session

DEFAULT_CHUNK_SIZE = 500
"""Instances per query; the same default as SQLAlchemy's ``selectinload``."""

KEYS_PARAM = "nplus1loader_keys"

# Key types whose values the PostgreSQL drivers send as arrays that cast
# cleanly; anything else (enums, custom types) keeps the expanding IN.
_ARRAY_SAFE = (Integer, String, Uuid)


def key_filter(session: Session, mapper: Mapper[Any], columns: Sequence[Any]) -> Any:
    """The condition selecting the rows of one chunk of keys, for the
    database ``mapper``'s instances are loaded from."""
    if len(columns) > 1:
        return tuple_(*columns).in_(bindparam(KEYS_PARAM, expanding=True))
    column = columns[0]
    column_type = column.type
    dialect = session.get_bind(mapper=mapper).dialect
    if dialect.name == "postgresql" and _array_safe(column_type):
        array = ARRAY(column_type)
        if isinstance(column_type, Integer) and dialect.driver == "psycopg2":
            keys = bindparam(KEYS_PARAM, type_=IntegerArrayLiteral())
        else:
            keys = bindparam(KEYS_PARAM, type_=array)
        return column == any_(cast(keys, array))
    return column.in_(bindparam(KEYS_PARAM, expanding=True))


class IntegerArrayLiteral(TypeDecorator[Any]):
    """A list of integers bound as the text of one PostgreSQL array
    literal, ``'{1,2,3}'`` (see the module docstring)."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str:
        # int() first: nothing but digits and signs reaches the literal.
        return "{" + ",".join([str(int(key)) for key in value]) + "}"


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
