"""Every batch of one attribute reuses one compiled statement, whatever the
chunk's length: SQLAlchemy compiles it once (an expanding ``IN``, or on
PostgreSQL one array parameter, ``= ANY(:keys)``) and takes it from its
statement cache for every later chunk.  On PostgreSQL the server also sees
one statement text for all of them, so its own plan cache works too.

Captured by an event listener: the statement text, the compiled object
SQLAlchemy executed, and the parameters, of every statement a loop sends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from nplus1loader import nplus1loader
from nplus1loader._keys import IntegerArrayLiteral
from tests._db import QueryCounter, keys_sent
from tests.core_models import Article, User

CHUNK = 2  # six users: chunks of 2, 2 and 2 (or shorter) for every shape


def _users(session: Session) -> list[User]:
    stmt = select(User).options(nplus1loader("*", chunk_size=CHUNK)).order_by(User.id)
    return list(session.scalars(stmt))


def _articles(session: Session) -> list[Article]:
    stmt = select(Article).options(nplus1loader("*", chunk_size=CHUNK)).order_by(Article.id)
    return list(session.scalars(stmt))


def _expired_users(session: Session) -> list[User]:
    users = _users(session)
    session.commit()
    return users


# name: (load the instances, touch one attribute)
SHAPES: dict[str, tuple[Callable[[Session], list[Any]], Callable[[Any], Any]]] = {
    "deferred column": (_users, lambda u: u.bio),
    "one-to-many by foreign key": (_users, lambda u: list(u.articles)),
    "many-to-many through the join": (_users, lambda u: list(u.groups)),
    "many-to-one by identity": (_articles, lambda a: a.author),
    "expired columns": (_expired_users, lambda u: u.name),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_chunk_reuses_one_compiled_statement(
    engine: Engine, session: Session, shape: str
) -> None:
    load, touch = SHAPES[shape]
    objs = load(session)
    with QueryCounter(engine) as log:
        for obj in objs:
            touch(obj)
    texts = log.statements
    assert len(texts) >= 2, texts  # several chunks, or nothing is shown
    compiled = {id(entry.compiled) for entry in log.entries}
    assert len(compiled) == 1, texts  # compiled once, then from the cache

    if engine.dialect.name == "postgresql":
        assert len(set(texts)) == 1, texts  # one text whatever the chunk length
        assert "= ANY (" in texts[0] or "= ANY(" in texts[0], texts[0]
        for parameters in (entry.parameters for entry in log.entries):
            arrays = [n for n in map(keys_sent, parameters.values()) if n is not None]
            assert len(arrays) == 1, parameters  # the keys travel as one array
            assert 1 <= arrays[0] <= CHUNK
            if engine.dialect.driver == "psycopg2":
                # As the text of one array literal: see nplus1loader/_keys.py.
                assert any(isinstance(v, str) for v in parameters.values()), parameters
    else:
        assert all(" IN (" in text for text in texts), texts


def test_integer_array_literal_holds_nothing_but_integers(engine: Engine) -> None:
    literal = IntegerArrayLiteral().process_bind_param([-1, 0, 7], engine.dialect)
    assert literal == "{-1,0,7}"
    with pytest.raises(ValueError):
        IntegerArrayLiteral().process_bind_param(["1}, {2"], engine.dialect)
