"""The batch loader: one attribute, many instances, one query per chunk.

This is the public core (:func:`bulk_load_attribute_for_instance_states`).
It never overwrites what the user changed: only instances that still lack the
attribute are loaded, values are stored as committed state (no history, never
dirty), and the session does not autoflush while it runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import bindparam, inspect, select, tuple_
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import (
    ColumnProperty,
    LoaderCallableStatus,
    Mapper,
    PassiveFlag,
    RelationshipProperty,
    Session,
    aliased,
)
from sqlalchemy.orm.interfaces import ORMOption
from sqlalchemy.orm.state import InstanceState

from . import _compat

DEFAULT_CHUNK_SIZE = 500
"""Instances per query; the same default as SQLAlchemy's ``selectinload``."""

_KEYS_PARAM = "nplus1loader_keys"

__all__ = ["DEFAULT_CHUNK_SIZE", "bulk_load_attribute_for_instance_states"]


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
    size = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ArgumentError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    wanted = [s for s in _unique(states) if _needs_load(session, s, prop)]
    if not wanted:
        return 0
    with session.no_autoflush:
        if isinstance(prop, ColumnProperty):
            return _load_columns(session, prop, wanted, size, options)
        return _load_relationship(session, prop, wanted, size, options)


def _property(mapper: Mapper[Any], attr_name: str) -> Any:
    if not isinstance(mapper, Mapper):
        raise ArgumentError(f"expected a Mapper, got {mapper!r}")
    prop = mapper.attrs.get(attr_name)
    if prop is None:
        raise ArgumentError(
            f"{mapper.class_.__name__} has no mapped attribute {attr_name!r}"
        )
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


def _needs_load(session: Session, state: InstanceState[Any], prop: Any) -> bool:
    return (
        state.key is not None
        and state.session_id == session.hash_key
        and not state.deleted
        and state.mapper.isa(prop.parent)
        and _lacks(state, prop)
    )


def _lacks(state: InstanceState[Any], prop: Any) -> bool:
    """True when the batch may set ``prop`` on ``state``: no value, and no
    change in memory.  A collection that a backref appended to while it was
    unloaded holds only queued (pending) changes: setting the loaded value
    merges them in, exactly as a stock lazy load does."""
    key = prop.key
    if key in state.dict:
        return False
    return key not in state.committed_state or bool(getattr(prop, "uselist", False))


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _key_filter(columns: Sequence[Any]) -> Any:
    """``pk IN (...)``, or ``(a, b) IN (...)`` for composite keys.

    An expanding bind parameter keeps one compiled statement per attribute
    whatever the chunk length (SQLAlchemy caches the POSTCOMPILE form).
    """
    if len(columns) == 1:
        return columns[0].in_(bindparam(_KEYS_PARAM, expanding=True))
    return tuple_(*columns).in_(bindparam(_KEYS_PARAM, expanding=True))


def _key_values(identities: Sequence[tuple[Any, ...]]) -> list[Any]:
    if identities and len(identities[0]) == 1:
        return [ident[0] for ident in identities]
    return list(identities)


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
) -> int:
    """SELECT the primary key and the column (or its group) by primary key.

    Class-bound attributes, not bare columns, so that the statement is the
    ORM statement stock SQLAlchemy runs to load a deferred column: a joined
    subclass selects from its join, and ``with_loader_criteria`` options
    reach into ``column_property`` subqueries as they do there.
    """
    mapper = prop.parent
    entity = mapper.entity
    group = _column_group(prop)
    pk_attrs = _primary_key_attrs(mapper, entity)
    stmt = (
        select(*pk_attrs, *(getattr(entity, p.key) for p in group))
        .select_from(entity)
        .where(_key_filter(pk_attrs))
        .options(*options)
    )
    npk = len(pk_attrs)
    impls = [(p.key, states[0].manager[p.key].impl) for p in group]
    statements = 0
    for chunk in _chunks(states, size):
        by_identity = {s.key[1]: s for s in chunk}
        rows = session.execute(stmt, {_KEYS_PARAM: _key_values(list(by_identity))}).all()
        statements += 1
        for row in rows:
            state = by_identity.get(tuple(row[:npk]))
            if state is None:
                continue
            dict_ = state.dict
            for offset, (key, impl) in enumerate(impls):
                if key not in dict_ and key not in state.committed_state:
                    impl.set_committed_value(state, dict_, row[npk + offset])
    return statements


def _primary_key_attrs(mapper: Mapper[Any], entity: Any) -> list[Any]:
    """The primary key as attributes of ``entity``, in identity-key order
    (the attribute names may differ from the column names)."""
    return [getattr(entity, mapper.get_property_by_column(col).key) for col in mapper.primary_key]


# ---------------------------------------------------------- relationships


def _load_relationship(
    session: Session,
    prop: RelationshipProperty[Any],
    states: list[InstanceState[Any]],
    size: int,
    options: Sequence[ORMOption],
) -> int:
    statements = 0
    remaining = states
    strategy = _compat.get_strategy(prop, (("lazy", "select"),))
    if prop.direction.name == "MANYTOONE" and strategy.use_get:
        statements, remaining = _load_many_to_one_by_identity(
            session, prop, strategy, states, size, options
        )
    if remaining:
        statements += _load_through_parent_join(session, prop, remaining, size, options)
    return statements


def _load_many_to_one_by_identity(
    session: Session,
    prop: RelationshipProperty[Any],
    strategy: Any,
    states: list[InstanceState[Any]],
    size: int,
    options: Sequence[ORMOption],
) -> tuple[int, list[InstanceState[Any]]]:
    """A many-to-one whose foreign key points at the target's primary key:
    read the key from each parent, take hits from the identity map, and
    SELECT the misses by primary key.  Parents whose foreign key is not
    loaded go back to the caller for the general path."""
    target = prop.mapper
    impl = states[0].manager[prop.key].impl
    identity_map = session.identity_map
    undecided: list[InstanceState[Any]] = []
    wanted: dict[tuple[Any, ...], list[InstanceState[Any]]] = {}
    resolved: list[tuple[InstanceState[Any], Any]] = []
    for state in states:
        ident = _compat.use_get_identity(strategy, session, state, PassiveFlag.PASSIVE_NO_FETCH)
        if any(v is _NO_RESULT or v is _NEVER_SET for v in ident):
            undecided.append(state)
            continue
        if _is_null_identity(target, ident):
            resolved.append((state, None))
            continue
        key = tuple(ident)
        hit = identity_map.get(target.identity_key_from_primary_key(key))
        if hit is not None:
            hit_state = _instance_state(hit)
            if not hit_state.expired and not hit_state.deleted and hit_state.mapper.isa(target):
                resolved.append((state, hit))
                continue
        wanted.setdefault(key, []).append(state)

    statements = 0
    if wanted:
        entity = target.entity
        stmt = select(entity).where(_key_filter(_primary_key_attrs(target, entity)))
        stmt = stmt.options(*options)
        found: dict[tuple[Any, ...], Any] = {}
        keys = list(wanted)
        for chunk in _chunks(keys, size):
            result = session.execute(stmt, {_KEYS_PARAM: _key_values(chunk)})
            for obj in result.unique().scalars():
                found[_instance_state(obj).key[1]] = obj
            statements += 1
        for key, parents in wanted.items():
            value = found.get(key)
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
        if _lacks(state, prop):
            impl.set_committed_value(state, state.dict, value)
    return statements, undecided


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
    target = prop.entity.entity
    stmt = (
        select(*pk_attrs, target)
        .join(getattr(parent_alias, prop.key))
        .where(_key_filter(pk_attrs))
        .options(*options)
    )
    if prop.order_by:
        stmt = stmt.order_by(*prop.order_by)
    else:
        stmt = stmt.order_by(*prop.mapper.primary_key)
    npk = len(pk_attrs)
    impl = states[0].manager[prop.key].impl
    statements = 0
    for chunk in _chunks(states, size):
        by_identity = {s.key[1]: s for s in chunk}
        collected: dict[tuple[Any, ...], list[Any]] = {ident: [] for ident in by_identity}
        # unique(): a joined eager load of the targets (a model default of
        # lazy="joined") repeats rows, which stock lazy loading collapses too.
        result = session.execute(stmt, {_KEYS_PARAM: _key_values(list(by_identity))})
        for row in result.unique():
            bucket = collected.get(tuple(row[:npk]))
            if bucket is not None:
                bucket.append(row[npk])
        statements += 1
        for ident, values in collected.items():
            state = by_identity[ident]
            if not _lacks(state, prop):
                continue
            if prop.uselist:
                impl.set_committed_value(state, state.dict, values)
            else:
                impl.set_committed_value(state, state.dict, values[0] if values else None)
    return statements


_NO_RESULT = LoaderCallableStatus.PASSIVE_NO_RESULT
_NEVER_SET = LoaderCallableStatus.NEVER_SET


def _is_null_identity(mapper: Mapper[Any], ident: Sequence[Any]) -> bool:
    if mapper.allow_partial_pks:
        return all(v is None for v in ident)
    return any(v is None for v in ident)


def _instance_state(obj: Any) -> InstanceState[Any]:
    return inspect(obj)
