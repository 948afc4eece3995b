"""The SQLAlchemy boundary: every private SQLAlchemy name *and mechanism*
nplus1loader relies on, in one module.

SQLAlchemy offers no public API for third-party loader strategies, so
nplus1loader leans on ORM internals: private names (``_LazyLoader``,
``_get_strategy``), and mechanisms that use public-looking names in ways
only the ORM's own code does (the row populators' lists, the attribute
implementation's ``set_committed_value``, an instance's ``load_options``,
``committed_state`` and ``callables``, the cache-key traversal of an
option, the commit bookkeeping of a loaded column).  Each lives here,
behind a typed function with keyword-only parameters and a signature we
own, so that a new SQLAlchemy release is one file to fix, and
``tests/sqla/test_boundary.py`` fails when another module reaches past it.

Names are resolved at import, by feature rather than by version: SQLAlchemy
2.1 renamed most ORM internals with a leading underscore (sqlalchemy#10497),
so each lookup tries the 2.1 name first and falls back to the 2.0 one, and
every attribute the functions below use is checked to exist: an
unsupported SQLAlchemy fails at ``import nplus1loader``, naming what moved,
not at the first touch in production.

The exception to keyword-only: the readers of per-instance state that the
peer scans and the row populator call once per instance (``*_of``) are
C-level attribute getters, taking the state positionally.

Checked against SQLAlchemy 2.0.59 and 2.1.9.
"""

from __future__ import annotations

import inspect as _inspect
import sys
import weakref
from collections.abc import Callable, Iterable, Sequence
from operator import attrgetter
from types import FrameType
from typing import Any

from sqlalchemy import inspect
from sqlalchemy import util as _sa_util
from sqlalchemy.engine.result import ChunkedIteratorResult
from sqlalchemy.orm import InstanceState, Load, Session
from sqlalchemy.orm import base as _orm_base
from sqlalchemy.orm import context as _orm_context
from sqlalchemy.orm import loading as _orm_loading
from sqlalchemy.orm import path_registry as _orm_path_registry
from sqlalchemy.orm import strategies as _orm_strategies
from sqlalchemy.orm import strategy_options as _orm_strategy_options
from sqlalchemy.orm.interfaces import StrategizedProperty
from sqlalchemy.orm.util import AliasedInsp, LoaderCriteriaOption
from sqlalchemy.sql import Select
from sqlalchemy.sql.cache_key import HasCacheKey
from sqlalchemy.sql.visitors import InternalTraversal

# ---------------------------------------------------------------- resolving


def _first(module: Any, *names: str) -> Any:
    for name in names:
        found = getattr(module, name, None)
        if found is not None:
            return found
    raise ImportError(
        f"none of {names} found in {module.__name__}: unsupported SQLAlchemy "
        "(nplus1loader supports sqlalchemy>=2.0,<2.2)"
    )


def _require(owner: Any, *names: str) -> None:
    """Fail at import when ``owner`` lacks one of ``names``: the private
    attributes the functions below read at run time."""
    missing = [name for name in names if not hasattr(owner, name)]
    if missing:
        raise ImportError(
            f"{getattr(owner, '__name__', owner)} has no {', '.join(missing)}: unsupported "
            "SQLAlchemy (nplus1loader supports sqlalchemy>=2.0,<2.2)"
        )


#: Base classes for our strategies (orm/strategies.py, renamed in 2.1).
LazyLoader: type = _first(_orm_strategies, "_LazyLoader", "LazyLoader")
DeferredColumnLoader: type = _first(
    _orm_strategies, "_DeferredColumnLoader", "DeferredColumnLoader"
)


class RaisingLazyLoader(LazyLoader):  # type: ignore[misc]
    """SQLAlchemy's lazy loader, with the error of its ``lazy="raise"``
    mode ours (:meth:`raise_error`) and its rules of *when* to raise
    (never during flush or backref bookkeeping) switched on by
    :meth:`raise_always`."""

    __slots__ = ()

    def raise_always(self) -> None:
        self._raise_always = True  # type: ignore[misc]  # _LazyLoader's slot

    def raise_error(self, state: InstanceState[Any]) -> Exception:
        raise NotImplementedError

    def _invoke_raise_load(self, state: Any, passive: Any, lazy: Any) -> None:
        raise self.raise_error(state)


#: The markers a column strategy leaves in ``memoized_populators`` when it
#: does not load the column (orm/base.py).
DEFERRED_MARKERS = (
    _orm_base._DEFER_FOR_STATE,
    _orm_base._RAISE_FOR_STATE,
    _orm_base._SET_DEFERRED_EXPIRED,
)

#: The loader-option base class that chained methods are attached to.
_AbstractLoad: type = _orm_strategy_options._AbstractLoad
_MapperEntity: type = _first(_orm_context, "_MapperEntity")
_QueryContext: Any = _orm_context.QueryContext
_ORMCompileState: Any = _first(_orm_context, "_ORMCompileState", "ORMCompileState")
_PostLoad: Any = _first(_orm_loading, "_PostLoad", "PostLoad")
_PropRegistry: Any = _first(_orm_path_registry, "_PropRegistry", "PropRegistry")

_require(LazyLoader, "_load_for_state", "_simple_lazy_clause", "_invoke_raise_load")
_require(DeferredColumnLoader, "_load_for_state")
_require(StrategizedProperty, "_get_strategy")
_require(InstanceState, "_deleted", "committed_state", "callables", "load_options", "load_path")
_require(_PropRegistry, "_loader_key", "_wildcard_path_loader_key", "_default_path_loader_key")
_require(_PostLoad, "callable_for_path")
_require(_QueryContext, "default_load_options")
_require(_ORMCompileState, "default_compile_options")
_require(Session, "_autoflush")
_require(AliasedInsp, "_adapt_element")
_require(HasCacheKey, "_generate_cache_key")
_require(Select, "_generate", "_update_compile_options")
if not hasattr(Select, "_add_compile_state_func"):  # 2.1; 2.0 spells it so
    _require(Select, "_add_context_option")


# ----------------------------------------------------------- our strategies


def delegate_setup_query(
    *,
    strategy: Any,
    compile_state: Any,
    query_entity: Any,
    path: Any,
    loadopt: Any,
    adapter: Any,
    kw: dict[str, Any],
) -> None:
    """Hand ``setup_query`` on to another strategy of the same attribute
    (the one SQLAlchemy would have used), with the arguments our strategy
    was called with (a column strategy's ``column_collection`` and
    ``memoized_populators`` travel in ``kw``, as SQLAlchemy passes them)."""
    strategy.setup_query(compile_state, query_entity, path, loadopt, adapter, **kw)


def delegate_row_processor(
    *,
    strategy: Any,
    context: Any,
    query_entity: Any,
    path: Any,
    loadopt: Any,
    mapper: Any,
    result: Any,
    adapter: Any,
    populators: Any,
) -> None:
    """Hand ``create_row_processor`` on to another strategy of the same
    attribute, as :func:`delegate_setup_query`."""
    strategy.create_row_processor(
        context, query_entity, path, loadopt, mapper, result, adapter, populators
    )


def get_strategy(*, prop: Any, key: tuple[Any, ...]) -> Any:
    """The (cached) strategy instance of ``prop`` for a strategy key."""
    return prop._get_strategy(key)


def load_for_state(
    *, strategy: Any, state: InstanceState[Any], passive: Any, extra_options: Any = ()
) -> Any:
    """A strategy's own one-instance load (``LoaderStrategy._load_for_state``);
    a lazy loader adds ``extra_options`` to its statement."""
    if extra_options:
        return strategy._load_for_state(state, passive, extra_options=extra_options)
    return strategy._load_for_state(state, passive)


def expire_on_populate_existing(*, populators: Any, key: str) -> None:
    """With ``populate_existing()``, drop a loaded value of ``key`` from the
    rows' instances, as SQLAlchemy's own lazy loader does for an attribute
    it dispatches at class level (the ``"expire"`` populators)."""
    populators["expire"].append((key, False))


def add_new_row_populator(
    *, populators: Any, key: str, populate: Callable[[Any, Any, Any], None]
) -> Callable[[Callable[..., Any]], None]:
    """Call ``populate(state, dict_, row)`` for every instance the rows
    create, or whose ``key`` expired (the ``"new"`` populators).  Returns
    a function that puts another callable in its place, for the rows that
    follow: ``loading._instance`` reads the list afresh for every row.

    The list holds ``populate`` weakly (a proxy, called at C speed): the
    caller keeps it alive for as long as the rows are read, in the query
    context (which ``loading._instance`` holds as long as the list).  So a
    populator that replaces itself, holding the returned function and with
    it the list, makes no reference cycle: a cycle would keep everything
    it reaches (the instances of the session's log among them) until the
    next garbage collection, and give the collector work on every query."""
    new = populators["new"]
    entry = (key, weakref.proxy(populate))
    new.append(entry)

    def replace(other: Callable[..., Any]) -> None:
        for position, found in enumerate(new):
            if found is entry:
                new[position] = (key, other)
                return

    return replace


def undo_deferred_marker(*, memoized_populators: Any, prop: Any, always: bool) -> None:
    """Make the column of ``prop`` go through ``create_row_processor``,
    where we arm it, rather than SQLAlchemy's memoized deferred handling:
    drop its marker (``always``: whatever SQLAlchemy memoized)."""
    found = memoized_populators.get(prop)
    if found is not None and (always or found in DEFERRED_MARKERS):
        del memoized_populators[prop]


def register_post_load(
    *, context: Any, path: Any, mapper: Any, token: Any, fn: Callable[..., None]
) -> None:
    """Call ``fn(context, path, states, load_keys)`` once the rows of
    ``path`` are processed, with ``(state, overwrite)`` for every instance
    they reached, those already in the session included (``overwrite``
    False), without the partial population (and ``refresh`` event) that a
    row populator for existing instances costs (``PostLoad``)."""
    _PostLoad.callable_for_path(
        context, load_path_for(context=context, path=path), mapper, token, fn
    )


def should_undefer_in_wildcard(*, mapper: Any) -> Any:
    """Columns SQLAlchemy always loads, even under ``defer('*')``: the
    primary key and the polymorphic discriminator."""
    return mapper._should_undefer_in_wildcard


def register_option_label(*, strategy_key: tuple[Any, ...], label: str) -> None:
    """SQLAlchemy 2.1 asserts that every strategy has a label for its error
    messages (``_STRATEGY_FN_LABELS``); register ours so a conflict between
    options raises a readable ``InvalidRequestError`` instead."""
    labels = getattr(_orm_strategy_options, "_STRATEGY_FN_LABELS", None)
    if labels is not None:
        labels.setdefault((strategy_key, None), label)


# ------------------------------------------------------------- our options


def attach_loader_method(*, name: str, method: Callable[..., Any]) -> None:
    """Make ``joinedload(X.y).<name>(...)`` chainable, as SQLAlchemy's own
    options are: every option object derives from ``_AbstractLoad``."""
    setattr(_AbstractLoad, name, method)


class OptionBase:
    """Mixin for our loader option, which never changes once it is made:
    it answers the SQLAlchemy hooks that apply an option, copy it, or choose
    between two of them.

    * ``process_compile_state`` / ``process_compile_state_replaced_entities``
      apply it at compile time: both call :meth:`apply` with the ORM
      entities the statement selects.
    * ``_clone`` / ``_copy_internals``, called when a statement carrying the
      option is copied (``cloned_traverse``, ``params()``): the option itself,
      as for ``sql.base.Immutable``.  The inherited ``ExecutableOption._clone``
      copies ``__dict__``, which a class with ``__slots__`` has not got.
    * ``_adapt_cached_option_to_uncached_option``, called per execution that
      found its statement in the compiled cache: which of the two equal
      options (the cached statement's, the executed statement's) the loaded
      instances carry as ``state.load_options``.  SQLAlchemy's own options
      with a path (``Load``) keep the cached one, whose entities (the
      ``aliased()`` classes included) are those of the cached paths that the
      instances are stamped with; other options the executed one.  The
      subclass says which kind it is with :meth:`keeps_cached_form`.
    * its cache key: the fields :func:`declare_cache_key` names; every
      subclass gets a traversal of its own, so its key differs from its
      base's (the option of ``enable()`` is not a written one).
    """

    __slots__ = ()

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        inherited = getattr(cls, "_traverse_internals", None)
        if inherited is not None and "_traverse_internals" not in cls.__dict__:
            setattr(cls, "_traverse_internals", list(inherited))  # noqa: B010

    def apply(self, compile_state: Any, entities: list[Any]) -> None:
        raise NotImplementedError

    def keeps_cached_form(self) -> bool:
        """Whether the option refers to entities by path (see above)."""
        return False

    def process_compile_state(self, compile_state: Any) -> None:
        self.apply(compile_state, mapper_entities(compile_state=compile_state))

    def process_compile_state_replaced_entities(
        self, compile_state: Any, mapper_entities: Sequence[Any]
    ) -> None:
        self.apply(compile_state, list(mapper_entities))

    def _clone(self, **kw: Any) -> Any:
        return self

    def _copy_internals(self, **kw: Any) -> None:
        pass

    def _adapt_cached_option_to_uncached_option(self, context: Any, uncached_opt: Any) -> Any:
        return self if self.keeps_cached_form() else uncached_opt


def declare_cache_key(
    cls: type, *, keyed: Sequence[str] = (), clauses: Sequence[str] = (), plain: Sequence[str] = ()
) -> None:
    """Give ``cls`` a cache key made of its fields: ``keyed`` hold tuples of
    objects with cache keys of their own (entities, loader options: two
    equal ``aliased(User)`` give equal keys), ``clauses`` one SQL element
    each, ``plain`` hashable values."""
    cls._traverse_internals = (  # type: ignore[attr-defined]
        [(name, InternalTraversal.dp_has_cache_key_list) for name in keyed]
        + [(name, InternalTraversal.dp_clauseelement) for name in clauses]
        + [(name, InternalTraversal.dp_plain_obj) for name in plain]
    )


def apply_option(*, option: Any, compile_state: Any) -> None:
    """Apply another loader option (the chain an nplus1 option is chained
    from) to the compile state."""
    option.process_compile_state(compile_state)


def mark_implicitly_boolean(element_class: type) -> None:
    """Declare a custom SQL element a comparison (``_is_implicitly_boolean``),
    so dialects without a boolean type do not render it as ``x = 1``."""
    element_class._is_implicitly_boolean = True  # type: ignore[attr-defined]


class LoadElementLike:
    """The part of SQLAlchemy's ``_LoadElement`` interface that the ORM
    reads from what sits in ``compile_state.attributes`` for an attribute:
    our plan's elements quack like it.  ``_reconcile_to_other = True`` lets
    any later option for the same attribute take the place back, as a later
    SQLAlchemy option would."""

    __slots__ = ()

    propagate_to_loaders = True
    is_opts_only = False
    is_token_strategy = False
    is_class_strategy = False
    _reconcile_to_other = True
    _extra_criteria = ()

    def _to_option_method_string(self) -> str:
        return "nplus1loader option"


def option_registry(*, compile_state: Any, kind: type[dict[Any, Any]]) -> dict[Any, Any]:
    """The compile state's registry of per-attribute options (which
    SQLAlchemy reads and writes by key only), made an instance of ``kind``
    once per compilation."""
    attributes = compile_state.attributes
    if not isinstance(attributes, kind):
        attributes = compile_state.attributes = kind(attributes)
    return attributes


def loader_keys(*, prop_path: Any) -> tuple[Any, Any, Any]:
    """The three keys SQLAlchemy looks up, in order, to pick the strategy of
    one attribute at one path: exact, entity wildcard, global default
    (``StrategizedProperty._get_context_loader``)."""
    return (
        prop_path._loader_key,
        prop_path._wildcard_path_loader_key,
        prop_path._default_path_loader_key,
    )


def extra_criteria(*, loadopt: Any) -> tuple[Any, ...]:
    """The criteria of ``lazyload(User.addresses.and_(...))`` (empty when
    there are none, or no option)."""
    return tuple(getattr(loadopt, "_extra_criteria", None) or ())


def options_equal(*, one: Any, other: Any) -> bool:
    """Whether two loader options do the same: the same object, or equal
    cache keys with equal bound values (``with_loader_criteria`` carries
    its values as bound parameters)."""
    if one is other:
        return True
    if type(one) is not type(other):
        return False
    try:
        first = one._generate_cache_key()
        second = other._generate_cache_key()
    except Exception:  # an option that cannot say what it does
        return False
    if first is None or second is None or first.key != second.key:
        return False
    return [b.effective_value for b in first.bindparams] == [
        b.effective_value for b in second.bindparams
    ]


def is_loader_criteria(option: Any) -> bool:
    return isinstance(option, LoaderCriteriaOption)


# ---------------------------------------------- compile state, query context


def mapper_entities(*, compile_state: Any) -> list[Any]:
    """The ORM entities a statement selects (``select(User, Address)``)."""
    return [e for e in getattr(compile_state, "_entities", ()) if isinstance(e, _MapperEntity)]


def entity_path(*, query_entity: Any) -> Any:
    """The PathRegistry of a lead entity of the query."""
    return query_entity.path


def current_path(*, compile_state: Any) -> Any:
    """The path a lazy load or refresh was started from (empty otherwise)."""
    return compile_state.compile_options._current_path


def is_refresh(*, compile_state: Any) -> bool:
    """Whether the statement refreshes columns of existing instances (a
    deferred or expired column load, ``Session.refresh``)."""
    return bool(compile_state.compile_options._for_refresh_state)


def only_load_props(*, context: Any) -> Any:
    """In a refresh (``session.refresh(obj, ['a'])``), the attributes asked for."""
    return context.query._compile_options._only_load_props


def natural_path(path: Any) -> tuple[Any, ...]:
    return tuple(path.natural_path)


def compile_memo(*, context: Any) -> dict[Any, Any]:
    """What lives as long as the compiled statement a query execution
    runs: its compile state's ``attributes``, which the loader strategies'
    ``setup_query`` writes to and every execution's ``QueryContext`` copies.
    What a strategy settles once per compiled statement is kept there,
    under keys of ours, instead of being worked out again per execution."""
    return context.compile_state.attributes  # type: ignore[no-any-return]


def rows_reach_one_path(*, context: Any) -> bool:
    """Whether every instance this query execution creates stays at the
    path it was created at: one ORM entity, and no joined eager loading
    (``joinedload()``, ``contains_eager()``), which can bring an instance at
    a second path of the same execution, whereupon SQLAlchemy moves its
    ``load_path`` (to the last path seen on 2.0, the shallowest on 2.1).

    All of it is settled when the statement compiles: the answer is kept
    in its :func:`compile_memo`."""
    memo = compile_memo(context=context)
    found: bool | None = memo.get(_ONE_PATH_KEY)
    if found is None:
        found = memo[_ONE_PATH_KEY] = _rows_reach_one_path(context.compile_state)
    return found


_ONE_PATH_KEY = ("nplus1loader.rows_reach_one_path",)


def _rows_reach_one_path(compile_state: Any) -> bool:
    if compile_state.eager_joins or len(mapper_entities(compile_state=compile_state)) != 1:
        return False
    return not any(
        isinstance(key, tuple) and key and key[0] == "user_defined_eager_row_processor"
        for key in compile_state.attributes
    )


def stamp_key(path: Any) -> tuple[Any, ...]:
    """A load path as the key of the profile its instances find: its
    natural path with each mapper taken as its hierarchy's base, so that a
    refresh of a subclass's own columns, which re-stamps the instance with
    the subclass's path (``Cat`` where the query said ``Animal``), leaves it
    finding the same profile."""
    return tuple(getattr(step, "base_mapper", step) for step in path.natural_path)


def rows_reach_existing_instances(*, context: Any) -> bool:
    """Whether this query execution can hand a :func:`register_post_load`
    callback instances that were in the session before it: only with
    instances there, and not for a lazy load's statement (which SQLAlchemy,
    and a batch, run without ``invoke_all_eagers``; ``loading._instance``
    then adds only the instances it creates)."""
    return bool(context.invoke_all_eagers and len(context.session.identity_map))


def load_path_for(*, context: Any, path: Any) -> Any:
    """The path SQLAlchemy stamps as ``load_path`` on the instances the
    rows of ``path`` reach (``loading._instance_processor``: a lazy load or
    refresh prefixes the path it started from)."""
    current = context.compile_state.current_path
    return current + path if current.path else path


def stamped_key(*, context: Any, path: Any) -> tuple[Any, ...]:
    """:func:`stamp_key` of the path SQLAlchemy stamps on the instances
    this path of this query execution creates: settled at compile time,
    kept in the :func:`compile_memo`."""
    memo = compile_memo(context=context)
    cache_key = (_STAMPED_KEY, path)
    found: tuple[Any, ...] | None = memo.get(cache_key)
    if found is None:
        found = memo[cache_key] = stamp_key(load_path_for(context=context, path=path))
    return found


_STAMPED_KEY = "nplus1loader.stamped_key"


def propagated_options(*, context: Any) -> Any:
    """The options a query execution hands on to the lazy loads and
    refreshes of the instances it loads (``QueryContext.propagated_loader_options``,
    which SQLAlchemy stamps as ``state.load_options``)."""
    return context.propagated_loader_options


def loader_criteria(*, context: Any) -> tuple[Any, ...]:
    """The ``with_loader_criteria`` options among them."""
    return tuple(
        option for option in propagated_options(context=context) if is_loader_criteria(option)
    )


def query_context_of(result: Any) -> Any:
    """The ``QueryContext`` of an ORM result, what SQLAlchemy hands the
    ``refresh`` event of the instances a load refreshes: ``result.context``
    on SQLAlchemy 2.1; None for a Core result, and on 2.0, whose ORM
    result does not keep it."""
    context = getattr(result, "context", None)
    return context if isinstance(context, _QueryContext) else None


#: Whether an ORM result keeps the ``QueryContext`` of its execution
#: (``result.context``: SQLAlchemy 2.1, not 2.0), which a batch hands the
#: ``refresh`` events it fires.
_ORM_RESULTS_KEEP_CONTEXT = "context" in _inspect.signature(ChunkedIteratorResult).parameters


def batch_fires_refresh(*, mapper: Any) -> bool:
    """Whether a column batch of ``mapper`` fires ``refresh`` events: a
    listener would see an instance of it or of a subclass refreshed
    (SQLAlchemy checks the class manager of the row's mapper), and the
    batch's ORM result keeps the ``QueryContext`` the event carries."""
    return _ORM_RESULTS_KEEP_CONTEXT and any(
        bool(m.class_manager.dispatch.refresh) for m in mapper.self_and_descendants
    )


def fire_refresh(*, state: InstanceState[Any], context: Any, keys: frozenset[str]) -> None:
    """The ``refresh`` event SQLAlchemy fires after it loads ``keys`` of an
    instance already in the session (a deferred or expired column load):
    ``refresh(target, context, attrs)``, once the values are stored."""
    state.manager.dispatch.refresh(state, context, keys)


def result_tuples(result: Any) -> Any:
    """The rows of an ORM result, for reading by position.

    SQLAlchemy 2.1's own loaders read plain tuples (``_raw_all_tuples``),
    skipping the Row objects; on 2.0, and where a joined eager load repeats
    rows (which then need uniquing), Rows it is.
    """
    if getattr(result, "_unique_filter_state", None) is not None:
        # ORM loading demands uniquing (it sets this for joined eager loads
        # of collections, in both series).
        return result.unique()
    raw = getattr(result, "_raw_all_tuples", None)
    if raw is not None and getattr(result, "_post_creational_filter", None) is None:
        return raw()
    return result


def has_orm_execute_listeners(session: Any) -> bool:
    """Whether any ``do_orm_execute`` listener would see a statement the
    session runs (on the session, its class or a base class)."""
    return bool(session.dispatch.do_orm_execute)


# ------------------------------------------------------- per-instance state

#: The options an instance was loaded with, replayed by its lazy loads.
load_options_of: Callable[[InstanceState[Any]], Any] = attrgetter("load_options")
#: The path it was loaded at, against which those options apply.
load_path_of: Callable[[InstanceState[Any]], Any] = attrgetter("load_path")
#: Its per-instance loader callables, by attribute key.
loaders_of: Callable[[InstanceState[Any]], dict[str, Any]] = attrgetter("callables")
#: The committed values of attributes changed in memory, by key.
changes_of: Callable[[InstanceState[Any]], dict[str, Any]] = attrgetter("committed_state")
#: Marked for deletion and flushed, not yet committed.
is_deleted: Callable[[InstanceState[Any]], bool] = attrgetter("_deleted")

#: Where an instance's arming profile is kept: the state's own ``__dict__``
#: (InstanceState has one, SQLAlchemy memoizes there too), so it lives and
#: dies with the instance, survives ``expire()``, and is never pickled
#: (``InstanceState.__getstate__`` picks its keys).  Not ``load_options``,
#: though that would be cheaper to write: SQLAlchemy stamps it anew on
#: every refresh, and the arming would go with it.
_PROFILE_KEY = "_nplus1loader_profile"
# A class-level default of None, so that reading the profile of a state
# that has none is one C-level attribute read (``attrgetter``, no Python
# frame: it runs for every armed row of a query that finds rows already in
# the session) and never creates the ``__dict__`` of a state without one.
# The instance's own ``__dict__`` entry shadows it; InstanceState's
# ``__getstate__`` picks its keys, so neither is pickled.
if getattr(InstanceState, _PROFILE_KEY, None) is not None:  # pragma: no cover
    raise ImportError(f"nplus1loader: SQLAlchemy's InstanceState has a {_PROFILE_KEY!r}")
setattr(InstanceState, _PROFILE_KEY, None)

#: The profile stored on ``state``, or None.
stored_profile: Callable[[InstanceState[Any]], Any] = attrgetter(_PROFILE_KEY)


#: Where a session's identity map keeps the registry of its armed
#: instances (``_registry``): its own ``__dict__``, so the registry lives
#: exactly as long as the map (``expunge_all()`` and ``close()`` replace
#: it), found by one C-level ``getattr``, where a ``WeakKeyDictionary``
#: cost a Python lookup per query execution and a callback per map.
_REGISTRY_KEY = "_nplus1loader_registry"


def registry_on(identity_map: Any) -> Any:
    """The registry kept on ``identity_map``, or None."""
    return getattr(identity_map, _REGISTRY_KEY, None)


def keep_registry(*, identity_map: Any, registry: Any) -> None:
    setattr(identity_map, _REGISTRY_KEY, registry)


def store_profile(*, state: InstanceState[Any], profile: Any) -> None:
    state.__dict__[_PROFILE_KEY] = profile


def forget_profile(*, state: InstanceState[Any]) -> None:
    if getattr(state, _PROFILE_KEY, None) is not None:
        delattr(state, _PROFILE_KEY)


def install_loaders(*, state: InstanceState[Any], dict_: Any, loaders: dict[str, Any]) -> None:
    """Give ``state`` these per-instance loader callables for the keys it
    lacks, as SQLAlchemy's ``defer()`` does from a row populator."""
    callables = state.__dict__.get("callables")
    if callables is None:
        callables = state.callables = {}
    for key, loader in loaders.items():
        if key not in dict_:
            callables[key] = loader


def install_loader(*, state: InstanceState[Any], key: str, loader: Any) -> None:
    """Put one per-instance loader callable back."""
    if "callables" not in state.__dict__:
        state.callables = {}
    state.callables[key] = loader


def remove_loader(*, state: InstanceState[Any], key: str) -> None:
    state.callables.pop(key, None)


def pickled_loaders(state_dict: dict[str, Any]) -> dict[str, Any]:
    """The per-instance loader callables in what ``InstanceState``
    pickles (a copy, to change and put back)."""
    return dict(state_dict.get("callables") or {})


def set_pickled_loaders(state_dict: dict[str, Any], loaders: dict[str, Any]) -> None:
    state_dict["callables"] = loaders


def changed_in_memory(*, state: InstanceState[Any], keys: Iterable[str]) -> bool:
    """Whether any of ``keys`` was changed in memory since it was loaded."""
    committed = state.committed_state
    return bool(committed) and any(key in committed for key in keys)


def refreshable_expired(*, state: InstanceState[Any]) -> frozenset[str]:
    """The keys SQLAlchemy would refresh for this state (``_load_expired``):
    expired, not changed in memory, and loaded on unexpire."""
    manager = state.manager
    committed = state.committed_state
    return frozenset(
        k
        for k in state.expired_attributes
        if k not in committed and manager[k].impl.load_on_unexpire
    )


def settle_refreshed(state: InstanceState[Any]) -> None:
    """What SQLAlchemy's ``_load_expired`` does once a refresh loaded the
    expired attributes: none is expired any more."""
    state.expired_attributes.clear()


def set_committed_value(*, state: InstanceState[Any], key: str, value: Any) -> None:
    """Store a loaded value as the committed state of ``key``: no history,
    not dirty, pending collection changes merged in (the attribute
    implementation's ``set_committed_value``, looked up on the state)."""
    impl: Any = state.manager[key].impl
    impl.set_committed_value(state, state.dict, value)


def load_attribute(*, state: InstanceState[Any], key: str, passive: Any) -> Any:
    """Read ``key`` of ``state`` as SQLAlchemy's own loaders read a column
    they need (``Mapper._get_state_attr_by_column``): loading it if it is
    expired or deferred, or ``PASSIVE_NO_RESULT`` where ``passive`` forbids."""
    return state.manager[key].impl.get(state, state.dict, passive=passive)


def store_loaded_columns(
    rows: Iterable[Any],
    *,
    by_identity: dict[Any, InstanceState[Any]],
    keys: Sequence[str],
    npk: int,
    each: Callable[[InstanceState[Any], Sequence[str]], None] | None,
) -> None:
    """Store each row's columns ``keys`` (after its ``npk`` key columns) on
    the state of its key as committed state, except those changed in
    memory meanwhile (a deferred group may hold some); ``each`` is called
    on every state a row came back for, with the keys stored on it.

    The bookkeeping of ``InstanceState._commit`` for keys that had no
    committed value, inline: it runs once per instance of every batch.  The
    common batch, one column by a one-column key, has a loop of its own: a
    function call per row was a fifth of the time a deferred-column batch
    spends in Python.
    """
    if npk == 1 and len(keys) == 1 and each is None:
        key = keys[0]
        for identity, value in rows:
            state = by_identity.get(identity)
            if state is None:
                continue
            # state.dict, without its Python frame: the object's __dict__
            # (an object collected meanwhile has nothing left to load).
            obj = state.obj()
            if obj is None:
                continue
            dict_ = obj.__dict__
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
        return
    for row in rows:
        state = by_identity.get(row[0] if npk == 1 else tuple(row[:npk]))
        if state is None:
            continue
        dict_ = state.dict
        committed = state.committed_state
        if not committed and dict_.keys().isdisjoint(keys):
            # The common case (nothing changed, nothing there): in one step.
            dict_.update(zip(keys, row[npk:], strict=False))
            loaded: Sequence[str] = keys
        else:
            found = []
            for position, key in enumerate(keys, npk):
                if key not in dict_ and key not in committed:
                    dict_[key] = row[position]
                    found.append(key)
            loaded = found
        if loaded:
            state.expired = False
            if state.expired_attributes:
                state.expired_attributes.difference_update(loaded)
            callables = state.callables
            if callables:
                for key in loaded:
                    callables.pop(key, None)
        if each is not None:
            each(state, loaded)


def refresh_trigger(*, state: InstanceState[Any]) -> tuple[str | None, bool]:
    """Which attribute of ``state`` is being read while its expired columns
    refresh, and whether user code read it (``obj.name``) rather than
    SQLAlchemy itself (a flush reading the primary key, a lazy load reading
    a foreign key).  ``(None, False)`` when the refresh did not start from
    an attribute of ``state`` (an identity-map lookup refreshing a
    many-to-one's target).

    SQLAlchemy's expired-attribute loader is told which keys to refresh but
    not which one was read; the attribute machinery a few frames above knows
    it: ``_fire_loader_callables(state, key, passive)``, called by the
    attribute's ``get()``, called by the descriptor's ``__get__`` when user
    code reads the attribute (the same chain in 2.0 and 2.1).
    """
    frame: FrameType | None = sys._getframe(1)
    for _ in range(8):
        if frame is None:
            break
        if frame.f_code.co_name == "_fire_loader_callables":
            if frame.f_locals.get("state") is not state:
                return None, False
            key = frame.f_locals.get("key")
            getter = frame.f_back
            caller = getter.f_back if getter is not None else None
            by_user = caller is not None and caller.f_code.co_name == "__get__"
            return (key if isinstance(key, str) else None), by_user
        frame = frame.f_back
    return None, False


# ----------------------------------------------------- class-level loaders


def class_level_loader(*, mapper: Any, key: str) -> Any:
    """The loader SQLAlchemy calls for an unloaded ``key`` of ``mapper``'s
    instances that have no per-instance hook (``_AttributeImpl.callable_``,
    set by the default strategy: a lazy relationship's, a deferred
    column's), or None."""
    attribute = mapper.class_manager.get(key)
    return None if attribute is None else attribute.impl.callable_


def set_class_level_loader(*, mapper: Any, key: str, loader: Any) -> None:
    mapper.class_manager[key].impl.callable_ = loader


def expired_attribute_loader(*, mapper: Any) -> Any:
    """The per-class function SQLAlchemy calls to refresh expired columns."""
    return mapper.class_manager.expired_attribute_loader


def set_expired_attribute_loader(*, mapper: Any, loader: Any) -> None:
    mapper.class_manager.expired_attribute_loader = loader


class StockLoader:
    """SQLAlchemy's own one-instance loading of an attribute.

    The fallback of an armed loader, and what an armed instance carries
    after pickling: its peers stay behind, so it loads its attributes one
    at a time, as stock SQLAlchemy would.
    """

    __slots__ = ("is_column", "key")

    def __init__(self, key: str, is_column: bool) -> None:
        self.key = key
        self.is_column = is_column

    def __reduce__(self) -> tuple[Any, ...]:
        return (StockLoader, (self.key, self.is_column))

    def __call__(self, state: InstanceState[Any], passive: Any, extra_options: Any = ()) -> Any:
        """``extra_options``: added to a relationship's statement (the
        option that arms what it brings in)."""
        prop = state.manager.mapper.attrs[self.key]
        if self.is_column:
            stock = prop._get_strategy((("deferred", True), ("instrument", True)))
        else:
            stock = prop._get_strategy((("lazy", "select"),))
        return load_for_state(
            strategy=stock, state=state, passive=passive, extra_options=extra_options
        )


# -------------------------------------------------- statements like stock's


def lazy_strategy(*, prop: Any) -> Any:
    """The relationship's stock lazy loader (``lazy="select"``)."""
    return prop._get_strategy((("lazy", "select"),))


def lazy_clause(*, prop: Any) -> tuple[Any, dict[Any, Any]]:
    """The WHERE clause of the relationship's stock lazy load, with a bind
    parameter for each parent column it compares with, and those columns
    by the parameters' identifying keys (``_LazyLoader._simple_lazy_clause``
    and ``_bind_to_col``)."""
    strategy = lazy_strategy(prop=prop)
    criterion, _ = strategy._simple_lazy_clause
    return criterion, strategy._bind_to_col


def bind_key(bindparam: Any) -> Any:
    """The key by which :func:`lazy_clause` names a bind parameter."""
    return bindparam._identifying_key


def lazy_order_by(*, prop: Any) -> list[Any]:
    """The ORDER BY of the relationship's stock lazy load."""
    return list(lazy_strategy(prop=prop)._order_by or ())


def equated_columns(*, strategy: Any) -> dict[Any, Any]:
    """For a many-to-one lazy loader that can use the identity map
    (``use_get``), each target primary-key column's parent column."""
    equated: dict[Any, Any] = strategy._equated_columns
    return equated


def selectin_omits_join(*, prop: Any) -> bool:
    """Whether SQLAlchemy's own ``selectinload`` judges this relationship's
    join condition simple enough to select the targets by foreign key
    without joining the parent (``_SelectInLoader.omit_join``; it honours
    ``relationship(omit_join=False)``)."""
    strategy = prop._get_strategy((("lazy", "selectin"),))
    return bool(getattr(strategy, "omit_join", False))


def target_correlates_to_parent(*, prop: Any) -> bool:
    """Whether the target (a LATERAL subquery) can only be selected beside
    the parent (SQLAlchemy 2.1; never on 2.0)."""
    return bool(getattr(prop, "_target_correlates_to_parent", False))


def add_compile_state_func(*, stmt: Any, fn: Callable[[Any], None], cache_key: Any) -> Any:
    """``stmt`` with ``fn`` run on its compile state, as SQLAlchemy's own
    lazy loader adds the rule that it does not eager-load back to the parent."""
    add = getattr(stmt, "_add_compile_state_func", None)  # 2.1
    if add is None:
        add = stmt._add_context_option  # 2.0
    return add(fn, cache_key)


def reverse_lazyload(*, prop: Any) -> Callable[[Any], None]:
    """What stock lazy loading adds to a collection's SELECT: a reverse
    many-to-one that the mapping loads eagerly is loaded lazily instead
    (it would load the parent the lazy load comes from)."""

    def apply(compile_state: Any) -> None:
        for rev in prop._reverse_property:
            if (
                rev.direction.name == "MANYTOONE"
                and rev._use_get
                and not isinstance(rev.strategy, LazyLoader)
            ):
                Load._construct_for_existing_path(
                    compile_state.compile_options._current_path[rev.parent]
                ).lazyload(rev).process_compile_state(compile_state)

    return apply


def as_lazy_load(
    stmt: Any, *, state: InstanceState[Any], prop: Any, extra_options: Sequence[Any]
) -> Any:
    """``stmt`` as SQLAlchemy's own load of ``prop`` for ``state`` runs it:
    the options ``state`` was loaded with, replayed at its path, then
    ``extra_options``; the compile options of its lazy load at that path
    (``_current_path``: listeners see ``loader_strategy_path``, and replayed
    options apply relative to it), or, for a column, of its deferred-column
    load, a refresh of the row (``_for_refresh_state``: ``is_column_load``)."""
    load_options = state.load_options
    load_path = state.load_path
    for_columns = not hasattr(prop, "direction")
    if for_columns:
        path = load_path.parent if load_options else None
    elif load_options:
        path = load_path[prop]
    else:
        path = state.mapper._path_registry[prop]
    options = tuple(load_options) + tuple(extra_options)
    if options:
        stmt = stmt.options(*options)
    compile_options: dict[str, Any] = {} if path is None else {"_current_path": path}
    if for_columns:
        compile_options["_for_refresh_state"] = True
    orm_defaults = _ORMCompileState.default_compile_options
    if stmt._compile_options.isinstance(orm_defaults):
        return stmt._update_compile_options(compile_options)
    # A select() of ORM entities gets the ORM's compile options when it is
    # compiled; SQLAlchemy's own loaders build theirs with them.
    stmt = stmt._generate()
    stmt._compile_options = orm_defaults + compile_options
    return stmt


def lazy_load_execution_options(
    *, loaded_from: InstanceState[Any], identity_token: Any, autoflush: bool
) -> dict[str, Any]:
    """The execution options of a lazy load started from ``loaded_from``:
    ``lazy_loaded_from`` (what a sharded session routes by), no eager loads
    of instances already present, the identity token of a column load, and
    whether the statement may autoflush."""
    load_options = _QueryContext.default_load_options
    values: dict[str, Any] = {"_invoke_all_eagers": False, "_lazy_loaded_from": loaded_from}
    if identity_token is not None:
        values["_identity_token"] = identity_token
    if not autoflush:
        values["_autoflush"] = False
    return {"_sa_orm_load_options": load_options + values}


def autoflush(session: Any) -> None:
    """Flush as a query would before running (``Session._autoflush``)."""
    session._autoflush()


def warn(*, message: str) -> None:
    """An ``SAWarning`` as SQLAlchemy's own code emits it."""
    _sa_util.warn(message)


def adapt_to_alias(*, alias: Any, column: Any) -> Any:
    """``column`` of a mapped table as the matching column of ``alias``, an
    ``aliased()`` class of its mapper (``AliasedInsp._adapt_element``)."""
    return inspect(alias)._adapt_element(column)
