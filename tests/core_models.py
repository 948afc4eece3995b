"""Models, data and helpers shared by the core test modules (most of
``tests/touch/``, ``tests/batch/``, ``tests/options/`` and ``tests/report/``).

One small blog-like schema for the core contract, with the common
relationship kinds: many-to-one (``Article.author``), one-to-many (``User.articles``),
many-to-many through ``secondary`` (``User.groups``), one-to-one with
``uselist=False`` (``User.profile``, present for odd users only),
self-referential both ways (``User.manager`` / ``User.reports``) and
deferred columns (``User.bio`` alone, ``Article.body`` + ``Article.summary``
as a group).  The other mapping shapes (composite keys, inheritance, and
the rest) live in one place, the shape zoo (``tests/zoo_models.py``), and
the core tests that need them use it.  Classes keep the short names
the log and error messages are specified with (``User.articles``); tables are
prefixed ``core_`` because every test module shares one database per backend.

Expected values are never written down: :func:`stock` computes them by running
the same loop with stock SQLAlchemy lazy loading in a fresh session.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    ForeignKey,
    String,
    Table,
    Text,
    delete,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

import nplus1loader  # noqa: F401  (registers the strategies)
from tests import _oracle as oracle
from tests._db import QueryCounter, setup_schema


class Base(DeclarativeBase):
    pass


membership = Table(
    "core_membership",
    Base.metadata,
    Column("user_id", ForeignKey("core_user.id"), primary_key=True),
    Column("group_id", ForeignKey("core_group.id"), primary_key=True),
)


class User(Base):
    __tablename__ = "core_user"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50))
    email: Mapped[str] = mapped_column(String(100))
    bio: Mapped[str | None] = mapped_column(Text, deferred=True)
    manager_id: Mapped[int | None] = mapped_column(ForeignKey("core_user.id"))

    articles: Mapped[list[Article]] = relationship(back_populates="author", order_by="Article.id")
    profile: Mapped[Profile | None] = relationship(back_populates="user", uselist=False)
    groups: Mapped[list[Group]] = relationship(
        secondary=membership, back_populates="members", order_by="Group.id"
    )
    manager: Mapped[User | None] = relationship(remote_side="User.id", back_populates="reports")
    reports: Mapped[list[User]] = relationship(back_populates="manager", order_by="User.id")


class Article(Base):
    __tablename__ = "core_article"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    author_id: Mapped[int] = mapped_column(ForeignKey("core_user.id"))
    title: Mapped[str] = mapped_column(String(100))
    body: Mapped[str] = mapped_column(Text, deferred=True, deferred_group="content")
    summary: Mapped[str] = mapped_column(String(200), deferred=True, deferred_group="content")

    author: Mapped[User] = relationship(back_populates="articles")
    comments: Mapped[list[Comment]] = relationship(back_populates="article", order_by="Comment.id")


class Comment(Base):
    __tablename__ = "core_comment"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    article_id: Mapped[int] = mapped_column(ForeignKey("core_article.id"))
    text: Mapped[str] = mapped_column(String(200))

    article: Mapped[Article] = relationship(back_populates="comments")


class Profile(Base):
    __tablename__ = "core_profile"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    user_id: Mapped[int] = mapped_column(ForeignKey("core_user.id"), unique=True)
    about: Mapped[str] = mapped_column(String(200))

    user: Mapped[User] = relationship(back_populates="profile")


class Group(Base):
    __tablename__ = "core_group"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50))

    members: Mapped[list[User]] = relationship(
        secondary=membership, back_populates="groups", order_by="User.id"
    )


# ---------------------------------------------------------------- data

_schema_ready: set[str] = set()


def seed(engine: Engine, users: int = 6) -> None:
    """Give the ``core_`` tables fresh, deterministic rows.

    The schema is built once per backend and test run; later calls only
    delete and reinsert rows, which is much faster than DDL on the servers.
    With ``users`` users, user ``i`` has ``i % 4`` articles, article ``a`` has
    ``a % 3`` comments, odd users have a profile, every fifth user has a NULL
    bio, and user ``i`` reports to user ``i // 2``.
    """
    url = str(engine.url)
    if url not in _schema_ready:
        setup_schema(engine, Base.metadata)
        _schema_ready.add(url)
    else:
        with engine.begin() as conn:
            conn.execute(update(User).values(manager_id=None))
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(delete(table))

    user_rows = [
        {
            "id": i,
            "name": f"user{i}",
            "email": f"user{i}@example.com",
            "bio": None if i % 5 == 0 else f"bio of user {i}",
            "manager_id": i // 2 or None,
        }
        for i in range(1, users + 1)
    ]
    article_rows: list[dict[str, Any]] = []
    comment_rows: list[dict[str, Any]] = []
    for user in user_rows:
        for _ in range(user["id"] % 4):
            a = len(article_rows) + 1
            article_rows.append(
                {
                    "id": a,
                    "author_id": user["id"],
                    "title": f"article {a}",
                    "body": f"body of article {a}",
                    "summary": f"summary of article {a}",
                }
            )
            for _ in range(a % 3):
                c = len(comment_rows) + 1
                comment_rows.append({"id": c, "article_id": a, "text": f"comment {c} on {a}"})
    profile_rows = [
        {"id": 100 + u["id"], "user_id": u["id"], "about": f"about user {u['id']}"}
        for u in user_rows
        if u["id"] % 2
    ]
    group_rows = [{"id": g, "name": f"group{g}"} for g in (1, 2, 3)]
    membership_rows = [
        {"user_id": u["id"], "group_id": g}
        for u in user_rows
        for g in (1, 2, 3)
        if u["id"] % 4 and (u["id"] + g) % 3
    ]

    with engine.begin() as conn:
        # Managers first: user i reports to user i // 2, inserted earlier.
        conn.execute(insert(User), user_rows)
        for table, rows in (
            (Article.__table__, article_rows),
            (Comment.__table__, comment_rows),
            (Profile.__table__, profile_rows),
            (Group.__table__, group_rows),
            (membership, membership_rows),
        ):
            if rows:
                conn.execute(insert(table), rows)


def delete_user_behind_session(engine: Engine, user_id: int) -> None:
    """Delete one user's row (and what points at it) on a separate connection,
    as another process would."""
    with engine.begin() as conn:
        articles = select(Article.id).where(Article.author_id == user_id).scalar_subquery()
        conn.execute(delete(Comment).where(Comment.article_id.in_(articles)))
        conn.execute(delete(Article).where(Article.author_id == user_id))
        conn.execute(delete(Profile).where(Profile.user_id == user_id))
        conn.execute(delete(membership).where(membership.c.user_id == user_id))
        conn.execute(update(User).where(User.manager_id == user_id).values(manager_id=None))
        conn.execute(delete(User).where(User.id == user_id))


# ------------------------------------------------------------- helpers

APIS = ("scalars", "execute", "query")
"""The three ways a user loads entities: ``Session.scalars(select())``,
``Session.execute(select()).scalars()`` and legacy ``Session.query``."""


def load(session: Session, api: str, entity: Any, *options: Any, where: Any = None) -> list[Any]:
    """Load ``entity`` (ordered by primary key) through ``api`` with ``options``."""
    order = list(inspect(entity).mapper.primary_key)
    if api == "query":
        query = session.query(entity).options(*options)
        if where is not None:
            query = query.filter(where)
        return query.order_by(*order).all()
    stmt = select(entity).options(*options).order_by(*order)
    if where is not None:
        stmt = stmt.where(where)
    if api == "scalars":
        return list(session.scalars(stmt).unique().all())
    if api == "execute":
        return list(session.execute(stmt).scalars().unique().all())
    raise ValueError(api)


def ident(obj: Any) -> Any:
    """An instance's primary key tuple (None for None)."""
    return None if obj is None else inspect(obj).identity


def plain(value: Any) -> Any:
    """A loaded attribute value as plain data: instances become their primary
    keys, collections lists (tuples stay tuples), anything else is kept."""
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    if hasattr(value, "_sa_instance_state"):
        return ident(value)
    return value


@dataclass
class Outcome:
    """What a loop over loaded instances saw and how many queries it cost."""

    values: dict[Any, Any]
    queries: int
    statements: list[str]


def touch_all(engine: Engine, objs: Sequence[Any], touch: Callable[[Any], Any]) -> Outcome:
    """``touch`` every object in order, counting the queries of the loop only."""
    with QueryCounter(engine) as q:
        values = {ident(obj): plain(touch(obj)) for obj in objs}
    return Outcome(values, q.count, list(q.statements))


def stock(
    engine: Engine,
    entity: Any,
    touch: Callable[[Any], Any],
    *options: Any,
    where: Any = None,
    bind: Any = None,
) -> Outcome:
    """The oracle (:func:`tests._oracle.stock`): the same loop with stock
    lazy loading in a fresh session (on ``bind``, a Connection, to see what
    another session flushed in it), its queries counted on ``engine``."""
    reading = oracle.stock(
        bind if bind is not None else engine,
        lambda session: load(session, "scalars", entity, *options, where=where),
        lambda objs: {ident(obj): plain(touch(obj)) for obj in objs},
        counted=engine,
    )
    return Outcome(reading.values, reading.queries, reading.statements)


def loaded(obj: Any, key: str) -> bool:
    """Whether ``obj`` holds a value for ``key`` without touching it."""
    return key in inspect(obj).dict
