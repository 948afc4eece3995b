"""Which armed instances of the session a touch loads with the touched one.

A batch loads one attribute for every instance of the session that is
armed for it (in load mode), still lacks it, and would load it with the
very statement the touched instance's load runs: the same identity token
(shard), load path and load options (stock replays each instance's own),
and the join values it reads unchanged in memory.  Expired columns batch
with every armed instance of the mapper that has exactly the same
attributes to refresh.

The search runs over the session's candidates for the attribute (see
``_registry``), not its identity map: its cost is the batch's.  The
verdicts on the hooks, profiles and load options that thousands of
instances share are cached for the length of one scan.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import InstanceState

from . import _sqla
from ._arming import profile_verdicts
from ._batch import lacks
from ._modes import RAISE, effective_mode
from ._registry import registry_of
from ._statements import per_property

__all__ = ["armed_peers", "expired_peers", "relationship_join_keys", "same_load"]


def armed_peers(session: Any, trigger: InstanceState[Any], loader: Any) -> list[InstanceState[Any]]:
    """The trigger first, then every other persistent instance of the session
    that is armed (in load mode) for the same attribute, still lacks it, and
    would load it with the very statement the trigger's load runs: the same
    identity token (shard), load path and load options (stock replays each
    instance's own), and the join values it reads unchanged in memory.

    The search runs over the session's candidates for the attribute (see
    ``_registry``), not its identity map: its cost is the batch's.  An
    instance's loader for the attribute is its per-instance hook if it has
    one, else its profile's class-level entry (SQLAlchemy's own
    precedence); the verdict on each distinct hook, profile and set of load
    options is cached, as the instances one query armed share them.
    """
    prop = loader.prop
    loaders_of = _sqla.loaders_of
    changes_of = _sqla.changes_of
    if trigger.deleted or not lacks(trigger, prop):
        return []
    key = loader.key
    # A collection with only backref appends queued still loads (they merge
    # in, as in a stock lazy load); a scalar changed in memory does not.
    changed_blocks = not prop_is_collection(prop)
    join_keys = loader.join_keys
    token = trigger.identity_token
    # Under an override to load or warn (NPLUS1LOADER_MODE, the pytest
    # plugin), instances armed by a raise option batch like the others.
    raise_hooks_load = effective_mode(RAISE) != RAISE
    # Keyed by the objects themselves (hashed by identity), held for the
    # length of the scan.
    by_hook: dict[Any, bool] = {loader: True}

    def batches(hook: Any) -> bool:
        verdict = by_hook.get(hook)
        if verdict is None:
            verdict = by_hook[hook] = bool(
                getattr(hook, "is_nplus1_loader", False)
                and hook.batches_with(loader, raise_hooks_load)
            )
        return verdict

    def profile_batches(profile: Any) -> bool:
        found = profile.class_level.get(key) if profile is not None else None
        return found is not None and batches(found)

    loads_alike = same_load(trigger)
    armed_alike = profile_verdicts(profile_batches, loads_alike)
    peers = [trigger]
    for state in registry_of(session).lacking_candidates(prop):
        if state is trigger:
            continue
        callables = loaders_of(state)
        hook = callables.get(key) if callables else None
        if not (armed_alike(state) if hook is None else batches(hook) and loads_alike(state)):
            continue
        committed = changes_of(state)
        if committed and (
            (changed_blocks and key in committed) or any(k in committed for k in join_keys)
        ):
            continue
        if join_keys:
            dict_ = state.dict
            if not all(k in dict_ for k in join_keys):
                # Expired or deferred: stock would read (refresh) it first.
                continue
        if state.identity_token != token:
            continue
        peers.append(state)
    return peers


def same_load(trigger: InstanceState[Any]) -> Any:
    """For a scan: whether a state was loaded with the trigger's load path
    and load options (equal ones, as a later execution of the same query
    gives), cached per distinct pair."""
    load_options = _sqla.load_options_of
    load_path = _sqla.load_path_of
    options = load_options(trigger)
    path = load_path(trigger)
    path_key = _path_key(path)
    verdicts: dict[tuple[int, int], bool] = {}
    held: list[Any] = []  # keeps the ids of the cache keys valid

    def alike(state: InstanceState[Any]) -> bool:
        other = load_options(state)
        other_path = load_path(state)
        if other is options and other_path is path:
            return True
        cache_key = (id(other), id(other_path))
        verdict = verdicts.get(cache_key)
        if verdict is None:
            held.append((other, other_path))
            verdict = verdicts[cache_key] = (
                _path_key(other_path) == path_key
                and len(other) == len(options)
                and all(
                    _sqla.options_equal(one=a, other=b) for a, b in zip(other, options, strict=True)
                )
            )
        return verdict

    return alike


def _path_key(path: Any) -> tuple[Any, ...]:
    """A load path with each mapper taken as its hierarchy's base: a Dog and
    a Cat loaded by two queries with equal options are peers for a
    relationship of Animal, as SQLAlchemy matches option paths along the
    inheritance hierarchy."""
    return tuple(getattr(step, "base_mapper", step) for step in path.path)


def relationship_join_keys(prop: Any) -> tuple[str, ...]:
    """The parent attributes whose values stock's lazy clause of ``prop``
    binds (the primary key of a one-to-many, the foreign key of a
    many-to-one), computed once per relationship."""

    def compute() -> tuple[str, ...]:
        _, bind_to_col = _sqla.lazy_clause(prop=prop)
        keys: list[str] = []
        for column in bind_to_col.values():
            try:
                name = prop.parent.get_property_by_column(column).key
            except Exception:  # a column the parent does not map
                continue
            if name not in keys:
                keys.append(name)
        return tuple(keys)

    return per_property(prop, "join keys", compute)  # type: ignore[no-any-return]


def prop_is_collection(prop: Any) -> bool:
    return bool(getattr(prop, "uselist", False))


def _loadable_expired(state: InstanceState[Any]) -> frozenset[str]:
    """The keys SQLAlchemy would refresh for this state (``_load_expired``)."""
    return _sqla.refreshable_expired(state=state)


def expired_peers(
    session: Any, trigger: InstanceState[Any], toload: set[str]
) -> list[InstanceState[Any]]:
    """The trigger, then every persistent instance of the same mapper that
    is armed (not by a raiseload_* option in raise mode) and has exactly the
    same attributes to refresh, searched among the session's candidates
    (see ``_registry``).

    After a commit every instance has the same keys expired and none
    changed: a set comparison settles those, the full computation is for
    the others.  The verdict on each distinct profile is cached.
    """
    mapper = trigger.mapper
    wanted = frozenset(toload)
    trigger_expired = trigger.expired_attributes
    token = trigger.identity_token
    loads_alike = same_load(trigger)
    shortcut = not _sqla.changes_of(trigger) and _loadable_expired(trigger) == wanted
    # A raiseload_* profile under raise mode raises on each touch: it is
    # no peer.  Under mode="raise" the others count, to tell an N+1 pattern.
    refreshes_alike = profile_verdicts(
        lambda profile: (
            profile is not None
            and profile.refresh_mode is not None
            and not (profile.strict_refresh and effective_mode(profile.refresh_mode) == RAISE)
        ),
        loads_alike,
    )
    changes_of = _sqla.changes_of
    peers = [trigger]
    for state in registry_of(session).expired_candidates(mapper):
        if state is trigger or state.identity_token != token or not refreshes_alike(state):
            continue
        expired = state.expired_attributes
        unchanged_alike = shortcut and expired == trigger_expired and not changes_of(state)
        if unchanged_alike or _loadable_expired(state) == wanted:
            peers.append(state)
    return peers
