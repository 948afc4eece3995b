"""Which instances of a session can be in a batch: a registry of candidates.

A batch loads one attribute for every armed instance of the session that
still lacks it.  Walking the whole identity map to find them would make a
batch cost what the session holds: a worker paging through a table in one
long session, or a request that first loads a large lookup table, would
pay for every instance already processed on every batch, quadratically
over a session's life.  So each session keeps a :class:`Registry`:

* **A log of armed instances.**  Arming appends the instance to the log,
  in runs that share one :class:`Marks` (what their profile arms): one
  list append per row, whatever the query arms, so a query whose
  attributes are never touched pays next to nothing.  A query into an
  empty session pays less still: after its first row, SQLAlchemy calls a
  queue's ``put`` as the populator of its rows (a call at C speed, where
  a Python populator was most of what arming cost), and the log takes in
  what the queue holds before it is next read or appended to
  (:meth:`Registry.attach`).  An ``expire`` (commit, rollback,
  ``session.expire()``) appends the instance again: the ``expire``
  listener of ``_arming`` calls :meth:`Registry.enlist`.
* **Candidate buckets**, per armed attribute (the mapped property: peers
  must share it) and, for expired columns, per mapper.  A touch first
  sorts into its bucket what the log gained since that bucket's last
  touch (the instances of runs armed for it that still lack it), then
  scans the bucket, dropping for good what no longer qualifies: loaded
  since, its object gone, no longer in this session.

So each logged instance is looked at once per attribute that is touched,
and a scan costs the batch it finds plus what was armed or loaded since
the last one, never the session.  The log holds states, not objects (an
``InstanceState`` refers to its object weakly); whenever it doubles it is
compacted, dropping instances that left the session and repeats, unless a
count at C speed shows that would drop less than a quarter (a session that
only grows: one big query, a worker keeping its pages), so memory
stays within a small multiple of what is alive.  A new identity map
(``expunge_all()``, ``close()``) starts a new registry.

Who *is* a peer (same loader, load options, shard, unchanged join values)
stays the business of ``_peers`` and ``_expiry``: the registry narrows the
search, it decides nothing.  An instance moved to another session (expunge,
then ``add``) joins that session's batches once a query loads it there.
"""

from __future__ import annotations

import weakref
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from itertools import islice
from queue import SimpleQueue
from typing import Any

from sqlalchemy.orm import InstanceState
from sqlalchemy.orm.attributes import instance_dict

from . import _sqla

#: What a queue's get_nowait() never returns: iter() stops on it.
_NEVER = object()


def _taken(queue: SimpleQueue[Any]) -> Iterator[Any]:
    """What ``queue`` holds now, taken out of it at C speed
    (``get_nowait()`` called as many times as it has items)."""
    return islice(iter(queue.get_nowait, _NEVER), queue.qsize())


#: The log is compacted when it grows past twice its size after the last
#: compaction, and never below this many entries.
_MIN_COMPACT = 4096


class Marks:
    """What the instances of one profile are armed for: the properties
    whose buckets they may join, and whether expired columns refresh.
    One object per distinct value (:func:`marks_for`), so that the log
    can compare them by identity."""

    __slots__ = ("__weakref__", "props", "refresh")

    def __init__(self, props: frozenset[Any], refresh: bool) -> None:
        self.props = props
        self.refresh = refresh


_interned: weakref.WeakValueDictionary[tuple[frozenset[Any], bool], Marks] = (
    weakref.WeakValueDictionary()
)


def marks_for(props: frozenset[Any], refresh: bool) -> Marks:
    """The one :class:`Marks` of this value: every execution of the same
    query, and every expire of its instances, logs under the same."""
    found = _interned.get((props, refresh))
    if found is None:
        found = _interned[(props, refresh)] = Marks(props, refresh)
    return found


class Candidates(dict[InstanceState[Any], None]):
    """Instances that may still need one thing loaded, in arming order.

    ``key`` names the attribute they lack; None stands for expired columns
    (a state qualifies while it has expired attributes).
    """

    __slots__ = ("key", "mapper", "session_key")

    def __init__(self, session_key: int, key: str | None, mapper: Any = None) -> None:
        super().__init__()
        self.session_key = session_key
        self.key = key
        #: For expired columns: the one mapper whose instances qualify.
        self.mapper = mapper

    def live(self) -> list[InstanceState[Any]]:
        """The candidates that still qualify; the others are dropped: gone,
        out of the session, deleted, or settled (the attribute is there; no
        column is expired any more), or of another mapper.  Written out, not
        as calls: this loop runs once per candidate of every batch."""
        session_key = self.session_key
        key = self.key
        mapper = self.mapper
        is_deleted = _sqla.is_deleted
        live: list[InstanceState[Any]] = []
        gone: list[InstanceState[Any]] = []
        for state in self:
            obj = state.obj()
            if (
                obj is None
                or state.session_id != session_key
                or state.key is None
                or (key in instance_dict(obj) if key is not None else not state.expired_attributes)
                or (mapper is not None and state.manager.mapper is not mapper)
                or is_deleted(state)
            ):
                gone.append(state)
            else:
                live.append(state)
        for state in gone:
            del self[state]
        return live

    def drop(self, states: list[InstanceState[Any]]) -> None:
        """After a batch: forget the states it took, at once, rather than
        sorting them out at the next scan.  Those it loaded are settled;
        one it found no row for (deleted behind the session) loads alone
        on its own touch, as stock does, and raises as stock does."""
        pop = self.pop
        for state in states:
            pop(state, None)


class Registry:
    """The log and candidate buckets of one identity map of a session
    (``expunge_all()`` and ``close()`` give the session a new one)."""

    __slots__ = (
        "cursors",
        "expire_stamp",
        "expired",
        "identity_map",
        "lacking",
        "limit",
        "log",
        "pending",
        "run",
        "run_marks",
        "run_starts",
        "session_key",
    )

    def __init__(self, session_key: int, identity_map: Any) -> None:
        self.session_key = session_key
        #: Weakly: the registry is kept *by* the identity map.
        self.identity_map: weakref.ref[Any] = weakref.ref(identity_map)
        #: Armed instances, in runs: run i starts at run_starts[i].
        self.log: list[InstanceState[Any]] = []
        self.run_starts: list[int] = []
        self.run_marks: list[Marks] = []
        #: The marks of the run being appended to.
        self.run: Marks | None = None
        self.limit = _MIN_COMPACT
        #: How far into the log each bucket has been sorted.
        self.cursors: dict[Any, int] = {}
        self.lacking: dict[Any, Candidates] = {}
        self.expired: dict[Any, Candidates] = {}
        #: The stamp (load options, load path, class manager) and profile
        #: the ``expire`` listener of ``_arming`` found last (see there).
        self.expire_stamp: tuple[Any, Any, Any, Any] | None = None
        #: Queues of armed instances not logged yet (:meth:`attach`).
        self.pending: list[tuple[SimpleQueue[Any], Marks, weakref.ref[Any]]] = []

    def enlist(self, state: InstanceState[Any], marks: Marks) -> None:
        """Log ``state``, armed for ``marks`` (by a query's row, or again
        after an expire took attributes from it)."""
        if self.pending:
            self.drain()
        if self.run is not marks or len(self.log) > self.limit:
            self._begin(marks)
        self.log.append(state)

    def entries(self) -> list[InstanceState[Any]]:
        """The log, with what the pending queues hold moved into it."""
        if self.pending:
            self.drain()
        return self.log

    def attach(self, queue: SimpleQueue[Any], marks: Marks, put: Callable[..., Any]) -> None:
        """Log what ``queue`` receives, armed for ``marks``, when the log is
        next read or appended to.  A query whose rows need nothing but
        logging hands SQLAlchemy ``put`` (the queue's own) as their row
        populator: a call at C speed, where a Python populator was most of
        what arming costs a query whose attributes are never touched.
        ``put`` is referenced by that query's populators only: once it is
        gone, no row will come, and a drained queue is dropped.  Nothing
        refers to the queue in a cycle, so what it still holds goes with
        the registry and those populators, as the query's rows do."""
        self.pending.append((queue, marks, weakref.ref(put)))

    def drain(self) -> None:
        """Move the pending queues' instances to the log, in the order the
        queues were attached (each as a run of its marks).  Called before
        the log is read or appended to, and when a query starts arming (its
        rows then come after those of the queries before it)."""
        pending, self.pending = self.pending, []
        for queue, marks, put in pending:
            if queue.qsize():
                if self.run is not marks or len(self.log) > self.limit:
                    self._begin(marks)
                self.log.extend(_taken(queue))
                if len(self.log) > self.limit:
                    self._begin(marks)  # compacts, as the append that passed it would
            if put() is not None:
                self.pending.append((queue, marks, put))

    def _begin(self, marks: Marks) -> None:
        """Start a run of instances armed alike (compacting first when the
        log has doubled and compaction would drop a quarter of it)."""
        if len(self.log) > self.limit:
            most_kept = self._most_kept()
            if 4 * most_kept > 3 * len(self.log):
                # A session that only grows (one big query, a paging worker
                # keeping its pages) has little to drop: do not walk it
                # yet, but hold the log to twice what may be alive.
                self.limit = max(_MIN_COMPACT, 2 * most_kept)
            else:
                self._compact()
        self.run_starts.append(len(self.log))
        self.run_marks.append(marks)
        self.run = marks

    def lacking_candidates(self, prop: Any) -> list[InstanceState[Any]]:
        """The instances armed for ``prop`` that still lack it."""
        bucket = self.lacking.get(prop)
        if bucket is None:
            bucket = self.lacking[prop] = Candidates(self.session_key, prop.key)
        self._sort(prop, bucket, lambda marks: prop in marks.props)
        return bucket.live()

    def expired_candidates(self, mapper: Any) -> list[InstanceState[Any]]:
        """The armed instances of exactly ``mapper`` with expired columns
        whose profile refreshes them."""
        bucket = self.expired.get(mapper)
        if bucket is None:
            bucket = self.expired[mapper] = Candidates(self.session_key, None, mapper)
        self._sort(("expired", mapper), bucket, lambda marks: marks.refresh)
        return bucket.live()

    def drop_batched(
        self, prop_or_mapper: Any, states: list[InstanceState[Any]], *, expired: bool = False
    ) -> None:
        """After a batch of ``prop`` (or a refresh of ``mapper``'s expired
        columns): forget the states it took (:meth:`Candidates.drop`)."""
        bucket = (self.expired if expired else self.lacking).get(prop_or_mapper)
        if bucket is not None:
            bucket.drop(states)

    def _sort(self, cursor_key: Any, bucket: Candidates, wants: Callable[[Marks], bool]) -> None:
        """Add to ``bucket`` the instances logged since its cursor in runs
        whose marks it ``wants``, in one C-level step per run (the pending
        queues taken into the log first): which of them still qualify is
        :meth:`Candidates.live`'s one test."""
        if self.pending:
            self.drain()
        log = self.log
        start = self.cursors.get(cursor_key, 0)
        end = len(log)
        if start >= end:
            return
        starts = self.run_starts
        run = max(bisect_right(starts, start) - 1, 0)
        while run < len(starts):
            run_start = starts[run]
            run_end = starts[run + 1] if run + 1 < len(starts) else end
            if wants(self.run_marks[run]):
                bucket.update(dict.fromkeys(log[max(start, run_start) : run_end]))
            run += 1
        self.cursors[cursor_key] = end

    def _most_kept(self) -> int:
        """An upper bound of what :meth:`_compact` keeps, at C speed: no
        more distinct states than the log holds, nor than the identity map
        still holds (its objects die out of it, as they leave the session)."""
        identity_map = self.identity_map()
        in_session = len(identity_map) if identity_map is not None else 0
        return min(len(set(self.log)), in_session)

    def _compact(self) -> None:
        """Drop from the log what left the session and what a later entry
        of the same run marks repeats; positions (runs, cursors) follow.

        Each state's last position under each marks is found a run at a
        time, at C speed (a later run overwrites an earlier position), and
        only those positions are tested: a walk of every entry in Python
        was most of what a commit of 10,000 armed instances added."""
        log = self.log
        ends = [*self.run_starts[1:], len(log)]
        last: dict[Marks, dict[InstanceState[Any], int]] = {}
        for start, end, run_marks in zip(self.run_starts, ends, self.run_marks, strict=True):
            positions = last.get(run_marks)
            if positions is None:
                positions = last[run_marks] = {}
            positions.update(zip(log[start:end], range(start, end), strict=True))
        session_key = self.session_key
        is_deleted = _sqla.is_deleted
        # Kept: still in this session, persistent, not deleted, alive.
        kept_at = sorted(
            index
            for positions in last.values()
            for state, index in positions.items()
            if state.session_id == session_key
            and state.key is not None
            and not is_deleted(state)
            and state.obj() is not None
        )
        kept = [log[index] for index in kept_at]
        starts: list[int] = []
        marks: list[Marks] = []
        for start, run_marks in zip(self.run_starts, self.run_marks, strict=True):
            # How many entries before ``start`` are kept: its new position.
            new_start = bisect_left(kept_at, start)
            if starts and starts[-1] == new_start:
                starts.pop()  # the run before emptied out
                marks.pop()
            if marks and marks[-1] is run_marks:
                continue  # the same marks as the run before: one run
            starts.append(new_start)
            marks.append(run_marks)
        self.log, self.run_starts, self.run_marks = kept, starts, marks
        self.cursors = {key: bisect_left(kept_at, pos) for key, pos in self.cursors.items()}
        self.limit = max(_MIN_COMPACT, 2 * len(kept))
        self.run = None


def registry_of(session: Any) -> Registry:
    """The registry of ``session``'s identity map (a sync ``Session``),
    made on first use.  Kept on the identity map itself (see
    ``_sqla.registry_on``): when ``expunge_all()`` or ``close()`` replaces
    it, the old one goes, and with it the log of its instances."""
    identity_map = session.identity_map
    found: Registry | None = _sqla.registry_on(identity_map)
    if found is None:
        found = Registry(session.hash_key, identity_map)
        _sqla.keep_registry(identity_map=identity_map, registry=found)
    return found
