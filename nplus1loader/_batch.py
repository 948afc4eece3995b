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

import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Integer, TypeDecorator, Uuid, select
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import (
    ColumnProperty,
    Mapper,
    RelationshipDirection,
    RelationshipProperty,
    Session,
    aliased,
)
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.orm.interfaces import ORMOption
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.sql import visitors

from . import _compat
from ._keys import DEFAULT_CHUNK_SIZE, KEYS_PARAM, chunks, key_filter, key_values, states_by_key

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "BatchResult",
    "bulk_load_attribute_for_instance_states",
    "load_states",
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
    size = checked_chunk_size(chunk_size)
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
    run = ChunkRunner(session, states[0], prop, options, autoflush)
    if isinstance(prop, ColumnProperty):
        return _load_columns(run, prop, states, size)
    return _load_relationship(run, prop, states, size)


def checked_chunk_size(chunk_size: int | None) -> int:
    size = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ArgumentError(f"chunk_size must be a positive integer, got {chunk_size!r}")
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
    return key not in state.committed_state or bool(getattr(prop, "uselist", False))


# ------------------------------------------------------- the chunk runner


class ChunkRunner:
    """Runs the statements of one batch, one chunk of keys at a time, the
    way stock SQLAlchemy runs the lazy load of one instance.

    ``trigger`` is the instance whose load options the statements replay
    (the touched one, or the first of the batch): every state of a batch
    shares its options, path and identity token.
    """

    __slots__ = ("autoflush", "extra_options", "prop", "session", "statements", "trigger")

    def __init__(
        self,
        session: Session,
        trigger: InstanceState[Any],
        prop: Any,
        extra_options: Sequence[ORMOption],
        autoflush: bool,
    ) -> None:
        self.session = session
        self.trigger = trigger
        self.prop = prop
        self.extra_options = tuple(extra_options)
        self.autoflush = autoflush
        self.statements = 0

    @property
    def identity_token(self) -> Any:
        return self.trigger.identity_token

    def prepare(self, stmt: Any) -> Any:
        """``stmt`` with what a stock load of the trigger's attribute adds:
        its load options, replayed at its path, and the compile options."""
        trigger = self.trigger
        load_options = trigger.load_options
        load_path = _compat.load_path_of(trigger)
        for_columns = isinstance(self.prop, ColumnProperty)
        if for_columns:
            # A deferred or expired column loads as a refresh of the row.
            path = load_path.parent if load_options else None
        elif load_options:
            path = load_path[self.prop]
        else:
            path = trigger.mapper._path_registry[self.prop]
        options = tuple(load_options) + self.extra_options
        if options:
            stmt = stmt.options(*options)
        return _compat.as_lazy_load(stmt, path, for_columns=for_columns)

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
            and not _compat.has_orm_execute_listeners(self.session)
            and not any(_compat.is_loader_criteria(o) for o in trigger.load_options)
        )

    def core_rows(
        self, stmt: Any, mapper: Mapper[Any], keys: Sequence[Any], size: int
    ) -> Iterator[tuple[Sequence[Any], Any]]:
        """:meth:`rows` for a Core ``stmt``: the flush stock's load would
        make comes first, once (whether a Core statement autoflushes by
        itself differs between SQLAlchemy 2.0 and 2.1)."""
        session = self.session
        if self.autoflush:
            _compat.autoflush(session)
        bind = {"mapper": mapper}
        for chunk in chunks(keys, size):
            with session.no_autoflush:
                result = session.execute(stmt, {KEYS_PARAM: chunk}, bind_arguments=bind)
            self.statements += 1
            yield chunk, _compat.result_tuples(result)

    def rows(
        self, stmt: Any, keys: Sequence[Any], size: int
    ) -> Iterator[tuple[Sequence[Any], Any]]:
        """Run the prepared ``stmt`` for each chunk of ``keys`` (parameter
        values: bare for a one-column key, tuples otherwise); yields the
        chunk and its rows (tuples, read by position)."""
        # A column load names its shard as stock's does (identity token); a
        # relationship load lets the session route it by lazy_loaded_from.
        token = self.identity_token if isinstance(self.prop, ColumnProperty) else None
        for chunk in chunks(keys, size):
            options = _compat.lazy_load_execution_options(
                loaded_from=self.trigger,
                identity_token=token,
                # The first statement flushes as a stock lazy load would;
                # the others find nothing more to flush.
                autoflush=self.autoflush and self.statements == 0,
            )
            result = self.session.execute(stmt, {KEYS_PARAM: chunk}, execution_options=options)
            self.statements += 1
            yield chunk, _compat.result_tuples(result)

    def of_this_shard(self, obj: Any) -> bool:
        """Whether ``obj`` was loaded with the batch's identity token: a
        sharded session whose chooser queries several shards returns rows of
        each, and the same key on another shard is another row."""
        token = self.identity_token
        return token is None or instance_state(obj).identity_token == token


def _identity(state: InstanceState[Any]) -> tuple[Any, ...]:
    return state.key[1]  # type: ignore[index]


def _primary_key_attrs(mapper: Mapper[Any], entity: Any) -> list[Any]:
    """The primary key as attributes of ``entity``, in identity-key order
    (the attribute names may differ from the column names)."""
    return [getattr(entity, mapper.get_property_by_column(col).key) for col in mapper.primary_key]


# ---------------------------------------------------------------- columns


def _column_group(prop: ColumnProperty[Any]) -> list[ColumnProperty[Any]]:
    """The column and, if it belongs to a deferred group, the whole group:
    touching one column of a group loads the group, as SQLAlchemy does."""
    if not prop.group:
        return [prop]
    return [p for p in prop.parent.column_attrs if p.group == prop.group]


def _load_columns(
    run: ChunkRunner, prop: ColumnProperty[Any], states: list[InstanceState[Any]], size: int
) -> BatchResult:
    keys = [p.key for p in _column_group(prop)]
    statements = load_columns_by_key(run, prop.parent, states, size, keys)
    return BatchResult(statements, len(states))


def columns_statement(mapper: Mapper[Any], keys: Sequence[str], *, core: bool) -> Any:
    """SELECT the primary key and the columns of ``keys`` of ``mapper``'s
    instances, by primary key, from the mapper's selectable (a joined
    subclass's join): as an ORM statement of class-bound attributes, so
    listeners and loader criteria see it as SQLAlchemy's own deferred-column
    load, or, ``core``, the same SELECT in Core."""
    if core:
        key_columns = list(mapper.primary_key)
        props = [mapper.attrs[key] for key in keys]
        return (
            select(*key_columns, *(p.expression for p in props))
            .select_from(mapper.selectable)
            .where(key_filter(key_columns))
        )
    entity = mapper.entity
    key_attrs = _primary_key_attrs(mapper, entity)
    return (
        select(*key_attrs, *(getattr(entity, key) for key in keys))
        .select_from(entity)
        .where(key_filter(key_attrs))
    )


def load_columns_by_key(
    run: ChunkRunner,
    mapper: Mapper[Any],
    states: list[InstanceState[Any]],
    size: int,
    keys: list[str],
    each: Callable[[InstanceState[Any]], None] | None = None,
) -> int:
    """Load the columns of ``keys`` for ``states`` by primary key and store
    each row's values on its state (see :func:`set_committed_columns`);
    ``each`` is called on every state a row came back for.  Returns the
    number of statements."""
    npk = len(mapper.primary_key)
    by_identity = states_by_key(states, npk)
    one_column = npk == 1 and len(keys) == 1 and each is None
    before = run.statements
    if run.columns_as_core():
        batches = run.core_rows(
            columns_statement(mapper, keys, core=True), mapper, list(by_identity), size
        )
    else:
        stmt = run.prepare(columns_statement(mapper, keys, core=False))
        batches = run.rows(stmt, list(by_identity), size)
    for _, rows in batches:
        if one_column:
            _set_committed_column(rows, by_identity, keys[0])
            continue
        for row in rows:
            state = by_identity.get(row[0] if npk == 1 else tuple(row[:npk]))
            if state is not None:
                set_committed_columns(state, keys, row, npk)
                if each is not None:
                    each(state)
    return run.statements - before


def _set_committed_column(rows: Iterable[Any], by_identity: dict[Any, Any], key: str) -> None:
    """:func:`set_committed_columns` for the common batch, one column by a
    one-column key, inline in the loop over its rows: a function call per
    row was a fifth of the time a deferred-column batch spends in Python."""
    for identity, value in rows:
        state = by_identity.get(identity)
        if state is None:
            continue
        dict_ = state.dict
        if key in dict_ or key in state.committed_state:
            continue  # changed in memory meanwhile
        dict_[key] = value
        state.expired = False
        expired = state.expired_attributes
        if expired:
            expired.discard(key)
        callables = state.callables
        if callables:
            callables.pop(key, None)


def set_committed_columns(
    state: InstanceState[Any], keys: list[str], row: Any, offset: int
) -> None:
    """Store loaded columns as committed state, except those changed in
    memory meanwhile (the group may hold some).

    The bookkeeping of ``InstanceState._commit`` for keys that had no
    committed value, inline: it runs once per instance of every batch.
    """
    dict_ = state.dict
    committed = state.committed_state
    if not committed and dict_.keys().isdisjoint(keys):
        # The common case (nothing changed, nothing there): in one step.
        dict_.update(zip(keys, row[offset:], strict=False))
        loaded = keys
    else:
        loaded = []
        for position, key in enumerate(keys, offset):
            if key not in dict_ and key not in committed:
                dict_[key] = row[position]
                loaded.append(key)
        if not loaded:
            return
    state.expired = False
    if state.expired_attributes:
        state.expired_attributes.difference_update(loaded)
    callables = state.callables
    if callables:
        for key in loaded:
            callables.pop(key, None)


# ---------------------------------------------------------- relationships


def _load_relationship(
    run: ChunkRunner, prop: RelationshipProperty[Any], states: list[InstanceState[Any]], size: int
) -> BatchResult:
    if prop.direction is RelationshipDirection.MANYTOONE:
        strategy = _compat.lazy_strategy(prop)
        if strategy.use_get:
            return _load_many_to_one_by_identity(run, prop, strategy, states, size)
    shape = _statement_shape(prop)
    statements = _collect(run, prop, shape, states, size)
    return BatchResult(statements, len(states))


def _load_many_to_one_by_identity(
    run: ChunkRunner,
    prop: RelationshipProperty[Any],
    strategy: Any,
    states: list[InstanceState[Any]],
    size: int,
) -> BatchResult:
    """A many-to-one whose foreign key points at the target's primary key:
    read the key from each parent (its current value, as stock does), take
    hits from the identity map, and SELECT the misses by primary key.  A
    key without a row goes through the general path, as the database
    decides for a stock lazy load."""
    target = prop.mapper
    key = prop.key
    # The parent attributes holding the target's primary key, in its order.
    equated = _compat.equated_columns(strategy)
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
        pk_attrs = _primary_key_attrs(target, entity)
        stmt = run.prepare(select(entity).where(key_filter(pk_attrs)))
        found_by_key: dict[tuple[Any, ...], Any] = {}
        npk = len(pk_attrs)
        for _, rows in run.rows(stmt, key_values(list(wanted)), size):
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
            _compat.set_committed_value(state, key, value)
    if undecided:
        _collect(run, prop, _statement_shape(prop, by_join=True), undecided, size)
    return BatchResult(run.statements - before, stock)


@dataclass(frozen=True)
class _Shape:
    """How a relationship's batch SELECT names the parent of each row:
    ``select`` yields the parent's key columns, then the target; ``unique``
    is whether a target can come twice for one parent (through a
    secondary table or other joined rows), which stock's ``unique()``
    removes."""

    select: Any
    npk: int
    unique: bool


_per_property: weakref.WeakKeyDictionary[Mapper[Any], dict[tuple[str, str], Any]] = (
    weakref.WeakKeyDictionary()
)


def per_property(prop: Any, fact: str, compute: Callable[[], Any]) -> Any:
    """``compute()`` once per mapped property and ``fact``: what depends on
    the mapping alone (statement shapes, join columns), kept as long as the
    mapper lives."""
    facts = _per_property.setdefault(prop.parent, {})
    key = (prop.key, fact)
    if key not in facts:
        facts[key] = compute()
    return facts[key]


def _statement_shape(prop: RelationshipProperty[Any], by_join: bool = False) -> _Shape:
    """The batch SELECT of ``prop`` before options."""

    def build() -> _Shape:
        remote = None if by_join else _omit_join_columns(prop)
        if remote is not None:
            return _select_by_foreign_key(prop, remote)
        return _select_through_parent(prop)

    return per_property(prop, "join shape" if by_join else "shape", build)  # type: ignore[no-any-return]


_SUBQUERIES = frozenset({"select", "scalar_select", "subquery", "lateral", "exists"})


def relationship_batchable(prop: RelationshipProperty[Any]) -> bool:
    """Whether a batch can load ``prop`` for many parents at once.  A join
    condition holding a subquery correlated to the parent (the latest row
    of each parent, say) cannot take the parent's columns from an alias, nor
    can a target mapped over a selectable of its own (SQLAlchemy 2.0's
    ``non_primary`` mappers): such relationships load one instance at a
    time, as stock does."""

    def decide() -> bool:
        if getattr(prop.mapper, "non_primary", False):
            return False
        many_to_one = prop.direction is RelationshipDirection.MANYTOONE
        if many_to_one and _compat.lazy_strategy(prop).use_get:
            return True
        criterion, _ = _compat.lazy_clause(prop)
        return not any(
            getattr(element, "__visit_name__", None) in _SUBQUERIES
            for element in visitors.iterate(criterion)
        )

    return per_property(prop, "batchable", decide)  # type: ignore[no-any-return]


def _omit_join_columns(prop: RelationshipProperty[Any]) -> list[Any] | None:
    """For a one-to-many whose join condition is just "the target's foreign
    key equals the parent's primary key", the target's foreign-key
    attributes in the order of the parent's primary key: the batch then
    selects the targets by foreign key, without joining the parent (what
    ``selectinload`` does).  None for every other shape."""
    if prop.direction is not RelationshipDirection.ONETOMANY or prop.secondary is not None:
        return None
    if not _compat.selectin_omits_join(prop) or _compat.target_correlates_to_parent(prop):
        return None
    # Set on every configured relationship (typed Optional in 2.0).
    pairs = cast("Sequence[tuple[Any, Any]]", prop.local_remote_pairs)
    if not all(_exact_key_type(remote) for _, remote in pairs):
        return None
    parent = prop.parent
    target = prop.mapper
    by_key: dict[str, Any] = {}
    for local, remote in pairs:
        by_key[parent.get_property_by_column(local).key] = remote
    entity = prop.entity.entity
    attrs = []
    for pk in parent.primary_key:
        remote = by_key.get(parent.get_property_by_column(pk).key)
        if remote is None:
            return None
        try:
            attrs.append(getattr(entity, target.get_property_by_column(remote).key))
        except Exception:  # the foreign key is not mapped on the target
            return None
    return attrs


def _exact_key_type(column: Any) -> bool:
    """Integer and UUID keys compare exactly everywhere.  Strings do not
    (MySQL ignores case and trailing spaces): a row's foreign key could then
    differ from the parent key it matched, so those shapes join the parent."""
    column_type = column.type
    return isinstance(column_type, Integer | Uuid) and not isinstance(column_type, TypeDecorator)


def _stock_like(prop: RelationshipProperty[Any], stmt: Any) -> Any:
    """What stock lazy loading adds to the SELECT of a relationship: its
    ORDER BY and the rule that the targets do not eager-load their way back
    to the parent."""
    order_by = _compat.lazy_order_by(prop)
    if order_by:
        stmt = stmt.order_by(*order_by)
    return _compat.add_compile_state_func(stmt, _compat.reverse_lazyload(prop), prop)


def _select_by_foreign_key(prop: RelationshipProperty[Any], remote: list[Any]) -> _Shape:
    """SELECT the targets' foreign key next to the targets, by foreign key."""
    stmt = select(*remote, prop.entity.entity).where(key_filter(remote))
    return _Shape(_stock_like(prop, stmt), len(remote), unique=False)


def _select_through_parent(prop: RelationshipProperty[Any]) -> _Shape:
    """Any relationship shape: stock's own lazy clause, its parent columns
    taken from an alias of the parent, whose primary key (selected next to
    the target) picks the chunk.  The FROM list is the lazy load's own
    (target, secondary and any other table the join condition names) plus
    the alias."""
    parent = prop.parent
    parent_alias = aliased(parent.class_)
    pk_columns = [_compat.adapt_to_alias(parent_alias, col) for col in parent.primary_key]
    target = prop.entity.entity
    stmt = select(*pk_columns, target)
    if _compat.target_correlates_to_parent(prop):
        # A LATERAL target is selected beside the parent it correlates to.
        stmt = stmt.select_from(parent_alias).join(
            getattr(parent_alias, prop.key).of_type(target)
        )
    else:
        criterion, bind_to_col = _compat.lazy_clause(prop)

        def parent_column(element: Any, **kw: Any) -> Any:
            if getattr(element, "__visit_name__", None) == "bindparam":
                column = bind_to_col.get(_compat.bind_key(element))
                if column is not None:
                    return _compat.adapt_to_alias(parent_alias, column)
            return None

        stmt = stmt.where(visitors.replacement_traverse(criterion, {}, parent_column))
        if prop.secondary is not None:
            stmt = stmt.select_from(prop.mapper, prop.secondary)
    stmt = stmt.where(key_filter(pk_columns))
    return _Shape(_stock_like(prop, stmt), len(pk_columns), unique=True)


def _collect(
    run: ChunkRunner,
    prop: RelationshipProperty[Any],
    shape: _Shape,
    states: list[InstanceState[Any]],
    size: int,
) -> int:
    """Run the shape's statement chunk by chunk and give every parent its
    targets, in row order, each once."""
    key = prop.key
    uselist = prop.uselist
    npk = shape.npk
    stmt = run.prepare(shape.select)
    by_identity = states_by_key(states, npk)
    before = run.statements
    for chunk, rows in run.rows(stmt, list(by_identity), size):
        collected: dict[Any, list[Any]] = {ident: [] for ident in chunk}
        for row in rows:
            target = row[npk]
            bucket = collected.get(row[0] if npk == 1 else tuple(row[:npk]))
            if bucket is not None and run.of_this_shard(target):
                bucket.append(target)
        for ident, values in collected.items():
            state = by_identity[ident]
            if key in state.dict or (key in state.committed_state and not uselist):
                continue  # changed in memory meanwhile
            if shape.unique and len(values) > 1:
                values = list({id(v): v for v in values}.values())
            if uselist:
                value: Any = values
            else:
                if len(values) > 1:
                    _compat.warn(
                        "Multiple rows returned with uselist=False for lazily-loaded "
                        f"attribute '{prop}' "
                    )
                value = values[0] if values else None
            _compat.set_committed_value(state, key, value)
    return run.statements - before
