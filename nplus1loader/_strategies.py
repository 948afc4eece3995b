"""Loader strategies that arm attributes, registered with SQLAlchemy.

Our options never pick a strategy by themselves: they write an
:class:`ArmedElement` for each attribute they cover into the compile state,
keyed like SQLAlchemy's own per-attribute options.  SQLAlchemy then calls the
strategies below, which decide per attribute:

* an option naming the attribute (``nplus1loader_cols('bio')``) always arms
  it (and defers a column);
* a wildcard (``nplus1loader('*')``) arms exactly what the query would leave
  unloaded anyway (a deferred column, a ``lazy="select"`` relationship) and
  hands everything else to the strategy SQLAlchemy would have used, so
  ``load_only()``, ``joinedload()``, ``lazy="selectin"`` and friends keep
  working, whatever the order of the options.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import ColumnProperty, RelationshipProperty
from sqlalchemy.util import immutabledict

from . import _compat
from ._arming import profile_for
from ._expiry import ensure_expire_listener, ensure_refresh_hook
from ._modes import LOAD, RAISE, WARN
from ._peers import ArmedLoader, strict_error
from ._report import RELATIONSHIP, arming_site, wants_query_site

REL_KEYS = {
    LOAD: (("lazy", "nplus1loader"),),
    WARN: (("lazy", "nplus1loader"),),
    RAISE: (("lazy", "nplus1loader_raise"),),
}
COL_KEYS = {
    LOAD: (("nplus1loader", LOAD),),
    WARN: (("nplus1loader", LOAD),),
    RAISE: (("nplus1loader", RAISE),),
}
_OUR_KEYS = frozenset(REL_KEYS.values()) | frozenset(COL_KEYS.values())
_UNDEFERRED = (("deferred", False), ("instrument", True))
_UNDECIDED = object()


class ArmedElement:
    """What an nplus1 option leaves in ``compile_state.attributes`` for one
    attribute at one path: it quacks like SQLAlchemy's ``_LoadElement`` where
    SQLAlchemy reads it, and carries our settings for the strategy.

    ``underlying`` is the per-attribute option another option had set there
    before (``defer(User.bio)``), so a wildcard knows what it replaced.
    ``_reconcile_to_other = True`` lets any later option for the same
    attribute take the place back, as a later SQLAlchemy option would.
    """

    __slots__ = (
        "anchor",
        "chunk_size",
        "local_opts",
        "mode",
        "nested",
        "raise_keys",
        "refreshes",
        "strategy",
        "underlying",
        "wild",
    )

    propagate_to_loaders = True
    is_opts_only = False
    is_token_strategy = False
    is_class_strategy = False
    _reconcile_to_other = True
    _extra_criteria = ()

    def __init__(
        self,
        strategy: tuple[Any, ...],
        mode: str,
        wild: bool,
        underlying: Any,
        nested: bool,
        chunk_size: int | None,
        anchor: bool = False,
        raise_keys: frozenset[str] | None = None,
        refreshes: bool = True,
    ) -> None:
        self.anchor = anchor
        self.raise_keys = raise_keys
        self.refreshes = refreshes
        self.strategy = strategy
        self.mode = mode
        self.wild = wild
        self.underlying = underlying
        self.nested = nested
        self.chunk_size = chunk_size
        self.local_opts: immutabledict[str, Any] = immutabledict()

    def over(self, replacement: Any) -> ArmedElement:
        """This wildcard again, now on top of ``replacement``: the option a
        later SQLAlchemy option put at the same key (see ArmedAttributes)."""
        return ArmedElement(
            self.strategy,
            self.mode,
            self.wild,
            replacement,
            self.nested,
            self.chunk_size,
            self.anchor,
            self.raise_keys,
            self.refreshes,
        )

    def _to_option_method_string(self) -> str:
        return "nplus1loader option"

    def __repr__(self) -> str:
        return f"ArmedElement(mode={self.mode!r}, wild={self.wild!r})"


class ArmedAttributes(dict):  # type: ignore[type-arg]
    """``compile_state.attributes`` once an nplus1 option has run.

    SQLAlchemy processes options in the order given, and a later option for
    the same attribute replaces ours (``nplus1loader('*'), defer(User.name)``).
    A wildcard only arms what the query leaves unloaded, so it must see what
    the query finally asks for, whatever the order: when a later option
    takes the key of a wildcard element, the wildcard goes back on top of
    it, with the later option as what it delegates to or judges by.  An
    option naming the attribute replaces ours outright, as SQLAlchemy's
    later-option-wins rule says.
    """

    __slots__ = ()

    def __setitem__(self, key: Any, value: Any) -> None:
        existing = self.get(key)
        if (
            isinstance(existing, ArmedElement)
            and existing.wild
            and value is not existing
            and not isinstance(value, ArmedElement)
        ):
            value = existing.over(value)
        super().__setitem__(key, value)


def watch_later_options(compile_state: Any) -> None:
    """Make the compile state's option registry an :class:`ArmedAttributes`
    (once per compilation; SQLAlchemy reads and writes it by key only)."""
    if not isinstance(compile_state.attributes, ArmedAttributes):
        compile_state.attributes = ArmedAttributes(compile_state.attributes)


def _underlying(prop: Any, loadopt: ArmedElement, attributes: Any, path: Any) -> Any:
    """The option SQLAlchemy would have used for this attribute had no
    nplus1 option been given (None: the mapping's default)."""
    if loadopt.underlying is not None:
        return loadopt.underlying
    _, wildcard_key, default_key = _compat.loader_keys(path[prop])
    found = attributes.get(wildcard_key)
    if found is None:
        found = attributes.get(default_key)
    return found


def _decide(prop: Any, loadopt: Any, attributes: Any, path: Any) -> tuple[bool, Any, Any]:
    """(arm?, strategy key to delegate to, option to delegate with)."""
    if isinstance(prop, ColumnProperty) and set(prop.columns) & _compat.should_undefer_in_wildcard(
        prop.parent
    ):
        # Primary key and discriminator: always loaded.
        under = (
            _underlying(prop, loadopt, attributes, path)
            if isinstance(loadopt, ArmedElement)
            else loadopt
        )
        return False, _UNDEFERRED, under
    if isinstance(loadopt, ArmedElement) and isinstance(prop, RelationshipProperty):
        under = _underlying(prop, loadopt, attributes, path)
        if _compat.extra_criteria(under):
            # lazyload(User.addresses.and_(...)): criteria for that one
            # relationship; SQLAlchemy's own lazy loader applies them.
            return False, under.strategy or prop.strategy_key, under
    if not isinstance(loadopt, ArmedElement) or not loadopt.wild:
        return True, None, None
    under = _underlying(prop, loadopt, attributes, path)
    key = under.strategy if under is not None and under.strategy else prop.strategy_key
    if key in _OUR_KEYS:
        return True, None, None
    if (
        loadopt.mode == RAISE
        and loadopt.underlying is not None
        and isinstance(prop, RelationshipProperty)
        and under.strategy
    ):
        # An option naming the attribute (lazyload(User.addresses),
        # joinedload, undefer) is more specific than a raise wildcard, as
        # it is than orm.raiseload('*'): it decides.
        return False, key, under
    opts = dict(key)
    if isinstance(prop, ColumnProperty):
        arm = bool(opts.get("deferred")) and opts.get("instrument", True)
        if opts.get("raiseload"):
            arm = False  # the user asked this column to raise: keep it so
        if prop.group and under is not None and under.local_opts.get(f"undefer_group_{prop.group}"):
            arm = False  # undefer_group(): the query loads the group itself
    else:
        arm = opts.get("lazy") in ("select", True)
    return arm, key, under


def _install(
    context: Any, path: Any, mapper: Any, loader: ArmedLoader, populators: Any
) -> None:
    """Arm ``loader``'s attribute on every instance the rows reach: one
    entry in this query's profile, which the rows carry."""
    profile = profile_for(context, path, mapper, loader.chunk_size, populators)
    _note_query_site(context, profile, loader.mode)
    ensure_refresh_hook(mapper)
    if not profile.arm(mapper, loader):
        ensure_expire_listener(mapper)  # a per-instance hook: an expire drops it
    elif context.populate_existing or mapper.always_refresh:
        # Dispatched at class level, like SQLAlchemy's own lazy loader:
        # populate_existing() only needs to drop a loaded value.
        populators["expire"].append((loader.key, False))


def _remember_armed(
    context: Any, path: Any, mapper: Any, loadopt: ArmedElement, populators: Any
) -> None:
    """The anchor (primary key column) of an nplus1 query: every instance
    the query returns, new or already in the session, carries its profile,
    even when nothing on it was left unloaded (for expired columns)."""
    profile = profile_for(context, path, mapper, loadopt.chunk_size, populators)
    _note_query_site(context, profile, loadopt.mode)
    ensure_refresh_hook(mapper)
    if loadopt.refreshes:
        profile.refresh_mode = loadopt.mode
        profile.raise_keys = loadopt.raise_keys
        profile.strict_refresh = loadopt.strategy == COL_KEYS[RAISE]


def _note_query_site(context: Any, profile: Any, declared_mode: str) -> None:
    """Record the query's line on its profile where a touch could report
    it (raise or warn mode, a test run collecting patterns).  Decided once
    per query execution and declared mode, so load mode costs one
    ``NPLUS1LOADER_MODE`` read per execution; that read also makes the
    first query under an invalid value fail, naming the variable."""
    if profile.query_site is not None:
        return
    key = ("nplus1loader.query_site", declared_mode)
    site = context.attributes.get(key, _UNDECIDED)
    if site is _UNDECIDED:
        site = arming_site() if wants_query_site(declared_mode) else None
        context.attributes[key] = site
    if site is not None:
        profile.query_site = site


def _mode_of(loadopt: Any, strategy_mode: str) -> str:
    """The declared mode of a loader: a raiseload_* option's strategy is
    the raising one (strict); the other options' mode is their own."""
    if isinstance(loadopt, ArmedElement) and strategy_mode != RAISE:
        return loadopt.mode
    return strategy_mode


@RelationshipProperty.strategy_for(lazy="nplus1loader")
@RelationshipProperty.strategy_for(lazy="nplus1loader_raise")
class ArmedRelationshipLoader(_compat.LazyLoader):  # type: ignore[misc]
    """A lazy loader whose armed instances batch-load (or raise)."""

    __slots__ = ("_nplus1_mode",)

    def __init__(self, parent: Any, strategy_key: Any) -> None:
        super().__init__(parent, strategy_key)
        self._nplus1_mode = RAISE if strategy_key == REL_KEYS[RAISE] else LOAD
        # In raise mode SQLAlchemy's lazy="raise" rules decide *when* to
        # raise (never while flushing or for backref bookkeeping).
        self._raise_always = self._nplus1_mode == RAISE  # type: ignore[misc]  # LazyLoader's slot

    def _invoke_raise_load(self, state: Any, passive: Any, lazy: Any) -> None:
        raise strict_error(state, self.parent_property, RELATIONSHIP)

    def setup_query(
        self,
        compile_state: Any,
        query_entity: Any,
        path: Any,
        loadopt: Any,
        adapter: Any,
        **kw: Any,
    ) -> None:
        arm, key, under = _decide(self.parent_property, loadopt, compile_state.attributes, path)
        if not arm:
            _compat.get_strategy(self.parent_property, key).setup_query(
                compile_state, query_entity, path, under, adapter, **kw
            )

    def create_row_processor(
        self,
        context: Any,
        query_entity: Any,
        path: Any,
        loadopt: Any,
        mapper: Any,
        result: Any,
        adapter: Any,
        populators: Any,
    ) -> None:
        arm, key, under = _decide(self.parent_property, loadopt, context.attributes, path)
        if not arm:
            _compat.get_strategy(self.parent_property, key).create_row_processor(
                context, query_entity, path, under, mapper, result, adapter, populators
            )
            return
        # No nplus1 option here: the mapping's own lazy="nplus1loader" (or an
        # option that names no strategy, defaultload()) arms the attribute
        # with the defaults of nplus1loader_rels() on it.
        option = isinstance(loadopt, ArmedElement)
        loader = ArmedLoader(
            self,
            _mode_of(loadopt, self._nplus1_mode),
            loadopt.nested if option else self._nplus1_mode != RAISE,
            loadopt.chunk_size if option else None,
            _compat.loader_criteria(context),
        )
        _install(context, path, mapper, loader, populators)
        if not option and loader.mode != RAISE:
            _refresh_as_anchored(context, path, mapper, populators)


def _refresh_as_anchored(context: Any, path: Any, mapper: Any, populators: Any) -> None:
    """What the anchor of ``nplus1loader_rels(User.articles)`` adds, for a
    relationship the mapping arms: expired columns of the instances refresh
    in batches (unless an nplus1 option of the query anchors them itself)."""
    pk = mapper.get_property_by_column(mapper.primary_key[0])
    anchor = context.attributes.get(_compat.loader_keys(path[pk])[0])
    if isinstance(anchor, ArmedElement) and anchor.anchor:
        return
    profile = profile_for(context, path, mapper, None, populators)
    if profile.refresh_mode is None:
        profile.refresh_mode = LOAD


@ColumnProperty.strategy_for(nplus1loader=LOAD)
@ColumnProperty.strategy_for(nplus1loader=RAISE)
class ArmedColumnLoader(_compat.DeferredColumnLoader):  # type: ignore[misc]
    """A deferred-column loader whose armed instances batch-load (or
    raise).  Subclassing the stock deferred loader keeps its rules: the
    primary key and discriminator are always loaded, a refresh loads what it
    was asked for."""

    __slots__ = ("_nplus1_mode",)

    def __init__(self, parent: Any, strategy_key: Any) -> None:
        super().__init__(parent, strategy_key)
        self._nplus1_mode = RAISE if strategy_key == COL_KEYS[RAISE] else LOAD

    def setup_query(
        self,
        compile_state: Any,
        query_entity: Any,
        path: Any,
        loadopt: Any,
        adapter: Any,
        column_collection: Any,
        memoized_populators: Any,
        **kw: Any,
    ) -> None:
        prop = self.parent_property
        arm, key, under = _decide(prop, loadopt, compile_state.attributes, path)
        if not arm:
            _compat.get_strategy(prop, key).setup_query(
                compile_state,
                query_entity,
                path,
                under,
                adapter,
                column_collection,
                memoized_populators,
                **kw,
            )
            if getattr(loadopt, "anchor", False) and prop in memoized_populators:
                # The anchor column must reach create_row_processor, where it
                # adds the populator that remembers the instance is armed.
                del memoized_populators[prop]
            return
        super().setup_query(
            compile_state,
            query_entity,
            path,
            loadopt,
            adapter,
            column_collection,
            memoized_populators,
            **kw,
        )
        if memoized_populators.get(prop) in _compat.DEFERRED_MARKERS:
            # Without its marker the column goes through create_row_processor
            # below, where the column is armed instead of SQLAlchemy's hook.
            del memoized_populators[prop]

    def create_row_processor(
        self,
        context: Any,
        query_entity: Any,
        path: Any,
        loadopt: Any,
        mapper: Any,
        result: Any,
        adapter: Any,
        populators: Any,
    ) -> None:
        prop = self.parent_property
        if getattr(loadopt, "anchor", False):
            _remember_armed(context, path, mapper, loadopt, populators)
        arm, key, under = _decide(prop, loadopt, context.attributes, path)
        if not arm:
            _compat.get_strategy(prop, key).create_row_processor(
                context, query_entity, path, under, mapper, result, adapter, populators
            )
            return
        only = _compat.only_load_props(context) if context.refresh_state else None
        if only and self.key in only:
            _compat.get_strategy(prop, _UNDEFERRED).create_row_processor(
                context, query_entity, path, loadopt, mapper, result, adapter, populators
            )
            return
        nested = loadopt.nested if isinstance(loadopt, ArmedElement) else True
        chunk = loadopt.chunk_size if isinstance(loadopt, ArmedElement) else None
        loader = ArmedLoader(
            self,
            _mode_of(loadopt, self._nplus1_mode),
            nested,
            chunk,
            _compat.loader_criteria(context),
        )
        _install(context, path, mapper, loader, populators)


for _mode, _key in REL_KEYS.items():
    _compat.register_option_label(_key, "raiseload_rel" if _mode == RAISE else "nplus1loader_rels")
for _mode, _key in COL_KEYS.items():
    _compat.register_option_label(_key, "raiseload_col" if _mode == RAISE else "nplus1loader_cols")
