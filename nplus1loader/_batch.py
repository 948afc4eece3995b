"""The batch loader: one attribute, many instances, one query per chunk.

This is the public core (:func:`bulk_load_attribute_for_instance_states`).
Every statement is the one stock SQLAlchemy would run to load the attribute
of one instance, widened to a chunk of instances:

* the same entity and join condition (the relationship's own lazy clause,
  its parent columns taken from an alias of the parent whose key selects
  the chunk), the same ORDER BY (none unless the relationship asks for one);
* the options the instance was loaded with (``state.load_options``),
  replayed at its path, and the compile and load options listeners look at
  (``loader_strategy_path``, ``is_column_load``, ``lazy_loaded_from``), so a
  sharded session routes the batch as it routes a lazy load;
* autoflush as stock's first statement would, once, before the first chunk.

It never overwrites what the user changed: only instances that still lack
the attribute are set, as committed state (no history, never dirty).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import (
    ColumnProperty,
    InstanceState,
    Mapper,
    RelationshipDirection,
    RelationshipProperty,
    Session,
)
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.orm.interfaces import ORMOption

from . import _sqla
from ._keys import DEFAULT_CHUNK_SIZE, KEYS_PARAM, chunks, key_filter, key_values, states_by_key
from ._statements import (
    Shape,
    columns_statement,
    primary_key_attrs,
    relationship_batchable,
    statement_shape,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "BatchResult",
    "bulk_load_attribute_for_instance_states",
    "checked_chunk_size",
    "load_expired_columns",
    "load_states",
    "relationship_batchable",
]


def bulk_load_attribute_for_instance_states(
    session: Session,
    mapper: Mapper[Any],
    states: Iterable[InstanceState[Any]],
    attr_name: str,
    *,
    chunk_size: int | None = None,
    options: Sequence[ORMOption] = (),
) -> int:
    """Load ``attr_name`` for every state in ``states`` that still lacks it.

    One SELECT per ``chunk_size`` instances (500 by default) loads a column
    (with the rest of its deferred group) or a relationship of any mapper
    shape.  States that are not persistent in ``session``, or that already
    hold a value for the attribute (loaded, or changed in memory), are left
    untouched.  The statements replay the load options of the first state
    (stock lazy loads replay each instance's own), and ``options`` are
    added to them.  Unlike a lazy load, this explicit call does not
    autoflush: what is pending stays pending.

    Returns the number of SQL statements emitted.
    """
    prop = _property(mapper, attr_name)
    size = checked_chunk_size(chunk_size, "bulk_load_attribute_for_instance_states()")
    wanted = [s for s in _unique(states) if needs_load(session, s, prop)]
    if not wanted:
        return 0
    return load_states(session, prop, wanted, size, options, autoflush=False).statements


@dataclass
class BatchResult:
    """What one batch load did: ``statements`` emitted, and ``stock``, the
    statements stock lazy loading would have emitted for the same states,
    one instance after the other."""

    statements: int
    stock: int


def load_states(
    session: Session,
    prop: Any,
    states: list[InstanceState[Any]],
    size: int,
    options: Sequence[ORMOption],
    *,
    autoflush: bool,
) -> BatchResult:
    """The batch itself, for states already known to need ``prop`` (see
    :func:`needs_load`; nplus1loader's peer search checks the same) and to
    share the first one's load options, load path and identity token."""
    run = ChunkRunner(session, states[0], prop, options, size, autoflush)
    if isinstance(prop, ColumnProperty):
        return _load_columns(run, prop, states)
    return _load_relationship(run, prop, states)


def load_expired_columns(
    session: Any,
    mapper: Mapper[Any],
    states: list[InstanceState[Any]],
    keys: list[str],
    size: int,
    *,
    autoflush: bool,
) -> int:
    """Refresh the expired columns ``keys`` of ``states``: one SELECT per
    chunk of the primary key and ``keys``, as the stock refresh of the
    first state would run it (its options, its shard); values are stored
    as committed state and the keys are no longer expired.  Returns the
    number of statements."""
    trigger = states[0]

    def settle(state: InstanceState[Any], loaded: Sequence[str]) -> None:
        if state is not trigger:
            _sqla.settle_refreshed(state)

    run = ChunkRunner(session, trigger, mapper.attrs[keys[0]], (), size, autoflush)
    return load_columns_by_key(run, mapper, states, keys, each=settle, expired=True)


def checked_chunk_size(value: int | None, where: str) -> int:
    """The one place ``chunk_size`` is checked and defaulted (500), for
    every option and the public batch loader: ``where`` names the caller in
    the error."""
    size = DEFAULT_CHUNK_SIZE if value is None else value
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ArgumentError(f"{where}: chunk_size must be a positive integer, got {value!r}")
    return size


def _property(mapper: Mapper[Any], attr_name: str) -> Any:
    if not isinstance(mapper, Mapper):
        raise ArgumentError(f"expected a Mapper, got {mapper!r}")
    prop = mapper.attrs.get(attr_name)
    if prop is None:
        raise ArgumentError(f"{mapper.class_.__name__} has no mapped attribute {attr_name!r}")
    if not isinstance(prop, ColumnProperty | RelationshipProperty):
        raise ArgumentError(
            f"{mapper.class_.__name__}.{attr_name} is neither a column nor a relationship; "
            "it cannot be batch-loaded"
        )
    return prop


def _unique(states: Iterable[InstanceState[Any]]) -> Iterator[InstanceState[Any]]:
    seen: set[int] = set()
    for state in states:
        if id(state) not in seen:
            seen.add(id(state))
            yield state


def needs_load(session: Session, state: InstanceState[Any], prop: Any) -> bool:
    """Persistent in ``session``, of ``prop``'s mapper, and lacking it."""
    return (
        state.key is not None
        and state.session_id == session.hash_key
        and not state.deleted
        and state.mapper.isa(prop.parent)
        and lacks(state, prop)
    )


def lacks(state: InstanceState[Any], prop: Any) -> bool:
    """True when the batch may set ``prop`` on ``state``: no value, and no
    change in memory.  A collection that a backref appended to while it was
    unloaded holds only queued (pending) changes: setting the loaded value
    merges them in, exactly as a stock lazy load does."""
    key = prop.key
    if key in state.dict:
        return False
    return key not in _sqla.changes_of(state) or bool(getattr(prop, "uselist", False))


# ------------------------------------------------------- the chunk runner


class ChunkRunner:
    """Runs the statements of one batch, one chunk of keys at a time, the
    way stock SQLAlchemy runs the lazy load of one instance: the one chunk
    loop of every batch (:meth:`rows`).

    ``trigger`` is the instance whose load options the statements replay
    (the touched one, or the first of the batch): every state of a batch
    shares its options, path and identity token.  ``size`` is the chunk
    size, checked once by :func:`checked_chunk_size`.
    """

    __slots__ = (
        "autoflush",
        "context",
        "extra_options",
        "prop",
        "session",
        "size",
        "statements",
        "trigger",
    )

    def __init__(
        self,
        session: Session,
        trigger: InstanceState[Any],
        prop: Any,
        extra_options: Sequence[ORMOption],
        size: int,
        autoflush: bool,
    ) -> None:
        self.session = session
        self.trigger = trigger
        self.prop = prop
        self.extra_options = tuple(extra_options)
        self.size = size
        self.autoflush = autoflush
        self.statements = 0
        #: The ``QueryContext`` of the chunk being read (None for Core).
        self.context: Any = None

    @property
    def identity_token(self) -> Any:
        return self.trigger.identity_token

    def prepare(self, stmt: Any) -> Any:
        """``stmt`` with what a stock load of the trigger's attribute adds:
        its load options, replayed at its path, and the compile options."""
        return _sqla.as_lazy_load(
            stmt, state=self.trigger, prop=self.prop, extra_options=self.extra_options
        )

    def columns_as_core(self) -> bool:
        """Whether a column batch can run as a plain Core SELECT, with the
        same SQL and the same rows, and nobody to see the difference: no
        ``do_orm_execute`` listener (only ORM statements reach them), no
        shard to route to, and no loader criteria among the replayed
        options (they reach into ``column_property`` subqueries).  It skips
        the ORM's statement and row processing: a third of the time a
        deferred-column batch takes."""
        trigger = self.trigger
        return (
            trigger.identity_token is None
            and not _sqla.has_orm_execute_listeners(self.session)
            and not any(_sqla.is_loader_criteria(o) for o in _sqla.load_options_of(trigger))
        )

    def rows(
        self, stmt: Any, keys: Sequence[Any], *, core_mapper: Mapper[Any] | None = None
    ) -> Iterator[tuple[Sequence[Any], Any]]:
        """Run ``stmt`` for each chunk of ``keys`` (parameter values: bare
        for a one-column key, tuples otherwise); yields the chunk and its
        rows (tuples, read by position).

        An ORM ``stmt`` (prepared) runs as stock's lazy load does: the first
        statement flushes as it would, and the session routes it (a column
        load names its shard by identity token, a relationship load by
        ``lazy_loaded_from``).  A Core one (``core_mapper``: the mapper whose
        bind it runs on) flushes first, once, and then runs without
        autoflush: whether a Core statement autoflushes by itself differs
        between SQLAlchemy 2.0 and 2.1.
        """
        session = self.session
        if core_mapper is not None and self.autoflush:
            _sqla.autoflush(session)
        token = self.identity_token if isinstance(self.prop, ColumnProperty) else None
        for chunk in chunks(keys, self.size):
            params = {KEYS_PARAM: chunk}
            if core_mapper is not None:
                with session.no_autoflush:
                    result = session.execute(stmt, params, bind_arguments={"mapper": core_mapper})
            else:
                options = _sqla.lazy_load_execution_options(
                    loaded_from=self.trigger,
                    identity_token=token,
                    autoflush=self.autoflush and self.statements == 0,
                )
                result = session.execute(stmt, params, execution_options=options)
            self.statements += 1
            self.context = _sqla.query_context_of(result)
            yield chunk, _sqla.result_tuples(result)

    def of_this_shard(self, obj: Any) -> bool:
        """Whether ``obj`` was loaded with the batch's identity token: a
        sharded session whose chooser queries several shards returns rows of
        each, and the same key on another shard is another row."""
        token = self.identity_token
        return token is None or instance_state(obj).identity_token == token


def _identity(state: InstanceState[Any]) -> tuple[Any, ...]:
    return state.key[1]  # type: ignore[index]


# ---------------------------------------------------------------- columns


def _column_group(prop: ColumnProperty[Any]) -> list[ColumnProperty[Any]]:
    """The column and, if it belongs to a deferred group, the whole group:
    touching one column of a group loads the group, as SQLAlchemy does."""
    if not prop.group:
        return [prop]
    return [p for p in prop.parent.column_attrs if p.group == prop.group]


def _load_columns(
    run: ChunkRunner, prop: ColumnProperty[Any], states: list[InstanceState[Any]]
) -> BatchResult:
    keys = [p.key for p in _column_group(prop)]
    statements = load_columns_by_key(run, prop.parent, states, keys)
    return BatchResult(statements, len(states))


def load_columns_by_key(
    run: ChunkRunner,
    mapper: Mapper[Any],
    states: list[InstanceState[Any]],
    keys: list[str],
    each: Callable[[InstanceState[Any], Sequence[str]], None] | None = None,
    *,
    expired: bool = False,
) -> int:
    """Load the columns of ``keys`` for ``states`` by primary key and store
    each row's values on its state as committed state, except where the
    user changed them meanwhile (``_sqla.store_loaded_columns``); ``each``
    is called on every state a row came back for, with the keys stored.
    Each such state then gets the ``refresh`` event SQLAlchemy fires after
    its own deferred or expired column load, as listeners expect
    (``refresh(target, context, attrs)``): attrs are the keys loaded, or,
    refreshing ``expired`` attributes, every key SQLAlchemy's own refresh
    would have been asked for (expired relationships too).  Returns the
    number of statements."""
    npk = len(mapper.primary_key)
    by_identity = states_by_key(states, npk)
    before = run.statements
    fires_refresh = _sqla.batch_fires_refresh(mapper=mapper)
    if fires_refresh:
        each = _refreshing(run, each, expired=expired)
    # The event carries the ORM execution's QueryContext: no Core statement.
    if not fires_refresh and run.columns_as_core():
        stmt = columns_statement(mapper, keys, core=True)
        batches = run.rows(stmt, list(by_identity), core_mapper=mapper)
    else:
        stmt = run.prepare(columns_statement(mapper, keys, core=False))
        batches = run.rows(stmt, list(by_identity))
    for _, rows in batches:
        _sqla.store_loaded_columns(rows, by_identity=by_identity, keys=keys, npk=npk, each=each)
    return run.statements - before


def _refreshing(
    run: ChunkRunner,
    each: Callable[[InstanceState[Any], Sequence[str]], None] | None,
    *,
    expired: bool,
) -> Callable[[InstanceState[Any], Sequence[str]], None]:
    """``each``, then the ``refresh`` event for what was stored (nothing
    stored: a value changed in memory meanwhile, which stock would not
    have loaded either).  For expired attributes, the keys stock's refresh
    is given: those stored and those still expired (read before ``each``
    settles them)."""

    def then_refresh(state: InstanceState[Any], loaded: Sequence[str]) -> None:
        keys = frozenset(loaded)
        if expired and loaded:
            keys |= _sqla.refreshable_expired(state=state)
        if each is not None:
            each(state, loaded)
        if loaded and run.context is not None:
            _sqla.fire_refresh(state=state, context=run.context, keys=keys)

    return then_refresh


# ---------------------------------------------------------- relationships


def _load_relationship(
    run: ChunkRunner, prop: RelationshipProperty[Any], states: list[InstanceState[Any]]
) -> BatchResult:
    if prop.direction is RelationshipDirection.MANYTOONE:
        strategy = _sqla.lazy_strategy(prop=prop)
        if strategy.use_get:
            return _load_many_to_one_by_identity(run, prop, strategy, states)
    shape = statement_shape(prop)
    statements = _collect(run, prop, shape, states)
    return BatchResult(statements, len(states))


def _load_many_to_one_by_identity(
    run: ChunkRunner,
    prop: RelationshipProperty[Any],
    strategy: Any,
    states: list[InstanceState[Any]],
) -> BatchResult:
    """A many-to-one whose foreign key points at the target's primary key:
    read the key from each parent (its current value, as stock does), take
    hits from the identity map, and SELECT the misses by primary key.  A
    key without a row goes through the general path, as the database
    decides for a stock lazy load."""
    target = prop.mapper
    key = prop.key
    # The parent attributes holding the target's primary key, in its order.
    equated = _sqla.equated_columns(strategy=strategy)
    fk_keys = [prop.parent.get_property_by_column(equated[pk]).key for pk in target.primary_key]
    partial_ok = target.allow_partial_pks
    identity_map = run.session.identity_map
    token = run.identity_token
    identity_key = target.identity_key_from_primary_key
    undecided: list[InstanceState[Any]] = []
    wanted: dict[tuple[Any, ...], list[InstanceState[Any]]] = {}
    hits: dict[tuple[Any, ...], Any] = {}
    resolved: list[tuple[InstanceState[Any], Any]] = []
    for state in states:
        dict_ = state.dict
        try:
            ident = tuple([dict_[k] for k in fk_keys])
        except KeyError:
            undecided.append(state)  # its foreign key is not loaded either
            continue
        if (all if partial_ok else any)(v is None for v in ident):
            resolved.append((state, None))
            continue
        if ident in wanted:
            wanted[ident].append(state)
            continue
        hit = hits.get(ident)
        if hit is None:
            found = identity_map.get(identity_key(ident, identity_token=token))
            if found is not None:
                found_state = instance_state(found)
                if (
                    not found_state.expired
                    and not found_state.deleted
                    and found_state.mapper.isa(target)
                ):
                    hit = hits[ident] = found
        if hit is not None:
            resolved.append((state, hit))
        else:
            wanted[ident] = [state]
    # Stock lazy loading: nothing for a NULL key or an identity-map hit, one
    # query per missing target (it is in the identity map after that).
    stock = len(wanted) + len(undecided)

    before = run.statements
    if wanted:
        entity = prop.entity.entity
        pk_attrs = primary_key_attrs(target, entity)
        stmt = run.prepare(select(entity).where(key_filter(pk_attrs)))
        found_by_key: dict[tuple[Any, ...], Any] = {}
        npk = len(pk_attrs)
        for _, rows in run.rows(stmt, key_values(list(wanted))):
            for row in rows:
                obj = row[0]
                if run.of_this_shard(obj):
                    found_by_key[_identity(instance_state(obj))[:npk]] = obj
        for ident, parents in wanted.items():
            value = found_by_key.get(ident)
            if value is None:
                # No row under exactly this key: a dangling foreign key, a
                # row filtered out by the options' criteria, or a key the
                # database matched to another spelling (MySQL compares
                # strings case-insensitively).
                undecided.extend(parents)
            else:
                resolved.extend((parent, value) for parent in parents)

    for state, value in resolved:
        if lacks(state, prop):
            _sqla.set_committed_value(state=state, key=key, value=value)
    if undecided:
        _collect(run, prop, statement_shape(prop, by_join=True), undecided)
    return BatchResult(run.statements - before, stock)


def _collect(
    run: ChunkRunner,
    prop: RelationshipProperty[Any],
    shape: Shape,
    states: list[InstanceState[Any]],
) -> int:
    """Run the shape's statement chunk by chunk and give every parent its
    targets, in row order, each once."""
    key = prop.key
    uselist = prop.uselist
    npk = shape.npk
    stmt = run.prepare(shape.select)
    by_identity = states_by_key(states, npk)
    before = run.statements
    # Outside a sharded session every row is of the batch's shard: the
    # per-row check (one call per target row) is left out.
    sharded = run.identity_token is not None
    for chunk, rows in run.rows(stmt, list(by_identity)):
        collected: dict[Any, list[Any]] = {ident: [] for ident in chunk}
        bucket_of = collected.get
        for row in rows:
            target = row[npk]
            bucket = bucket_of(row[0] if npk == 1 else tuple(row[:npk]))
            if bucket is not None and (not sharded or run.of_this_shard(target)):
                bucket.append(target)
        for ident, values in collected.items():
            state = by_identity[ident]
            if not lacks(state, prop):
                continue  # changed in memory meanwhile
            if shape.unique and len(values) > 1:
                values = list({id(v): v for v in values}.values())
            if uselist:
                value: Any = values
            else:
                if len(values) > 1:
                    _sqla.warn(
                        message="Multiple rows returned with uselist=False for lazily-loaded "
                        f"attribute '{prop}' "
                    )
                value = values[0] if values else None
            _sqla.set_committed_value(state=state, key=key, value=value)
    return run.statements - before
