"""What a user annotates with nplus1loader's public types: checked by
``check_readme.py`` with ``mypy --strict`` and strict ``pyright``."""

from __future__ import annotations

from blog_models import Article, User
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

import nplus1loader
from nplus1loader import Mode, Nplus1Load, Nplus1Option, Stats
from nplus1loader.testing import CountQueries, QueryCounter, count_queries


def armed(mode: Mode = "load") -> list[Nplus1Option]:
    return [
        nplus1loader.nplus1loader("*", mode=mode),
        nplus1loader.nplus1loader_cols(User.bio, chunk_size=100),
        nplus1loader.nplus1loader_rels("articles", nested=False, mode="warn"),
        nplus1loader.raiseload_all(),
        nplus1loader.raiseload_col("bio"),
        nplus1loader.raiseload_rel(User.articles),
    ]


def chained() -> list[Nplus1Option]:
    columns: Nplus1Load = nplus1loader.default_columns(User).defer(User.name)
    return [
        columns.nplus1loader("*"),
        Nplus1Load(User).selectinload(User.articles).nplus1loader_rels(mode="raise"),
        Nplus1Load(Article).joinedload(Article.author).raiseload_col("bio"),
    ]


def users(session: Session, testing: bool) -> list[User]:
    options = [*armed("raise" if testing else "load"), *chained()]
    return list(session.scalars(select(User).options(*options)))


def factory(engine: Engine, mode: Mode) -> sessionmaker[Session]:
    return nplus1loader.enable(sessionmaker(engine), mode=mode)


def counted(engine: Engine) -> tuple[int, Stats]:
    with factory(engine, "warn")() as session, count_queries(engine) as q:
        counter: QueryCounter = q
        users(session, testing=False)
        with nplus1loader.disabled():
            session.scalars(select(User)).all()
        nplus1loader.disable(session)
    return counter.count, nplus1loader.stats(session)


def at_most(engine: Engine, fixture: CountQueries) -> None:
    """The pytest fixture's value, called with the at-most form."""
    with factory(engine, "load")() as session, fixture(engine, at_most=3) as q:
        users(session, testing=False)
    q.assert_at_most(3)
