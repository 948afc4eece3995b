"""Which instances of a session can be in a batch: a registry of candidates.

A batch loads one attribute for every armed instance of the session that
still lacks it.  Walking the whole identity map to find them would make a
batch cost what the session holds: a worker paging through a table in one
long session, or a request that first loads a large lookup table, would
pay for every instance already processed on every batch, quadratically
over a session's life.  So each session keeps, per armed attribute (the
mapped property, as peers must share it) a :class:`Candidates` bucket of
the instances armed for it that may still lack it, and, per mapper, one of
the armed instances that may have expired columns to refresh.

* Arming adds an instance to the buckets of the attributes it lacks (one
  dict insertion per armed attribute and row).
* An ``expire`` (commit, rollback, ``session.expire()``) adds it back for
  what it drops: the ``expire`` listener of ``_arming`` calls :func:`note`.
* A scan (:meth:`Candidates.live`) yields the candidates in arming order
  and drops, for good, those that no longer qualify: loaded since, their
  object gone, no longer in this session.  Each instance is dropped once
  per time it was added, so a scan costs the batch it finds plus what
  loaded since the last one, never the session.

The buckets hold states, not objects (an ``InstanceState`` refers to its
object weakly), and prune themselves whenever they double in size, so
instances that are never touched again cost bounded memory even in a
session that lives for ever.  The registry of a session goes with it.

Who *is* a peer (same loader, load options, shard, unchanged join values)
stays the business of ``_peers`` and ``_expiry``: the registry narrows the
search, it decides nothing.  An instance moved to another session (expunge,
then ``add``) joins that session's batches once a query loads it there.
"""

from __future__ import annotations

import weakref
from typing import Any

from sqlalchemy.orm.state import InstanceState

from . import _compat

#: A bucket is pruned when it grows past twice its size after the last
#: pruning, and never below this many entries.
_MIN_PRUNE = 1024


class Candidates(dict[InstanceState[Any], None]):
    """Instances that may still need one thing loaded, in arming order.

    ``key`` names the attribute they lack; None stands for expired columns
    (a state qualifies while it has expired attributes).
    """

    __slots__ = ("key", "limit", "session_key")

    def __init__(self, session_key: int, key: str | None) -> None:
        super().__init__()
        self.session_key = session_key
        self.key = key
        self.limit = _MIN_PRUNE

    def add(self, state: InstanceState[Any]) -> None:
        self[state] = None
        if len(self) > self.limit:
            self.live()

    def live(self) -> list[InstanceState[Any]]:
        """The candidates that still qualify; the others are dropped."""
        session_key = self.session_key
        key = self.key
        live: list[InstanceState[Any]] = []
        gone: list[InstanceState[Any]] = []
        for state in self:
            if (
                state.session_id != session_key
                or state.key is None
                or _compat.is_deleted(state)
                or state.obj() is None
                or (key in state.dict if key is not None else not state.expired_attributes)
            ):
                gone.append(state)
            else:
                live.append(state)
        for state in gone:
            del self[state]
        self.limit = max(_MIN_PRUNE, 2 * len(self))
        return live


class Registry:
    """The candidate buckets of one session, for one identity map of it
    (``expunge_all()`` and ``close()`` give the session a new one)."""

    __slots__ = ("expired", "identity_map", "lacking", "session_key")

    def __init__(self, session_key: int, identity_map: Any) -> None:
        self.session_key = session_key
        self.identity_map = weakref.ref(identity_map)
        self.lacking: dict[Any, Candidates] = {}
        self.expired: dict[Any, Candidates] = {}

    def lacking_bucket(self, prop: Any) -> Candidates:
        """The instances armed for ``prop`` that may still lack it."""
        bucket = self.lacking.get(prop)
        if bucket is None:
            bucket = self.lacking[prop] = Candidates(self.session_key, prop.key)
        return bucket

    def expired_bucket(self, mapper: Any) -> Candidates:
        """The armed instances of exactly ``mapper`` that may have expired
        columns to refresh."""
        bucket = self.expired.get(mapper)
        if bucket is None:
            bucket = self.expired[mapper] = Candidates(self.session_key, None)
        return bucket


_registries: weakref.WeakKeyDictionary[Any, Registry] = weakref.WeakKeyDictionary()


def registry_of(session: Any) -> Registry:
    """The registry of ``session`` (a sync ``Session``), made on first use."""
    found = _registries.get(session)
    identity_map = session.identity_map
    if found is None or found.identity_map() is not identity_map:
        # A new identity map holds none of the instances the buckets
        # recorded: they start empty, and what they held is freed.
        found = _registries[session] = Registry(session.hash_key, identity_map)
    return found


def drop_loaded(bucket: Candidates, states: list[InstanceState[Any]]) -> None:
    """After a batch: forget the states it settled, at once, rather than
    holding them until the next scan."""
    key = bucket.key
    for state in states:
        if key in state.dict if key is not None else not state.expired_attributes:
            bucket.pop(state, None)


def note(
    registry: Registry,
    state: InstanceState[Any],
    profile: Any,
    keys: Any = None,
) -> None:
    """Record ``state`` as a candidate for what ``profile`` arms and it lacks
    (only ``keys`` of it, when given: what an expire of those dropped)."""
    dict_ = state.dict
    for key, loader in profile.loaders.items():
        if key not in dict_ and (keys is None or key in keys):
            registry.lacking_bucket(loader.prop).add(state)
    if profile.refresh_mode is not None and state.expired_attributes:
        registry.expired_bucket(state.mapper).add(state)
