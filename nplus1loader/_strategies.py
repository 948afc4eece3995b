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

from . import _sqla
from ._arming import ensure_expire_listener, profile_for
from ._batch import checked_chunk_size
from ._modes import LOAD, RAISE
from ._plan import COL_KEYS, OUR_KEYS, REL_KEYS, ArmedElement
from ._report import RELATIONSHIP, arming_site, strict_error, wants_query_site
from ._touch import ArmedLoader, ensure_refresh_hook

_UNDEFERRED = (("deferred", False), ("instrument", True))
_UNDECIDED = object()
#: The key of a strategy's decision (:func:`_decide`) for one path, kept in
#: the compile memo (``_sqla.compile_memo``).
_DECIDED = "nplus1loader.decided"
#: The key of a strategy's loader for one path, kept there too.
_LOADER = "nplus1loader.loader"
#: The chunk size of an attribute the mapping arms (``lazy="nplus1loader"``,
#: no option): the default, from the one place that applies it.
_MAPPING_CHUNK_SIZE = checked_chunk_size(None, "lazy='nplus1loader'")


def _underlying(prop: Any, loadopt: ArmedElement, attributes: Any, path: Any) -> Any:
    """The option SQLAlchemy would have used for this attribute had no
    nplus1 option been given (None: the mapping's default)."""
    if loadopt.underlying is not None:
        return loadopt.underlying
    _, wildcard_key, default_key = _sqla.loader_keys(prop_path=path[prop])
    found = attributes.get(wildcard_key)
    if found is None:
        found = attributes.get(default_key)
    return found


def _decide(prop: Any, loadopt: Any, attributes: Any, path: Any) -> tuple[bool, Any, Any]:
    """(arm?, strategy key to delegate to, option to delegate with)."""
    if isinstance(prop, ColumnProperty) and set(prop.columns) & _sqla.should_undefer_in_wildcard(
        mapper=prop.parent
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
        if _sqla.extra_criteria(loadopt=under):
            # lazyload(User.addresses.and_(...)): criteria for that one
            # relationship; SQLAlchemy's own lazy loader applies them.
            return False, under.strategy or prop.strategy_key, under
    if not isinstance(loadopt, ArmedElement) or not loadopt.wild:
        return True, None, None
    under = _underlying(prop, loadopt, attributes, path)
    key = under.strategy if under is not None and under.strategy else prop.strategy_key
    if key in OUR_KEYS:
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


def _install(context: Any, path: Any, mapper: Any, loader: ArmedLoader, populators: Any) -> None:
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
        _sqla.expire_on_populate_existing(populators=populators, key=loader.key)


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


def _armed_loader(
    strategy: Any, loadopt: Any, context: Any, path: Any, *, nested: bool
) -> ArmedLoader:
    """The loader that arms ``strategy``'s attribute for this query: the
    option's settings, else (``lazy="nplus1loader"`` in the mapping) the
    defaults, ``nested`` among them.  A raiseload_* option's strategy is the
    raising one (strict); the other options' mode is their own.

    Every execution of one compiled statement gets the same loader object
    (kept in the compile state's attributes) while its loader criteria are
    the very same objects: then its profile is told alike the one its
    option registered by identity, without comparing signatures."""
    criteria = _sqla.loader_criteria(context=context)
    key = (_LOADER, strategy, path)
    memo = _sqla.compile_memo(context=context)
    found: ArmedLoader | None = memo.get(key)
    if found is not None and found.has_criteria(criteria):
        return found
    strategy_mode = strategy.nplus1_mode
    option = isinstance(loadopt, ArmedElement)
    memo[key] = found = ArmedLoader(
        strategy,
        mode=loadopt.mode if option and strategy_mode != RAISE else strategy_mode,
        strict=strategy_mode == RAISE,
        nested=loadopt.nested if option else nested,
        chunk_size=loadopt.chunk_size if option else _MAPPING_CHUNK_SIZE,
        criteria=criteria,
    )
    return found


class _Arming:
    """What both of our strategies do with SQLAlchemy's two hooks: decide
    per attribute (:func:`_decide`), hand an attribute it does not arm on to
    the strategy SQLAlchemy would have used, and arm the others.  The
    subclasses say what arming adds at each hook (:meth:`arm_setup`,
    :meth:`arm_rows`)."""

    __slots__ = ()

    nplus1_mode: str
    parent_property: Any

    def setup_query(
        self,
        compile_state: Any,
        query_entity: Any,
        path: Any,
        loadopt: Any,
        adapter: Any,
        **kw: Any,
    ) -> None:
        # A column's column_collection and memoized_populators come by
        # keyword, in ``kw``, as SQLAlchemy passes them.
        arm, key, under = decided = _decide(
            self.parent_property, loadopt, compile_state.attributes, path
        )
        # Kept for every execution of this compiled statement (its compile
        # memo): create_row_processor reads the decision there instead of
        # making it again, once per execution.
        compile_state.attributes[(_DECIDED, self, path)] = decided
        if arm:
            self.arm_setup(compile_state, query_entity, path, loadopt, adapter, kw)
            return
        _sqla.delegate_setup_query(
            strategy=_sqla.get_strategy(prop=self.parent_property, key=key),
            compile_state=compile_state,
            query_entity=query_entity,
            path=path,
            loadopt=under,
            adapter=adapter,
            kw=kw,
        )
        self.handed_on_setup(loadopt, kw)

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
        arm, key, under = self.decide_rows(context, path, loadopt, mapper, populators)
        if arm:
            self.arm_rows(context, path, loadopt, mapper, populators)
            return
        _sqla.delegate_row_processor(
            strategy=_sqla.get_strategy(prop=self.parent_property, key=key),
            context=context,
            query_entity=query_entity,
            path=path,
            loadopt=under,
            mapper=mapper,
            result=result,
            adapter=adapter,
            populators=populators,
        )

    def decide_rows(
        self, context: Any, path: Any, loadopt: Any, mapper: Any, populators: Any
    ) -> tuple[bool, Any, Any]:
        decided: tuple[bool, Any, Any] | None = _sqla.compile_memo(context=context).get(
            (_DECIDED, self, path)
        )
        if decided is None:
            decided = _decide(self.parent_property, loadopt, context.attributes, path)
        return decided

    def arm_setup(
        self,
        compile_state: Any,
        query_entity: Any,
        path: Any,
        loadopt: Any,
        adapter: Any,
        kw: dict[str, Any],
    ) -> None:
        """At compile time, for an attribute this query arms."""

    def handed_on_setup(self, loadopt: Any, kw: dict[str, Any]) -> None:
        """At compile time, after handing an attribute on."""

    def arm_rows(self, context: Any, path: Any, loadopt: Any, mapper: Any, populators: Any) -> None:
        raise NotImplementedError


@RelationshipProperty.strategy_for(lazy="nplus1loader")
@RelationshipProperty.strategy_for(lazy="nplus1loader_raise")
class ArmedRelationshipLoader(_Arming, _sqla.RaisingLazyLoader):
    """A lazy loader whose armed instances batch-load (or raise)."""

    __slots__ = ("nplus1_mode",)

    def __init__(self, parent: Any, strategy_key: Any) -> None:
        super().__init__(parent, strategy_key)
        self.nplus1_mode = RAISE if strategy_key == REL_KEYS[RAISE] else LOAD
        if self.nplus1_mode == RAISE:
            # SQLAlchemy's lazy="raise" rules decide *when* to raise (never
            # while flushing or for backref bookkeeping).
            self.raise_always()

    def raise_error(self, state: Any) -> Exception:
        prop = self.parent_property
        return strict_error(
            state.class_.__name__, prop.key, RELATIONSHIP, _sqla.load_path_of(state), prop
        )

    def arm_rows(self, context: Any, path: Any, loadopt: Any, mapper: Any, populators: Any) -> None:
        # No nplus1 option here: the mapping's own lazy="nplus1loader" (or an
        # option that names no strategy, defaultload()) arms the attribute
        # with the defaults of nplus1loader_rels() on it.
        loader = _armed_loader(self, loadopt, context, path, nested=self.nplus1_mode != RAISE)
        _install(context, path, mapper, loader, populators)
        if not isinstance(loadopt, ArmedElement) and loader.mode != RAISE:
            _refresh_as_anchored(context, path, mapper, populators)


def _refresh_as_anchored(context: Any, path: Any, mapper: Any, populators: Any) -> None:
    """What the anchor of ``nplus1loader_rels(User.articles)`` adds, for a
    relationship the mapping arms: expired columns of the instances refresh
    in batches (unless an nplus1 option of the query anchors them itself)."""
    pk = mapper.get_property_by_column(mapper.primary_key[0])
    anchor = context.attributes.get(_sqla.loader_keys(prop_path=path[pk])[0])
    if isinstance(anchor, ArmedElement) and anchor.anchor:
        return
    profile = profile_for(context, path, mapper, _MAPPING_CHUNK_SIZE, populators)
    if profile.refresh_mode is None:
        profile.refresh_mode = LOAD


@ColumnProperty.strategy_for(nplus1loader=LOAD)
@ColumnProperty.strategy_for(nplus1loader=RAISE)
class ArmedColumnLoader(_Arming, _sqla.DeferredColumnLoader):  # type: ignore[misc]
    """A deferred-column loader whose armed instances batch-load (or
    raise).  Subclassing the stock deferred loader keeps its rules: the
    primary key and discriminator are always loaded, a refresh loads what it
    was asked for."""

    __slots__ = ("nplus1_mode",)

    def __init__(self, parent: Any, strategy_key: Any) -> None:
        super().__init__(parent, strategy_key)
        self.nplus1_mode = RAISE if strategy_key == COL_KEYS[RAISE] else LOAD

    def arm_setup(
        self,
        compile_state: Any,
        query_entity: Any,
        path: Any,
        loadopt: Any,
        adapter: Any,
        kw: dict[str, Any],
    ) -> None:
        # The stock deferred loader's own setup, then without its marker the
        # column goes through create_row_processor, where it is armed
        # instead of SQLAlchemy's hook.
        _sqla.DeferredColumnLoader.setup_query(  # type: ignore[attr-defined]
            self, compile_state, query_entity, path, loadopt, adapter, **kw
        )
        _sqla.undo_deferred_marker(
            memoized_populators=kw["memoized_populators"], prop=self.parent_property, always=False
        )

    def handed_on_setup(self, loadopt: Any, kw: dict[str, Any]) -> None:
        if getattr(loadopt, "anchor", False):
            # The anchor column must reach create_row_processor, where it
            # adds the populator that remembers the instance is armed.
            _sqla.undo_deferred_marker(
                memoized_populators=kw["memoized_populators"],
                prop=self.parent_property,
                always=True,
            )

    def decide_rows(
        self, context: Any, path: Any, loadopt: Any, mapper: Any, populators: Any
    ) -> tuple[bool, Any, Any]:
        if getattr(loadopt, "anchor", False):
            _remember_armed(context, path, mapper, loadopt, populators)
        arm, key, under = super().decide_rows(context, path, loadopt, mapper, populators)
        only = _sqla.only_load_props(context=context) if arm and context.refresh_state else None
        if only and self.parent_property.key in only:
            # A refresh asking for this very column loads it.
            return False, _UNDEFERRED, loadopt
        return arm, key, under

    def arm_rows(self, context: Any, path: Any, loadopt: Any, mapper: Any, populators: Any) -> None:
        _install(
            context,
            path,
            mapper,
            _armed_loader(self, loadopt, context, path, nested=True),
            populators,
        )


for _mode, _key in REL_KEYS.items():
    _sqla.register_option_label(
        strategy_key=_key, label="raiseload_rel" if _mode == RAISE else "nplus1loader_rels"
    )
for _mode, _key in COL_KEYS.items():
    _sqla.register_option_label(
        strategy_key=_key, label="raiseload_col" if _mode == RAISE else "nplus1loader_cols"
    )
