"""What happens when an armed attribute is touched: find its armed peers in
the session and batch-load the attribute for all of them.

An instance is *armed* for an attribute when the query that loaded it
(or the latest nplus1 query that reached it) left an :class:`ArmedLoader`
for it: in its profile (see ``_arming``), or as a per-instance hook in
``state.callables[key]``.  SQLAlchemy calls the loader on first access.
Peers are looked up in the session's identity map at touch time, so
instances from other queries count when they were armed too, and loaders
and profiles hold no reference to any instance: dropping an object frees it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import LoaderCallableStatus, PassiveFlag
from sqlalchemy.orm.state import InstanceState

from . import _compat
from ._arming import profile_of, profile_verdicts
from ._batch import (
    checked_chunk_size,
    lacks,
    load_states,
    per_property,
    relationship_batchable,
)
from ._logging import find_call_site, log_batch
from ._modes import LOAD, RAISE, WARN, effective_mode, warn_at
from ._registry import registry_of
from ._report import (
    COLUMN,
    RELATIONSHIP,
    Pattern,
    fix_for,
    loading_for,
    record,
    threshold,
)
from ._stats import record_batch
from .exc import LazyLoadingAttributeError

__all__ = ["LOAD", "RAISE", "WARN", "ArmedLoader", "StockLoader", "armed_peers"]


class ArmedLoader:
    """The loader callable of one armed attribute.

    One object is shared by every instance that one query armed at one
    path, through their profile or as their per-instance hook.  ``strategy`` is the loader
    strategy that armed the attribute; its stock ``_load_for_state`` is the
    fallback for everything a batch must not do (no SQL allowed, detached,
    pending, a row that vanished).
    """

    __slots__ = ("chunk_size", "criteria", "key", "mode", "nested", "prop", "strategy")

    def __init__(
        self,
        strategy: Any,
        mode: str,
        nested: bool,
        chunk_size: int | None,
        criteria: tuple[Any, ...] = (),
    ) -> None:
        self.strategy = strategy
        self.prop = strategy.parent_property
        self.key = self.prop.key
        self.mode = mode
        self.nested = nested
        self.chunk_size = chunk_size
        # The with_loader_criteria options of the arming query: stock lazy
        # loads apply them (state.load_options), so the batch does too, and
        # only instances armed under the very same options are peers.
        self.criteria = criteria

    #: How the arming machinery tells our hooks from SQLAlchemy's.
    is_nplus1_loader = True

    def __repr__(self) -> str:
        return f"<ArmedLoader {self.prop} mode={self.mode}>"

    def signature(self) -> tuple[Any, ...]:
        """What this loader does (see Profile.signature)."""
        return (
            self.prop,
            self.mode,
            self.nested,
            self.chunk_size,
            tuple(id(option) for option in self.criteria),
        )

    def batches_with(self, other: ArmedLoader, raise_hooks_load: bool) -> bool:
        """Whether instances armed with this loader are peers of ``other``'s:
        the same attribute, in load mode, under the very same loader
        criteria options (stock lazy loads would apply them)."""
        return (
            (raise_hooks_load or self.mode != RAISE)
            and self.prop is other.prop
            and len(self.criteria) == len(other.criteria)
            and all(a is b for a, b in zip(self.criteria, other.criteria, strict=True))
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # A pickled instance comes back without its peers: restore it with
        # SQLAlchemy's own per-attribute behaviour.
        return (StockLoader, (self.key, self.is_column))

    def __call__(self, state: InstanceState[Any], passive: PassiveFlag) -> Any:
        mode = effective_mode(self.mode)
        if mode == RAISE and getattr(self.strategy, "_nplus1_mode", LOAD) == RAISE:
            # raiseload_all / raiseload_col / raiseload_rel: every touch.
            return self._raise(state, passive)
        session = state.session
        if (
            session is None
            or state.key is None
            or not passive & PassiveFlag.SQL_OK
            or passive & PassiveFlag.DEFERRED_HISTORY_LOAD
            or (self.is_many_to_one and not passive & PassiveFlag.RELATED_OBJECT_OK)
        ):
            # Without RELATED_OBJECT_OK (the flush reading a many-to-one's
            # history) SQLAlchemy only looks in the identity map: no SQL.
            # A deferred history load wants the old value of an attribute
            # set in memory, returned, not stored: stock's business.
            return self._stock(state, passive)
        if not self.is_column and not relationship_batchable(self.prop):
            return self._stock(state, passive)
        join_keys = self.join_keys
        if join_keys:
            # What stock reads first: the parent's values the load is keyed
            # by, refreshing them if they expired (which raises
            # ObjectDeletedError for a row deleted behind the session).
            dict_ = state.dict
            for key in join_keys:
                if key not in dict_:
                    found = _compat.load_attribute(state, key, passive & ~PassiveFlag.INIT_OK)
                    if found is LoaderCallableStatus.PASSIVE_NO_RESULT:
                        return self._stock(state, passive)
            if self.key in dict_:
                return LoaderCallableStatus.ATTR_WAS_SET
            if any(key in state.committed_state for key in join_keys):
                # Changed in memory: stock loads by the new values.
                return self._stock(state, passive)
        peers = armed_peers(session, state, self)
        query_site = _query_site_of(state)
        pattern = None
        if len(peers) >= threshold():
            # An N+1 pattern (issue 17): what raise mode raises for, warn
            # mode warns about, and a test run reports.
            pattern = self._pattern(state, len(peers), query_site)
            record(pattern)
            if mode == RAISE and not passive & PassiveFlag.NO_RAISE:
                raise LazyLoadingAttributeError(pattern.model, self.key, pattern.message(), pattern)
        if len(peers) < 2:
            # One instance is no N+1 pattern (unless threshold=1 says so):
            # the very statement stock runs.
            with loading_for(query_site):
                loaded = self._stock(state, passive)
            if mode == WARN and pattern is not None:
                warn_at(pattern.message(), pattern.touch_site, pattern)
            return loaded
        model = self.prop.parent.class_.__name__
        site = pattern.touch_site if pattern is not None else find_call_site()
        options = _nested_options(self) if self.nested and not self.is_column else ()
        with loading_for(query_site):
            batch = load_states(
                session,
                self.prop,
                peers,
                checked_chunk_size(self.chunk_size),
                options,
                autoflush=not passive & PassiveFlag.NO_AUTOFLUSH,
            )
        # Reported once the batch has run: a batch that failed (a lost
        # connection, MissingGreenlet under asyncio) loaded nothing.
        registry_of(session).drop_batched(self.prop, peers)
        record_batch(session, len(peers), batch.statements, batch.stock)
        log_batch(model, self.key, len(peers), site, pattern.log_fields() if pattern else None)
        if mode == WARN and pattern is not None:
            warn_at(pattern.message(), site, pattern)
        if self.key in state.dict:
            return LoaderCallableStatus.ATTR_WAS_SET
        # The batch found no row for this instance (deleted behind the
        # session): let SQLAlchemy load it alone, and raise as it would.
        return self._stock(state, passive)

    def _pattern(self, state: InstanceState[Any], instances: int, query_site: Any) -> Pattern:
        kind = COLUMN if self.is_column else RELATIONSHIP
        return Pattern(
            model=self.prop.parent.class_.__name__,
            attribute=self.key,
            kind=kind,
            instances=instances,
            query_site=query_site,
            touch_site=find_call_site(),
            fix=fix_for(_compat.load_path_of(state), self.prop, kind),
        )

    @property
    def join_keys(self) -> tuple[str, ...]:
        """The parent's attributes a stock load of this relationship reads
        to build its WHERE clause (none for a column: it loads by identity)."""
        if self.is_column:
            return ()
        return relationship_join_keys(self.prop)

    @property
    def is_many_to_one(self) -> bool:
        direction = getattr(self.prop, "direction", None)
        return direction is not None and direction.name == "MANYTOONE"

    @property
    def is_column(self) -> bool:
        return not hasattr(self.prop, "direction")

    def _stock(self, state: InstanceState[Any], passive: PassiveFlag) -> Any:
        """SQLAlchemy's own load of this one instance; with ``nested``, what
        it brings in is armed in turn (the same statement, one more option)."""
        nested = _nested_options(self) if self.nested and not self.is_column else ()
        return StockLoader(self.key, self.is_column)(state, passive, extra_options=nested)

    def _raise(self, state: InstanceState[Any], passive: PassiveFlag) -> Any:
        if self.is_column:
            if state.key is None:
                return LoaderCallableStatus.ATTR_EMPTY
            if not passive & PassiveFlag.SQL_OK:
                return LoaderCallableStatus.PASSIVE_NO_RESULT
            if passive & PassiveFlag.NO_RAISE:
                # SQLAlchemy's own bookkeeping (a flush reading a foreign key
                # for the history of a many-to-one): load it, never raise.
                return self._stock(state, passive)
            raise strict_error(state, self.prop, COLUMN)
        # The raising relationship strategy applies SQLAlchemy's own rules of
        # when a lazy="raise" relationship raises (never during flush or
        # backref bookkeeping), with our exception.
        raising = _compat.get_strategy(self.prop, (("lazy", "nplus1loader_raise"),))
        return _compat.load_for_state(raising, state, passive)


class StockLoader:
    """SQLAlchemy's own one-instance loading of an attribute.

    Used as the fallback of :class:`ArmedLoader`, and as what an armed
    instance carries after pickling: its peers stay behind, so it loads its
    attributes one at a time, as stock SQLAlchemy would.
    """

    __slots__ = ("is_column", "key")

    def __init__(self, key: str, is_column: bool) -> None:
        self.key = key
        self.is_column = is_column

    def __reduce__(self) -> tuple[Any, ...]:
        return (StockLoader, (self.key, self.is_column))

    def __call__(
        self, state: InstanceState[Any], passive: PassiveFlag, extra_options: Any = ()
    ) -> Any:
        """``extra_options``: added to a relationship's statement (the
        option that arms what it brings in)."""
        prop = state.manager.mapper.attrs[self.key]
        if self.is_column:
            stock = _compat.get_strategy(prop, (("deferred", True), ("instrument", True)))
        else:
            stock = _compat.get_strategy(prop, (("lazy", "select"),))
        return _compat.load_for_state(stock, state, passive, extra_options=extra_options)


def armed_peers(
    session: Any, trigger: InstanceState[Any], loader: ArmedLoader
) -> list[InstanceState[Any]]:
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
        callables = state.callables
        hook = callables.get(key) if callables else None
        if not (armed_alike(state) if hook is None else batches(hook) and loads_alike(state)):
            continue
        committed = state.committed_state
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
    options = trigger.load_options
    path = _compat.load_path_of(trigger)
    path_key = _path_key(path)
    verdicts: dict[tuple[int, int], bool] = {}
    held: list[Any] = []  # keeps the ids of the cache keys valid

    def alike(state: InstanceState[Any]) -> bool:
        other = state.load_options
        other_path = _compat.load_path_of(state)
        if other is options and other_path is path:
            return True
        cache_key = (id(other), id(other_path))
        verdict = verdicts.get(cache_key)
        if verdict is None:
            held.append((other, other_path))
            verdict = verdicts[cache_key] = (
                _path_key(other_path) == path_key
                and len(other) == len(options)
                and all(_compat.options_equal(a, b) for a, b in zip(other, options, strict=True))
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
        _, bind_to_col = _compat.lazy_clause(prop)
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


def _query_site_of(state: InstanceState[Any]) -> Any:
    """The line of the query that armed ``state``, where it was recorded."""
    profile = profile_of(state)
    return profile.query_site if profile is not None else None


def strict_error(state: InstanceState[Any], prop: Any, kind: str) -> LazyLoadingAttributeError:
    """What a ``raiseload_*`` option raises on a touch: the attribute, where
    it was touched, and the option that loads it in the query."""
    model = state.class_.__name__
    site = find_call_site()
    touched = str(site) if site is not None else "an unknown line"
    fix = fix_for(_compat.load_path_of(state), prop, kind)
    return LazyLoadingAttributeError(
        model,
        prop.key,
        f"{model}.{prop.key} is not available due to raiseload; touched at {touched}. "
        f"Load it in the query: {fix}",
    )


def _nested_options(loader: ArmedLoader) -> tuple[Any, ...]:
    from ._options import batch_arming_option

    # A strict raiseload_* loader never batches: only load, warn and raise
    # (N+1 patterns) reach here.
    return (batch_arming_option(loader.chunk_size, loader.mode),)
