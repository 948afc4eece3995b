"""nplus1loader with asyncio: statement counts, stock SQLAlchemy vs nplus1loader.

    python examples/async_demo.py                      # aiosqlite, temporary file
    python examples/async_demo.py --url postgresql+asyncpg://postgres@127.0.0.1/test
    python examples/async_demo.py --url mysql+aiomysql://root@127.0.0.1/test --users 1000

In async code an unloaded attribute cannot be read plainly (that raises
``MissingGreenlet``); it is awaited with ``await obj.awaitable_attrs.x`` or
read inside ``await session.run_sync(fn)``.  Stock SQLAlchemy then emits one
query per object.  With ``nplus1loader()`` on the query, the first await loads
the attribute for every object the query returned, one query per 500, and the
other objects read it without I/O.  The demo creates (and drops and
recreates) its own tables, ``async_demo_user`` and ``async_demo_article``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import ForeignKey, String, event, select, text
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

if __package__ in (None, ""):  # run as a script: import the checkout's library
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nplus1loader import nplus1loader


class Base(AsyncAttrs, DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "async_demo_user"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    bio: Mapped[str] = mapped_column(String(200), deferred=True)
    articles: Mapped[list[Article]] = relationship(order_by="Article.id")


class Article(Base):
    __tablename__ = "async_demo_article"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("async_demo_user.id"))
    title: Mapped[str] = mapped_column(String(100))


# One scenario: given a session and the options to load users with, do what
# an endpoint would do.  The demo runs each with no options, then with
# nplus1loader(), and counts the statements.
Scenario = Callable[[AsyncSession, tuple[Any, ...]], Awaitable[None]]


async def load_users(session: AsyncSession, options: tuple[Any, ...]) -> list[User]:
    return list((await session.scalars(select(User).order_by(User.id).options(*options))).all())


async def await_articles(session: AsyncSession, options: tuple[Any, ...]) -> None:
    for user in await load_users(session, options):
        await user.awaitable_attrs.articles


async def await_bio(session: AsyncSession, options: tuple[Any, ...]) -> None:
    for user in await load_users(session, options):
        await user.awaitable_attrs.bio


async def await_name_after_commit(session: AsyncSession, options: tuple[Any, ...]) -> None:
    users = await load_users(session, options)
    await session.commit()  # expires every loaded attribute
    for user in users:
        await user.awaitable_attrs.name


async def run_sync_touching(session: AsyncSession, options: tuple[Any, ...]) -> None:
    users = await load_users(session, options)
    await session.run_sync(lambda _: [(len(u.articles), u.bio) for u in users])


SCENARIOS: dict[str, Scenario] = {
    "articles (awaitable_attrs)": await_articles,
    "bio (deferred column)": await_bio,
    "name after commit (expired)": await_name_after_commit,
    "run_sync touching articles and bio": run_sync_touching,
}


async def create_data(engine: AsyncEngine, users: int) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
    async with AsyncSession(engine) as session:
        session.add_all(
            User(
                id=u,
                name=f"user {u}",
                bio=f"bio of user {u}",
                articles=[Article(id=3 * u + a, title=f"article {u}.{a}") for a in range(u % 3)],
            )
            for u in range(1, users + 1)
        )
        await session.commit()


async def count_statements(
    engine: AsyncEngine, scenario: Scenario, options: tuple[Any, ...]
) -> int:
    """Statements the scenario sends, counted on the sync engine underneath
    (every async driver runs through it)."""
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    async with AsyncSession(engine) as session:
        event.listen(engine.sync_engine, "before_cursor_execute", record)
        try:
            await scenario(session, options)
        finally:
            event.remove(engine.sync_engine, "before_cursor_execute", record)
    return len(statements)


async def demo(url: str, users: int = 200) -> dict[str, tuple[int, int]]:
    """For each scenario: (statements with stock SQLAlchemy, with nplus1loader)."""
    engine = create_async_engine(url)
    try:
        await create_data(engine, users)
        async with engine.connect() as conn:  # dialect set-up is not counted
            await conn.execute(text("SELECT 1"))
        return {
            label: (
                await count_statements(engine, scenario, ()),
                await count_statements(engine, scenario, (nplus1loader(),)),
            )
            for label, scenario in SCENARIOS.items()
        }
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="async database URL (default: aiosqlite, temporary file)")
    parser.add_argument("--users", type=int, default=200, help="number of users (default: 200)")
    args = parser.parse_args(argv)
    # nplus1loader only adds a NullHandler: show its WARNING per batch on
    # stderr, as a script's own logging set-up would.
    logging.basicConfig(format="%(message)s", level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite+aiosqlite:///{Path(tmp) / 'async_demo.db'}"
        counts = asyncio.run(demo(url, args.users))
    print(f"{args.users} users; SQL statements per scenario:\n")
    print(f"{'scenario':<38} {'stock':>7} {'nplus1loader':>13}")
    for label, (stock, ours) in counts.items():
        print(f"{label:<38} {stock:>7} {ours:>13}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
