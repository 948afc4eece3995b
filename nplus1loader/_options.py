"""The public load options.

Every option is one :class:`ArmOption`: which attributes (``'*'``, names or
class-bound attributes), which kinds (columns, relationships), which mode
(batch-load or raise).  Used standalone it applies to the query's lead
entities; chained (``joinedload(User.articles).nplus1loader('*')``) it applies
to the entity at the end of the chain.  At compile time it writes one
:class:`~nplus1loader._plan.ArmedElement` per attribute it covers (the
plan), which the strategies in ``_strategies`` read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import inspect
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import ColumnProperty, InstanceState, Load, Mapper, RelationshipProperty
from sqlalchemy.orm.attributes import QueryableAttribute
from sqlalchemy.orm.interfaces import LoaderOption

from . import _sqla
from ._batch import checked_chunk_size
from ._modes import LOAD, RAISE, check_mode
from ._plan import (
    COL_KEYS,
    REL_KEYS,
    ArmedElement,
    provide_batch_option,
    watch_later_options,
)

COLUMNS = "columns"
RELATIONSHIPS = "relationships"
_BOTH = (COLUMNS, RELATIONSHIPS)
_NOT_BATCHABLE_LAZY = ("dynamic", "write_only")

Attr = str | QueryableAttribute[Any]

#: What ``mode=`` accepts (see :mod:`nplus1loader._modes`).
Mode = Literal["load", "warn", "raise"]

__all__ = [
    "ArmOption",
    "Mode",
    "Nplus1Load",
    "Nplus1Option",
    "default_columns",
    "nplus1loader",
    "nplus1loader_cols",
    "nplus1loader_rels",
    "raiseload_all",
    "raiseload_col",
    "raiseload_rel",
]


class Nplus1Option(LoaderOption):
    """The type of what :func:`nplus1loader`, :func:`raiseload_all` and the
    other options return: a loader option for ``.options(...)``.

    Annotate with this name; the class behind it is private.
    """

    __slots__ = ()


class ArmOption(_sqla.OptionBase, Nplus1Option):
    """Arms attributes of the entities a query loads (see module docstring).

    Nothing is written into an option once it is made: the profiles that the
    instances a query loads find through the option they are stamped with
    are kept by ``_arming``, keyed by the option.
    """

    __slots__ = (
        "__weakref__",
        "arms_batches",
        "bound_entities",
        "bound_keys",
        "chunk_size",
        "kinds",
        "mode",
        "names",
        "nested",
        "option_name",
        "prefix",
        "session_wide",
        "strict",
    )

    option_name: str
    kinds: tuple[str, ...]
    mode: str
    strict: bool
    nested: bool
    chunk_size: int
    prefix: tuple[Any, ...]
    names: tuple[str, ...]
    bound_entities: tuple[Any, ...]
    bound_keys: tuple[str, ...]
    #: Whether the option arms the lead entities of a statement that runs
    #: as a lazy load (with a current path): only the option a batch adds
    #: to its own statements does, to arm what the batch brings in.
    arms_batches: bool
    #: Whether the option is the one :func:`nplus1loader.enable` adds: it
    #: never replaces what an nplus1 option of the query itself chose.
    session_wide: bool

    # Carried along on loaded instances, so a refresh of an armed instance
    # (``session.refresh(obj)``) arms it again; and the stamp by which the
    # instances a query creates find their profile (see _arming).
    propagate_to_loaders = True
    is_nplus1_option = True

    def __init__(
        self,
        option_name: str,
        attrs: Sequence[Attr],
        kinds: tuple[str, ...],
        mode: str,
        nested: bool,
        chunk_size: int | None,
        prefix: Any = None,
        *,
        arms_batches: bool = False,
        session_wide: bool = False,
    ) -> None:
        self.chunk_size = checked_chunk_size(chunk_size, f"{option_name}()")
        self.option_name = option_name
        self.kinds = kinds
        self.mode = mode
        # The raiseload_* options raise on every lazy touch, as documented
        # since the 2020 library; mode="raise" on the other options (and
        # enable()) raises only for an N+1 pattern (issue 17).
        self.strict = option_name.startswith("raiseload")
        self.nested = bool(nested)
        self.arms_batches = arms_batches
        self.session_wide = session_wide
        self.prefix = (prefix,) if prefix is not None else ()
        names: list[str] = []
        entities: list[Any] = []
        keys: list[str] = []
        for attr in attrs or ("*",):
            if isinstance(attr, str):
                if attr != "*" and not attr.isidentifier():
                    raise ArgumentError(f"{option_name}(): {attr!r} is not an attribute name")
                names.append(attr)
            elif isinstance(attr, QueryableAttribute):
                self._check_kind(attr.property, attr.parent.mapper)
                entities.append(attr.parent)
                keys.append(attr.key)
            else:
                raise ArgumentError(
                    f"{option_name}(): expected '*', an attribute name or a class-bound "
                    f"attribute such as User.articles, got {attr!r}"
                )
        self.names = tuple(names)
        self.bound_entities = tuple(entities)
        self.bound_keys = tuple(keys)
        if prefix is not None and names:
            entity = _prefix_entity_mapper(prefix)
            if entity is not None:
                for name in names:
                    if name != "*":
                        self._property_named(entity, name)

    @property
    def bound(self) -> tuple[tuple[Any, str], ...]:
        """The class-bound attributes, as (entity, key): the entity is the
        Mapper, or the AliasedInsp of an ``aliased()`` class."""
        return tuple(zip(self.bound_entities, self.bound_keys, strict=True))

    def keeps_cached_form(self) -> bool:
        # A chained option (its path) and a class-bound attribute refer to
        # entities, as a Load does: on a cache hit the instances keep the
        # cached option, whose aliases are those of their cached paths, so
        # what replays it (a lazy load, a batch) matches them, and its own
        # statements hit the cache in turn.
        return bool(self.prefix or self.bound_entities)

    def __getstate__(self) -> dict[str, Any]:
        # Mappers do not pickle; their classes do.  As for SQLAlchemy's own
        # pickled options, an aliased class comes back as its mapper.
        state = {name: getattr(self, name) for name in _STATE_SLOTS}
        state["bound_entities"] = tuple(e.mapper.class_ for e in self.bound_entities)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # What an earlier version pickled (its __dict__) lacks the newer
        # names; its bound attributes never pickled, so it had none.
        for name in _STATE_SLOTS:
            setattr(self, name, state.get(name, _STATE_DEFAULTS.get(name)))
        self.bound_entities = tuple(inspect(cls) for cls in self.bound_entities)
        # Earlier versions kept ``None`` for the default chunk size.
        self.chunk_size = checked_chunk_size(self.chunk_size, f"{self.option_name}()")

    # -- validation -------------------------------------------------------

    def _check_kind(self, prop: Any, mapper: Mapper[Any]) -> None:
        where = f"{mapper.class_.__name__}.{prop.key}"
        if isinstance(prop, RelationshipProperty):
            if RELATIONSHIPS not in self.kinds:
                raise ArgumentError(
                    f"{self.option_name}(): {where} is a relationship, not a column; "
                    "use nplus1loader_rels() / raiseload_rel() for relationships"
                )
            if prop.lazy in _NOT_BATCHABLE_LAZY:
                raise ArgumentError(
                    f"{self.option_name}(): {where} is a lazy={prop.lazy!r} relationship, "
                    "which loads through its own query object and cannot be armed"
                )
        elif isinstance(prop, ColumnProperty):
            if COLUMNS not in self.kinds:
                raise ArgumentError(
                    f"{self.option_name}(): {where} is a column, not a relationship; "
                    "use nplus1loader_cols() / raiseload_col() for columns"
                )
        else:
            raise ArgumentError(
                f"{self.option_name}(): {where} is neither a column nor a relationship"
            )

    def _property_named(self, mapper: Mapper[Any], name: str) -> Any:
        for candidate in mapper.self_and_descendants:
            prop = candidate.attrs.get(name)
            if prop is not None:
                self._check_kind(prop, candidate)
                return prop
        raise ArgumentError(
            f"{self.option_name}(): {mapper.class_.__name__} has no attribute {name!r}"
        )

    # -- compile time -----------------------------------------------------

    def apply(self, compile_state: Any, entities: list[Any]) -> None:
        """Write the plan for the statement's ``entities`` (SQLAlchemy calls
        this through ``_sqla.OptionBase`` as it compiles the statement)."""
        watch_later_options(compile_state)
        current = _sqla.natural_path(_sqla.current_path(compile_state=compile_state))
        replaying = bool(current)
        refresh = _sqla.is_refresh(compile_state=compile_state)
        if self.prefix:
            prefix = self.prefix[0]
            _sqla.apply_option(option=prefix, compile_state=compile_state)
            targets = _prefixed_targets(prefix, entities, current, strict=not refresh)
        elif replaying and not self.arms_batches:
            # A lazy load or refresh replaying the options its instance was
            # loaded with: what it brings in is armed by the option that our
            # own loads add (nested=True), never by the replayed one.
            return
        else:
            targets = [
                (_sqla.entity_path(query_entity=e), e.mapper, e.entity_zero) for e in entities
            ]
            if not replaying and not refresh:
                self._check_bound_apply(targets)
        for path, mapper, entity in targets:
            self._arm_entity(compile_state, path, mapper, entity)

    def _check_bound_apply(self, targets: list[tuple[Any, Mapper[Any], Any]]) -> None:
        """A class-bound attribute that no lead entity has is a mistake, as
        it is for SQLAlchemy's own options (``selectinload(Article.author)``
        on ``select(User)``)."""
        for bound_entity, key in self.bound:
            if not any(_entity_matches(bound_entity, m, e) for _, m, e in targets):
                roots = ", ".join(str(m) for _, m, _ in targets) or "none"
                raise ArgumentError(
                    f'Mapped attribute "{_entity_name(bound_entity)}.{key}" does not apply to '
                    f"any of the root entities in this query, e.g. {roots}. Please specify the "
                    "full path from one of the root entities to the target attribute."
                )

    def _arm_entity(self, compile_state: Any, path: Any, mapper: Mapper[Any], entity: Any) -> None:
        # The session-wide option leaves alone what an nplus1 option of the
        # query itself chose (processed before it: it comes last).
        taken = _armed_keys(compile_state.attributes) if self.session_wide else frozenset()
        props = self._props_for(mapper, entity)
        for prop, wild in props:
            prop_path = path[prop]
            exact_key = _sqla.loader_keys(prop_path=prop_path)[0]
            if exact_key in taken:
                continue
            existing = compile_state.attributes.get(exact_key)
            if isinstance(existing, ArmedElement):
                existing = existing.underlying
            keys = REL_KEYS if isinstance(prop, RelationshipProperty) else COL_KEYS
            strategy = keys[RAISE if self.strict else LOAD]
            compile_state.attributes[exact_key] = ArmedElement(
                strategy, self.mode, wild, existing, self.nested, self.chunk_size
            )
        self._arm_anchors(compile_state, path, mapper, taken)

    def _arm_anchors(
        self, compile_state: Any, path: Any, mapper: Mapper[Any], taken: frozenset[Any]
    ) -> None:
        """Mark the primary-key column of each mapper as this option's
        anchor, so every instance the query returns is remembered as armed
        (expired columns are refreshed in batches after a commit)."""
        # raiseload_rel() leaves expired columns to refresh the stock way.
        refreshes = COLUMNS in self.kinds or not self.strict
        raise_keys = None
        if self.mode == RAISE and "*" not in self.names:
            # A named raise option raises for the expired columns it names,
            # not for every column of the instance.
            raise_keys = frozenset(self.names) | frozenset(key for _, key in self.bound)
        seen: set[int] = set()
        for candidate in mapper.self_and_descendants:
            prop = candidate.get_property_by_column(candidate.primary_key[0])
            if id(prop) in seen:
                continue
            seen.add(id(prop))
            exact_key = _sqla.loader_keys(prop_path=path[prop])[0]
            if exact_key in taken:
                continue
            existing = compile_state.attributes.get(exact_key)
            if isinstance(existing, ArmedElement):
                existing = existing.underlying
            compile_state.attributes[exact_key] = ArmedElement(
                COL_KEYS[RAISE if self.strict else LOAD],
                self.mode,
                True,
                existing,
                self.nested,
                self.chunk_size,
                anchor=True,
                raise_keys=raise_keys,
                refreshes=refreshes,
            )

    def _props_for(self, mapper: Mapper[Any], entity: Any) -> list[tuple[Any, bool]]:
        chosen: dict[int, tuple[Any, bool]] = {}
        if "*" in self.names:
            for candidate in mapper.self_and_descendants:
                for prop in candidate.iterate_properties:
                    if self._wildcard_covers(prop):
                        chosen.setdefault(id(prop), (prop, True))
        named = [n for n in self.names if n != "*"]
        if named:
            for name in named:
                prop = self._property_named(mapper, name)
                chosen[id(prop)] = (prop, False)
        for bound_entity, key in self.bound:
            if _entity_matches(bound_entity, mapper, entity):
                prop = bound_entity.mapper.attrs[key]
                chosen[id(prop)] = (prop, False)
        return list(chosen.values())

    def _wildcard_covers(self, prop: Any) -> bool:
        if isinstance(prop, RelationshipProperty):
            return RELATIONSHIPS in self.kinds and prop.lazy not in _NOT_BATCHABLE_LAZY
        return isinstance(prop, ColumnProperty) and COLUMNS in self.kinds


# The entities of class-bound attributes by their cache keys, as SQLAlchemy's
# own options have them: two equal ``aliased(User)`` give equal keys (and
# share one compiled statement), two aliases of other names do not.
_sqla.declare_cache_key(
    ArmOption,
    keyed=("prefix", "bound_entities"),
    plain=(
        "names",
        "bound_keys",
        "kinds",
        "mode",
        "nested",
        "chunk_size",
        "arms_batches",
        "session_wide",
        "strict",
    ),
)

#: What pickles of an option (the load options of a pickled instance).
_STATE_SLOTS = tuple(name for name in ArmOption.__slots__ if name != "__weakref__")
_STATE_DEFAULTS: dict[str, Any] = {
    "arms_batches": False,
    "bound_entities": (),
    "bound_keys": (),
    "session_wide": False,
}


def _armed_keys(attributes: Any) -> frozenset[Any]:
    """The keys at which an nplus1 option has armed an attribute."""
    return frozenset(key for key, value in attributes.items() if isinstance(value, ArmedElement))


def _entity_name(entity: Any) -> str:
    return str(getattr(entity, "name", None) or entity.mapper.class_.__name__)


def _entity_matches(bound_entity: Any, mapper: Mapper[Any], entity: Any) -> bool:
    if getattr(bound_entity, "is_aliased_class", False):
        return bound_entity is entity
    return mapper.isa(bound_entity.mapper) or bound_entity.mapper.isa(mapper)


def _prefix_entity_mapper(prefix: Any) -> Mapper[Any] | None:
    path = getattr(prefix, "path", None)
    if path is None or not len(path):
        return None
    last = path[-1]
    return getattr(last, "mapper", None)


def _prefixed_targets(
    prefix: Any, entities: list[Any], current: tuple[Any, ...], strict: bool
) -> list[tuple[Any, Mapper[Any], Any]]:
    """The entity path a chained option applies to, expressed relative to
    this query's lead entities (in a lazy load, relative to the path the
    load started from, as SQLAlchemy does for its own chained options)."""
    path = getattr(prefix, "path", None)
    if path is None or not len(path):
        return [(_sqla.entity_path(query_entity=e), e.mapper, e.entity_zero) for e in entities]
    steps = _sqla.natural_path(path)
    if current:
        if steps[: len(current)] != current or len(steps) <= len(current):
            return []
        steps = steps[len(current) :]
    head, rest = steps[0], steps[1:]
    targets = []
    for entity in entities:
        if entity.mapper is getattr(head, "mapper", None) or entity.entity_zero is head:
            target = _sqla.entity_path(query_entity=entity)
            for i in range(0, len(rest), 2):
                target = target[rest[i]][rest[i + 1]]
            last = rest[-1] if rest else head
            targets.append((target, last.mapper, last))
    if not targets and not current and strict:
        raise ArgumentError(
            f"option chained from {path} does not apply to any entity of this query"
        )
    return targets


if TYPE_CHECKING:

    class Nplus1Load(Load):
        """:class:`sqlalchemy.orm.Load` with nplus1loader's chained methods,
        for type checkers.

        At run time this *is* ``sqlalchemy.orm.Load``: importing nplus1loader
        gives every SQLAlchemy loader option these methods, but a type
        checker cannot see methods added at run time.  :func:`default_columns`
        returns this type, and ``Nplus1Load(User).joinedload(User.articles)``
        (SQLAlchemy's own ``Load(User)`` spelling of
        ``joinedload(User.articles)``) chains with type checking::

            select(User).options(
                Nplus1Load(User).joinedload(User.articles).nplus1loader("*")
            )
        """

        def nplus1loader(
            self,
            *attrs: Attr,
            nested: bool = True,
            chunk_size: int | None = None,
            mode: Mode = "load",
        ) -> Nplus1Option:
            """Chained form of :func:`nplus1loader.nplus1loader`."""
            ...

        def nplus1loader_cols(
            self,
            *attrs: Attr,
            nested: bool = True,
            chunk_size: int | None = None,
            mode: Mode = "load",
        ) -> Nplus1Option:
            """Chained form of :func:`nplus1loader.nplus1loader_cols`."""
            ...

        def nplus1loader_rels(
            self,
            *attrs: Attr,
            nested: bool = True,
            chunk_size: int | None = None,
            mode: Mode = "load",
        ) -> Nplus1Option:
            """Chained form of :func:`nplus1loader.nplus1loader_rels`."""
            ...

        def raiseload_all(self, *attrs: Attr) -> Nplus1Option:
            """Chained form of :func:`nplus1loader.raiseload_all`."""
            ...

        def raiseload_col(self, *attrs: Attr) -> Nplus1Option:
            """Chained form of :func:`nplus1loader.raiseload_col`."""
            ...

        def raiseload_rel(self, *attrs: Attr) -> Nplus1Option:
            """Chained form of :func:`nplus1loader.raiseload_rel`."""
            ...

else:
    # Every Load has the methods (attached below); the name is for annotations.
    Nplus1Load = Load


# ------------------------------------------------------------- public API


def nplus1loader(
    *attrs: Attr, nested: bool = True, chunk_size: int | None = None, mode: Mode = "load"
) -> Nplus1Option:
    """Batch-load columns and relationships on first touch.

    With ``'*'`` (the default) every relationship the query loads lazily and
    every column it leaves unloaded is armed: touching it on one instance
    loads it for every armed peer in the session, one query per 500
    instances.  Names (``'articles'``) or class-bound attributes
    (``User.articles``) arm exactly those, deferring named columns.

    :param nested: arm the instances a batch load brings in the same way,
        so walking ``user.articles[i].comments`` costs one query per level.
    :param chunk_size: instances per query (default 500).
    :param mode: ``"load"`` (batch), ``"warn"`` (batch and emit
        :class:`~nplus1loader.NPlusOneWarning`) or ``"raise"``.
    """
    return ArmOption(
        "nplus1loader", attrs, _BOTH, check_mode(mode, "nplus1loader()"), nested, chunk_size
    )


def nplus1loader_cols(
    *attrs: Attr, nested: bool = True, chunk_size: int | None = None, mode: Mode = "load"
) -> Nplus1Option:
    """:func:`nplus1loader` for columns only."""
    return ArmOption(
        "nplus1loader_cols",
        attrs,
        (COLUMNS,),
        check_mode(mode, "nplus1loader_cols()"),
        nested,
        chunk_size,
    )


def nplus1loader_rels(
    *attrs: Attr, nested: bool = True, chunk_size: int | None = None, mode: Mode = "load"
) -> Nplus1Option:
    """:func:`nplus1loader` for relationships only."""
    return ArmOption(
        "nplus1loader_rels",
        attrs,
        (RELATIONSHIPS,),
        check_mode(mode, "nplus1loader_rels()"),
        nested,
        chunk_size,
    )


def raiseload_all(*attrs: Attr) -> Nplus1Option:
    """Touching an unloaded column or lazy relationship raises
    :class:`~nplus1loader.LazyLoadingAttributeError`, every time.

    With ``'*'`` it covers exactly what :func:`nplus1loader` would batch, so a
    test suite using it sees every N+1 pattern production would absorb.
    """
    return ArmOption("raiseload_all", attrs, _BOTH, RAISE, False, None)


def raiseload_col(*attrs: Attr) -> Nplus1Option:
    """Named columns are not loaded, and touching them raises; ``'*'``
    makes every column the query leaves unloaded raise."""
    return ArmOption("raiseload_col", attrs, (COLUMNS,), RAISE, False, None)


def raiseload_rel(*attrs: Attr) -> Nplus1Option:
    """Touching a lazily loaded relationship raises."""
    return ArmOption("raiseload_rel", attrs, (RELATIONSHIPS,), RAISE, False, None)


_batch_options: dict[tuple[int | None, str], ArmOption] = {}


def batch_arming_option(chunk_size: int | None, mode: str = LOAD) -> ArmOption:
    """The option a batch adds to its statements so that what it brings in
    is armed in turn (``nested=True``), in the mode of the loader that ran
    the batch (so a nested N+1 pattern warns or raises as the first did):
    one object per chunk size and mode, so the statements' cache keys and
    the stamp on the instances stay the same."""
    found = _batch_options.get((chunk_size, mode))
    if found is None:
        found = ArmOption("nplus1loader", ("*",), _BOTH, mode, True, chunk_size, arms_batches=True)
        _batch_options[(chunk_size, mode)] = found
    return found


provide_batch_option(batch_arming_option)


def default_columns(model: Any) -> Nplus1Load:
    """The model's own column loading as an option: deferred columns stay
    deferred (groups kept, ``raiseload=True`` kept), the others are loaded.

    Kept for compatibility with the 2020 library, where it was needed next
    to ``nplus1loader('*')``; here ``nplus1loader('*')`` works without it.
    """
    found = inspect(model, raiseerr=False)
    if not (isinstance(found, Mapper) or getattr(found, "is_aliased_class", False)):
        what = "not a mapped class"
        if isinstance(found, InstanceState):
            what = "an instance, not a class"
        raise ArgumentError(
            "default_columns() expects a mapped class (or its Mapper, or an aliased class), "
            f"got {model!r}: {what}"
        )
    mapper = found.mapper
    entity = model if not isinstance(model, Mapper) else model.class_
    load = Nplus1Load(entity)
    for prop in mapper.column_attrs:
        options = dict(prop.strategy_key)
        if "deferred" not in options or not options.get("instrument", True):
            continue  # query_expression() and friends have their own rules
        attr = getattr(entity, prop.key)
        if options["deferred"]:
            load = load.defer(attr, raiseload=bool(options.get("raiseload")))
        else:
            load = load.undefer(attr)
    return load


def _chained(name: str, kinds: tuple[str, ...], mode: str, allow_nested: bool) -> Any:
    def method(
        self: Any,
        *attrs: Attr,
        nested: bool = True,
        chunk_size: int | None = None,
        **kw: Any,
    ) -> ArmOption:
        chosen = check_mode(kw.pop("mode", mode), f"{name}()")
        if kw:
            raise ArgumentError(f"{name}(): unexpected keyword arguments {sorted(kw)}")
        return ArmOption(
            name, attrs, kinds, chosen, nested and allow_nested, chunk_size, prefix=self
        )

    method.__name__ = name
    method.__doc__ = f"Chained form of :func:`nplus1loader.{name}`."
    return method


for _name, _kinds, _mode, _nested in (
    ("nplus1loader", _BOTH, LOAD, True),
    ("nplus1loader_cols", (COLUMNS,), LOAD, True),
    ("nplus1loader_rels", (RELATIONSHIPS,), LOAD, True),
    ("raiseload_all", _BOTH, RAISE, False),
    ("raiseload_col", (COLUMNS,), RAISE, False),
    ("raiseload_rel", (RELATIONSHIPS,), RAISE, False),
):
    _sqla.attach_loader_method(name=_name, method=_chained(_name, _kinds, _mode, _nested))
