"""What happens when an armed attribute is touched: one path for
relationships, columns and expired attributes alike.

SQLAlchemy calls a loader when user code (or SQLAlchemy itself) reads an
attribute an instance lacks: the attribute's loader callable for a lazy
relationship or a deferred column, the class manager's
``expired_attribute_loader`` for expired columns.  On armed instances
those are ours: :class:`ArmedLoader` (one per armed attribute, shared by
every instance one query armed at one path) and :class:`BatchRefresh` (one
per mapper).  Both run the same four steps, written once in
:func:`touch`:

1. **guard**: whatever a batch must not do (no SQL allowed, detached,
   pending, a flush reading history, a changed join value) is left to
   SQLAlchemy's own one-instance load;
2. **peers**: the armed instances of the session that would load the
   attribute with the very statement the touched one's load runs
   (``_peers``);
3. **load or raise**: an N+1 pattern (``threshold`` peers or more) raises in
   raise mode; otherwise one instance loads alone, the stock way, and more
   load in one batch (``_batch``);
4. **report**: counters, log record and warning (``_report``).

Loaders hold no reference to any instance: dropping an object frees it.
"""

from __future__ import annotations

from operator import is_
from typing import Any, cast

from sqlalchemy.orm import (
    ColumnProperty,
    InstanceState,
    LoaderCallableStatus,
    Mapper,
    PassiveFlag,
    Session,
)

from . import _sqla
from ._arming import profile_of, restore_arming
from ._batch import BatchResult, load_expired_columns, load_states, relationship_batchable
from ._modes import RAISE, WARN, effective_mode
from ._once import MapperSet
from ._peers import armed_peers, expired_peers, relationship_join_keys
from ._plan import batch_option
from ._registry import registry_of
from ._report import (
    COLUMN,
    EXPIRED,
    RELATIONSHIP,
    CallSite,
    Pattern,
    find_call_site,
    fix_for,
    loading_for,
    record,
    report_batch,
    strict_error,
    threshold,
    warn_at,
)

__all__ = ["ArmedLoader", "BatchRefresh", "ensure_refresh_hook", "touch"]


class Touch:
    """One touch of an armed attribute of one instance: what the path needs
    to know, supplied by the loader SQLAlchemy called.  Subclasses say how
    their kind of attribute finds its peers and loads."""

    __slots__ = ("attribute", "kind", "mode", "passive", "query_site", "session", "state")

    def __init__(
        self,
        state: InstanceState[Any],
        passive: PassiveFlag,
        *,
        kind: str,
        mode: str,
        attribute: str | None,
        query_site: CallSite | None,
    ) -> None:
        self.state = state
        #: The guard saw to it that the instance is in a session.
        self.session: Session = cast("Session", state.session)
        self.passive = passive
        self.kind = kind
        self.mode = mode
        #: The attribute touched (for an expired column, found on demand).
        self.attribute = attribute
        self.query_site = query_site

    @property
    def model(self) -> str:
        return self.state.mapper.class_.__name__

    def name(self) -> str:
        """The attribute to name in the report."""
        return self.attribute or ""

    def property(self) -> Any:
        """The mapped property the report's advice loads."""
        raise NotImplementedError

    def peers(self) -> list[InstanceState[Any]]:
        raise NotImplementedError

    def raises_for_pattern(self) -> bool:
        """In raise mode, whether this N+1 pattern raises."""
        return not self.passive & PassiveFlag.NO_RAISE

    def alone(self) -> Any:
        """SQLAlchemy's own load of this one instance."""
        raise NotImplementedError

    def batch(self, peers: list[InstanceState[Any]]) -> BatchResult:
        raise NotImplementedError

    def forget(self, peers: list[InstanceState[Any]]) -> None:
        """Tell the session's registry these peers are loaded."""
        raise NotImplementedError

    def after_batch(self) -> Any:
        """What the loader returns once the batch ran."""
        raise NotImplementedError


def touch(t: Touch) -> Any:
    """The one path of a touch (steps 2 to 4 of the module docstring; the
    loader has run the guard)."""
    state = t.state
    peers = t.peers()
    pattern = None
    if len(peers) >= threshold():
        # An N+1 pattern: what raise mode raises for, warn mode warns
        # about, and a test run reports.
        pattern = Pattern(
            model=t.model,
            attribute=t.name(),
            kind=t.kind,
            instances=len(peers),
            query_site=t.query_site,
            touch_site=find_call_site(),
            fix=fix_for(_sqla.load_path_of(state), t.property(), t.kind),
        )
        record(pattern)
        if t.mode == RAISE and t.raises_for_pattern():
            raise pattern.error()
    warn = t.mode == WARN and pattern is not None
    if len(peers) < 2:
        # One instance is no N+1 pattern (unless threshold=1 says so): the
        # very statement stock runs.
        with loading_for(t.query_site):
            loaded = t.alone()
        if warn and pattern is not None:
            warn_at(pattern.message(), pattern.touch_site, pattern)
        return loaded
    site = pattern.touch_site if pattern is not None else find_call_site()
    with loading_for(t.query_site):
        result = t.batch(peers)
    t.forget(peers)
    report_batch(
        t.session,
        model=t.model,
        attribute=t.name(),
        instances=len(peers),
        statements=result.statements,
        stock_statements=result.stock,
        site=site,
        pattern=pattern,
        warn=warn,
    )
    return t.after_batch()


# ------------------------------------------------- relationships, columns


class ArmedLoader:
    """The loader callable of one armed attribute.

    One object is shared by every instance that one query armed at one
    path, through their profile or as their per-instance hook.  ``strategy`` is the loader
    strategy that armed the attribute; SQLAlchemy's own one-instance load
    is the fallback for everything a batch must not do (no SQL allowed,
    detached, pending, a row that vanished).
    """

    __slots__ = ("chunk_size", "criteria", "key", "mode", "nested", "prop", "strategy", "strict")

    def __init__(
        self,
        strategy: Any,
        *,
        mode: str,
        strict: bool,
        nested: bool,
        chunk_size: int,
        criteria: tuple[Any, ...] = (),
    ) -> None:
        self.strategy = strategy
        self.prop = strategy.parent_property
        self.key = self.prop.key
        self.mode = mode
        #: A raiseload_* option's loader: raises on every touch in raise mode.
        self.strict = strict
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
            and self.has_criteria(other.criteria)
        )

    def has_criteria(self, criteria: tuple[Any, ...]) -> bool:
        """Whether this loader applies the very same loader criteria
        objects as ``criteria``, in order."""
        return len(self.criteria) == len(criteria) and all(map(is_, self.criteria, criteria))

    def __reduce__(self) -> tuple[Any, ...]:
        # A pickled instance comes back without its peers: restore it with
        # SQLAlchemy's own per-attribute behaviour.
        return (_sqla.StockLoader, (self.key, self.is_column))

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

    def nested_options(self) -> tuple[Any, ...]:
        """What a relationship's load adds so that what it brings in is
        armed in turn (a strict raiseload_* loader never batches: only
        load, warn and raise for N+1 patterns reach here)."""
        if not self.nested or self.is_column:
            return ()
        return (batch_option(self.chunk_size, self.mode),)

    def stock(self, state: InstanceState[Any], passive: PassiveFlag) -> Any:
        """SQLAlchemy's own load of this one instance; with ``nested``, what
        it brings in is armed in turn (the same statement, one more option)."""
        return _sqla.StockLoader(self.key, self.is_column)(
            state, passive, extra_options=self.nested_options()
        )

    def __call__(self, state: InstanceState[Any], passive: PassiveFlag) -> Any:
        mode = effective_mode(self.mode)
        if mode == RAISE and self.strict:
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
            return self.stock(state, passive)
        if not self.is_column and not relationship_batchable(self.prop):
            return self.stock(state, passive)
        join_keys = self.join_keys
        if join_keys:
            # What stock reads first: the parent's values the load is keyed
            # by, refreshing them if they expired (which raises
            # ObjectDeletedError for a row deleted behind the session).
            dict_ = state.dict
            for key in join_keys:
                if key not in dict_:
                    found = _sqla.load_attribute(
                        state=state, key=key, passive=passive & ~PassiveFlag.INIT_OK
                    )
                    if found is LoaderCallableStatus.PASSIVE_NO_RESULT:
                        return self.stock(state, passive)
            if self.key in dict_:
                return LoaderCallableStatus.ATTR_WAS_SET
            if _sqla.changed_in_memory(state=state, keys=join_keys):
                # Changed in memory: stock loads by the new values.
                return self.stock(state, passive)
        profile = profile_of(state)
        return touch(
            _AttributeTouch(
                self,
                state,
                passive,
                kind=COLUMN if self.is_column else RELATIONSHIP,
                mode=mode,
                attribute=self.key,
                query_site=profile.query_site if profile is not None else None,
            )
        )

    def _raise(self, state: InstanceState[Any], passive: PassiveFlag) -> Any:
        if self.is_column:
            if state.key is None:
                return LoaderCallableStatus.ATTR_EMPTY
            if not passive & PassiveFlag.SQL_OK:
                return LoaderCallableStatus.PASSIVE_NO_RESULT
            if passive & PassiveFlag.NO_RAISE:
                # SQLAlchemy's own bookkeeping (a flush reading a foreign key
                # for the history of a many-to-one): load it, never raise.
                return self.stock(state, passive)
            raise strict_error(
                state.class_.__name__, self.key, COLUMN, _sqla.load_path_of(state), self.prop
            )
        # The raising relationship strategy applies SQLAlchemy's own rules of
        # when a lazy="raise" relationship raises (never during flush or
        # backref bookkeeping), with our exception.
        raising = _sqla.get_strategy(prop=self.prop, key=(("lazy", "nplus1loader_raise"),))
        return _sqla.load_for_state(strategy=raising, state=state, passive=passive)


class _AttributeTouch(Touch):
    __slots__ = ("loader",)

    def __init__(self, loader: ArmedLoader, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.loader = loader

    @property
    def model(self) -> str:
        return str(self.loader.prop.parent.class_.__name__)

    def property(self) -> Any:
        return self.loader.prop

    def peers(self) -> list[InstanceState[Any]]:
        state = self.state
        return armed_peers(self.session, state, self.loader)

    def alone(self) -> Any:
        return self.loader.stock(self.state, self.passive)

    def batch(self, peers: list[InstanceState[Any]]) -> BatchResult:
        loader = self.loader
        return load_states(
            self.session,
            loader.prop,
            peers,
            loader.chunk_size,
            loader.nested_options(),
            autoflush=not self.passive & PassiveFlag.NO_AUTOFLUSH,
        )

    def forget(self, peers: list[InstanceState[Any]]) -> None:
        registry_of(self.session).drop_batched(self.loader.prop, peers)

    def after_batch(self) -> Any:
        if self.loader.key in self.state.dict:
            return LoaderCallableStatus.ATTR_WAS_SET
        # The batch found no row for this instance (deleted behind the
        # session): let SQLAlchemy load it alone, and raise as it would.
        return self.alone()


# ------------------------------------------------------ expired attributes

# Once per mapper, like SQLAlchemy's own event registry: mappers live as
# long as the process (held weakly, so that a test's throwaway mappers go).
_refreshing = MapperSet()


def ensure_refresh_hook(mapper: Mapper[Any]) -> None:
    """Batch the refresh of expired columns of ``mapper``'s armed instances:
    after ``session.commit()`` (``expire_on_commit=True``) reading an
    attribute refreshes that one instance, one query per object in a loop,
    unless the class manager's ``expired_attribute_loader`` is ours."""
    if id(mapper) in _refreshing:
        return
    _refreshing.add(mapper)
    original = _sqla.expired_attribute_loader(mapper=mapper)
    if not isinstance(original, BatchRefresh):
        _sqla.set_expired_attribute_loader(mapper=mapper, loader=BatchRefresh(mapper, original))


class BatchRefresh:
    """Stands in for ``ClassManager.expired_attribute_loader`` of one mapper:
    touching an expired column on one armed instance refreshes the same
    columns of every armed peer with the same attributes expired, one query
    per chunk.  A peer whose row is gone, a refresh of one instance,
    ``populate_existing`` and everything SQLAlchemy does without SQL keep
    their stock behaviour."""

    __slots__ = ("mapper", "original")

    def __init__(self, mapper: Mapper[Any], original: Any) -> None:
        self.mapper = mapper
        self.original = original

    def __call__(self, state: InstanceState[Any], toload: set[str], passive: PassiveFlag) -> Any:
        profile = profile_of(state)
        if profile is None:
            return self.original(state, toload, passive)
        if (
            profile.refresh_mode is None
            or state.session is None
            or state.key is None
            or not passive & PassiveFlag.SQL_OK
        ):
            # Refreshed the stock way, which replays the options of the
            # query that first loaded it: the latest arming query decides.
            return self.refresh_alone(profile, state, toload, passive)
        mapper = state.mapper
        columns = sorted(k for k in toload if isinstance(mapper.attrs.get(k), ColumnProperty))
        if not columns:
            return self.refresh_alone(profile, state, toload, passive)
        mode = effective_mode(profile.refresh_mode)
        if mode == RAISE and profile.strict_refresh:
            # raiseload_all / raiseload_col: every touch by user code.
            return self._raise_or_refresh(profile, state, toload, passive)
        return touch(
            _ExpiredTouch(
                self,
                profile,
                columns,
                toload,
                state,
                passive,
                kind=EXPIRED,
                mode=mode,
                attribute=None,
                query_site=profile.query_site,
            )
        )

    def refresh_alone(
        self, profile: Any, state: InstanceState[Any], toload: set[str], passive: PassiveFlag
    ) -> Any:
        """No peer: SQLAlchemy refreshes the instance itself, replaying the
        options of the query that *first* loaded it (so a ``joinedload()``
        comes back in the same SELECT).  An nplus1 option among them would
        arm the instance as that first query did; the latest arming query
        decides, so its arming is put back afterwards."""
        try:
            return self.original(state, toload, passive)
        finally:
            restore_arming(state, profile, toload)

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
        touched, by_user = _sqla.refresh_trigger(state=state)
        if (
            touched is None
            or not by_user
            or passive & PassiveFlag.NO_RAISE
            or not profile.raises_for(state.mapper, touched)
        ):
            return self.refresh_alone(profile, state, toload, passive)
        raise strict_error(
            state.mapper.class_.__name__,
            touched,
            EXPIRED,
            _sqla.load_path_of(state),
            state.mapper.attrs[touched],
        )


class _ExpiredTouch(Touch):
    __slots__ = ("by_user", "columns", "profile", "refresh", "toload", "touched_known")

    def __init__(
        self,
        refresh: BatchRefresh,
        profile: Any,
        columns: list[str],
        toload: set[str],
        *args: Any,
        **kw: Any,
    ) -> None:
        super().__init__(*args, **kw)
        self.refresh = refresh
        self.profile = profile
        self.columns = columns
        self.toload = toload
        self.by_user = False
        self.touched_known = False

    def _find_touched(self) -> None:
        # SQLAlchemy does not say which attribute was read: a frame walk,
        # done only when a report needs it.
        if not self.touched_known:
            self.touched_known = True
            self.attribute, self.by_user = _sqla.refresh_trigger(state=self.state)

    def name(self) -> str:
        self._find_touched()
        return self.attribute or self.columns[0]

    def property(self) -> Any:
        return self.state.mapper.attrs[self.name()]

    def peers(self) -> list[InstanceState[Any]]:
        state = self.state
        return expired_peers(self.session, state, set(self.toload))

    def raises_for_pattern(self) -> bool:
        # Expired instances refreshing one at a time, typically every
        # instance after a commit(): raises where user code read a column
        # the profile raises for.
        self._find_touched()
        return (
            self.attribute is not None
            and self.by_user
            and super().raises_for_pattern()
            and self.profile.raises_for(self.state.mapper, self.attribute)
        )

    def alone(self) -> Any:
        return self.refresh.refresh_alone(self.profile, self.state, self.toload, self.passive)

    def batch(self, peers: list[InstanceState[Any]]) -> BatchResult:
        state = self.state
        statements = load_expired_columns(
            state.session,
            state.mapper,
            peers,
            self.columns,
            self.profile.chunk_size,
            autoflush=not self.passive & PassiveFlag.NO_AUTOFLUSH,
        )
        return BatchResult(statements, len(peers))

    def forget(self, peers: list[InstanceState[Any]]) -> None:
        registry_of(self.session).drop_batched(self.state.mapper, peers, expired=True)

    def after_batch(self) -> Any:
        state = self.state
        if any(k in state.expired_attributes for k in self.columns):
            # Its row is gone: the stock refresh raises ObjectDeletedError.
            return self.refresh.original(state, self.toload, self.passive)
        return None
