"""Protection that survives ``commit()`` and ``expire()``.

After ``session.commit()`` (``expire_on_commit=True``) SQLAlchemy expires
every instance and drops their per-instance hooks; reading an attribute then
refreshes that one instance: one query per object in a loop.  Armed
instances stay armed:

* their :class:`~nplus1loader._arming.Profile` survives the expire, and
  with it the class-level dispatch of their lazy relationships and
  deferred columns; an ``expire`` listener puts back the few per-instance
  hooks an expire drops;
* the class manager's ``expired_attribute_loader`` (the per-class function
  SQLAlchemy calls to refresh expired columns) is wrapped so that touching
  an expired column on one armed instance refreshes the same columns of
  every armed peer with the same attributes expired, one query per chunk.

A peer whose row is gone, a refresh of one instance, ``populate_existing``
and everything SQLAlchemy does without SQL keep their stock behaviour.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import ColumnProperty, Mapper, PassiveFlag
from sqlalchemy.orm.state import InstanceState

from . import _compat
from ._arming import profile_of, profile_verdicts, set_profile
from ._batch import ChunkRunner, load_columns_by_key
from ._keys import DEFAULT_CHUNK_SIZE
from ._logging import find_call_site, log_batch
from ._modes import RAISE, WARN, effective_mode, warn_at
from ._peers import same_load
from ._registry import registry_of
from ._report import EXPIRED, Pattern, fix_for, loading_for, record, threshold
from ._stats import record_batch
from .exc import LazyLoadingAttributeError

# ---------------------------------------------------------------- hooks
# Once per mapper, like SQLAlchemy's own event registry: mappers live as
# long as the process (a WeakSet so that a test's throwaway mappers go).

_refreshing: weakref.WeakSet[Mapper[Any]] = weakref.WeakSet()
_listening: weakref.WeakSet[Mapper[Any]] = weakref.WeakSet()


def ensure_refresh_hook(mapper: Mapper[Any]) -> None:
    """Batch the refresh of expired columns of ``mapper``'s armed instances."""
    if mapper in _refreshing:
        return
    _refreshing.add(mapper)
    manager = mapper.class_manager
    original = _compat.class_manager_expired_loader(manager)
    if not isinstance(original, BatchRefresh):
        _compat.set_class_manager_expired_loader(manager, BatchRefresh(mapper, original))


def ensure_expire_listener(mapper: Mapper[Any]) -> None:
    """Put per-instance hooks back after an expire, which drops them (only
    needed where an armed attribute has no class-level loader)."""
    if mapper in _listening:
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
            _compat.install_callable(state, key, hooks[key])


class BatchRefresh:
    """Stands in for ``ClassManager.expired_attribute_loader`` of one mapper."""

    __slots__ = ("mapper", "original")

    def __init__(self, mapper: Mapper[Any], original: Any) -> None:
        self.mapper = mapper
        self.original = original

    def __call__(self, state: InstanceState[Any], toload: set[str], passive: PassiveFlag) -> Any:
        profile = profile_of(state)
        if profile is None:
            return self.original(state, toload, passive)
        session = state.session
        if (
            profile.refresh_mode is None
            or session is None
            or state.key is None
            or not passive & PassiveFlag.SQL_OK
        ):
            # Refreshed the stock way, which replays the options of the
            # query that first loaded it: the latest arming query decides.
            return self._refresh_alone(profile, state, toload, passive)
        mapper = state.mapper
        columns = sorted(k for k in toload if isinstance(mapper.attrs.get(k), ColumnProperty))
        if not columns:
            return self._refresh_alone(profile, state, toload, passive)
        mode = effective_mode(profile.refresh_mode)
        model = mapper.class_.__name__
        if mode == RAISE and profile.strict_refresh:
            # raiseload_all / raiseload_col: every touch by user code.
            return self._raise_or_refresh(profile, state, toload, passive)
        peers = expired_peers(session, state, set(toload))
        touched = None
        pattern = None
        if len(peers) >= threshold():
            # An N+1 pattern (issue 17): expired instances refreshing one
            # at a time, typically every instance after a commit().
            touched, by_user = _compat.refresh_trigger(state)
            name = touched or columns[0]
            pattern = Pattern(
                model=model,
                attribute=name,
                kind=EXPIRED,
                instances=len(peers),
                query_site=profile.query_site,
                touch_site=find_call_site(),
                fix=fix_for(_compat.load_path_of(state), mapper.attrs[name], EXPIRED),
            )
            record(pattern)
            if (
                mode == RAISE
                and touched is not None
                and by_user
                and not passive & PassiveFlag.NO_RAISE
                and profile.raises_for(mapper, touched)
            ):
                raise LazyLoadingAttributeError(model, touched, pattern.message(), pattern)
        if len(peers) < 2:
            refreshed = self._refresh_alone(profile, state, toload, passive)
            if mode == WARN and pattern is not None:  # threshold=1
                warn_at(pattern.message(), pattern.touch_site, pattern)
            return refreshed
        site = pattern.touch_site if pattern is not None else find_call_site()
        with loading_for(profile.query_site):
            queries = refresh_columns(
                session,
                mapper,
                peers,
                columns,
                profile.chunk_size,
                autoflush=not passive & PassiveFlag.NO_AUTOFLUSH,
            )
        registry_of(session).drop_batched(mapper, peers, expired=True)
        if touched is None:
            touched = _compat.refresh_trigger(state)[0]
        touched = touched or columns[0]
        record_batch(session, len(peers), queries)
        log_batch(model, touched, len(peers), site, pattern.log_fields() if pattern else None)
        if mode == WARN and pattern is not None:
            warn_at(pattern.message(), site, pattern)
        if any(k in state.expired_attributes for k in columns):
            # Its row is gone: the stock refresh raises ObjectDeletedError.
            return self.original(state, toload, passive)
        return None

    def _refresh_alone(
        self, profile: Any, state: InstanceState[Any], toload: set[str], passive: PassiveFlag
    ) -> Any:
        """No peer: SQLAlchemy refreshes the instance itself, replaying the
        options of the query that *first* loaded it (so a ``joinedload()``
        comes back in the same SELECT).  An nplus1 option among them would
        arm the instance as that first query did; the latest arming query
        decides, so its profile and hooks are put back afterwards."""
        try:
            return self.original(state, toload, passive)
        finally:
            if profile_of(state) is not profile:
                set_profile(state, profile)
            callables = _compat.state_callables(state)
            for key in toload:
                mine = profile.instance_hooks.get(key)
                hook = callables.get(key)
                if hook is mine or not getattr(hook, "is_nplus1_loader", False):
                    continue
                if mine is None:
                    del callables[key]
                elif key not in state.dict:
                    callables[key] = mine

    def _raise_or_refresh(
        self, profile: Any, state: InstanceState[Any], toload: set[str], passive: PassiveFlag
    ) -> Any:
        """Raise mode: user code reading a covered expired column raises;
        SQLAlchemy's own reads (a flush reading the primary key for its
        UPDATE, a lazy load reading a foreign key, the identity-map lookup of
        a many-to-one refreshing its target, cascades under NO_RAISE) refresh
        the stock way, as they would under SQLAlchemy's own raiseload.  That
        refresh replays this profile's own raiseload option, which arms only
        what the refresh leaves unloaded (not the deferred columns): the
        profile is put back after it, as after any refresh alone."""
        touched, by_user = _compat.refresh_trigger(state)
        if (
            touched is None
            or not by_user
            or passive & PassiveFlag.NO_RAISE
            or not profile.raises_for(state.mapper, touched)
        ):
            return self._refresh_alone(profile, state, toload, passive)
        model = state.mapper.class_.__name__
        site = find_call_site()
        fix = fix_for(_compat.load_path_of(state), state.mapper.attrs[touched], EXPIRED)
        raise LazyLoadingAttributeError(
            model,
            touched,
            f"{model}.{touched} is not available due to raiseload (expired); touched at "
            f"{site if site is not None else 'an unknown line'}. Expired instances (after "
            "commit() or expire()) refresh one at a time: keep them loaded with "
            f"expire_on_commit=False, or reload them in one query with {fix}",
        )


def _loadable_expired(state: InstanceState[Any]) -> frozenset[str]:
    """The keys SQLAlchemy would refresh for this state (``_load_expired``)."""
    manager = state.manager
    return frozenset(
        k
        for k in state.expired_attributes
        if k not in state.committed_state and manager[k].impl.load_on_unexpire
    )


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
    shortcut = not trigger.committed_state and _loadable_expired(trigger) == wanted
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
    peers = [trigger]
    for state in registry_of(session).expired_candidates(mapper):
        if state is trigger or state.identity_token != token or not refreshes_alike(state):
            continue
        expired = state.expired_attributes
        unchanged_alike = shortcut and expired == trigger_expired and not state.committed_state
        if unchanged_alike or _loadable_expired(state) == wanted:
            peers.append(state)
    return peers


def refresh_columns(
    session: Any,
    mapper: Mapper[Any],
    states: list[InstanceState[Any]],
    keys: list[str],
    chunk_size: int | None,
    *,
    autoflush: bool,
) -> int:
    """One SELECT per chunk of the primary key and ``keys``, as the stock
    refresh of the first state would run it (its options, its shard);
    values are stored as committed state and the keys are no longer
    expired."""
    trigger = states[0]

    def settle(state: InstanceState[Any]) -> None:
        if state is not trigger:
            # What SQLAlchemy's _load_expired does after refreshing.
            state.expired_attributes.clear()

    run = ChunkRunner(session, trigger, mapper.attrs[keys[0]], (), autoflush)
    size = chunk_size or DEFAULT_CHUNK_SIZE
    return load_columns_by_key(run, mapper, states, size, keys, each=settle)
