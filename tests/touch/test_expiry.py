"""Protection survives commit and expire: expired attributes of armed
instances are refreshed in batches (issue 4).

Every expected value comes from stock SQLAlchemy in a fresh session; every
query count is exact.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, ForeignKey, Integer, String, Text, select, text, update
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    deferred,
    mapped_column,
    relationship,
    sessionmaker,
)
from sqlalchemy.orm.exc import ObjectDeletedError, StaleDataError

from nplus1loader import LazyLoadingAttributeError, nplus1loader, raiseload_all
from tests import _oracle as oracle
from tests._db import QueryCounter, setup_schema


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "exp_user"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50))
    email: Mapped[str] = mapped_column(String(80))
    bio: Mapped[str] = deferred(mapped_column(Text))
    articles: Mapped[list[Article]] = relationship(back_populates="author", order_by="Article.id")


class Article(Base):
    __tablename__ = "exp_article"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    user_id: Mapped[int] = mapped_column(ForeignKey("exp_user.id"), index=True)
    title: Mapped[str] = mapped_column(String(50))
    author: Mapped[User] = relationship(back_populates="articles")


class Animal(Base):
    __tablename__ = "exp_animal"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(50))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "animal"}


class Dog(Animal):
    __tablename__ = "exp_dog"

    id: Mapped[int] = mapped_column(ForeignKey("exp_animal.id"), primary_key=True)
    bark: Mapped[str] = mapped_column(String(50))
    __mapper_args__ = {"polymorphic_identity": "dog"}


class Versioned(Base):
    __tablename__ = "exp_versioned"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    value: Mapped[str] = mapped_column(String(50))
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    __mapper_args__ = {"version_id_col": version}


USERS = 20


@pytest.fixture
def factory(engine: Engine) -> Iterator[sessionmaker[Session]]:
    setup_schema(engine, Base.metadata)
    with Session(engine) as session:
        for i in range(1, USERS + 1):
            user = User(id=i, name=f"user {i}", email=f"u{i}@example.org", bio=f"bio {i}")
            user.articles = [Article(id=i * 10 + j, title=f"article {i}.{j}") for j in range(2)]
            session.add(user)
        session.add_all(Dog(id=i, name=f"dog {i}", bark=f"woof {i}") for i in range(1, 8))
        session.add_all(Versioned(id=i, value=f"v{i}") for i in range(1, 6))
        session.commit()
    yield sessionmaker(engine)


def stock_rows(factory: sessionmaker[Session]) -> dict[int, tuple[str, str, str, list[str]]]:
    """What plain SQLAlchemy lazy loading returns, in a fresh session."""
    return oracle.stock(
        factory,
        select(User).order_by(User.id),
        lambda users: {
            u.id: (u.name, u.email, u.bio, [a.title for a in u.articles]) for u in users
        },
    ).values


def load_users(session: Session, *options: object) -> list[User]:
    return list(session.scalars(select(User).order_by(User.id).options(*options)))


def test_stock_refreshes_one_query_per_instance(
    factory: sessionmaker[Session], engine: Engine
) -> None:
    """The baseline this issue fixes: after commit, one query per object."""
    with factory() as session:
        users = load_users(session)
        session.commit()
        with QueryCounter(engine) as q:
            names = [u.name for u in users]
        assert q.count == USERS
    assert names == [row[0] for row in stock_rows(factory).values()]


def test_commit_then_read_is_one_query(factory: sessionmaker[Session], engine: Engine) -> None:
    expected = stock_rows(factory)
    with factory() as session:
        users = load_users(session, nplus1loader("*"))
        session.commit()
        with QueryCounter(engine) as q:
            names = [u.name for u in users]
            emails = [u.email for u in users]
        q.assert_count(1)
        assert names == [row[0] for row in expected.values()]
        assert emails == [row[1] for row in expected.values()]
        assert not session.dirty
        assert all(not u._sa_instance_state.expired_attributes for u in users)


def test_relationships_and_deferred_columns_after_commit(
    factory: sessionmaker[Session], engine: Engine
) -> None:
    expected = stock_rows(factory)
    with factory() as session:
        users = load_users(session, nplus1loader("*"))
        session.commit()
        with QueryCounter(engine) as q:
            titles = [[a.title for a in u.articles] for u in users]
        # The lazy clause reads the parents' expired primary key first, as
        # stock does: one refresh of all of them, then the collection.
        q.assert_count(2)
        with QueryCounter(engine) as q:
            bios = [u.bio for u in users]
        q.assert_count(1)
    assert titles == [row[3] for row in expected.values()]
    assert bios == [row[2] for row in expected.values()]


@pytest.mark.parametrize("how", ["expire_all", "expire_each", "expire_name"])
def test_explicit_expire(
    factory: sessionmaker[Session], engine: Engine, how: str
) -> None:
    expected = stock_rows(factory)
    with factory() as session:
        users = load_users(session, nplus1loader("*"))
        if how == "expire_all":
            session.expire_all()
        elif how == "expire_each":
            for user in users:
                session.expire(user)
        else:
            for user in users:
                session.expire(user, ["name"])
        with QueryCounter(engine) as q:
            names = [u.name for u in users]
        q.assert_count(1)
    assert names == [row[0] for row in expected.values()]


def test_expired_relationship_by_name(factory: sessionmaker[Session], engine: Engine) -> None:
    expected = stock_rows(factory)
    with factory() as session:
        users = load_users(session, nplus1loader("*"))
        assert [len(u.articles) for u in users]  # loaded in one batch
        for user in users:
            session.expire(user, ["articles"])
        with QueryCounter(engine) as q:
            titles = [[a.title for a in u.articles] for u in users]
        q.assert_count(1)
    assert titles == [row[3] for row in expected.values()]


def test_chunks_of_500(factory: sessionmaker[Session], engine: Engine) -> None:
    with factory() as session:
        session.add_all(
            User(id=1000 + i, name=f"bulk {i}", email="b@example.org", bio="b")
            for i in range(1184)
        )
        session.commit()
    with factory() as session:
        users = load_users(session, nplus1loader("*"))
        assert len(users) == 1204
        session.commit()
        with QueryCounter(engine) as q:
            names = [u.name for u in users]
        q.assert_count(3)
        assert names[-1] == "bulk 1183"


def test_unarmed_instances_are_left_alone(factory: sessionmaker[Session], engine: Engine) -> None:
    with factory() as session:
        armed = list(session.scalars(select(User).where(User.id <= 10).options(nplus1loader("*"))))
        plain = list(session.scalars(select(User).where(User.id > 10)))
        session.commit()
        with QueryCounter(engine) as q:
            [u.name for u in armed]
        q.assert_count(1)
        with QueryCounter(engine) as q:
            [u.name for u in plain]
        q.assert_count(len(plain))


def test_deleted_row_raises_for_that_instance_only(
    factory: sessionmaker[Session], engine: Engine
) -> None:
    expected = stock_rows(factory)
    with factory() as session:
        users = load_users(session, nplus1loader("*"))
        session.commit()
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM exp_article WHERE user_id = 3"))
            conn.execute(text("DELETE FROM exp_user WHERE id = 3"))
        with QueryCounter(engine) as q, pytest.raises(ObjectDeletedError):
            users[2].name  # noqa: B018
        # the batch loaded the others before the deleted one fell back
        assert q.count == 2
        with QueryCounter(engine) as q:
            names = [u.name for i, u in enumerate(users) if i != 2]
        q.assert_count(0)
        with pytest.raises(ObjectDeletedError):
            users[2].name  # noqa: B018
    assert names == [row[0] for key, row in expected.items() if key != 3]


def test_change_after_commit_is_kept(factory: sessionmaker[Session], engine: Engine) -> None:
    expected = stock_rows(factory)
    with factory() as session:
        users = load_users(session, nplus1loader("*"))
        session.commit()
        session.autoflush = False  # the change stays in memory
        users[4].name = "changed"
        with QueryCounter(engine) as q:
            names = [u.name for u in users]
        q.assert_count(1)
        assert names[4] == "changed"
        assert names[:4] == [row[0] for row in list(expected.values())[:4]]
        assert list(session.dirty) == [users[4]]
        history = users[4]._sa_instance_state.attrs.name.history
        assert history.added == ["changed"]


def test_refresh_refreshes_only_that_instance(
    factory: sessionmaker[Session], engine: Engine
) -> None:
    with factory() as session:
        users = load_users(session, nplus1loader("*"))
        session.commit()
        with QueryCounter(engine) as q:
            session.refresh(users[0])
        q.assert_count(1)
        assert users[1]._sa_instance_state.expired_attributes
        with QueryCounter(engine) as q:
            [u.name for u in users]
        q.assert_count(1)


def test_populate_existing(factory: sessionmaker[Session], engine: Engine) -> None:
    with factory(expire_on_commit=False) as session:
        users = load_users(session, nplus1loader("*"))
        session.commit()  # a new transaction sees the concurrent write (MySQL snapshots)
        with engine.begin() as conn:
            conn.execute(update(User).values(name="renamed"))
        again = list(
            session.scalars(
                select(User)
                .order_by(User.id)
                .options(nplus1loader("*"))
                .execution_options(populate_existing=True)
            )
        )
        assert again == users
        assert {u.name for u in users} == {"renamed"}
        session.expire_all()
        with QueryCounter(engine) as q:
            [u.email for u in users]
        q.assert_count(1)


def test_joined_inheritance_refreshes_subclass_columns(
    factory: sessionmaker[Session], engine: Engine
) -> None:
    with factory() as session:
        expected = {d.id: (d.name, d.bark) for d in session.scalars(select(Dog))}
    with factory() as session:
        dogs = list(session.scalars(select(Dog).order_by(Dog.id).options(nplus1loader("*"))))
        session.commit()
        with QueryCounter(engine) as q:
            got = {d.id: (d.name, d.bark) for d in dogs}
        q.assert_count(1)
    assert got == expected


def test_version_id_col_still_detects_stale_data(
    factory: sessionmaker[Session], engine: Engine
) -> None:
    with factory() as session:
        rows = list(
            session.scalars(select(Versioned).order_by(Versioned.id).options(nplus1loader("*")))
        )
        session.commit()
        with engine.begin() as conn:  # a concurrent writer, before the refresh
            conn.execute(text("UPDATE exp_versioned SET value = 'other', version = version + 1"))
        with QueryCounter(engine) as q:
            values = [r.value for r in rows]
        q.assert_count(1)
        assert values == ["other"] * 5
        assert [r.version for r in rows] == [2] * 5
        rows[0].value = "mine"
        session.commit()  # refreshed version: no conflict
        with QueryCounter(engine) as q:
            versions = [r.version for r in rows]
        q.assert_count(1)
        assert versions == [3, 2, 2, 2, 2]
        with engine.begin() as conn:  # a concurrent writer, after the refresh
            conn.execute(text("UPDATE exp_versioned SET version = version + 1 WHERE id = 2"))
        rows[1].value = "late"
        with pytest.raises(StaleDataError):
            session.flush()


def test_raiseload_all_raises_on_expired(factory: sessionmaker[Session], engine: Engine) -> None:
    with factory() as session:
        users = load_users(session, raiseload_all("*"))
        assert users[0].name == "user 1"
        session.commit()
        with QueryCounter(engine) as q:
            line = inspect.currentframe().f_lineno + 2  # type: ignore[union-attr]
            with pytest.raises(LazyLoadingAttributeError) as excinfo:
                users[0].name  # noqa: B018
            with pytest.raises(LazyLoadingAttributeError):
                users[0].name  # noqa: B018
        q.assert_count(0)
        assert str(excinfo.value) == (
            "User.name is not available due to raiseload (expired); touched at "
            f"{__file__}:{line} in test_raiseload_all_raises_on_expired(). Expired instances "
            "(after commit() or expire()) refresh one at a time: keep them loaded with "
            "expire_on_commit=False, or reload them in one query with "
            "select(User).execution_options(populate_existing=True)"
        )


#: The attributes a raiseload_all('*') query leaves unloaded, and the fix
#: each one's error names.
FIXES = (("bio", "undefer(User.bio)"), ("articles", "selectinload(User.articles)"))


@pytest.mark.parametrize("write", ["add-article", "rename"])
def test_raiseload_all_survives_the_flush_refreshing_an_instance(
    factory: sessionmaker[Session], engine: Engine, write: str
) -> None:
    """After a commit, a flush reads the expired primary key of a user armed
    by raiseload_all('*') (a new article's foreign key, the UPDATE's WHERE
    clause): SQLAlchemy's own refresh, as in a stock session.  That refresh
    replays the query's raiseload_all('*'), which arms only what the
    refresh leaves unloaded; after the next commit the deferred column and
    the collection loaded instead of raising (found by the fuzzer).  The
    latest arming query decides: they raise."""

    def commit_then_write(session: Session, users: list[User]) -> list[str]:
        session.commit()
        with QueryCounter(engine) as q:
            if write == "add-article":
                session.add(Article(id=1000, title="new", author=users[0]))
            else:
                users[0].name = "renamed"
            session.commit()
        return q.statements

    def written() -> tuple[str, list[tuple[int]]]:
        with engine.begin() as conn:
            name = conn.execute(text("SELECT name FROM exp_user WHERE id = 1")).scalar_one()
            article = conn.execute(text("SELECT user_id FROM exp_article WHERE id = 1000")).all()
            # Undone, for the next session.
            conn.execute(text("DELETE FROM exp_article WHERE id = 1000"))
            conn.execute(text("UPDATE exp_user SET name = 'user 1' WHERE id = 1"))
        return name, [tuple(row) for row in article]

    with factory() as session:
        users = load_users(session)
        stock_statements = commit_then_write(session, users)
        assert users[0].bio == "bio 1"  # stock loads it
    stock_written = written()
    with factory() as session:
        users = load_users(session, raiseload_all("*"))
        # The refresh of users[0], then the INSERT or UPDATE, as in stock.
        statements = commit_then_write(session, users)
        verbs = ["SELECT", "INSERT" if write == "add-article" else "UPDATE"]
        assert [s.split()[0] for s in statements] == verbs
        assert [s.split()[0] for s in stock_statements] == verbs
        with QueryCounter(engine) as q:
            for key, fix in FIXES:
                line = inspect.currentframe().f_lineno + 2  # type: ignore[union-attr]
                with pytest.raises(LazyLoadingAttributeError) as excinfo:
                    getattr(users[0], key)
                assert str(excinfo.value) == (
                    f"User.{key} is not available due to raiseload; touched at {__file__}:{line} "
                    "in test_raiseload_all_survives_the_flush_refreshing_an_instance(). "
                    f"Load it in the query: {fix}"
                )
        q.assert_count(0)
    assert written() == stock_written
    assert stock_written == (("user 1", [(1,)]) if write == "add-article" else ("renamed", []))
