"""The batch loader: one attribute, many instances, one query per chunk.

This is the public core (:func:`bulk_load_attribute_for_instance_states`).
It never overwrites what the user changed: only instances that still lack the
attribute are loaded, values are stored as committed state (no history, never
dirty), and the session does not autoflush while it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

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

from . import _compat
from ._keys import (
    DEFAULT_CHUNK_SIZE,
    KEYS_PARAM,
    chunk_params,
    chunks,
    key_filter,
    key_values,
    states_by_key,
)

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
    untouched.  ``options`` are added to the batch queries: nplus1loader
    passes the ``with_loader_criteria`` options of the query that loaded the
    instances (stock lazy loads apply them too) and, for a relationship, the
    option that arms the instances it brings in.

    Returns the number of SQL statements emitted.
    """
    prop = _property(mapper, attr_name)
    size = checked_chunk_size(chunk_size)
    wanted = [s for s in _unique(states) if needs_load(session, s, prop)]
    if not wanted:
        return 0
    return load_states(session, prop, wanted, size, options).statements


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
) -> BatchResult:
    """The batch itself, for states already known to need ``prop`` (see
    :func:`needs_load`; nplus1loader's peer search checks the same)."""
    with session.no_autoflush:
        if isinstance(prop, ColumnProperty):
            return _load_columns(session, prop, states, size, options)
        return _load_relationship(session, prop, states, size, options)


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
    session: Session,
    prop: ColumnProperty[Any],
    states: list[InstanceState[Any]],
    size: int,
    options: Sequence[ORMOption],
) -> BatchResult:
    """SELECT the primary key and the column (or its group) by primary key,
    from the mapper's selectable (a joined subclass's join).

    With options (``with_loader_criteria`` of the arming query), through
    class-bound attributes: the ORM statement stock SQLAlchemy runs to load
    a deferred column, so the criteria reach into ``column_property``
    subqueries as they do there.
    """
    mapper = prop.parent
    group = _column_group(prop)
    keys = [p.key for p in group]
    if options:
        entity = mapper.entity
        key_columns = _primary_key_attrs(mapper, entity)
        stmt = (
            select(*key_columns, *(getattr(entity, key) for key in keys))
            .select_from(entity)
            .options(*options)
        )
    else:
        # Without options to apply, the same SELECT in Core: no ORM
        # compilation step, the same SQL.
        key_columns = list(mapper.primary_key)
        stmt = select(*key_columns, *(p.expression for p in group)).select_from(mapper.selectable)
    stmt = stmt.where(key_filter(session, mapper, key_columns))
    statements = load_columns_by_key(session, mapper, stmt, states, size, keys)
    return BatchResult(statements, len(states))


def load_columns_by_key(
    session: Session,
    mapper: Mapper[Any],
    stmt: Any,
    states: list[InstanceState[Any]],
    size: int,
    keys: list[str],
    each: Callable[[InstanceState[Any]], None] | None = None,
) -> int:
    """Run ``stmt`` (the primary key, then the columns of ``keys``, per
    row) chunk by chunk, and store each row's values on its state (see
    :func:`set_committed_columns`); ``each`` is called on every state a row
    came back for.  Returns the number of statements."""
    bind = {"mapper": mapper}
    npk = len(mapper.primary_key)
    one_column = npk == 1 and len(keys) == 1 and each is None
    statements = 0
    for chunk in chunks(states, size):
        by_identity = states_by_key(chunk, npk)
        result = session.execute(stmt, chunk_params(by_identity, npk), bind_arguments=bind)
        statements += 1
        rows = _compat.result_tuples(result)
        if one_column:
            _set_committed_column(rows, by_identity, keys[0])
            continue
        for row in rows:
            state = by_identity.get(row[0] if npk == 1 else tuple(row[:npk]))
            if state is not None:
                set_committed_columns(state, keys, row, npk)
                if each is not None:
                    each(state)
    return statements


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
    session: Session,
    prop: RelationshipProperty[Any],
    states: list[InstanceState[Any]],
    size: int,
    options: Sequence[ORMOption],
) -> BatchResult:
    if prop.direction is RelationshipDirection.MANYTOONE:
        strategy = _compat.get_strategy(prop, (("lazy", "select"),))
        if strategy.use_get:
            return _load_many_to_one_by_identity(session, prop, strategy, states, size, options)
    remote = _omit_join_columns(prop)
    if remote is not None:
        return _load_by_foreign_key(session, prop, remote, states, size, options)
    statements = _load_through_parent_join(session, prop, states, size, options)
    return BatchResult(statements, len(states))


def _load_many_to_one_by_identity(
    session: Session,
    prop: RelationshipProperty[Any],
    strategy: Any,
    states: list[InstanceState[Any]],
    size: int,
    options: Sequence[ORMOption],
) -> BatchResult:
    """A many-to-one whose foreign key points at the target's primary key:
    read the key from each parent, take hits from the identity map, and
    SELECT the misses by primary key.  Parents whose foreign key is not
    loaded go through the general path, as does a key without a row."""
    target = prop.mapper
    key = prop.key
    # The parent attributes holding the target's primary key, in its order.
    equated = _compat.equated_columns(strategy)
    fk_keys = [prop.parent.get_property_by_column(equated[pk]).key for pk in target.primary_key]
    partial_ok = target.allow_partial_pks
    identity_map = session.identity_map
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
            found = identity_map.get(identity_key(ident))
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
    # query per missing target (it is in the identity map after that), one
    # per parent whose foreign key is not loaded.
    stock = len(wanted) + len(undecided)

    statements = 0
    if wanted:
        entity = target.entity
        pk_attrs = _primary_key_attrs(target, entity)
        stmt = select(entity).where(key_filter(session, target, pk_attrs)).options(*options)
        found_by_key: dict[tuple[Any, ...], Any] = {}
        for chunk in chunks(list(wanted), size):
            result = session.execute(
                stmt, {KEYS_PARAM: key_values(chunk)}, execution_options=_compat.BATCH_LOAD
            )
            for obj in result.unique().scalars():
                found_by_key[instance_state(obj).key[1]] = obj  # type: ignore[index]
            statements += 1
        for ident, parents in wanted.items():
            value = found_by_key.get(ident)
            if value is None:
                # No row under exactly this key: a dangling foreign key, a
                # row filtered out by the options' criteria, or a key the
                # database matched to another spelling (MySQL compares
                # strings case-insensitively).  Let the join decide, as the
                # database does for a stock lazy load.
                undecided.extend(parents)
            else:
                resolved.extend((parent, value) for parent in parents)

    for state, value in resolved:
        if lacks(state, prop):
            state.manager[key].impl.set_committed_value(state, state.dict, value)
    if undecided:
        statements += _load_through_parent_join(session, prop, undecided, size, options)
    return BatchResult(statements, stock)


def _omit_join_columns(prop: RelationshipProperty[Any]) -> list[Any] | None:
    """For a one-to-many whose join condition is just "the target's foreign
    key equals the parent's primary key", the foreign-key columns in the
    order of the parent's primary key: the batch then selects the targets
    by foreign key, without joining the parent (what ``selectinload`` does).
    None for every other shape."""
    if prop.direction is not RelationshipDirection.ONETOMANY or prop.secondary is not None:
        return None
    if not _compat.selectin_omits_join(prop):
        return None
    if not all(_exact_key_type(remote) for _, remote in prop.local_remote_pairs):
        return None
    parent = prop.parent
    by_key: dict[str, Any] = {}
    for local, remote in prop.local_remote_pairs:
        by_key[parent.get_property_by_column(local).key] = remote
    remote_columns = []
    for pk in parent.primary_key:
        remote = by_key.get(parent.get_property_by_column(pk).key)
        if remote is None:
            return None
        remote_columns.append(remote)
    return remote_columns


def _exact_key_type(column: Any) -> bool:
    """Integer and UUID keys compare exactly everywhere.  Strings do not
    (MySQL ignores case and trailing spaces): a row's foreign key could then
    differ from the parent key it matched, so those shapes join the parent."""
    column_type = column.type
    return isinstance(column_type, Integer | Uuid) and not isinstance(column_type, TypeDecorator)


def _load_by_foreign_key(
    session: Session,
    prop: RelationshipProperty[Any],
    remote: list[Any],
    states: list[InstanceState[Any]],
    size: int,
    options: Sequence[ORMOption],
) -> BatchResult:
    """SELECT the targets' foreign key next to the targets, by foreign key."""
    target = prop.mapper
    stmt = (
        select(*remote, prop.entity.entity)
        .where(key_filter(session, target, remote))
        .options(*options)
        .order_by(*(prop.order_by or target.primary_key))
    )
    statements = _collect(session, prop, stmt, states, size, len(remote))
    return BatchResult(statements, len(states))


def _load_through_parent_join(
    session: Session,
    prop: RelationshipProperty[Any],
    states: list[InstanceState[Any]],
    size: int,
    options: Sequence[ORMOption],
) -> int:
    """Any relationship shape: SELECT the parent's primary key next to the
    target entity, joined along the relationship itself, so SQLAlchemy
    renders the join condition (custom ``primaryjoin``, ``secondary`` and
    ``secondaryjoin`` included) exactly as its own lazy loader would."""
    parent = prop.parent
    parent_alias = aliased(parent)
    pk_attrs = _primary_key_attrs(parent, parent_alias)
    stmt = (
        select(*pk_attrs, prop.entity.entity)
        .join(getattr(parent_alias, prop.key))
        .where(key_filter(session, parent, pk_attrs))
        .options(*options)
        .order_by(*(prop.order_by or prop.mapper.primary_key))
    )
    return _collect(session, prop, stmt, states, size, len(pk_attrs))


def _collect(
    session: Session,
    prop: RelationshipProperty[Any],
    stmt: Any,
    states: list[InstanceState[Any]],
    size: int,
    npk: int,
) -> int:
    """Run ``stmt`` (the parent's key, then the target, per row) chunk by
    chunk and give every parent its targets, in row order."""
    key = prop.key
    uselist = prop.uselist
    statements = 0
    for chunk in chunks(states, size):
        by_identity = states_by_key(chunk, npk)
        collected: dict[Any, list[Any]] = {ident: [] for ident in by_identity}
        result = session.execute(
            stmt, chunk_params(by_identity, npk), execution_options=_compat.BATCH_LOAD
        )
        statements += 1
        for row in _compat.result_tuples(result):
            bucket = collected.get(row[0] if npk == 1 else tuple(row[:npk]))
            if bucket is not None:
                bucket.append(row[npk])
        for ident, values in collected.items():
            state = by_identity[ident]
            if key in state.dict or (key in state.committed_state and not uselist):
                continue  # changed in memory meanwhile
            value = values if uselist else (values[0] if values else None)
            state.manager[key].impl.set_committed_value(state, state.dict, value)
    return statements
