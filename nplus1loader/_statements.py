"""The statements of a batch: for each attribute, the SELECT that loads it
for a chunk of instances, built once per mapped property.

Each is the statement stock SQLAlchemy runs to load the attribute of one
instance, widened to a chunk (see ``_batch``):

* a column (with the rest of its deferred group): the primary key and the
  columns, by primary key, from the mapper's selectable;
* a one-to-many whose join condition is "foreign key equals primary key":
  the targets by foreign key, without joining the parent (what
  ``selectinload`` does);
* any other relationship shape: stock's own lazy clause, its parent
  columns taken from an alias of the parent whose primary key (selected
  next to the target) picks the chunk, with stock's ORDER BY and its rule
  that the targets do not eager-load back to the parent.

Shapes a batch cannot widen (a join condition holding a subquery
correlated to the parent) are named by :func:`relationship_batchable`:
those load one instance at a time, as stock does.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Integer, TypeDecorator, Uuid, select
from sqlalchemy.orm import Mapper, RelationshipDirection, RelationshipProperty, aliased
from sqlalchemy.sql import visitors

from . import _sqla
from ._keys import key_filter

__all__ = [
    "Shape",
    "columns_statement",
    "per_property",
    "primary_key_attrs",
    "relationship_batchable",
    "statement_shape",
]


@dataclass(frozen=True)
class Shape:
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


def statement_shape(prop: RelationshipProperty[Any], by_join: bool = False) -> Shape:
    """The batch SELECT of ``prop`` before options."""

    def build() -> Shape:
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
        if many_to_one and _sqla.lazy_strategy(prop=prop).use_get:
            return True
        criterion, _ = _sqla.lazy_clause(prop=prop)
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
    if not _sqla.selectin_omits_join(prop=prop) or _sqla.target_correlates_to_parent(prop=prop):
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
    order_by = _sqla.lazy_order_by(prop=prop)
    if order_by:
        stmt = stmt.order_by(*order_by)
    return _sqla.add_compile_state_func(
        stmt=stmt, fn=_sqla.reverse_lazyload(prop=prop), cache_key=prop
    )


def _select_by_foreign_key(prop: RelationshipProperty[Any], remote: list[Any]) -> Shape:
    """SELECT the targets' foreign key next to the targets, by foreign key."""
    stmt = select(*remote, prop.entity.entity).where(key_filter(remote))
    return Shape(_stock_like(prop, stmt), len(remote), unique=False)


def _select_through_parent(prop: RelationshipProperty[Any]) -> Shape:
    """Any relationship shape: stock's own lazy clause, its parent columns
    taken from an alias of the parent, whose primary key (selected next to
    the target) picks the chunk.  The FROM list is the lazy load's own
    (target, secondary and any other table the join condition names) plus
    the alias."""
    parent = prop.parent
    parent_alias = aliased(parent.class_)
    pk_columns = [
        _sqla.adapt_to_alias(alias=parent_alias, column=col) for col in parent.primary_key
    ]
    target = prop.entity.entity
    stmt = select(*pk_columns, target)
    if _sqla.target_correlates_to_parent(prop=prop):
        # A LATERAL target is selected beside the parent it correlates to.
        stmt = stmt.select_from(parent_alias).join(getattr(parent_alias, prop.key).of_type(target))
    else:
        criterion, bind_to_col = _sqla.lazy_clause(prop=prop)

        def parent_column(element: Any, **kw: Any) -> Any:
            if getattr(element, "__visit_name__", None) == "bindparam":
                column = bind_to_col.get(_sqla.bind_key(element))
                if column is not None:
                    return _sqla.adapt_to_alias(alias=parent_alias, column=column)
            return None

        stmt = stmt.where(visitors.replacement_traverse(criterion, {}, parent_column))
        if prop.secondary is not None:
            stmt = stmt.select_from(prop.mapper, prop.secondary)
    stmt = stmt.where(key_filter(pk_columns))
    return Shape(_stock_like(prop, stmt), len(pk_columns), unique=True)


def primary_key_attrs(mapper: Mapper[Any], entity: Any) -> list[Any]:
    """The primary key as attributes of ``entity``, in identity-key order
    (the attribute names may differ from the column names)."""
    return [getattr(entity, mapper.get_property_by_column(col).key) for col in mapper.primary_key]


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
    key_attrs = primary_key_attrs(mapper, entity)
    return (
        select(*key_attrs, *(getattr(entity, key) for key in keys))
        .select_from(entity)
        .where(key_filter(key_attrs))
    )
