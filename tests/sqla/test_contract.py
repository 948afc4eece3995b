"""The SQLAlchemy internals ``nplus1loader/_sqla.py`` relies on, each
checked on its own, so that a new SQLAlchemy release that moves one fails
here with its name, not somewhere deep in a batch.

Everything else in the suite exercises them through the library; these
tests pin the contract itself: the names exist, and behave as
``_sqla``'s docstrings say.  No database server is needed: an in-memory
SQLite engine does.
"""

from __future__ import annotations

import inspect as pyinspect
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import ForeignKey, String, create_engine, event, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    configure_mappers,
    deferred,
    joinedload,
    mapped_column,
    relationship,
)
from sqlalchemy.orm.interfaces import LoaderOption, LoaderStrategy
from sqlalchemy.orm.state import InstanceState

from nplus1loader import _sqla


class Base(DeclarativeBase):
    pass


class Owner(Base):
    __tablename__ = "contract_owner"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(20))
    bio: Mapped[str | None] = deferred(mapped_column(String(20)))
    pets: Mapped[list[Pet]] = relationship(back_populates="owner")


class Pet(Base):
    __tablename__ = "contract_pet"
    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("contract_owner.id"))
    owner: Mapped[Owner] = relationship(back_populates="pets")


@pytest.fixture
def session() -> Iterator[Session]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all([Owner(id=i, name=f"o{i}", bio="b", pets=[Pet(id=i)]) for i in (1, 2)])
        session.commit()
        yield session
    engine.dispose()


def test_strategy_base_classes_are_loader_strategies() -> None:
    for base in (_sqla.LazyLoader, _sqla.DeferredColumnLoader):
        assert issubclass(base, LoaderStrategy)
    signature = pyinspect.signature(LoaderStrategy.create_row_processor)
    assert list(signature.parameters) == [
        "self",
        "context",
        "query_entity",
        "path",
        "loadopt",
        "mapper",
        "result",
        "adapter",
        "populators",
    ]


def test_deferred_markers_and_option_base() -> None:
    assert len(set(map(id, _sqla.DEFERRED_MARKERS))) == 3
    assert hasattr(_sqla._AbstractLoad, "_set_column_strategy")
    assert hasattr(_sqla._AbstractLoad, "_set_relationship_strategy")


def test_class_level_loaders_exist_where_documented() -> None:
    configure_mappers()
    owner = Owner.__mapper__
    assert _sqla.class_level_loader(mapper=owner, key="pets") is not None  # lazy relationship
    assert _sqla.class_level_loader(mapper=owner, key="bio") is not None  # deferred by mapping
    assert _sqla.class_level_loader(mapper=owner, key="name") is None  # a plain column: none
    assert _sqla.class_level_loader(mapper=owner, key="missing") is None


def test_expired_attribute_loader_is_a_settable_hook() -> None:
    mapper = Owner.__mapper__
    loader = _sqla.expired_attribute_loader(mapper=mapper)
    assert callable(loader)
    _sqla.set_expired_attribute_loader(mapper=mapper, loader=loader)
    assert _sqla.expired_attribute_loader(mapper=mapper) is loader


class _Grab(LoaderOption):
    """Hands the compile state of the query it is given to over to a test."""

    _traverse_internals: list[Any] = []
    seen: list[Any] = []

    def process_compile_state(self, compile_state: Any) -> None:
        self.seen.append(compile_state)


def test_loader_keys_and_paths(session: Session) -> None:
    session.scalars(select(Owner).options(_Grab())).all()
    compile_state = _Grab.seen[-1]
    [entity] = _sqla.mapper_entities(compile_state=compile_state)
    path = _sqla.entity_path(query_entity=entity)
    exact, wildcard, default = _sqla.loader_keys(prop_path=path[Owner.__mapper__.attrs["pets"]])
    assert exact[0] == wildcard[0] == default[0] == "loader"
    assert _sqla.natural_path(path) == (Owner.__mapper__,)
    assert not _sqla.natural_path(_sqla.current_path(compile_state=compile_state))
    assert set(Owner.__mapper__.primary_key) <= set(
        _sqla.should_undefer_in_wildcard(mapper=Owner.__mapper__)
    )


def test_relationship_strategy_internals() -> None:
    lazy = _sqla.get_strategy(prop=Pet.__mapper__.attrs["owner"], key=(("lazy", "select"),))
    assert lazy.use_get
    equated = _sqla.equated_columns(strategy=lazy)
    assert equated[Owner.__table__.c.id] is Pet.__table__.c.owner_id
    assert _sqla.selectin_omits_join(prop=Owner.__mapper__.attrs["pets"])


def test_result_tuples_reads_by_position(session: Session) -> None:
    rows = list(_sqla.result_tuples(session.execute(select(Owner.id, Owner.name))))
    assert [tuple(row) for row in rows] == [(1, "o1"), (2, "o2")]
    joined = session.execute(select(Owner).options(joinedload(Owner.pets)))
    assert sorted(o.id for (o,) in _sqla.result_tuples(joined)) == [1, 2]


def test_profile_key_lives_in_the_state_dict_and_is_not_pickled(session: Session) -> None:
    state = sa_inspect(session.get(Owner, 1))
    profile = object()
    _sqla.store_profile(state=state, profile=profile)
    try:
        assert _sqla.stored_profile(state) is profile
        assert _sqla._PROFILE_KEY in state.__dict__
        assert _sqla._PROFILE_KEY not in state.__getstate__()
    finally:
        _sqla.forget_profile(state=state)
    assert _sqla.stored_profile(state) is None


def test_refresh_trigger_reads_the_attribute_machinery(session: Session) -> None:
    """The frames _sqla.refresh_trigger walks: the expired-attribute loader
    is called from _fire_loader_callables(state, key, ...), called by the
    attribute's get(), called by the descriptor's __get__."""
    owners = session.scalars(select(Owner)).all()
    session.expire_all()
    mapper = Owner.__mapper__
    original = _sqla.expired_attribute_loader(mapper=mapper)
    seen: list[tuple[str | None, bool]] = []

    def spy(state: InstanceState[Any], toload: Any, passive: Any) -> Any:
        seen.append(_sqla.refresh_trigger(state=state))
        return original(state, toload, passive)

    _sqla.set_expired_attribute_loader(mapper=mapper, loader=spy)
    try:
        owners[0].name  # noqa: B018 -- user code reading an expired column
    finally:
        _sqla.set_expired_attribute_loader(mapper=mapper, loader=original)
    assert seen == [("name", True)]


def _load_contexts(session: Session, *executions: tuple[Any, dict[str, Any]]) -> list[Any]:
    """The query context of each (statement, execution options) run in a
    fresh identity map, as the load event receives it."""
    contexts: list[Any] = []

    def grab(target: Any, context: Any) -> None:
        contexts.append(context)

    event.listen(Owner, "load", grab)
    try:
        found = []
        for statement, options in executions:
            session.expunge_all()
            session.scalars(statement, execution_options=options).unique().all()
            found.append(contexts[-1])
        return found
    finally:
        event.remove(Owner, "load", grab)


def test_stamped_options_and_joined_eager_loads(session: Session) -> None:
    plain, joined = _load_contexts(
        session, (select(Owner), {}), (select(Owner).options(joinedload(Owner.pets)), {})
    )
    assert isinstance(_sqla.propagated_options(context=plain), tuple)
    assert _sqla.rows_reach_one_path(context=plain)
    assert not _sqla.rows_reach_one_path(context=joined)


def test_lazy_load_options_reach_listeners(session: Session) -> None:
    """What a batch statement carries, as ORMExecuteState reads it: the
    options of SQLAlchemy's own lazy and column loads."""
    owner = session.scalars(select(Owner)).first()
    assert owner is not None
    state = sa_inspect(owner)
    seen: list[tuple[bool, bool, Any, bool]] = []

    def listener(orm_state: Any) -> None:
        seen.append(
            (
                orm_state.is_relationship_load,
                orm_state.is_column_load,
                orm_state.lazy_loaded_from,
                orm_state.load_options._autoflush,
            )
        )

    event.listen(session, "do_orm_execute", listener)
    try:
        stmt = _sqla.as_lazy_load(
            select(Owner), state=state, prop=state.mapper.attrs["pets"], extra_options=()
        )
        options = _sqla.lazy_load_execution_options(
            loaded_from=state, identity_token=None, autoflush=False
        )
        session.execute(stmt, execution_options=options).all()
        column_stmt = _sqla.as_lazy_load(
            select(Owner.id), state=state, prop=state.mapper.attrs["bio"], extra_options=()
        )
        session.execute(column_stmt, execution_options=options).all()
    finally:
        event.remove(session, "do_orm_execute", listener)
    assert seen == [(True, False, state, False), (False, True, state, False)]
