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
from typing import Any

from sqlalchemy.orm import base as _orm_base
from sqlalchemy.orm import context as _orm_context
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


def attach_loader_method(name: str, method: Callable[..., Any]) -> None:
    """Make ``joinedload(X.y).<name>(...)`` chainable, as SQLAlchemy's own
    options are: every option object derives from ``_AbstractLoad``."""
    setattr(AbstractLoad, name, method)


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


def stamped_natural_path(context: Any, path: Any) -> tuple[Any, ...]:
    """The natural path SQLAlchemy stamps as ``state.load_path`` on the
    instances this path of this query execution creates (as
    ``loading._instance_processor`` computes it: a lazy load or refresh
    prefixes the path it started from)."""
    current = context.compile_state.current_path
    return natural_path(current + path if current.path else path)


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




def load_for_state(strategy: Any, state: InstanceState[Any], passive: Any) -> Any:
    """A strategy's own one-instance load (``LoaderStrategy._load_for_state``)."""
    return strategy._load_for_state(state, passive)


def equated_columns(strategy: Any) -> dict[Any, Any]:
    """For a many-to-one lazy loader that can use the identity map
    (``use_get``), each target primary-key column's parent column."""
    return strategy._equated_columns


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




def all_states(session: Any) -> list[InstanceState[Any]]:
    """Every state in the session's identity map (a list: safe to iterate
    while the map changes)."""
    return list(session.identity_map.all_states())


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

_BATCH_LOAD_KEY = "nplus1loader_batch_load"

#: Execution options marking the statements of a batch load.
BATCH_LOAD = {_BATCH_LOAD_KEY: True}


def is_batch_load(context: Any) -> bool:
    """Whether this query execution is one of nplus1loader's batch loads
    (``QueryContext.execution_options`` holds the statement's and the
    call's execution options)."""
    return bool(context.execution_options.get(_BATCH_LOAD_KEY))


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
    frame = sys._getframe(1)
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
