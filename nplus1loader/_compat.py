"""The only module that touches non-public SQLAlchemy names.

SQLAlchemy offers no public API for third-party loader strategies, so
nplus1loader leans on a handful of ORM internals.  Every one of them is
imported or called here, behind a small function with a signature we own,
so that a new SQLAlchemy release is one file to fix.  Names are resolved by
feature, not by version: SQLAlchemy 2.1 renamed most ORM internals with a
leading underscore (sqlalchemy#10497), so each lookup tries the 2.1 name
first and falls back to the 2.0 one.

Checked against SQLAlchemy 2.0.58 and 2.1.9.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from sqlalchemy import inspect
from sqlalchemy import util as _sa_util
from sqlalchemy.orm import base as _orm_base
from sqlalchemy.orm import context as _orm_context
from sqlalchemy.orm import loading as _orm_loading
from sqlalchemy.orm import strategies as _orm_strategies
from sqlalchemy.orm import strategy_options as _orm_strategy_options
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.orm.util import LoaderCriteriaOption


def _first(module: Any, *names: str) -> Any:
    for name in names:
        found = getattr(module, name, None)
        if found is not None:
            return found
    raise ImportError(f"none of {names} found in {module.__name__}: unsupported SQLAlchemy")


#: Base classes for our strategies (orm/strategies.py, renamed in 2.1).
LazyLoader: type = _first(_orm_strategies, "_LazyLoader", "LazyLoader")
DeferredColumnLoader: type = _first(
    _orm_strategies, "_DeferredColumnLoader", "DeferredColumnLoader"
)

#: The markers a column strategy leaves in ``memoized_populators`` when it
#: does not load the column (orm/base.py).
DEFERRED_MARKERS = (
    _orm_base._DEFER_FOR_STATE,
    _orm_base._RAISE_FOR_STATE,
    _orm_base._SET_DEFERRED_EXPIRED,
)

#: The loader-option base class that chained methods are attached to.
AbstractLoad: type = _orm_strategy_options._AbstractLoad

_MapperEntity: type = _first(_orm_context, "_MapperEntity")
_QueryContext: Any = _orm_context.QueryContext
_ORMCompileState: Any = _first(_orm_context, "_ORMCompileState", "ORMCompileState")
_PostLoad: Any = _first(_orm_loading, "_PostLoad", "PostLoad")


def attach_loader_method(name: str, method: Callable[..., Any]) -> None:
    """Make ``joinedload(X.y).<name>(...)`` chainable, as SQLAlchemy's own
    options are: every option object derives from ``_AbstractLoad``."""
    setattr(AbstractLoad, name, method)


class ImmutableOption:
    """Mixin for a loader option that never changes once it is made: it
    answers, as an immutable SQL element would, the SQLAlchemy hooks that
    copy option objects or choose between two of them.

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
    """

    __slots__ = ()

    def keeps_cached_form(self) -> bool:
        """Whether the option refers to entities by path (see above)."""
        return False

    def _clone(self, **kw: Any) -> Any:
        return self

    def _copy_internals(self, **kw: Any) -> None:
        pass

    def _adapt_cached_option_to_uncached_option(self, context: Any, uncached_opt: Any) -> Any:
        return self if self.keeps_cached_form() else uncached_opt


def register_option_label(strategy_key: tuple[Any, ...], label: str) -> None:
    """SQLAlchemy 2.1 asserts that every strategy has a label for its error
    messages (``_STRATEGY_FN_LABELS``); register ours so a conflict between
    options raises a readable ``InvalidRequestError`` instead."""
    labels = getattr(_orm_strategy_options, "_STRATEGY_FN_LABELS", None)
    if labels is not None:
        labels.setdefault((strategy_key, None), label)




def mapper_entities(compile_state: Any) -> list[Any]:
    """The ORM entities a statement selects (``select(User, Address)``)."""
    return [e for e in getattr(compile_state, "_entities", ()) if isinstance(e, _MapperEntity)]


def entity_path(query_entity: Any) -> Any:
    """The PathRegistry of a lead entity of the query."""
    return query_entity.path


def current_path(compile_state: Any) -> Any:
    """The path a lazy load or refresh was started from (empty otherwise)."""
    return compile_state.compile_options._current_path




def loader_keys(prop_path: Any) -> tuple[Any, Any, Any]:
    """The three keys SQLAlchemy looks up, in order, to pick the strategy of
    one attribute at one path: exact, entity wildcard, global default
    (``StrategizedProperty._get_context_loader``)."""
    return (
        prop_path._loader_key,
        prop_path._wildcard_path_loader_key,
        prop_path._default_path_loader_key,
    )


def natural_path(path: Any) -> tuple[Any, ...]:
    return tuple(path.natural_path)


def rows_reach_one_path(context: Any) -> bool:
    """Whether every instance this query execution creates stays at the
    path it was created at: one ORM entity, and no joined eager loading
    (``joinedload()``, ``contains_eager()``), which can bring an instance at
    a second path of the same execution, whereupon SQLAlchemy moves its
    ``load_path`` (to the last path seen on 2.0, the shallowest on 2.1)."""
    compile_state = context.compile_state
    if compile_state.eager_joins or len(mapper_entities(compile_state)) != 1:
        return False
    return not any(
        isinstance(key, tuple) and key and key[0] == "user_defined_eager_row_processor"
        for key in context.attributes
    )


def stamp_key(path: Any) -> tuple[Any, ...]:
    """A load path as the key of the profile its instances find: its
    natural path with each mapper taken as its hierarchy's base, so that a
    refresh of a subclass's own columns, which re-stamps the instance with
    the subclass's path (``Cat`` where the query said ``Animal``), leaves it
    finding the same profile."""
    return tuple(getattr(step, "base_mapper", step) for step in path.natural_path)


def stamped_key(context: Any, path: Any) -> tuple[Any, ...]:
    """:func:`stamp_key` of the path SQLAlchemy stamps as ``state.load_path``
    on the instances this path of this query execution creates (as
    ``loading._instance_processor`` computes it: a lazy load or refresh
    prefixes the path it started from)."""
    return stamp_key(load_path_for(context, path))


def get_strategy(prop: Any, key: tuple[Any, ...]) -> Any:
    """The (cached) strategy instance of ``prop`` for a strategy key."""
    return prop._get_strategy(key)


def should_undefer_in_wildcard(mapper: Any) -> Any:
    """Columns SQLAlchemy always loads, even under ``defer('*')``: the
    primary key and the polymorphic discriminator."""
    return mapper._should_undefer_in_wildcard


def only_load_props(context: Any) -> Any:
    """In a refresh (``session.refresh(obj, ['a'])``), the attributes asked for."""
    return context.query._compile_options._only_load_props




def load_for_state(
    strategy: Any, state: InstanceState[Any], passive: Any, *, extra_options: Any = ()
) -> Any:
    """A strategy's own one-instance load (``LoaderStrategy._load_for_state``);
    a lazy loader adds ``extra_options`` to its statement."""
    if extra_options:
        return strategy._load_for_state(state, passive, extra_options=extra_options)
    return strategy._load_for_state(state, passive)


def equated_columns(strategy: Any) -> dict[Any, Any]:
    """For a many-to-one lazy loader that can use the identity map
    (``use_get``), each target primary-key column's parent column."""
    equated: dict[Any, Any] = strategy._equated_columns
    return equated


def selectin_omits_join(prop: Any) -> bool:
    """Whether SQLAlchemy's own ``selectinload`` judges this relationship's
    join condition simple enough to select the targets by foreign key
    without joining the parent (``_SelectInLoader.omit_join``; it honours
    ``relationship(omit_join=False)``)."""
    strategy = prop._get_strategy((("lazy", "selectin"),))
    return bool(getattr(strategy, "omit_join", False))


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




def state_callables(state: InstanceState[Any]) -> dict[str, Any]:
    return state.callables


def class_manager_expired_loader(manager: Any) -> Any:
    return manager.expired_attribute_loader


def set_class_manager_expired_loader(manager: Any, loader: Any) -> None:
    manager.expired_attribute_loader = loader


#: Where an instance's arming profile is kept: the state's own ``__dict__``
#: (InstanceState has one, SQLAlchemy memoizes there too), so it lives and
#: dies with the instance, survives ``expire()``, and is never pickled
#: (``InstanceState.__getstate__`` picks its keys).  Not ``load_options``,
#: though that would be cheaper to write: SQLAlchemy stamps it anew on
#: every refresh, and the arming would go with it.
PROFILE_KEY = "_nplus1loader_profile"

def propagated_options(context: Any) -> Any:
    """The options a query execution hands on to the lazy loads and
    refreshes of the instances it loads (``QueryContext.propagated_loader_options``,
    which SQLAlchemy stamps as ``state.load_options``)."""
    return context.propagated_loader_options


def class_level_loader(mapper: Any, key: str) -> Any:
    """The loader SQLAlchemy calls for an unloaded ``key`` of ``mapper``'s
    instances that have no per-instance hook (``_AttributeImpl.callable_``,
    set by the default strategy: a lazy relationship's, a deferred
    column's), or None."""
    attribute = mapper.class_manager.get(key)
    return None if attribute is None else attribute.impl.callable_


def set_class_level_loader(mapper: Any, key: str, loader: Any) -> None:
    mapper.class_manager[key].impl.callable_ = loader



def install_callable(state: InstanceState[Any], key: str, loader: Any) -> None:
    """Put a per-instance loader hook back, as a row populator would."""
    if "callables" not in state.__dict__:
        state.callables = {}
    state.callables[key] = loader


def is_deleted(state: InstanceState[Any]) -> bool:
    """Marked for deletion and flushed, not yet committed."""
    return bool(state._deleted)


def refresh_trigger(state: InstanceState[Any]) -> tuple[str | None, bool]:
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


def loader_criteria(context: Any) -> tuple[Any, ...]:
    """The ``with_loader_criteria`` options a query hands on to the lazy
    loads of the instances it loaded (``QueryContext.propagated_loader_options``,
    which becomes ``state.load_options``)."""
    return tuple(
        option
        for option in propagated_options(context)
        if isinstance(option, LoaderCriteriaOption)
    )


def extra_criteria(loadopt: Any) -> tuple[Any, ...]:
    """The criteria of ``lazyload(User.addresses.and_(...))`` (empty when
    there are none, or no option)."""
    return tuple(getattr(loadopt, "_extra_criteria", None) or ())


# ------------------------------------------------- statements like stock's


def lazy_strategy(prop: Any) -> Any:
    """The relationship's stock lazy loader (``lazy="select"``)."""
    return prop._get_strategy((("lazy", "select"),))


def lazy_clause(prop: Any) -> tuple[Any, dict[Any, Any]]:
    """The WHERE clause of the relationship's stock lazy load, with a bind
    parameter for each parent column it compares with, and those columns
    by the parameters' identifying keys (``_LazyLoader._simple_lazy_clause``
    and ``_bind_to_col``)."""
    strategy = lazy_strategy(prop)
    criterion, _ = strategy._simple_lazy_clause
    return criterion, strategy._bind_to_col


def bind_key(bindparam: Any) -> Any:
    """The key by which :func:`lazy_clause` names a bind parameter."""
    return bindparam._identifying_key


def lazy_order_by(prop: Any) -> list[Any]:
    """The ORDER BY of the relationship's stock lazy load."""
    return list(lazy_strategy(prop)._order_by or ())


def target_correlates_to_parent(prop: Any) -> bool:
    """Whether the target (a LATERAL subquery) can only be selected beside
    the parent (SQLAlchemy 2.1; never on 2.0)."""
    return bool(getattr(prop, "_target_correlates_to_parent", False))


def add_compile_state_func(stmt: Any, fn: Callable[[Any], None], cache_key: Any) -> Any:
    """``stmt`` with ``fn`` run on its compile state, as SQLAlchemy's own
    lazy loader adds the rule that it does not eager-load back to the parent."""
    add = getattr(stmt, "_add_compile_state_func", None)  # 2.1
    if add is None:
        add = stmt._add_context_option  # 2.0
    return add(fn, cache_key)


def reverse_lazyload(prop: Any) -> Callable[[Any], None]:
    """What stock lazy loading adds to a collection's SELECT: a reverse
    many-to-one that the mapping loads eagerly is loaded lazily instead
    (it would load the parent the lazy load comes from)."""
    from sqlalchemy.orm import Load

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


def as_lazy_load(stmt: Any, path: Any | None, *, for_columns: bool) -> Any:
    """``stmt`` with the compile options of SQLAlchemy's own lazy load at
    ``path`` (``_current_path``: listeners see ``loader_strategy_path``, and
    replayed options apply relative to it), or, ``for_columns``, of its
    deferred-column load (``_for_refresh_state``: ``is_column_load``)."""
    options: dict[str, Any] = {} if path is None else {"_current_path": path}
    if for_columns:
        options["_for_refresh_state"] = True
    orm_defaults = _ORMCompileState.default_compile_options
    if stmt._compile_options.isinstance(orm_defaults):
        return stmt._update_compile_options(options)
    # A select() of ORM entities gets the ORM's compile options when it is
    # compiled; SQLAlchemy's own loaders build theirs with them.
    stmt = stmt._generate()
    stmt._compile_options = orm_defaults + options
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


def warn(message: str) -> None:
    """An ``SAWarning`` as SQLAlchemy's own code emits it."""
    _sa_util.warn(message)


def options_equal(one: Any, other: Any) -> bool:
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


def load_path_of(state: InstanceState[Any]) -> Any:
    return state.load_path


def register_post_load(
    context: Any, path: Any, mapper: Any, token: Any, fn: Callable[..., None]
) -> None:
    """Call ``fn(context, path, states, load_keys)`` once the rows of
    ``path`` are processed, with ``(state, overwrite)`` for every instance
    they reached, those already in the session included (``overwrite``
    False), without the partial population (and ``refresh`` event) that a
    row populator for existing instances costs (``PostLoad``)."""
    _PostLoad.callable_for_path(context, path, mapper, token, fn)


def load_path_for(context: Any, path: Any) -> Any:
    """The path SQLAlchemy stamps as ``load_path`` on the instances the
    rows of ``path`` reach (``loading._instance_processor``)."""
    current = context.compile_state.current_path
    return current + path if current.path else path


def adapt_to_alias(alias: Any, column: Any) -> Any:
    """``column`` of a mapped table as the matching column of ``alias``, an
    ``aliased()`` class of its mapper (``AliasedInsp._adapt_element``)."""
    return inspect(alias)._adapt_element(column)


def set_committed_value(state: InstanceState[Any], key: str, value: Any) -> None:
    """Store a loaded value as the committed state of ``key``: no history,
    not dirty, pending collection changes merged in (the attribute
    implementation's ``set_committed_value``, looked up on the state)."""
    impl: Any = state.manager[key].impl
    impl.set_committed_value(state, state.dict, value)


def load_attribute(state: InstanceState[Any], key: str, passive: Any) -> Any:
    """Read ``key`` of ``state`` as SQLAlchemy's own loaders read a column
    they need (``Mapper._get_state_attr_by_column``): loading it if it is
    expired or deferred, or ``PASSIVE_NO_RESULT`` where ``passive`` forbids."""
    return state.manager[key].impl.get(state, state.dict, passive=passive)


def mark_implicitly_boolean(element_class: type) -> None:
    """Declare a custom SQL element a comparison (``_is_implicitly_boolean``),
    so dialects without a boolean type do not render it as ``x = 1``."""
    element_class._is_implicitly_boolean = True  # type: ignore[attr-defined]


def is_refresh(compile_state: Any) -> bool:
    """Whether the statement refreshes columns of existing instances (a
    deferred or expired column load, ``Session.refresh``)."""
    return bool(compile_state.compile_options._for_refresh_state)


def has_orm_execute_listeners(session: Any) -> bool:
    """Whether any ``do_orm_execute`` listener would see a statement the
    session runs (on the session, its class or a base class)."""
    return bool(session.dispatch.do_orm_execute)


def is_loader_criteria(option: Any) -> bool:
    return isinstance(option, LoaderCriteriaOption)
