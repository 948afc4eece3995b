"""Differential fuzzing: nplus1loader agrees with stock SQLAlchemy (issue 9).

Hypothesis generates a program: a random object graph over the shape zoo of
:mod:`tests.fuzz_models`, then a random sequence of operations (queries
with a random nplus1loader / raiseload option or none, touching attributes,
loops over instances, assignments, foreign keys repointed in memory,
collection changes, adds, deletes,
flush, commit, expire, expire_all, rollback, close).  The program runs in
lock-step in two sessions, each on its own copy of the data:

* **N**, the session under test, runs every query with the generated option;
* **O**, the oracle, runs stock SQLAlchemy: no nplus1 option (a column the
  option names, and so defers, is deferred with ``defer()`` instead).

After every step the oracle *catches up*: whatever N loaded as a side effect
of a batch (the attribute on every armed peer) O loads too, one instance at a
time as stock lazy loading does; and whatever O loaded beyond N (a stock
refresh loads every expired column) N loads too.  So both sessions always
hold the same loaded state, and a later step (a touch after ``close()``, a
collection after a delete) has the same starting point in both.

Checked at every step:

* every value read is equal (instances compare as ``(class, primary key)``)
  and every error has the same type;
* a raise option raises exactly when the model below says so: the touched
  attribute is unloaded and the instance is armed to raise for it.  The
  oracle cannot raise (stock has no such option), so it skips that access;
* a batch loads exactly the armed peers the model predicts, no more, no less;
* N never emits more SELECTs than stock lazy loading needs for the same
  loads (O's own statements plus its catch-up), and a touch costs at most
  one statement per chunk of peers (two for a relationship, when some
  peers lack the foreign key and go through the join);
* lifecycle states (pending, persistent, deleted, detached) and the
  identity maps of both sessions agree.

Touches and deletes (whose cascade loads collections) autoflush in both
sessions, as they would: a batch flushes once before its first statement,
where stock's lazy load would (a touch with pending changes flushes them as
a step of its own first, so the model sees the flushed state).  A
documented difference is mirrored in the oracle rather than checked: a
deleted instance is never touched, since what it holds depends on when it
was loaded (a batch may load it as a peer before the delete is flushed, stock
lazy loading never does).

The same programs run again in a ``ShardedSession`` over two SQLite shards
per side (``test_sharded_session_agrees_with_stock``), each holding the whole
graph under the same primary keys with different texts: instances are then
named with their shard's identity token, and a batch's peers must share it.

The arming model (:class:`ArmModel`) is the specification of which instance
raises or batches for which attribute.  Cases the fuzzer found are replayed
as regular tests (``FOUND`` and the tests after it).

Example counts: a bounded number per database in CI (``nplus1-ci``/
``nplus1-dev`` profiles); ``--hypothesis-profile=nplus1-long`` runs the
profile's (much larger) ``max_examples``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from sqlalchemy import Engine, delete, event, insert, inspect, select, update
from sqlalchemy.ext.horizontal_shard import ShardedSession
from sqlalchemy.orm import (
    ColumnProperty,
    RelationshipDirection,
    Session,
    defer,
    joinedload,
    selectinload,
    undefer,
)
from sqlalchemy.orm.state import InstanceState

import nplus1loader
from nplus1loader import LazyLoadingAttributeError
from tests import _oracle as oracle
from tests._db import make_engine, setup_schema
from tests.fuzz_models import DELETE_ORDER, LANGS, NPLUS1_ZOO, ORACLE_ZOO, Zoo

LONG_PROFILE = "nplus1-long"
CI_EXAMPLES = 60
"""Examples per database in the default profiles: about 10 s per database."""

MAX_OPS = 30



def note_event(text: str) -> None:
    """Count ``text`` in ``--hypothesis-show-statistics`` (a no-op outside
    Hypothesis, when a found case is replayed)."""
    with contextlib.suppress(InvalidArgument):
        hypothesis_event(text)


def _examples() -> int:
    """Bounded in CI and by default; the long profile's own count otherwise."""
    if settings.get_current_profile_name() == LONG_PROFILE:
        return settings.default.max_examples
    return CI_EXAMPLES


# ============================================================ the catalogue


@dataclass(frozen=True)
class Attr:
    """What the fuzzer needs to know about one mapped attribute."""

    key: str
    is_rel: bool
    deferred: bool = False  # a column deferred by the mapping
    always: bool = False  # primary key or discriminator: always loaded, never armed
    settable: bool = False  # a plain column programs may assign
    foreign_key: bool = False  # a foreign-key column programs may repoint in memory
    uselist: bool = False
    ordered: bool = False
    keyed: bool = False
    target: str = ""  # class name a relationship points at
    many_to_one: bool = False
    local: tuple[str, ...] = ()  # columns a lazy load reads (a many-to-one's foreign key)
    group: tuple[str, ...] = ()  # a deferred column's group (itself if none)


def _catalogue(zoo: Zoo) -> dict[str, dict[str, Attr]]:
    catalogue: dict[str, dict[str, Attr]] = {}
    for name, cls in zoo.classes.items():
        mapper = inspect(cls)
        always = {mapper.get_property_by_column(c).key for c in mapper.primary_key}
        if mapper.polymorphic_on is not None:
            always.add(mapper.get_property_by_column(mapper.polymorphic_on).key)
        fks = {c.key for t in mapper.tables for c in t.columns if c.foreign_keys}
        attrs: dict[str, Attr] = {}
        for prop in mapper.attrs:
            if isinstance(prop, ColumnProperty):
                group = tuple(
                    sorted(
                        p.key for p in mapper.column_attrs if prop.group and p.group == prop.group
                    )
                ) or (prop.key,)
                attrs[prop.key] = Attr(
                    prop.key,
                    False,
                    deferred=bool(prop.deferred),
                    always=prop.key in always,
                    settable=prop.key not in always
                    and prop.key not in fks
                    and prop.key != "label",  # Post.tags is ordered by it: no ties
                    foreign_key=prop.key in fks and prop.key not in always,
                    group=group,
                )
            else:
                m2o = prop.direction is RelationshipDirection.MANYTOONE
                attrs[prop.key] = Attr(
                    prop.key,
                    True,
                    uselist=bool(prop.uselist),
                    ordered=bool(prop.order_by),
                    keyed=prop.collection_class is not None
                    and isinstance(prop.collection_class(), dict),
                    target=prop.mapper.class_.__name__,
                    many_to_one=m2o,
                    local=tuple(
                        sorted(mapper.get_property_by_column(c).key for c in prop.local_columns)
                    ),
                )
        catalogue[name] = attrs
    return catalogue


ATTRS = _catalogue(NPLUS1_ZOO)
SUBCLASSES = {
    name: {sub.class_.__name__ for sub in inspect(cls).self_and_descendants}
    for name, cls in NPLUS1_ZOO.classes.items()
}
ENTITIES = ("Author", "Post", "Tag", "Note", "Review", "Animal", "Dog", "Cat")
ADDABLE = ("Author", "Post", "Tag", "Review", "Dog", "Cat")
NEW_KEYS = (50, 51)
"""Primary keys of instances a program adds (the graph's keys are below 50)."""

# nplus1 option functions: (kinds, mode)
BOTH, COLS, RELS = ("cols", "rels"), ("cols",), ("rels",)
FUNCS = {
    "nplus1loader": (BOTH, "load"),
    "nplus1loader_cols": (COLS, "load"),
    "nplus1loader_rels": (RELS, "load"),
    "raiseload_all": (BOTH, "raise"),
    "raiseload_col": (COLS, "raise"),
    "raiseload_rel": (RELS, "raise"),
}


class Opt(NamedTuple):
    """A query's options, as data both sessions can build for their zoo."""

    func: str = ""  # "" for no nplus1 option, else a key of FUNCS
    names: tuple[str, ...] = ("*",)
    chunk: int | None = None
    nested: bool = True
    stock: tuple[tuple[str, str], ...] = ()  # (("joinedload", "posts"),)


NESTED = Opt("nplus1loader")
"""What a batch load arms its targets with (``nested=True``)."""

Ident = tuple[Any, ...]
"""An instance as both sessions know it: (class, primary key), and its
shard's identity token last in a sharded session."""
Ref = tuple[str, int]
"""An instance as a program names it: a class ("" for any) and an index
into the instances of that class (subclasses included) the program holds."""


class Op(NamedTuple):
    kind: str
    args: tuple[Any, ...] = ()


# ============================================================ the generator


TEXTS = st.sampled_from([None, "x", "y", "zz"])


class Graph(NamedTuple):
    rows: dict[str, list[dict[str, Any]]]


@st.composite
def graphs(draw: st.DrawFn) -> Graph:
    """A random object graph: every relationship some of the time, empty
    collections, NULL foreign keys, tags whose label order is not key order."""
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in DELETE_ORDER}
    n_authors = draw(st.integers(1, 5))
    for i in range(1, n_authors + 1):
        rows["author"].append(
            {
                "id": i,
                "name": f"author {i}",
                "bio": draw(TEXTS),
                "motto": draw(TEXTS),
                "email": draw(TEXTS),
                "mentor_id": draw(st.none() | st.integers(1, i - 1)) if i > 1 else None,
            }
        )
    authors = st.none() | st.integers(1, n_authors)
    labels = draw(st.permutations(["alpha", "bravo", "charlie", "delta"]))
    n_tags = draw(st.integers(0, 4))
    for i in range(1, n_tags + 1):
        rows["tag"].append({"id": i, "label": labels[i - 1]})
    notes: list[tuple[int, str]] = []
    for i in range(1, draw(st.integers(0, 6)) + 1):
        rows["post"].append(
            {"id": i, "author_id": draw(authors), "title": f"post {i}", "body": draw(TEXTS)}
        )
        if n_tags:
            for tag in sorted(draw(st.sets(st.integers(1, n_tags), max_size=3))):
                rows["post_tag"].append({"post_id": i, "tag_id": tag})
        for lang in sorted(draw(st.sets(st.sampled_from(LANGS), max_size=2))):
            rows["note"].append(
                {"post_id": i, "lang": lang, "text": f"note {i}{lang}", "summary": draw(TEXTS)}
            )
            notes.append((i, lang))
    for i in range(1, draw(st.integers(0, 4)) + 1):
        note = draw(st.none() | st.sampled_from(notes)) if notes else None
        rows["review"].append(
            {
                "id": i,
                "note_post_id": note[0] if note else None,
                "note_lang": note[1] if note else None,
                "stars": draw(st.integers(1, 5)),
            }
        )
    kinds = draw(st.lists(st.sampled_from(["animal", "cat", "dog"]), max_size=5))
    cats = [i for i, kind in enumerate(kinds, 1) if kind == "cat"]
    for i, kind in enumerate(kinds, 1):
        rows["animal"].append(
            {"id": i, "kind": kind, "name": f"{kind} {i}", "owner_id": draw(authors)}
        )
        if kind == "cat":
            rows["cat"].append({"id": i, "lives": draw(st.integers(1, 9))})
        elif kind == "dog":
            friend = draw(st.none() | st.sampled_from(cats)) if cats else None
            rows["dog"].append(
                {"id": i, "bark": f"woof {i}", "pedigree": draw(TEXTS), "friend_id": friend}
            )
    return Graph(rows)


def _option(draw: st.DrawFn, entity: str) -> Opt:
    func = draw(st.sampled_from(["", "", *FUNCS, "nplus1loader", "raiseload_all"]))
    attrs = [a for a in ATTRS[entity].values() if not a.always]
    rels = [a.key for a in attrs if a.is_rel]
    deferred = [a.key for a in attrs if a.deferred]
    stock: tuple[tuple[str, str], ...] = ()
    choice = draw(st.sampled_from(["none", "none", "joinedload", "selectinload", "undefer"]))
    if choice in ("joinedload", "selectinload") and rels:
        stock = ((choice, draw(st.sampled_from(rels))),)
    elif choice == "undefer" and deferred:
        stock = (("undefer", draw(st.sampled_from(deferred))),)
    if not func:
        return Opt(stock=stock)
    kinds, mode = FUNCS[func]
    names: tuple[str, ...] = ("*",)
    nameable = [
        a.key
        for a in attrs
        if ((a.is_rel and "rels" in kinds) or (not a.is_rel and "cols" in kinds))
        and a.key not in {attr for _, attr in stock}
    ]
    if nameable and draw(st.booleans()):
        names = tuple(sorted(draw(st.sets(st.sampled_from(nameable), min_size=1, max_size=2))))
    if mode == "raise":
        return Opt(func, names, stock=stock)
    chunk = draw(st.sampled_from([None, None, 2]))
    nested = draw(st.sampled_from([True, True, False]))
    return Opt(func, names, chunk, nested, stock)


TouchKey = tuple[bool, int]
"""An attribute as a touch names it: (only a relationship or deferred
column?, index into the sorted candidates of the instance's class)."""


def touch_key(draw: st.DrawFn) -> TouchKey:
    return (draw(st.sampled_from([True, True, False])), draw(st.integers(0, 15)))


def pick_key(cls: str, key: TouchKey) -> str:
    lazy, index = key
    keys = sorted(k for k, a in ATTRS[cls].items() if a.is_rel or a.deferred or not lazy)
    return keys[index % len(keys)]


@st.composite
def operations(draw: st.DrawFn, kind: str = "") -> Op:
    """One step.  Instances are named by :data:`Ref` (class, index), resolved
    when the step runs among the instances the program holds by then, so
    that most steps hit an instance."""
    kind = kind or draw(
        st.sampled_from(
            ["query"] * 4
            + ["touch"] * 8
            + ["loop"] * 3
            + ["set", "rekey", "link", "append", "remove", "add", "delete", "flush", "commit"]
            + ["expire", "expire_all", "rollback", "close"]
        )
    )

    def ref(classes: tuple[str, ...] = ENTITIES) -> Ref:
        return (draw(st.sampled_from(classes)), draw(st.integers(0, 7)))

    if kind == "query":
        entity = draw(st.sampled_from(ENTITIES))
        upto = draw(st.none() | st.integers(1, 4))
        return Op(kind, (entity, _option(draw, entity), upto))
    if kind == "loop":
        entity = draw(st.sampled_from(ENTITIES))
        return Op(kind, (entity, draw(st.sampled_from(sorted(ATTRS[entity])))))
    if kind in ("flush", "commit", "expire_all", "rollback", "close"):
        return Op(kind)
    if kind == "add":
        cls = draw(st.sampled_from(ADDABLE))
        target = None if cls == "Tag" else ref(("Note",) if cls == "Review" else ("Author",))
        return Op(kind, (cls, draw(st.sampled_from(NEW_KEYS)), target))
    if kind == "touch":
        # Any instance the program holds, mostly an attribute that may be
        # unloaded (a relationship or a deferred column).
        anyone: Ref = ("", draw(st.integers(0, 15)))
        return Op(kind, (draw(st.sampled_from([anyone, ref()])), touch_key(draw)))
    obj = ref()
    attrs = ATTRS[obj[0]]
    settable = sorted(k for k, a in attrs.items() if a.settable)
    if kind == "set" and settable:
        value = draw(st.sampled_from(["p", "q"]))
        return Op(kind, (obj, draw(st.sampled_from(settable)), value))
    if kind == "set":
        return Op("touch", (obj, touch_key(draw)))
    foreign_keys = sorted(k for k, a in attrs.items() if a.foreign_key)
    if kind == "rekey" and foreign_keys:
        # A join column changed in memory, the relationship left alone:
        # stock loads by the new value (a row that may not exist).
        value = draw(st.none() | st.integers(1, 3))
        return Op(kind, (obj, draw(st.sampled_from(foreign_keys)), value))
    if kind == "rekey":
        return Op("touch", (obj, touch_key(draw)))
    if kind in ("link", "append", "remove"):
        rels = sorted(
            k
            for k, a in attrs.items()
            if a.is_rel
            and (a.many_to_one if kind == "link" else a.uselist and not a.keyed)
            and not set(a.local) & {k2 for k2, a2 in attrs.items() if a2.always}
        )
        if not rels:
            return Op("touch", (obj, touch_key(draw)))
        key = draw(st.sampled_from(rels))
        target: Ref | None = ref((attrs[key].target,))
        if kind == "link" and draw(st.booleans()):
            target = None
        return Op(kind, (obj, key, target))
    if kind == "expire":
        keys = None
        if draw(st.booleans()):
            keys = tuple(
                sorted(draw(st.sets(st.sampled_from(sorted(attrs)), min_size=1, max_size=2)))
            )
        return Op(kind, (obj, keys))
    return Op("delete", (obj,))


class Program(NamedTuple):
    graph: Graph
    ops: tuple[Op, ...]


@st.composite
def programs(draw: st.DrawFn) -> Program:
    graph = draw(graphs())
    # Programs open with queries: touches need instances to touch.
    first = draw(st.lists(operations("query"), min_size=1, max_size=3))
    ops = draw(st.lists(operations(), min_size=8, max_size=MAX_OPS))
    return Program(graph, tuple(first + ops))


# ============================================================ the model


@dataclass
class Profile:
    """What one arming query left on an instance (see nplus1loader._expiry)."""

    loaders: dict[str, tuple[str, bool]]
    refresh: str | None  # mode in which expired columns refresh; None: stock
    raise_keys: frozenset[str] | None  # expired columns that raise; None: all


@dataclass
class Arm:
    hooks: dict[str, tuple[str, bool]] = field(default_factory=dict)  # key -> (mode, nested)
    profile: Profile | None = None


def covered(opt: Opt, cls: str) -> dict[str, str]:
    """The attributes ``opt`` arms on an instance of ``cls``, with their mode.

    The specification: a wildcard arms what the query leaves unloaded
    (mapping-deferred columns, lazy relationships; not what a stock option
    in the same query loads); names arm exactly the named attributes."""
    kinds, mode = FUNCS[opt.func]
    eager = {attr for _, attr in opt.stock}
    attrs = ATTRS[cls]
    if "*" in opt.names:
        keys = [
            a.key
            for a in attrs.values()
            if not a.always
            and a.key not in eager
            and ((a.is_rel and "rels" in kinds) or (a.deferred and "cols" in kinds))
        ]
    else:
        keys = [name for name in opt.names if name in attrs]
    return dict.fromkeys(keys, mode)


class ArmModel:
    """Which instance of session N is armed, how, for which attribute.

    Keyed by N's InstanceState (held strongly for the program's lifetime, so
    identities of freed objects are never reused)."""

    def __init__(self) -> None:
        self.arms: dict[InstanceState[Any], Arm] = {}
        self.first: dict[InstanceState[Any], Opt] = {}  # the query that loaded it first

    def arm(self, state: InstanceState[Any]) -> Arm:
        return self.arms.setdefault(state, Arm())

    def query_loaded(
        self, state: InstanceState[Any], opt: Opt, unloaded_before: set[str], new: bool
    ) -> None:
        """``state`` came back from a query carrying ``opt``: its unloaded
        covered attributes are armed; its profile is replaced if the option
        left one (an anchor, or at least one armed attribute)."""
        if new:
            self.first[state] = opt
        if not opt.func:
            return
        cls = type(state.obj()).__name__
        kinds, mode = FUNCS[opt.func]
        cover = covered(opt, cls)
        arm = self.arm(state)
        armed = [k for k in cover if k in unloaded_before]
        for key in armed:
            arm.hooks[key] = (mode, opt.nested)
        anchor = "cols" in kinds or mode != "raise"
        if anchor or armed:
            raise_keys = None
            if mode == "raise" and "*" not in opt.names:
                raise_keys = frozenset(cover)
            arm.profile = Profile(
                {k: (m, opt.nested) for k, m in cover.items()},
                mode if anchor else None,
                raise_keys,
            )

    def expired(self, state: InstanceState[Any], keys: list[str] | None) -> None:
        """SQLAlchemy expired ``keys`` (None: all): every hook goes, except
        a relationship's in a partial expire (``InstanceState._expire`` and
        ``_expire_attributes``); then the profile puts its hooks back."""
        arm = self.arms.get(state)
        if arm is None:
            return
        attrs = ATTRS[state.class_.__name__]
        expired = list(attrs) if keys is None else keys
        for key in expired:
            if keys is None or not attrs[key].is_rel:
                arm.hooks.pop(key, None)
        if arm.profile is not None:
            for key in expired:
                if key in arm.profile.loaders:
                    arm.hooks[key] = arm.profile.loaders[key]

    def hook(self, state: InstanceState[Any], key: str) -> tuple[str, bool] | None:
        arm = self.arms.get(state)
        return None if arm is None else arm.hooks.get(key)

    def refresh_mode(self, state: InstanceState[Any], key: str) -> str | None:
        arm = self.arms.get(state)
        if arm is None or arm.profile is None or arm.profile.refresh is None:
            return None
        profile = arm.profile
        if (
            profile.refresh == "raise"
            and profile.raise_keys is not None
            and key not in profile.raise_keys
        ):
            return None
        return profile.refresh


# ============================================================ helpers


def pk_keys(cls: str) -> list[str]:
    return [a.key for a in ATTRS[cls].values() if a.always and a.key != "kind"]


def ident_of(obj: Any) -> Ident:
    state = inspect(obj)
    cls = type(obj).__name__
    if state.key is not None:
        ident: Ident = (cls, tuple(state.key[1]))
        token = state.identity_token
    else:
        ident = (cls, tuple(state.dict.get(k) for k in pk_keys(cls)))
        token = new_shard(obj) if isinstance(state.session, ShardedSession) else None
    return ident if token is None else (*ident, token)


def loaded(state: InstanceState[Any]) -> frozenset[str]:
    return frozenset(k for k in ATTRS[state.class_.__name__] if k in state.dict)


def lifecycle(obj: Any) -> str:
    state = inspect(obj)
    for name in ("transient", "pending", "persistent", "deleted", "detached"):
        if getattr(state, name):
            return name
    return "?"


def normalize(attr: Attr, value: Any) -> Any:
    """A value both sessions can compare: instances by identity, unordered
    collections sorted."""
    if not attr.is_rel:
        return value
    if not attr.uselist:
        return None if value is None else ident_of(value)
    if attr.keyed:
        return sorted((k, ident_of(v)) for k, v in value.items())
    items = [ident_of(v) for v in value]
    return items if attr.ordered else sorted(items)


def values_of(attr: Attr, value: Any) -> list[Any]:
    if value is None:
        return []
    if not attr.uselist:
        return [value]
    return list(value.values()) if attr.keyed else list(value)


def is_select(statement: str) -> bool:
    return statement.lstrip().upper().startswith(("SELECT", "WITH"))


@dataclass
class Snap:
    """An N instance just before a step: what the model's rules look at."""

    loaded: frozenset[str]
    unloaded: frozenset[str]  # neither loaded nor changed (a pending append counts)
    expired: bool
    expired_attrs: frozenset[str]
    deleted: bool


class Outcome(NamedTuple):
    value: Any
    error: BaseException | None
    selects: int


Bind = Engine | dict[str, Engine]
"""A side's database: one engine, or shards by name (a ``ShardedSession``)."""


class Side:
    """One session and the objects the program has seen in it."""

    def __init__(self, zoo: Zoo, bind: Bind) -> None:
        self.zoo = zoo
        self.session = sharded(bind) if isinstance(bind, dict) else Session(bind)
        self.handles: dict[Ident, Any] = {}

    def remember(self) -> None:
        for obj in self.session.identity_map.values():
            self.handles[ident_of(obj)] = obj

    def mapped(self) -> dict[Ident, InstanceState[Any]]:
        return {ident_of(s.obj()): s for s in self.session.identity_map.all_states()}


class Divergence(AssertionError):
    pass


# ============================================================ the runner


class Runner:
    """Runs one program in N and O in lock-step and checks every step."""

    def __init__(self, engines: tuple[Bind, Bind], program: Program) -> None:
        self.engines = {
            e for bind in engines for e in (bind.values() if isinstance(bind, dict) else [bind])
        }
        self.program = program
        self.n = Side(NPLUS1_ZOO, engines[0])
        self.o = Side(ORACLE_ZOO, engines[1])
        self.model = ArmModel()
        self.statements: list[str] = []
        self.populated: set[InstanceState[Any]] = set()  # reached by a query row, this step
        # ... of which the row populated fully: created, or reloaded with its
        # primary key expired (what a batch load arms; see after_loads)
        self.created: set[InstanceState[Any]] = set()
        self.log: list[str] = []
        chunks = [op.args[1].chunk for op in program.ops if op.kind == "query"]
        self.chunk = min([c for c in chunks if c] or [nplus1loader.DEFAULT_CHUNK_SIZE])

    def own_shard_read(self, obj: Any, key: str, ident: Ident, value: Any) -> bool:
        """Whether ``value`` is what the instance's own shard holds for a
        column of a joined subclass's table, where stock reads another's.

        SQLAlchemy loads such a column, unloaded on an instance a query of
        the base class brought, with a statement of its own that carries no
        identity token (``load_scalar_attributes`` through the mapper's
        optimized get): a sharded session sends it to every shard and the
        last row wins: another row's data.  nplus1loader's batch reads the
        instance's own shard (a difference the README names; a lone
        instance refreshes the stock way, so N may give either): the value
        is accepted when it is that shard's row, read past the recorder."""
        session = self.n.session
        if not isinstance(session, ShardedSession) or len(ident) != 3:
            return False
        mapper = inspect(obj).mapper
        column = mapper.attrs[key].columns[0]
        table = column.table
        if table is mapper.base_mapper.local_table or len(table.primary_key) != 1:
            return False
        (pk,) = ident[1]
        engine = session.get_bind(mapper, shard_id=ident[2])
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            pk_name = next(iter(table.primary_key)).name
            cursor.execute(f"SELECT {column.name} FROM {table.name} WHERE {pk_name} = ?", (pk,))
            row = cursor.fetchone()
        finally:
            raw.close()
        return row is not None and row[0] == value

    # -- plumbing --------------------------------------------------------

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append(statement)

    def _on_load(self, state: InstanceState[Any], context: Any) -> None:
        self.populated.add(state)
        self.created.add(state)

    def _on_refresh(self, state: InstanceState[Any], context: Any, keys: Any) -> None:
        if context.refresh_state is None:
            self.populated.add(state)  # an existing instance a query row reached
            mapper = state.mapper
            anchor = mapper.get_property_by_column(mapper.primary_key[0]).key
            if keys is None or anchor in keys:
                self.created.add(state)

    def _on_expire(self, state: InstanceState[Any], keys: Any) -> None:
        self.model.expired(state, None if keys is None else list(keys))

    def run(self) -> None:
        note_event(f"ops: {len(self.program.ops) // 10 * 10}+")
        for engine in self.engines:
            event.listen(engine, "before_cursor_execute", self._record)
        base = NPLUS1_ZOO.base
        event.listen(base, "expire", self._on_expire, propagate=True, raw=True)
        event.listen(base, "refresh", self._on_refresh, propagate=True, raw=True)
        event.listen(base, "load", self._on_load, propagate=True, raw=True)
        try:
            for number, op in enumerate(self.program.ops):
                self.log.append(f"{number}: {op}")
                self.step(op)
                self.n.remember()
                self.o.remember()
                self.catch_up()
                self.check_invariants()
        except Divergence as error:
            raise Divergence(f"{error}\n--- steps run:\n" + "\n".join(self.log)) from None
        finally:
            event.remove(base, "expire", self._on_expire)
            event.remove(base, "refresh", self._on_refresh)
            event.remove(base, "load", self._on_load)
            for engine in self.engines:
                event.remove(engine, "before_cursor_execute", self._record)
            self.n.session.close()
            self.o.session.close()

    def fail(self, message: str) -> None:
        raise Divergence(message)

    def snapshot(self) -> dict[InstanceState[Any], Snap]:
        return {
            s: Snap(
                loaded(s),
                frozenset(s.unloaded),
                s.expired,
                frozenset(s.expired_attributes),
                s.deleted,
            )
            for s in self.n.session.identity_map.all_states()
        }

    def attempt(self, side: Side, fn: Callable[[], Any]) -> Outcome:
        start = len(self.statements)
        try:
            value, error = fn(), None
        except Exception as exc:  # every error is compared, by type
            value, error = None, exc
        # Hold every instance now, before the step drops its last reference.
        side.remember()
        selects = sum(1 for s in self.statements[start:] if is_select(s))
        return Outcome(value, error, selects)

    def in_n(self, fn: Callable[[], Any], effect: str) -> Outcome:
        """Run ``fn`` in N and update the model with what it loaded.

        ``effect`` says how attributes got loaded: ``"hooks"`` (accesses,
        flush, delete cascades: through the armed hooks, whose batches arm
        what they bring), ``"query"`` (row population: loaded, nothing armed
        beyond the query's own option), ``"assign"`` (nothing loaded; an
        assigned attribute keeps its hook)."""
        before = self.snapshot()
        self.populated.clear()
        self.created.clear()
        outcome = self.attempt(self.n, fn)
        if effect != "assign":
            self.after_loads(before, nested=effect == "hooks")
        return outcome

    def after_loads(self, before: dict[InstanceState[Any], Snap], nested: bool) -> None:
        """Loading an attribute removes its hook.  A relationship an armed
        hook batch-loaded (``nested=True``) arms the instances its query
        brought, as ``nplus1loader('*')`` would: the targets its rows
        created or fully reloaded (not those already in the session, which
        keep their arming; not those found in the identity map by a
        many-to-one, nor those a backref had queued on the collection)."""
        brought: dict[InstanceState[Any], None] = {}
        for state, snap in before.items():
            attrs = ATTRS[state.class_.__name__]
            for key in loaded(state) - snap.loaded:
                hook = self.model.arm(state).hooks.pop(key, None)
                attr = attrs[key]
                if not nested or not attr.is_rel or hook != ("load", True):
                    continue
                for target in values_of(attr, state.dict.get(key)):
                    t_state = inspect(target)
                    if t_state in self.created:
                        brought[t_state] = None
        for t_state in brought:
            t_snap = before.get(t_state)
            unloaded = set(t_snap.unloaded if t_snap else ATTRS[t_state.class_.__name__])
            self.model.query_loaded(t_state, NESTED, unloaded, new=t_snap is None)

    # -- predictions -----------------------------------------------------

    def predict(self, state: InstanceState[Any], attr: Attr) -> tuple[str, list[Any]]:
        """How N's access to an unloaded attribute goes: ("raise", []),
        ("batch", peers) or ("stock", [])."""
        key = attr.key
        if key in state.dict:
            return "stock", []
        if not attr.is_rel and not attr.deferred and key in state.expired_attributes:
            mode = self.model.refresh_mode(state, key)
            if mode is None or state.session is None or state.key is None:
                return "stock", []
            if mode == "raise":
                return "raise", []
            peers = self.refresh_peers(state)
            return ("batch", peers) if len(peers) > 1 else ("stock", [])
        hook = self.model.hook(state, key)
        persistent = state.key is not None and state.session is not None and not state.deleted
        if state.key is not None and hook is not None and hook[0] == "raise":
            return "raise", []
        if hook is not None and persistent:
            peers = self.batch_peers(state, key)
            # One instance is no N+1 pattern: stock's own load.
            return ("batch", peers) if len(peers) > 1 else ("stock", [])
        if attr.is_rel and state.key is not None and state.session is not None:
            # A stock lazy load reads the relationship's own columns first,
            # each through its own loader: a raise hook on one raises (as
            # SQLAlchemy's defer(raiseload=True) does).  An expired one is
            # refreshed: that read is SQLAlchemy's, not the user's.
            attrs = ATTRS[state.class_.__name__]
            for column in attr.local:
                if (
                    column not in state.dict
                    and column not in state.expired_attributes
                    and self.predict(state, attrs[column])[0] == "raise"
                ):
                    return "raise", []
        return "stock", []

    def batch_peers(self, trigger: InstanceState[Any], key: str) -> list[Any]:
        peers = [trigger]
        prop = trigger.mapper.attrs[key]
        local = ATTRS[trigger.class_.__name__][key].local if prop_is_rel(prop) else ()
        if any(c not in trigger.dict or c in trigger.committed_state for c in local):
            return [trigger]  # stock loads by the values it reads (changed: alone)
        for state in self.n.session.identity_map.all_states():
            # The same attribute: Tag.posts is no peer of Author.posts.
            if state is trigger or state.mapper.attrs.get(key) is not prop:
                continue
            if state.identity_token != trigger.identity_token:
                continue  # another shard: its own batch, on its own database
            hook = self.model.hook(state, key)
            if (
                hook is not None
                and hook[0] == "load"
                and key not in state.dict
                # A collection with only backref appends queued still loads
                # (the queued items merge in, as in a stock lazy load).
                and (key not in state.committed_state or ATTRS[state.class_.__name__][key].uselist)
                and not state.deleted
                # Stock reads the join columns: expired, deferred or changed
                # in memory, the peer loads on its own.
                and all(c in state.dict and c not in state.committed_state for c in local)
                # Stock replays each instance's own load options at its path:
                # only instances whose would be the same share a statement.
                and same_replay(state, trigger)
            ):
                peers.append(state)
        return peers

    def refresh_peers(self, trigger: InstanceState[Any]) -> list[Any]:
        def loadable(state: InstanceState[Any]) -> frozenset[str]:
            attrs = ATTRS[state.class_.__name__]
            # What SQLAlchemy would refresh: expired relationships count too,
            # so instances differing only in those are not peers.
            return frozenset(
                k
                for k in state.expired_attributes
                if k not in state.committed_state and not attrs[k].deferred
            )

        wanted = loadable(trigger)
        peers = [trigger]
        for state in self.n.session.identity_map.all_states():
            if state is trigger or state.mapper is not trigger.mapper:
                continue
            if state.identity_token != trigger.identity_token:
                continue
            arm = self.model.arms.get(state)
            profile = arm.profile if arm else None
            if profile is None or profile.refresh != "load":
                continue
            if state.deleted or loadable(state) != wanted:
                continue
            # A refresh replays the instance's own load options: only those
            # with the same ones share a statement.
            if not same_replay(state, trigger):
                continue
            peers.append(state)
        return peers

    # -- steps -----------------------------------------------------------

    def step(self, op: Op) -> None:
        handler = getattr(self, f"op_{op.kind}")
        handler(*op.args)

    def both(self, fn: Callable[[Side], Any], effect: str) -> tuple[Outcome, Outcome]:
        """Run a non-touch step in N then O; errors must agree."""
        n = self.in_n(lambda: fn(self.n), effect)
        if isinstance(n.error, LazyLoadingAttributeError):
            self.fail(f"N raised {n.error!r} outside a touch")
        o = self.attempt(self.o, lambda: fn(self.o))
        self.compare_errors(n, o)
        return n, o

    def compare_errors(self, n: Outcome, o: Outcome) -> None:
        if type(n.error) is not type(o.error):
            self.fail(f"errors differ: N {n.error!r} / O {o.error!r}")

    def op_query(self, entity: str, opt: Opt, upto: int | None) -> None:
        # Autoflush first, as its own step: a flush loads through the hooks.
        n, _ = self.both(lambda side: side.session.flush(), "hooks")
        if n.error is not None:
            return
        before = self.snapshot()

        def query(side: Side) -> list[Any]:
            cls = side.zoo[entity]
            mapper = inspect(cls)
            stmt = select(cls).order_by(*mapper.primary_key)
            if upto is not None:
                stmt = stmt.where(mapper.primary_key[0] <= upto)
            return list(
                side.session.scalars(stmt.options(*self.options(side, entity, opt))).unique()
            )

        n, o = self.both(query, "query")
        if n.error is None:
            got = [ident_of(x) for x in n.value], [ident_of(x) for x in o.value]
            if got[0] != got[1]:
                self.fail(f"query results differ: N {got[0]} / O {got[1]}")
            if n.selects > o.selects:
                self.fail(f"query cost {n.selects} SELECTs in N, {o.selects} in O")
            # SQLAlchemy populates a new instance once per query, through
            # the first path whose row reaches it: one a self-referential
            # joinedload brings before its own row is not armed as a lead.
            # An instance already in the session is re-armed by every lead
            # row that reaches it, whatever reached it first.
            joined = [
                attr
                for how, attr in opt.stock
                if how == "joinedload"
                and ATTRS[entity][attr].target in {c for c in SUBCLASSES if entity in SUBCLASSES[c]}
            ]
            reached: set[Any] = set()
            for obj in n.value:
                state = inspect(obj)
                snap = before.get(state)
                if state not in reached or snap is not None:
                    unloaded = set(snap.unloaded if snap else ATTRS[type(obj).__name__])
                    self.model.query_loaded(state, opt, unloaded, new=snap is None)
                reached.add(state)
                for attr in joined:
                    value = getattr(obj, attr)
                    reached.update(inspect(v) for v in values_of(ATTRS[entity][attr], value))

    def options(self, side: Side, entity: str, opt: Opt) -> list[Any]:
        cls = side.zoo[entity]
        loaders = {"joinedload": joinedload, "selectinload": selectinload, "undefer": undefer}
        options = [loaders[name](getattr(cls, attr)) for name, attr in opt.stock]
        if not opt.func:
            return options
        if side is self.n:
            kwargs: dict[str, Any] = {}
            if opt.func.startswith("nplus1"):
                kwargs = {"chunk_size": opt.chunk, "nested": opt.nested}
            return [*options, getattr(nplus1loader, opt.func)(*opt.names, **kwargs)]
        # The oracle: a named column is deferred by the option, nothing else.
        attrs = ATTRS[entity]
        for name in opt.names:
            if name != "*" and not attrs[name].is_rel and not attrs[name].deferred:
                options.append(defer(getattr(cls, name)))
        return options

    def resolve(self, ref: Ref | None) -> Ident | None:
        """The instance a :data:`Ref` names now (both sessions hold the same)."""
        if ref is None:
            return None
        pool = sorted(
            (i for i in self.n.handles if not ref[0] or i[0] in SUBCLASSES[ref[0]]), key=repr
        )
        return pool[ref[1] % len(pool)] if pool else None

    def op_touch(self, ref: Ref, key: TouchKey) -> None:
        ident = self.resolve(ref)
        if ident is None:
            note_event("touch: nothing to touch")
            return
        self.touch(ident, pick_key(ident[0], key))

    def op_loop(self, entity: str, key: str) -> None:
        """The N+1 loop itself: the attribute on every instance of the class."""
        for ident in sorted(self.n.handles, key=repr):
            if ident[0] in SUBCLASSES[entity] and ident in self.o.handles:
                self.touch(ident, key)
                self.catch_up()

    def touch(self, ident: Ident, key: str) -> Outcome | None:
        n_obj, o_obj = self.n.handles.get(ident), self.o.handles.get(ident)
        if (n_obj is None) != (o_obj is None):
            self.fail(f"{ident} known to one session only")
        if n_obj is None:
            note_event("touch: not loaded yet")
            return None
        attr = ATTRS[ident[0]][key]
        state = inspect(n_obj)
        if state.deleted or state.was_deleted:
            # What a deleted instance holds depends on when it was loaded: a
            # batch may load it (as a peer) before the delete is flushed,
            # stock never.  Both are right; nothing to compare.
            note_event("touch: deleted instance, skipped")
            return None
        if (
            attr.is_rel
            and key not in state.dict
            and not state.expired_attributes.isdisjoint(attr.local)
            and (self.model.hook(state, key) or ("",))[0] == "load"
        ):
            # A lazy load reads the parent's expired join columns first (a
            # refresh, batched over the armed peers), as stock's does: read
            # them the same way on both sides, then predict the load.  (In
            # raise mode the touch raises before reading anything.)
            for column in [c for c in attr.local if c in state.expired_attributes]:
                # SQLAlchemy's own read (not the descriptor's): what a lazy
                # load does, which raise mode does not stop.
                n_read = self.in_n(lambda c=column: internal_read(n_obj, c), "hooks")
                o_read = self.attempt(self.o, lambda c=column: internal_read(o_obj, c))
                self.compare_errors(n_read, o_read)
                if n_read.error is not None:
                    return n_read
            self.catch_up()
        if self.n.session.autoflush and (
            self.n.session.new or self.n.session.dirty or self.n.session.deleted
        ):
            # What the touch's autoflush writes (and reads: a flush refreshes
            # what it needs), as a step of its own, so the model sees the
            # flushed state: then the touch's own autoflush finds nothing.
            self.both(lambda side: side.session.flush(), "hooks")
            self.catch_up()
        kind, peers = self.predict(state, attr)
        before = self.snapshot()
        n = self.in_n(lambda: getattr(n_obj, key), "hooks")
        where = f"{ident}.{key} ({kind})"
        note_event(f"touch: {kind}" + (f", {type(n.error).__name__}" if n.error else ""))
        if kind == "raise":
            if not isinstance(n.error, LazyLoadingAttributeError):
                self.fail(f"{where}: raise predicted, N gave {n.value!r} / {n.error!r}")
            named = str(n.error).partition(" is not available due to raiseload")[0]
            cls, _, column = named.partition(".")
            if cls != ident[0] or column not in ATTRS[cls]:
                self.fail(f"{where}: wrong message {n.error}")
            return n
        if isinstance(n.error, LazyLoadingAttributeError):
            self.fail(f"{where}: N raised {n.error!r}, not predicted")
        o = self.attempt(self.o, lambda: getattr(o_obj, key))
        self.compare_errors(n, o)
        if n.error is None:
            n_value, o_value = normalize(attr, n.value), normalize(attr, o.value)
            if n_value != o_value and not self.own_shard_read(n_obj, key, ident, n.value):
                self.fail(f"{where}: N read {n_value!r}, O read {o_value!r}")
        if kind == "batch" and n.error is None:
            self.check_peers(where, key, peers, before)
            cost_bound = math.ceil(len(peers) / self.chunk) * (2 if attr.is_rel else 1)
            if n.selects > cost_bound:
                self.fail(f"{where}: {n.selects} SELECTs for {len(peers)} peers")
        start = len(self.statements)
        self.catch_up()
        caught_up = sum(1 for s in self.statements[start:] if is_select(s))
        if n.selects > o.selects + caught_up:
            self.fail(
                f"{where}: N cost {n.selects} SELECTs, stock {o.selects} + {caught_up} catch-up"
            )
        return n

    def check_peers(
        self, where: str, key: str, peers: list[Any], before: dict[InstanceState[Any], Snap]
    ) -> None:
        """Exactly the predicted peers got the attribute."""
        expected = set(peers)
        for state, snap in before.items():
            if key not in ATTRS[state.class_.__name__] or key in snap.loaded:
                continue
            if (key in state.dict) != (state in expected):
                how = "loaded unarmed" if key in state.dict else "missed armed peer"
                self.fail(f"{where}: batch {how} {ident_of(state.obj())}")

    def op_set(self, ref: Ref, key: str, value: str) -> None:
        self.on_objects(ref, lambda side, obj: setattr(obj, key, value), "assign")

    def op_rekey(self, ref: Ref, key: str, value: int | None) -> None:
        self.on_objects(ref, lambda side, obj: setattr(obj, key, value), "assign")

    def op_link(self, ref: Ref, key: str, target_ref: Ref | None) -> None:
        target = self.resolve(target_ref)
        if target_ref is not None and target is None:
            return
        self.on_objects(
            ref,
            lambda side, obj: setattr(obj, key, None if target is None else side.handles[target]),
            "assign",
        )

    def op_append(self, ref: Ref, key: str, target: Ref) -> None:
        self.collection_change(ref, key, target, "append")

    def op_remove(self, ref: Ref, key: str, target: Ref) -> None:
        self.collection_change(ref, key, target, "remove")

    def collection_change(self, ref: Ref, key: str, target_ref: Ref, how: str) -> None:
        ident, target = self.resolve(ref), self.resolve(target_ref)
        if ident is None or target is None:
            return
        # Loading the collection is a touch of its own (it may batch or raise).
        n = self.touch(ident, key)
        if n is None or n.error is not None:
            return
        self.on_objects(
            ref,
            lambda side, obj: getattr(getattr(obj, key), how)(side.handles[target]),
            "assign",
        )

    def on_objects(self, ref: Ref, fn: Callable[[Side, Any], Any], effect: str) -> None:
        ident = self.resolve(ref)
        if ident is not None:
            self.both(lambda side: fn(side, side.handles[ident]), effect)

    def op_add(self, cls: str, pk: int, target_ref: Ref | None) -> None:
        target = self.resolve(target_ref)

        def add(side: Side) -> None:
            link = side.handles[target] if target is not None else None
            fields: dict[str, Any] = {"id": pk}
            if cls == "Author":
                fields.update(name=f"new {pk}", mentor=link)
            elif cls == "Post":
                fields.update(title=f"new {pk}", author=link)
            elif cls == "Tag":
                fields.update(label=f"new {pk}")
            elif cls == "Review":
                fields.update(stars=3, note=link)
            elif cls == "Dog":
                fields.update(name=f"dog {pk}", bark="new", owner=link)
            else:
                fields.update(name=f"cat {pk}", lives=9, owner=link)
            obj = side.zoo[cls](**fields)
            side.session.add(obj)
            side.handles[ident_of(obj)] = obj

        self.both(add, "assign")

    def op_delete(self, ref: Ref) -> None:
        # The delete cascade loads collections (a batch in N, a stock lazy
        # load in O), each autoflushing as it would.
        self.on_objects(ref, lambda side, obj: side.session.delete(obj), "hooks")

    def op_flush(self) -> None:
        self.both(lambda side: side.session.flush(), "hooks")

    def op_commit(self) -> None:
        # The flush first, as its own step, so the model sees what it loaded
        # before the commit expires everything.
        n, _ = self.both(lambda side: side.session.flush(), "hooks")
        if n.error is None:
            self.both(lambda side: side.session.commit(), "hooks")

    def op_rollback(self) -> None:
        self.both(lambda side: side.session.rollback(), "hooks")

    def op_close(self) -> None:
        self.both(lambda side: side.session.close(), "hooks")

    def op_expire_all(self) -> None:
        self.both(lambda side: side.session.expire_all(), "hooks")

    def op_expire(self, ref: Ref, keys: tuple[str, ...] | None) -> None:
        self.on_objects(
            ref,
            lambda side, obj: side.session.expire(obj, None if keys is None else list(keys)),
            "hooks",
        )

    # -- catching up and invariants ---------------------------------------

    def catch_up(self) -> None:
        """Load in each session what the other one has loaded, until both
        hold the same attributes on the same instances."""
        for _ in range(8):
            moved = False
            o_states = self.o.mapped()
            for ident, n_state in sorted(self.n.mapped().items(), key=lambda i: repr(i[0])):
                o_state = o_states.get(ident)
                if o_state is None:
                    continue
                n_loaded, o_loaded = loaded(n_state), loaded(o_state)
                for key in sorted(n_loaded - o_loaded):
                    moved = True
                    with self.o.session.no_autoflush:
                        o = self.attempt(
                            self.o, lambda o_state=o_state, key=key: getattr(o_state.obj(), key)
                        )
                    if o.error is not None:
                        self.fail(f"catch-up: O cannot load {ident}.{key}: {o.error!r}")
                for key in sorted(o_loaded - n_loaded):
                    if key in n_state.dict:
                        continue
                    attr = ATTRS[ident[0]][key]
                    if self.predict(n_state, attr)[0] == "raise":
                        continue  # N may not load it: it stays unloaded there
                    moved = True
                    with self.n.session.no_autoflush:
                        n = self.in_n(
                            lambda n_state=n_state, key=key: getattr(n_state.obj(), key), "hooks"
                        )
                    if n.error is not None:
                        self.fail(f"catch-up: N cannot load {ident}.{key}: {n.error!r}")
            self.n.remember()
            self.o.remember()
            if not moved:
                return
        self.fail("catch-up did not converge")

    def check_invariants(self) -> None:
        n_map, o_map = set(self.n.mapped()), set(self.o.mapped())
        if n_map != o_map:
            self.fail(f"identity maps differ: only N {n_map - o_map}, only O {o_map - n_map}")
        if set(self.n.handles) != set(self.o.handles):
            self.fail("the sessions have seen different instances")
        for ident, obj in self.n.handles.items():
            mine, theirs = lifecycle(obj), lifecycle(self.o.handles[ident])
            if mine != theirs:
                self.fail(f"{ident} is {mine} in N, {theirs} in O")


# ============================================================ database setup

INSERT_ORDER = ("author", "post", "tag", "post_tag", "note", "review", "animal", "cat", "dog")
_ready: set[tuple[str, str]] = set()
_oracle_engines: dict[str, Engine] = {}


def engines_for(engine: Engine) -> tuple[Engine, Engine]:
    """The engines of N and O.  One server engine serves both (their tables
    differ); SQLite allows one writer per file, so there the oracle gets a
    file of its own next to the test database."""
    if engine.dialect.name != "sqlite":
        return engine, engine
    path = Path(engine.url.database or "")
    oracle_url = str(engine.url.set(database=str(path.with_name("fuzz-oracle.db"))))
    if oracle_url not in _oracle_engines:
        _oracle_engines[oracle_url] = make_engine(oracle_url)
    return engine, _oracle_engines[oracle_url]


@pytest.fixture(scope="module", autouse=True)
def _dispose_oracle_engines() -> Iterator[None]:
    yield
    for engine in [*_oracle_engines.values(), *_shard_engines.values()]:
        engine.dispose()
    _oracle_engines.clear()
    _shard_engines.clear()


def load_graph(engines: tuple[Bind, Bind], graph: Graph) -> None:
    """Both copies of the zoo hold exactly ``graph`` (and nothing else); in
    shards, each shard holds it, its texts marked with the shard's name
    (the same primary keys, different values)."""
    for bind, zoo in zip(engines, (NPLUS1_ZOO, ORACLE_ZOO), strict=True):
        shards = bind.items() if isinstance(bind, dict) else [(None, bind)]
        for shard, engine in shards:
            rows = graph.rows if shard is None else _marked(graph.rows, shard)
            url = engine.url.render_as_string(hide_password=False)
            if (url, zoo.prefix) not in _ready:
                setup_schema(engine, zoo.metadata)
                _ready.add((url, zoo.prefix))
            with engine.begin() as conn:
                conn.execute(update(zoo.table("author")).values(mentor_id=None))
                for name in DELETE_ORDER:
                    conn.execute(delete(zoo.table(name)))
                for name in INSERT_ORDER:
                    if rows[name]:
                        conn.execute(insert(zoo.table(name)), rows[name])


_KEY_TEXTS = frozenset({"kind", "lang", "note_lang"})
"""Text columns that identify or join rows: the same on every shard."""


def _marked(rows: dict[str, list[dict[str, Any]]], shard: str) -> dict[str, list[dict[str, Any]]]:
    return {
        name: [
            {
                k: f"{v}@{shard}" if isinstance(v, str) and k not in _KEY_TEXTS else v
                for k, v in row.items()
            }
            for row in table
        ]
        for name, table in rows.items()
    }


# ------------------------------------------------------------- sharding

SHARDS = ("east", "west")


def new_shard(obj: Any) -> str:
    """Where a new instance goes: by its primary key's parity."""
    return SHARDS[(inspect(obj).dict.get("id") or 0) % 2]


def _shard_chooser(mapper: Any, instance: Any, clause: Any = None) -> str:
    return new_shard(instance)


def _identity_chooser(mapper: Any, primary_key: Any, *, lazy_loaded_from: Any, **kw: Any) -> Any:
    if lazy_loaded_from is not None:
        return [lazy_loaded_from.identity_token]
    return list(SHARDS)


def _execute_chooser(context: Any) -> Any:
    if context.lazy_loaded_from is not None:
        return [context.lazy_loaded_from.identity_token]
    return list(SHARDS)


def sharded(shards: dict[str, Engine]) -> ShardedSession:
    """SQLAlchemy's horizontal sharding as its docs set it up: lazy loads go
    to the shard of the instance they load from, queries to every shard."""
    return ShardedSession(
        shards=shards,
        shard_chooser=_shard_chooser,
        identity_chooser=_identity_chooser,
        execute_chooser=_execute_chooser,
    )


_shard_engines: dict[str, Engine] = {}


def shards_for(engine: Engine) -> tuple[Bind, Bind]:
    """Two SQLite shards for N and two for O, next to the test database."""
    path = Path(engine.url.database or "")
    binds: list[dict[str, Engine]] = []
    for side in ("n", "o"):
        shards: dict[str, Engine] = {}
        for shard in SHARDS:
            url = str(engine.url.set(database=str(path.with_name(f"fuzz-{side}-{shard}.db"))))
            if url not in _shard_engines:
                _shard_engines[url] = make_engine(url)
            shards[shard] = _shard_engines[url]
        binds.append(shards)
    return binds[0], binds[1]


def run_program(engine: Engine, program: Program, *, sharding: bool = False) -> None:
    engines = shards_for(engine) if sharding else engines_for(engine)
    load_graph(engines, program.graph)
    Runner(engines, program).run()


# ============================================================ the tests


@pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")
@settings(
    max_examples=_examples(),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(program=programs())
def test_nplus1_session_agrees_with_stock(engine: Engine, program: Program) -> None:
    run_program(engine, program)


@pytest.mark.sqlite
@pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")
@settings(
    max_examples=_examples(),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(program=programs())
def test_sharded_session_agrees_with_stock(engine: Engine, program: Program) -> None:
    """The same programs in a ``ShardedSession`` over two SQLite shards per
    side that hold the same primary keys with different values: batches
    must group peers by shard and go to each one's own database."""
    run_program(engine, program, sharding=True)


# ============================================================ cases found

AUTHOR_1 = {"id": 1, "name": "author 1", "bio": None, "motto": None, "email": None}


def _graph(**rows: list[dict[str, Any]]) -> Graph:
    return Graph({name: rows.get(name, []) for name in DELETE_ORDER})


JOINED_MENTOR = (("joinedload", "mentor"),)

FOUND = {
    # A stock refresh (the profile of the latest query, raiseload_rel, has
    # no refresh of its own) replayed the options of the query that first
    # loaded the post, nplus1loader('*'), which re-armed Post.author to
    # load: the touch loaded where the latest query said raise (fixed: after
    # any stock refresh the latest arming query's profile is put back).
    "stock-refresh-keeps-the-latest-arming": Program(
        _graph(post=[{"id": 1, "author_id": None, "title": "post 1", "body": None}]),
        (
            Op("query", ("Post", Opt("nplus1loader"), None)),
            Op("query", ("Post", Opt("raiseload_rel"), None)),
            Op("commit"),
            Op("loop", ("Post", "title")),
            Op("touch", (("Post", 0), (True, 0))),
        ),
    ),
    # A flush deleting a review read its foreign key (for the history of the
    # many-to-one) through the named raise hook, and it raised (fixed: a
    # raise hook honours NO_RAISE, as lazy="raise" relationships do).
    "flush-reads-raise-hooked-foreign-key": Program(
        _graph(review=[{"id": 1, "note_post_id": None, "note_lang": None, "stars": 1}]),
        (
            Op("query", ("Review", Opt("raiseload_all", ("note", "note_post_id")), None)),
            Op("delete", (("Review", 0),)),
            Op("flush"),
        ),
    ),
    # After commit, a stock lazy load of a relationship the query had
    # joined-loaded read the expired foreign key of a raise-armed instance,
    # and the refresh raised "Animal.owner_id" (fixed: only user code
    # reading an expired column raises).
    "stock-lazy-load-reads-expired-key-of-raise-armed": Program(
        _graph(
            author=[{**AUTHOR_1, "mentor_id": None}],
            animal=[{"id": 1, "kind": "animal", "name": "animal 1", "owner_id": 1}],
        ),
        (
            Op("query", ("Animal", Opt("raiseload_all", stock=(("joinedload", "owner"),)), None)),
            Op("commit"),
            Op("touch", (("Animal", 0), (True, 0))),
        ),
    ),
    # Alone after commit, an instance armed by nplus1loader('*') next to a
    # joinedload() was refreshed by a column-only SELECT and its owner then
    # lazy-loaded: 2 statements where stock SQLAlchemy's refresh replays the
    # joinedload and needs 1 (fixed: a lone instance refreshes the stock way).
    "lone-refresh-keeps-the-joinedload": Program(
        _graph(
            author=[{**AUTHOR_1, "mentor_id": None}],
            animal=[{"id": 1, "kind": "animal", "name": "animal 1", "owner_id": 1}],
        ),
        (
            Op("query", ("Animal", Opt("nplus1loader", stock=(("joinedload", "owner"),)), None)),
            Op("commit"),
            Op("touch", (("Animal", 0), (True, 0))),
        ),
    ),
    # Arming once rode on state.load_options (one attribute write per row,
    # cheaper than a key in the state's __dict__); SQLAlchemy stamps those
    # anew when it refreshes a deferred column, and author 2's arming for
    # .mentees went with them (kept in the state's __dict__ since).
    "deferred-column-refresh-keeps-the-arming": Program(
        _graph(
            author=[
                {**AUTHOR_1, "id": i, "name": f"author {i}", "mentor_id": None} for i in (1, 2, 3)
            ]
        ),
        (
            Op("query", ("Author", Opt(), 1)),
            Op("query", ("Author", Opt("nplus1loader", ("mentees",), stock=JOINED_MENTOR), None)),
            Op("loop", ("Author", "bio")),
            Op("touch", (("", 0), (True, 2))),
        ),
    ),
    # Author 2 came first as a lead row (armed to raise through the stamp of
    # its options and path), then as author 4's joined mentor: SQLAlchemy
    # 2.0 moved its stamped path to the mentor's, and the stamp found no
    # profile there (fixed: executions with joined eager loads store the
    # profile on each row).
    "joined-eager-load-moves-the-stamped-path": Program(
        _graph(
            author=[
                {**AUTHOR_1, "id": i, "name": f"author {i}", "mentor_id": 2 if i == 4 else None}
                for i in (1, 2, 3, 4)
            ]
        ),
        (
            Op("query", ("Author", Opt("raiseload_all", stock=JOINED_MENTOR), None)),
            Op("touch", (("Author", 1), (True, 0))),
        ),
    ),
    # Under raiseload_all('*'), reading each author's primary key after a
    # commit is one refresh per author: it raises, like any other column.
    "loop-over-expired-primary-key-raises": Program(
        _graph(author=[{**AUTHOR_1, "mentor_id": None}, {**AUTHOR_1, "id": 2, "mentor_id": None}]),
        (
            Op("query", ("Author", Opt("raiseload_all"), None)),
            Op("commit"),
            Op("loop", ("Author", "id")),
        ),
    ),
    # A delete cascade after commit read the expired key of a raise-armed
    # instance, and the batch refresh raised (fixed: raiseload never raises
    # for SQLAlchemy's own NO_RAISE bookkeeping).
    "delete-after-commit-of-raise-armed": Program(
        _graph(author=[{**AUTHOR_1, "mentor_id": None}]),
        (
            Op("query", ("Author", Opt("raiseload_all"), None)),
            Op("commit"),
            Op("delete", (("Author", 0),)),
            Op("flush"),
        ),
    ),
    # The Tag query's named option rode along (propagate_to_loaders) on the
    # posts its selectinload brought, and refreshing one of them applied it
    # to Post: ArgumentError "Post has no attribute 'label'" (fixed: a
    # refresh below the lead entity replays nothing, like a lazy load).
    "refresh-of-eagerly-loaded-child": Program(
        _graph(
            post=[{"id": 1, "author_id": None, "title": "post 1", "body": None}],
            tag=[{"id": 1, "label": "alpha"}],
            post_tag=[{"post_id": 1, "tag_id": 1}],
        ),
        (
            Op(
                "query",
                ("Tag", Opt("nplus1loader", ("label",), stock=(("selectinload", "posts"),)), None),
            ),
            Op("expire", (("Post", 0), None)),
            Op("touch", (("Post", 0), (False, 6))),
            Op("query", ("Tag", Opt("raiseload_all", stock=(("selectinload", "posts"),)), None)),
            Op("expire_all"),
            Op("touch", (("Post", 0), (False, 6))),
            Op("expire_all"),
            Op("touch", (("Post", 0), (False, 6))),
        ),
    ),
    # Deleting an armed post: the flush reads Post.author's history without
    # RELATED_OBJECT_OK (stock: identity map only), and the hook ran a batch
    # SELECT that put the authors into the session (fixed: such a read of a
    # many-to-one goes the stock way).
    "flush-history-of-many-to-one": Program(
        _graph(
            author=[{**AUTHOR_1, "mentor_id": None}],
            post=[{"id": 1, "author_id": 1, "title": "post 1", "body": None}],
        ),
        (
            Op("query", ("Post", Opt("nplus1loader", ("author",)), None)),
            Op("delete", (("Post", 0),)),
            Op("flush"),
        ),
    ),
    # Posts loaded without the option, then reached by the nested batch of
    # an armed tag's posts: the model still armed them, the library (since
    # batch loads leave instances already in the session armed as they
    # were) does not (fixed in the model: a batch arms what its rows create
    # or fully reload).
    "nested-batch-leaves-existing-instances-alone": Program(
        _graph(
            author=[{**AUTHOR_1, "mentor_id": None}],
            post=[
                {"id": i, "author_id": None, "title": f"post {i}", "body": None}
                for i in (1, 2, 3)
            ],
            tag=[{"id": 1, "label": "alpha"}],
            post_tag=[{"post_id": 2, "tag_id": 1}, {"post_id": 3, "tag_id": 1}],
        ),
        (
            *[Op("query", ("Author", Opt(), None))] * 5,
            Op("query", ("Post", Opt(), None)),
            Op("query", ("Tag", Opt("nplus1loader"), None)),
            Op("touch", (("", 4), (True, 0))),
            Op("touch", (("", 2), (True, 0))),
        ),
    ),
    # Adding a mentee of an author armed by raiseload_all('*') after a
    # commit: the flush read the author's expired primary key (its new
    # mentee's foreign key) through SQLAlchemy's own refresh, which
    # replayed raiseload_all('*') and armed only what the refresh left
    # unloaded; after the next commit Author.bio loaded instead of raising
    # (fixed: the latest arming query's profile is put back after that
    # refresh too).
    "flush-refresh-of-raise-armed-keeps-the-arming": Program(
        _graph(author=[{**AUTHOR_1, "mentor_id": None}]),
        (
            Op("query", ("Author", Opt("raiseload_all"), None)),
            Op("commit"),
            Op("add", ("Author", 50, ("Author", 0))),
            Op("commit"),
            Op("touch", (("Author", 0), (True, 0))),
        ),
    ),
    # Authors 2 and 3, already in the session, came first as author 1's
    # joined mentees, then as lead rows of raiseload_all('*'): the library
    # re-arms an instance already in the session by every later query whose
    # lead rows reach it, the model applied the first-path rule of new
    # instances to them (fixed in the model: that rule is SQLAlchemy
    # populating a new instance once, through its first path).
    "existing-instance-joined-first-is-re-armed-as-a-lead": Program(
        _graph(
            author=[
                {**AUTHOR_1, "id": i, "name": f"author {i}", "mentor_id": None if i == 1 else 1}
                for i in (1, 2, 3)
            ]
        ),
        (
            Op("query", ("Author", Opt(), None)),
            Op("query", ("Author", Opt("raiseload_all", stock=(("joinedload", "mentees"),)), None)),
            Op("loop", ("Author", "bio")),
        ),
    ),
}


@pytest.mark.parametrize("program", list(FOUND.values()), ids=list(FOUND))
def test_found_case(engine: Engine, program: Program) -> None:
    """Programs the fuzzer once failed on, replayed with every check."""
    run_program(engine, program)


# ============================================================ fixed bugs
# Found by the fuzzer and fixed: raise mode after an expire.

THREE_AUTHORS = _graph(
    author=[{**AUTHOR_1, "id": i, "name": f"author {i}", "mentor_id": None} for i in (1, 2, 3)],
    post=[{"id": i, "author_id": i, "title": f"post {i}", "body": None} for i in (1, 2, 3)],
)


def _stock_names(engine: Engine) -> dict[int, str]:
    """The authors' names as stock SQLAlchemy reads them, in a fresh session."""
    author = NPLUS1_ZOO["Author"]
    return oracle.stock(
        engine, select(author), lambda authors: {a.id: a.name for a in authors}
    ).values


def _authors(session: Session, option: Any, upto: int = 3) -> list[Any]:
    author = NPLUS1_ZOO["Author"]
    stmt = select(author).where(author.id <= upto).order_by(author.id).options(option)
    return list(session.scalars(stmt))


def test_named_raiseload_col_raises_only_for_named_after_commit(engine: Engine) -> None:
    load_graph(engines_for(engine), THREE_AUTHORS)
    expected = _stock_names(engine)
    with Session(engine) as session:
        authors = _authors(session, nplus1loader.raiseload_col("bio"))
        session.commit()
        with pytest.raises(LazyLoadingAttributeError):
            authors[0].bio  # noqa: B018 -- named: raises, before and after commit
        assert {a.id: a.name for a in authors} == expected


@pytest.mark.parametrize(
    "action",
    ["flush-an-update", "lazy-load-unarmed-relationship", "many-to-one-to-expired-target"],
)
def test_internal_reads_after_commit_of_raise_armed_instance(engine: Engine, action: str) -> None:
    """A flush needs the primary key for its UPDATE; a stock lazy load of a
    relationship the option did not arm needs it for its WHERE clause; a
    stock many-to-one refreshes its expired target (and the error then
    names "Author.author").  None of them is the user touching an unloaded
    attribute."""
    load_graph(engines_for(engine), THREE_AUTHORS)
    with Session(engine) as session:
        if action == "flush-an-update":
            authors = _authors(session, nplus1loader.raiseload_all("*"))
            session.commit()
            authors[0].name = "renamed"
            session.flush()
            assert _stock_names_in(session)[1] == "renamed"
        elif action == "lazy-load-unarmed-relationship":
            authors = _authors(session, nplus1loader.raiseload_col("*"))
            session.commit()
            assert [p.id for p in authors[0].posts] == [1]
        else:
            authors = _authors(session, nplus1loader.raiseload_all("*"))
            post = NPLUS1_ZOO["Post"]
            posts = list(session.scalars(select(post).order_by(post.id)))
            session.commit()
            assert posts[0].author is authors[0]


def _stock_names_in(session: Session) -> dict[int, str]:
    author = NPLUS1_ZOO["Author"]
    return {row[0]: row[1] for row in session.execute(select(author.id, author.name))}


@pytest.mark.parametrize(
    "peers",
    [
        pytest.param(2, id="batch-refresh"),
        pytest.param(1, id="single-refresh"),
    ],
)
def test_latest_query_decides_the_mode_after_refresh(engine: Engine, peers: int) -> None:
    """Instances loaded with raiseload_all, then again with nplus1loader, are
    armed to load (the latest query wins).  A refresh after commit must not
    bring the first query's raise mode back; it did when the refresh ran
    for one instance (SQLAlchemy's own refresh replays the options of the
    query that first loaded it), not when it batched."""
    load_graph(engines_for(engine), THREE_AUTHORS)
    expected = _stock_names(engine)
    with Session(engine) as session:
        first = _authors(session, nplus1loader.raiseload_all("*"), upto=peers)
        again = _authors(session, nplus1loader.nplus1loader("*"), upto=peers)
        assert first == again
        session.commit()
        assert first[0].name == expected[1]  # the refresh
        session.commit()
        assert [a.name for a in first] == [expected[a.id] for a in first]


def prop_is_rel(prop: Any) -> bool:
    return hasattr(prop, "direction")


def same_replay(state: InstanceState[Any], other: InstanceState[Any]) -> bool:
    """Whether a stock lazy load of ``state`` would replay what one of
    ``other`` replays: equal load options (by cache key) at the same path
    (mappers taken as their hierarchy's base)."""

    def path(s: InstanceState[Any]) -> tuple[Any, ...]:
        return tuple(getattr(step, "base_mapper", step) for step in s.load_path.path)

    def key(option: Any) -> Any:
        found = option._generate_cache_key()
        return option if found is None else found.key

    if path(state) != path(other) or state.identity_token != other.identity_token:
        return False
    mine, theirs = state.load_options, other.load_options
    return len(mine) == len(theirs) and all(
        a is b or key(a) == key(b) for a, b in zip(mine, theirs, strict=True)
    )


def internal_read(obj: Any, key: str) -> Any:
    state = inspect(obj)
    return state.manager[key].impl.get(state, state.dict)
