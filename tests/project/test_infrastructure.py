"""Self-tests for the shared test infrastructure (tests/conftest.py, tests/_db.py).

Every other test trusts these fixtures to count statements exactly and to
refuse skipping a database in CI, so both are proven here on every backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from sqlalchemy import (
    Column,
    Engine,
    Enum,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    event,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

from tests import _db
from tests._db import (
    BACKENDS,
    EngineRegistry,
    QueryCounter,
    connect_or_skip,
    parse_backends,
    setup_schema,
)


class Base(DeclarativeBase):
    pass


class Parent(Base):
    __tablename__ = "infra_parent"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    children: Mapped[list[Child]] = relationship(
        back_populates="parent", lazy="select", order_by="Child.id"
    )


class Child(Base):
    __tablename__ = "infra_child"

    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("infra_parent.id"))
    name: Mapped[str] = mapped_column(String(50))
    parent: Mapped[Parent] = relationship(back_populates="children")


@pytest.fixture
def session_factory(engine: Engine) -> Iterator[sessionmaker]:
    setup_schema(engine, Base.metadata)
    factory = sessionmaker(engine)
    with factory.begin() as session:
        session.add_all(
            Parent(
                id=p,
                name=f"parent {p}",
                children=[Child(id=10 * p + c, name=f"child {p}.{c}") for c in range(2)],
            )
            for p in range(1, 4)
        )
    yield factory


# --------------------------------------------------------------------------
# connecting and counting


DIALECTS = {"sqlite": {"sqlite"}, "postgresql": {"postgresql"}, "mysql": {"mysql", "mariadb"}}


def test_backend_connects_and_select_1_is_one_statement(
    engine: Engine, db_name: str, count_queries
) -> None:
    assert engine.dialect.name in DIALECTS[db_name]
    with count_queries() as q, engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
    assert q.count == 1
    assert q.statements == ["SELECT 1"]
    q.assert_count(1)


def test_counter_counts_orm_queries_exactly(session_factory: sessionmaker, count_queries) -> None:
    with session_factory() as session, count_queries() as q:
        parents = session.scalars(select(Parent).order_by(Parent.id)).all()
        q.assert_count(1)
        assert [len(parent.children) for parent in parents] == [2, 2, 2]
        # One lazy load per parent: the N+1 pattern this project removes.
        q.assert_count(4)
        assert all("infra_child" in statement for statement in q.statements[1:])
        # Loaded collections are not loaded again.
        assert [child.name for child in parents[0].children] == ["child 1.0", "child 1.1"]
        q.assert_count(4)


def test_counter_sees_connections_opened_before_it(
    session_factory: sessionmaker, engine: Engine
) -> None:
    with session_factory() as session:
        parent = session.get(Parent, 1)  # checks out the connection, uncounted
        assert parent is not None
        with QueryCounter(engine) as q:
            assert len(parent.children) == 2
        q.assert_count(1)


def test_counter_reset_and_stop(engine: Engine) -> None:
    counter = QueryCounter(engine)
    with engine.connect() as conn:
        with counter:
            conn.execute(text("SELECT 1"))
            conn.execute(text("SELECT 2"))
            assert counter.count == 2
            counter.reset()
            assert counter.count == 0
            conn.execute(text("SELECT 3"))
        conn.execute(text("SELECT 4"))  # after the block: not recorded
    assert counter.statements == ["SELECT 3"]
    assert not event.contains(engine, "before_cursor_execute", counter._record)


def test_assert_count_lists_the_statements(engine: Engine, count_queries) -> None:
    with count_queries() as q, engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        conn.execute(text("SELECT 2"))
    with pytest.raises(AssertionError) as info:
        q.assert_count(1)
    message = str(info.value)
    assert message.startswith("expected 1 statements, got 2:\n")
    assert "SELECT 1" in message
    assert "SELECT 2" in message


def test_counter_accepts_an_async_engine() -> None:
    pytest.importorskip("aiosqlite")
    pytest.importorskip("greenlet")
    from sqlalchemy.ext.asyncio import create_async_engine

    async def scenario() -> QueryCounter:
        async_engine = create_async_engine("sqlite+aiosqlite://")
        try:
            async with async_engine.connect() as conn:
                with QueryCounter(async_engine) as q:
                    await conn.execute(text("SELECT 1"))
            return q
        finally:
            await async_engine.dispose()

    assert asyncio.run(scenario()).statements == ["SELECT 1"]


# --------------------------------------------------------------------------
# schema setup


def _other_module_metadata() -> MetaData:
    """What another test module might define under the same table name."""
    metadata = MetaData()
    Table(
        "infra_parent",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("legacy", String(20)),
    )
    Table(
        "infra_stale_ref",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("parent_id", Integer, ForeignKey("infra_parent.id")),
    )
    return metadata


def test_setup_schema_replaces_same_named_tables(engine: Engine) -> None:
    other = _other_module_metadata()
    setup_schema(engine, other)
    with engine.begin() as conn:
        conn.execute(insert(other.tables["infra_parent"]), [{"id": 1, "legacy": "x"}])
        conn.execute(insert(other.tables["infra_stale_ref"]), [{"id": 1, "parent_id": 1}])

    setup_schema(engine, Base.metadata)
    setup_schema(engine, Base.metadata)  # idempotent

    inspector = inspect(engine)
    assert {c["name"] for c in inspector.get_columns("infra_parent")} == {"id", "name"}
    # The other module's table that referenced ours went with it ...
    assert "infra_stale_ref" not in inspector.get_table_names()
    # ... so nothing foreign constrains our rows.
    with engine.begin() as conn:
        conn.execute(insert(Parent.__table__), [{"id": 1, "name": "new"}])
        conn.execute(delete(Parent.__table__))
        assert conn.execute(select(Parent.__table__)).all() == []


def test_setup_schema_recreates_enum_types(engine: Engine) -> None:
    def metadata_with(*values: str) -> Table:
        return Table(
            "infra_mood",
            MetaData(),
            Column("id", Integer, primary_key=True),
            Column("mood", Enum(*values, name="infra_mood_kind")),
        )

    first = metadata_with("happy", "sad")
    setup_schema(engine, first.metadata)
    second = metadata_with("calm", "angry")
    setup_schema(engine, second.metadata)
    with engine.begin() as conn:
        conn.execute(insert(second), [{"id": 1, "mood": "calm"}])
        assert conn.execute(select(second.c.mood)).scalar_one() == "calm"


# --------------------------------------------------------------------------
# backend selection


def test_parse_backends() -> None:
    assert parse_backends("sqlite,postgresql,mysql") == list(BACKENDS)
    assert parse_backends(" MySQL , sqlite,sqlite") == ["sqlite", "mysql"]
    for bad in ("", ",", "sqlite,oracle"):
        with pytest.raises(pytest.UsageError):
            parse_backends(bad)


@pytest.mark.sqlite
def test_marker_pins_the_backend(db_name: str) -> None:
    assert db_name == "sqlite"


# --------------------------------------------------------------------------
# private databases for concurrent runs


def _database_names(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            return set(conn.scalars(text("SELECT datname FROM pg_database")))
        return set(conn.scalars(text("SHOW DATABASES")))


@pytest.mark.postgresql
@pytest.mark.mysql
def test_isolated_registry_uses_a_private_database(
    engine: Engine, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = engine.url.database
    monkeypatch.setenv(_db.URL_ENV_VARS[db_name], engine.url.render_as_string(hide_password=False))
    registry = EngineRegistry(isolate=True)
    try:
        private = registry.get(db_name)
        name = private.url.database
        assert name != shared
        assert name.startswith(f"{shared}_nplus1_")
        assert name in _database_names(engine)
        setup_schema(private, Base.metadata)
        with private.begin() as conn:
            conn.execute(insert(Parent.__table__), [{"id": 1, "name": "private"}])
        assert registry.get(db_name) is private
    finally:
        registry.dispose_all()
    assert name not in _database_names(engine)


# --------------------------------------------------------------------------
# unreachable databases: skip locally, fail in CI

BOGUS_URLS = {
    "sqlite": "sqlite:////nonexistent-nplus1-dir/nplus1.db",
    "postgresql": "postgresql+psycopg2://postgres@127.0.0.1:1/test",
    "mysql": "mysql+pymysql://root@127.0.0.1:1/test",
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ci", ["true", "1", "TRUE"])
def test_unreachable_database_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch, backend: str, ci: str
) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception) as info:
        connect_or_skip(backend, BOGUS_URLS[backend])
    assert f"{_db.LABELS[backend]} not reachable at " in str(info.value)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_unreachable_database_skips_outside_ci(
    monkeypatch: pytest.MonkeyPatch, backend: str, ci: str | None
) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception) as info:
        connect_or_skip(backend, BOGUS_URLS[backend])
    assert str(info.value).startswith(f"{_db.LABELS[backend]} not reachable at ")


def test_password_is_masked_in_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception) as info:
        connect_or_skip("postgresql", "postgresql+psycopg2://u:s3cret@127.0.0.1:1/test")
    assert "s3cret" not in str(info.value)


def test_registry_checks_reachability_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("NPLUS1_POSTGRESQL_URL", BOGUS_URLS["postgresql"])
    attempts = []
    real_try_connect = _db.try_connect

    def counting_try_connect(backend: str, url: str):
        attempts.append(url)
        return real_try_connect(backend, url)

    monkeypatch.setattr(_db, "try_connect", counting_try_connect)
    registry = EngineRegistry()
    for _ in range(3):
        with pytest.raises(pytest.skip.Exception):
            registry.get("postgresql")
    assert attempts == [BOGUS_URLS["postgresql"]]

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        registry.get("postgresql")
    assert len(attempts) == 1


def test_counter_is_the_public_one_and_records_parameters(engine: Engine) -> None:
    """The suite's recorder is ``nplus1loader.testing.QueryCounter`` with
    parameters and the compiled construct per statement: one recorder for
    counts, chunk sizes and statement-cache checks alike."""
    from nplus1loader.testing import QueryCounter as PublicQueryCounter

    with QueryCounter(engine) as q, engine.connect() as conn:
        conn.execute(text("SELECT :a, :b"), {"a": 1, "b": 2})
    assert isinstance(q, PublicQueryCounter)
    assert q.count == len(q.entries) == 1
    assert q.entries[0].statement == q.statements[0]
    assert q.entries[0].compiled is not None
    assert q.keys_per_statement() == [2]
    q.assert_at_most(1)
    with pytest.raises(
        AssertionError, match=r"^expected at most 0 statements, got 1:\n  1\. SELECT"
    ):
        q.assert_at_most(0)
