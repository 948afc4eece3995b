"""Arming: what an nplus1 query leaves on the instances it loads.

Every instance such a query loads is armed by one shared :class:`Profile`
(one per query execution, entity path and mapper) holding the loaders of
the attributes the query armed:

* an attribute SQLAlchemy loads through a class-level loader (a lazy
  relationship, a column the mapping defers) is dispatched by a
  :class:`ClassLevelHook` wrapped around that loader: it asks the
  instance's profile first, and falls back to SQLAlchemy's own loader for
  instances no nplus1 query armed;
* an attribute without one (a column deferred by ``defer()`` or
  ``load_only()``, a ``lazy="noload"`` relationship) gets a per-instance
  hook in ``state.callables``, as SQLAlchemy's own ``defer()`` does.

How an instance finds its profile costs nothing per row for the instances
a query creates: SQLAlchemy already stamps each of them with the query's
propagating options and path (``state.load_options``, ``state.load_path``,
which it also replays and re-stamps on every refresh), and the nplus1
option among those options is the key of the profiles for each path and
mapper (kept in this module, not on the option).  The first execution
registers its profiles there; a later execution of
the same option whose profile differs (other options beside it, other
loader criteria) stores its own on each row instead, in the state's
``__dict__``, as it does for instances already in the session, which
SQLAlchemy does not re-stamp, and as every execution does whose rows can
reach an instance at two paths (joined eager loading), where SQLAlchemy
moves the instance's stamped path.  An explicit profile wins over the stamped
one.  Either way the profile survives ``expire()`` and dies with what
refers to it; pickled instances come back unarmed.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from queue import SimpleQueue
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import ColumnProperty, InstanceState, Mapper

from . import _sqla
from ._once import MapperSet
from ._registry import Marks, marks_for, registry_of


class Profile:
    """What one query execution armed on the instances of one mapper at
    one path, shared by all of them.

    ``loaders`` holds every armed attribute; ``class_level`` those that the
    :class:`ClassLevelHook` dispatches, ``instance_hooks`` those that need a
    per-instance hook.  ``refresh_mode`` (set by the option's anchor) is the
    mode in which expired columns refresh (None: the stock way);
    ``raise_keys`` the expired columns that raise in raise mode (None: all);
    ``strict_refresh`` whether they raise on every touch (``raiseload_*``),
    not only for an N+1 pattern.  ``query_site`` is the line of the query,
    recorded for the N+1 pattern report only in raise and warn modes or
    while a test run collects patterns (issue 17).
    """

    __slots__ = (
        "_marks",
        "chunk_size",
        "class_level",
        "instance_hooks",
        "loaders",
        "query_site",
        "raise_keys",
        "refresh_mode",
        "strict_refresh",
    )

    def __init__(self, chunk_size: int | None) -> None:
        self.chunk_size = chunk_size
        self.refresh_mode: str | None = None
        self.raise_keys: frozenset[str] | None = None
        self.strict_refresh = False
        self.query_site: Any = None
        self.loaders: dict[str, Any] = {}
        self.class_level: dict[str, Any] = {}
        self.instance_hooks: dict[str, Any] = {}
        self._marks: Marks | None = None

    @property
    def marks(self) -> Marks:
        """What the registry needs to know of this profile (made once the
        query's strategies have added every loader: at its first row)."""
        if self._marks is None:
            self._marks = marks_for(
                frozenset(loader.prop for loader in self.loaders.values()),
                self.refresh_mode is not None,
            )
        return self._marks

    def arm(self, mapper: Mapper[Any], loader: Any) -> bool:
        """Add ``loader``; True when a class-level hook dispatches it (the
        rows then need nothing but the profile)."""
        key = loader.key
        self.loaders[key] = loader
        self._marks = None
        if _sqla.class_level_loader(mapper=mapper, key=key) is not None:
            ensure_class_level_hook(mapper, key)
            self.class_level[key] = loader
            return True
        self.instance_hooks[key] = loader
        return False

    def raises_for(self, mapper: Mapper[Any], key: str) -> bool:
        """In raise mode, whether user code reading expired ``key`` raises."""
        if self.raise_keys is not None:
            return key in self.raise_keys
        return isinstance(mapper.attrs.get(key), ColumnProperty)

    def signature(self) -> tuple[Any, ...]:
        """What arming with this profile means: equal signatures arm alike
        (the very same loader criteria objects included)."""
        loaders = tuple(
            sorted(
                (key, loader.signature(), key in self.class_level)
                for key, loader in self.loaders.items()
            )
        )
        return (loaders, *self.settings())

    def settings(self) -> tuple[Any, ...]:
        """What the signature holds besides the loaders."""
        return (
            self.refresh_mode,
            self.raise_keys,
            self.strict_refresh,
            self.chunk_size,
            self.query_site,
        )


def profile_for(
    context: Any, path: Any, mapper: Mapper[Any], chunk_size: int | None, populators: Any
) -> Profile:
    """The profile of this query execution for this path and mapper; the
    first call also registers the row populator that arms the instances the
    rows reach (new ones, and, unless this is a batch load, ones already in
    the session)."""
    key = ("nplus1loader.profile", _sqla.natural_path(path), mapper)
    found: Profile | None = context.attributes.get(key)
    if found is None:
        found = context.attributes[key] = Profile(chunk_size)
        ensure_reenlist_on_expire(mapper)
    registered = ("nplus1loader.populator", id(populators), id(found))
    if registered not in context.attributes:
        # The context keeps the populator alive while the rows are read
        # (the populators hold it weakly: see add_new_row_populator).
        populate = context.attributes[registered] = _row_populator(
            found, context, path, mapper, populators
        )

        def arm_existing(
            context: Any, path: Any, states: Any, load_keys: Any, *args: Any, **kw: Any
        ) -> None:
            for state, overwrite in states:
                if not overwrite:
                    populate(state, state.dict, None)

        # Instances already in the session are armed once the rows are
        # read, not by a row populator, which would cost them a partial
        # population and a ``refresh`` event stock does not fire.  A batch
        # (like SQLAlchemy's own lazy loads) does not reach them: they stay
        # armed as they were, as SQLAlchemy keeps their load options, and it
        # registers nothing (SQLAlchemy would log each row it creates for a
        # callback that has nothing to do).  An empty session holds none
        # either: then the rows pay nothing for it.
        if _sqla.rows_reach_existing_instances(context=context):
            _sqla.register_post_load(
                context=context,
                path=path,
                mapper=mapper,
                token=("nplus1loader", id(found)),
                fn=arm_existing,
            )
    return found


#: The profiles each nplus1 option holds, by stamp (see ``profile_of``):
#: kept here, never on the option, for as long as the option lives.  Keyed
#: by the option's id, which is hashed faster than a WeakKeyDictionary's
#: weak reference; the weak reference beside them drops the entry when the
#: option goes, before its id can be taken by another object.
_by_option: dict[int, tuple[weakref.ref[Any], dict[tuple[Any, Any], Profile]]] = {}


def option_profiles(option: Any) -> dict[tuple[Any, Any], Profile]:
    """The profiles ``option`` holds, by (stamp key, mapper)."""
    key = id(option)
    entry = _by_option.get(key)
    if entry is None:
        # setdefault: of two threads arming with a new option at once, both
        # get the one dict.
        entry = _by_option.setdefault(key, (weakref.ref(option, lambda ref: _forget(key, ref)), {}))
    return entry[1]


def _forget(key: int, ref: weakref.ref[Any]) -> None:
    entry = _by_option.get(key)
    if entry is not None and entry[0] is ref:
        _by_option.pop(key, None)


def _owner(options: Any) -> Any:
    """The nplus1 option that holds the profiles for instances stamped
    with ``options``: the last one among them (deterministic, and the same
    after SQLAlchemy re-stamps the replayed options on a refresh)."""
    for option in reversed(options):
        if getattr(option, "is_nplus1_option", False):
            return option
    return None


#: Never a registry's current run (see ``only_logged`` below).
_NO_RUN = object()


def _row_populator(
    profile: Profile, context: Any, path: Any, mapper: Mapper[Any], populators: Any
) -> Any:
    """The populator that arms each instance the rows of ``path`` reach,
    registered among ``populators`` (and replaced there, for the rows that
    follow, once the first row shows they need nothing but logging)."""
    hooks = profile.instance_hooks
    class_level = profile.class_level
    loaders = profile.loaders
    stored_profile = _sqla.stored_profile
    load_options_of = _sqla.load_options_of
    loaders_of = _sqla.loaders_of
    install_loaders = _sqla.install_loaders
    # What SQLAlchemy stamps as the load options of the instances this
    # execution creates (and of those it fully reloads).
    stamped = _sqla.propagated_options(context=context)
    owner = _owner(stamped) if _sqla.rows_reach_one_path(context=context) else None
    stamp_key = (_sqla.stamped_key(context=context, path=path), mapper)
    # Whether the stamp finds this very profile, decided at the first row
    # (when every strategy of the query has added its loaders): [marks]
    # if it does (what the registry logs the rows under), [None] if not.
    shared: list[Marks | None] = []
    # For instances already in the session: whether what their stamp finds
    # arms them exactly as this profile would.
    # Made at the first such instance: a query into an empty session (the
    # common first query) meets none.
    verdicts: list[Callable[[InstanceState[Any]], bool]] = []

    def stamped_alike(state: InstanceState[Any]) -> bool:
        if not verdicts:
            verdicts.append(profile_verdicts(lambda other: _arm_alike(other, profile)))
        return verdicts[0](state)

    registry = registry_of(context.session)
    if registry.pending:
        registry.drain()
    # What the registry logs each armed instance under: known at the first
    # row, when the loaders are complete.
    marks: list[Marks] = []

    def enlist(state: InstanceState[Any]) -> None:
        if not marks:
            marks.append(profile.marks)
        registry.enlist(state, marks[0])

    def share() -> Profile | None:
        """The profile the stamp finds, registered by the first execution
        of the option (this one, if none was), when it arms alike."""
        if owner is None:
            return None
        found = option_profiles(owner).setdefault(stamp_key, profile)
        return found if _arm_alike(found, profile) else None

    # Only an instance that was in the session before this execution can
    # carry a profile an earlier query stored: with an empty session (the
    # common first query) the rows skip looking for one.
    may_hold_profile = bool(len(context.session.identity_map))
    # The marks of the shortest path, once the first row shows that the
    # stamp finds this profile and that rows need nothing but logging (no
    # per-instance hooks, no stored profile to drop): then a row whose
    # stamp is this execution's, while the registry's current run is this
    # one, costs a list append.  Any other object never is a registry run.
    only_logged: Any = _NO_RUN

    def arm(state: InstanceState[Any], dict_: Any, row: Any) -> None:
        nonlocal only_logged
        if load_options_of(state) is stamped:
            if registry.run is only_logged:
                log = registry.log
                if len(log) <= registry.limit:
                    log.append(state)
                    return
            if not shared:
                found = share()
                if not marks:
                    # Alike, the registered profile has the same marks
                    # (interned), already made.
                    marks.append(profile.marks if found is None else found.marks)
                shared.append(marks[0] if found is not None else None)
                if shared[0] is not None and not hooks and not may_hold_profile:
                    only_logged = shared[0]
                    if stamped:
                        # Every later row is an instance this execution
                        # creates, stamped with its options (SQLAlchemy
                        # stamps every new instance when options propagate),
                        # and needs nothing but logging: at C speed, a
                        # SimpleQueue's put, which takes (and ignores) the
                        # populator's two other arguments.  The registry
                        # drains it before it reads its log.
                        pending: SimpleQueue[InstanceState[Any]] = SimpleQueue()
                        put = pending.put
                        registry.attach(pending, only_logged, put)
                        replace(put)
            run_marks = shared[0]
            if run_marks is not None:
                # The stamp finds the profile: nothing to store, except to
                # drop what an earlier query stored (this one is the latest).
                if may_hold_profile and stored_profile(state) is not None:
                    _sqla.forget_profile(state=state)
                if hooks:
                    install_loaders(state=state, dict_=dict_, loaders=hooks)
                # Registry.enlist's own fast path, inline: this runs once per
                # row of every armed query, and two calls fewer per row were
                # a third of what arming costs a query that touches nothing.
                log = registry.log
                if registry.run is run_marks and len(log) <= registry.limit:
                    log.append(state)
                else:
                    registry.enlist(state, run_marks)
                return
        elif stored_profile(state) is None and not loaders_of(state) and stamped_alike(state):
            # Already in the session, armed alike by an earlier execution
            # (another chunk of the same batch load, say): nothing changes.
            if hooks:
                install_loaders(state=state, dict_=dict_, loaders=hooks)
            enlist(state)
            return
        elif profile.refresh_mode is None and all(key in dict_ for key in loaders):
            # No anchor (raiseload_rel()) and nothing left unloaded here:
            # this query arms nothing on this instance.
            return
        previous = profile_of(state)
        set_profile(state, profile)
        if previous is not None and previous is not profile and previous.class_level:
            # This query's profile replaces the one an earlier query left,
            # but what that one armed and this one does not cover stays
            # armed until it is loaded or expired, as a hook of its own:
            # the latest query decides only what it covers.
            for key, loader in previous.class_level.items():
                if key not in dict_ and key not in loaders and key not in loaders_of(state):
                    _sqla.install_loader(state=state, key=key, loader=loader)
                    registry.enlist(state, previous.marks)
        callables = loaders_of(state)
        if callables:
            # An earlier query left hooks of its own on attributes this one
            # arms at class level: they would shadow the dispatch.
            for key in class_level:
                if key in callables and key not in dict_:
                    _sqla.remove_loader(state=state, key=key)
        if hooks:
            install_loaders(state=state, dict_=dict_, loaders=hooks)
        enlist(state)

    # Keyed by the primary key: "new" runs for a new instance (or one
    # whose key expired), "eager" for one already in the session.
    anchor = mapper.get_property_by_column(mapper.primary_key[0]).key
    replace = _sqla.add_new_row_populator(populators=populators, key=anchor, populate=arm)
    return arm


def _arm_alike(one: Profile | None, other: Profile) -> bool:
    if one is other:
        return True
    if one is None:
        return False
    if (
        one.loaders == other.loaders  # the very same loader objects (no __eq__)
        and one.class_level.keys() == other.class_level.keys()
        and one.settings() == other.settings()
    ):
        return True  # what the signatures would say, without building them
    return one.signature() == other.signature()


def profile_of(state: InstanceState[Any]) -> Profile | None:
    """The profile that armed ``state``, if any: the one stored on it, else
    the one its stamped options hold for its path and mapper."""
    profile = _sqla.stored_profile(state)
    if profile is not None:
        return profile  # type: ignore[no-any-return]
    owner = _owner(_sqla.load_options_of(state))
    if owner is None:
        return None
    entry = _by_option.get(id(owner))
    if entry is None:
        return None
    return entry[1].get((_sqla.stamp_key(_sqla.load_path_of(state)), state.mapper))


def profile_verdicts(
    decide: Callable[[Profile | None], bool],
    loaded_alike: Callable[[InstanceState[Any]], bool] | None = None,
) -> Callable[[InstanceState[Any]], bool]:
    """For a scan over many states: ``decide(profile_of(state))``, computed
    once per distinct profile, and, given, ``loaded_alike(state)``, a test
    that depends only on the state's load options and load path (the peer
    scans' :func:`~nplus1loader._peers.same_load`), folded into the same
    per-stamp verdict so that a run of states costs one call each.

    A scan asks the same question of thousands of states that share a
    handful of profiles: the verdict is cached per profile stored on a
    state, and per stamp (``load_options``, ``load_path``, mapper) for the
    stamped ones, which the instances one execution created share.  The
    identity map keeps instances in the order they arrived, so a run of
    states shares one stamp: the previous stamp is checked first, by
    identity, before any tuple is built.  The cache holds the stamps'
    objects for the length of the scan, so their ids stay theirs.
    """
    by_profile: dict[Profile | None, bool] = {}
    by_stamp: dict[tuple[int, int, Any], bool] = {}
    stored_profile = _sqla.stored_profile
    load_options_of = _sqla.load_options_of
    load_path_of = _sqla.load_path_of
    last_options: Any = None
    last_path: Any = None
    last_manager: Any = None
    last_verdict = False

    def verdict_on(profile: Profile | None) -> bool:
        verdict = by_profile.get(profile)
        if verdict is None:
            verdict = by_profile[profile] = decide(profile)
        return verdict

    def verdict(state: InstanceState[Any]) -> bool:
        nonlocal last_options, last_path, last_manager, last_verdict
        profile = stored_profile(state)
        if profile is not None:
            return verdict_on(profile) and (loaded_alike is None or loaded_alike(state))
        options = load_options_of(state)
        if not options:
            return verdict_on(None) and (loaded_alike is None or loaded_alike(state))
        path = load_path_of(state)
        manager = state.manager
        if options is last_options and path is last_path and manager is last_manager:
            return last_verdict
        stamp = (id(options), id(path), manager)
        found = by_stamp.get(stamp)
        if found is None:
            found = by_stamp[stamp] = verdict_on(profile_of(state)) and (
                loaded_alike is None or loaded_alike(state)
            )
        last_options, last_path, last_manager, last_verdict = options, path, manager, found
        return found

    return verdict


def set_profile(state: InstanceState[Any], profile: Profile) -> None:
    _sqla.store_profile(state=state, profile=profile)


def restore_arming(state: InstanceState[Any], profile: Profile, keys: Iterable[str]) -> None:
    """After SQLAlchemy refreshed ``state`` alone (replaying the options of
    the query that first loaded it, which may arm it as that query did):
    put back the arming of ``profile``, the latest arming query's, for the
    refreshed ``keys``."""
    if profile_of(state) is not profile:
        set_profile(state, profile)
    callables = _sqla.loaders_of(state)
    for key in keys:
        mine = profile.instance_hooks.get(key)
        hook = callables.get(key)
        if hook is mine or not getattr(hook, "is_nplus1_loader", False):
            continue
        if mine is None:
            _sqla.remove_loader(state=state, key=key)
        elif key not in state.dict:
            _sqla.install_loader(state=state, key=key, loader=mine)


_listening = MapperSet()


def ensure_expire_listener(mapper: Mapper[Any]) -> None:
    """Put per-instance hooks back after an expire, which drops them (only
    needed where an armed attribute has no class-level loader)."""
    if id(mapper) in _listening:
        return
    _listening.add(mapper)
    event.listen(mapper, "expire", _on_expire, raw=True)


def _on_expire(state: InstanceState[Any], attrs: Iterable[str] | None) -> None:
    profile = profile_of(state)
    if profile is None or not profile.instance_hooks:
        return
    hooks = profile.instance_hooks
    keys = hooks if attrs is None else [k for k in attrs if k in hooks]
    dict_ = state.dict
    for key in keys:
        if key not in dict_:
            _sqla.install_loader(state=state, key=key, loader=hooks[key])


class ClassLevelHook:
    """Stands in for the class-level loader of one attribute of one mapper:
    an armed instance's profile decides, any other instance loads the way
    SQLAlchemy would have."""

    __slots__ = ("key", "original")

    def __init__(self, key: str, original: Any) -> None:
        self.key = key
        self.original = original

    def __call__(self, state: InstanceState[Any], passive: Any) -> Any:
        profile = profile_of(state)
        if profile is not None:
            loader = profile.class_level.get(self.key)
            if loader is not None:
                return loader(state, passive)
        return self.original(state, passive)


def ensure_class_level_hook(mapper: Mapper[Any], key: str) -> None:
    """Wrap the class-level loader of ``mapper.key`` (once)."""
    original = _sqla.class_level_loader(mapper=mapper, key=key)
    if original is not None and not isinstance(original, ClassLevelHook):
        _sqla.set_class_level_loader(mapper=mapper, key=key, loader=ClassLevelHook(key, original))
    if id(mapper) not in _pickle_listening:
        _pickle_listening.add(mapper)
        event.listen(mapper, "pickle", _on_pickle, raw=True)


_pickle_listening = MapperSet()


def _on_pickle(state: InstanceState[Any], state_dict: dict[str, Any]) -> None:
    """A pickled instance leaves its profile behind (its peers stay in this
    session).  What the profile dispatched at class level becomes a
    per-instance hook of the stock loader the query chose (a ``lazyload()``
    over a ``lazy="raise"`` mapping keeps loading), as a stock instance
    carries it."""
    profile = profile_of(state)
    if profile is None or not profile.class_level:
        return
    dict_ = state.dict
    callables = _sqla.pickled_loaders(state_dict)
    added = False
    for key, loader in profile.class_level.items():
        if key in dict_ or key in callables:
            continue
        if loader.is_column or dict(loader.prop.strategy_key).get("lazy") in ("select", True):
            continue  # the mapping's own loader is the stock one: nothing to carry
        callables[key] = _sqla.StockLoader(key, loader.is_column)
        added = True
    if added:
        _sqla.set_pickled_loaders(state_dict, callables)


_reenlisting = MapperSet()


def ensure_reenlist_on_expire(mapper: Mapper[Any]) -> None:
    """An expire (commit, rollback, ``session.expire()``) takes attributes
    away from armed instances: they become candidates again for what their
    profile arms (see ``_registry``)."""
    if id(mapper) not in _reenlisting:
        _reenlisting.add(mapper)
        event.listen(mapper, "expire", _reenlist, raw=True)


def _reenlist(state: InstanceState[Any], keys: Any) -> None:
    session = state.session
    if session is None:
        return
    registry = registry_of(session)
    # A commit expires every instance of the session, one listener call
    # each, and the instances one execution created share one stamp: the
    # profile the last stamped one found is kept on the registry, with the
    # stamp's objects (so their identity stays theirs).  Only a profile
    # found is kept: what a stamp finds is never replaced while its option
    # lives (option_profiles only adds), but a stamp that finds nothing may
    # find one later.  A stored profile wins, as in profile_of().
    if _sqla.stored_profile(state) is None:
        options = _sqla.load_options_of(state)
        path = _sqla.load_path_of(state)
        manager = state.manager
        last = registry.expire_stamp
        if last is not None and last[0] is options and last[1] is path and last[2] is manager:
            registry.enlist(state, last[3].marks)
            return
        profile = profile_of(state)
        if profile is None:
            return
        registry.expire_stamp = (options, path, manager, profile)
    else:
        profile = profile_of(state)
        if profile is None:
            return
    registry.enlist(state, profile.marks)
