"""Arming: what an nplus1 query leaves on the instances it loads.

Every instance such a query loads carries one shared :class:`Profile` (one
per query execution, entity path and mapper) holding the loaders of the
attributes the query armed.  The instance holds a reference to it and
nothing else, so arming costs one dictionary write per row, whatever the
number of armed attributes:

* an attribute SQLAlchemy loads through a class-level loader (a lazy
  relationship, a column the mapping defers) is dispatched by a
  :class:`ClassLevelHook` wrapped around that loader: it asks the
  instance's profile first, and falls back to SQLAlchemy's own loader for
  instances no nplus1 query armed;
* an attribute without one (a column deferred by ``defer()`` or
  ``load_only()``, a ``lazy="noload"`` relationship) gets a per-instance
  hook in ``state.callables``, as SQLAlchemy's own ``defer()`` does.

The profile lives in the instance state's ``__dict__``: it survives
``expire()`` (which drops per-instance hooks), dies with the instance, and
is never pickled.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import ColumnProperty, Mapper
from sqlalchemy.orm.state import InstanceState

from . import _compat
from ._expiry import ensure_expire_listener, ensure_refresh_hook


class Profile:
    """What one query execution armed on the instances of one mapper at
    one path, shared by all of them.

    ``loaders`` holds every armed attribute; ``class_level`` those that the
    :class:`ClassLevelHook` dispatches, ``instance_hooks`` those that need a
    per-instance hook.  ``refresh_mode`` (set by the option's anchor) is the
    mode in which expired columns refresh (None: the stock way);
    ``raise_keys`` the expired columns that raise in raise mode (None: all).
    """

    __slots__ = (
        "chunk_size",
        "class_level",
        "instance_hooks",
        "loaders",
        "raise_keys",
        "refresh_mode",
    )

    def __init__(self, chunk_size: int | None) -> None:
        self.chunk_size = chunk_size
        self.refresh_mode: str | None = None
        self.raise_keys: frozenset[str] | None = None
        self.loaders: dict[str, Any] = {}
        self.class_level: dict[str, Any] = {}
        self.instance_hooks: dict[str, Any] = {}

    def arm(self, mapper: Mapper[Any], loader: Any) -> bool:
        """Add ``loader``; True when a class-level hook dispatches it (the
        rows then need nothing but the profile)."""
        key = loader.key
        self.loaders[key] = loader
        if _compat.class_level_loader(mapper, key) is not None:
            ensure_class_level_hook(mapper, key)
            self.class_level[key] = loader
            return True
        self.instance_hooks[key] = loader
        ensure_expire_listener(mapper)
        return False

    def raises_for(self, mapper: Mapper[Any], key: str) -> bool:
        """In raise mode, whether user code reading expired ``key`` raises."""
        if self.raise_keys is not None:
            return key in self.raise_keys
        return isinstance(mapper.attrs.get(key), ColumnProperty)


def profile_for(
    context: Any, path: Any, mapper: Mapper[Any], chunk_size: int | None, populators: Any
) -> Profile:
    """The profile of this query execution for this path and mapper; the
    first call also registers the row populator that puts it on every
    instance the rows reach (new ones, and ones already in the session)."""
    key = ("nplus1loader.profile", _compat.natural_path(path), mapper)
    found: Profile | None = context.attributes.get(key)
    if found is None:
        found = context.attributes[key] = Profile(chunk_size)
        ensure_refresh_hook(mapper)
    registered = ("nplus1loader.populator", id(populators), id(found))
    if registered not in context.attributes:
        context.attributes[registered] = True
        # Keyed by the primary key: "new" runs for a new instance (or one
        # whose key expired), "eager" for one already in the session.
        anchor = mapper.get_property_by_column(mapper.primary_key[0]).key
        populate = _row_populator(found)
        populators["new"].append((anchor, populate))
        populators["eager"].append((anchor, populate))
    return found


def _row_populator(profile: Profile) -> Any:
    hooks = profile.instance_hooks
    class_level = profile.class_level
    loaders = profile.loaders
    profile_key = _compat.PROFILE_KEY

    def arm(state: InstanceState[Any], dict_: Any, row: Any) -> None:
        if profile.refresh_mode is None and all(key in dict_ for key in loaders):
            # No anchor (raiseload_rel()) and nothing left unloaded here:
            # this query arms nothing on this instance.
            return
        namespace = state.__dict__
        previous = namespace.get(profile_key)
        namespace[profile_key] = profile
        if previous is not None and previous is not profile and previous.class_level:
            # This query's profile replaces the one an earlier query left,
            # but what that one armed and this one does not cover stays
            # armed until it is loaded or expired, as a hook of its own:
            # the latest query decides only what it covers.
            for key, loader in previous.class_level.items():
                if key not in dict_ and key not in loaders and key not in state.callables:
                    _compat.install_callable(state, key, loader)
        callables = namespace.get("callables")
        if callables:
            # An earlier query left hooks of its own on attributes this one
            # arms at class level: they would shadow the dispatch.
            for key in class_level:
                if key in callables and key not in dict_:
                    del callables[key]
        if hooks:
            if callables is None:
                callables = state.callables = {}
            for key, loader in hooks.items():
                if key not in dict_:
                    callables[key] = loader

    return arm


class ClassLevelHook:
    """Stands in for the class-level loader of one attribute of one mapper:
    an armed instance's profile decides, any other instance loads the way
    SQLAlchemy would have."""

    __slots__ = ("key", "original")

    def __init__(self, key: str, original: Any) -> None:
        self.key = key
        self.original = original

    def __call__(self, state: InstanceState[Any], passive: Any) -> Any:
        profile = state.__dict__.get(_compat.PROFILE_KEY)
        if profile is not None:
            loader = profile.class_level.get(self.key)
            if loader is not None:
                return loader(state, passive)
        return self.original(state, passive)


def ensure_class_level_hook(mapper: Mapper[Any], key: str) -> None:
    """Wrap the class-level loader of ``mapper.key`` (once)."""
    original = _compat.class_level_loader(mapper, key)
    if original is not None and not isinstance(original, ClassLevelHook):
        _compat.set_class_level_loader(mapper, key, ClassLevelHook(key, original))
