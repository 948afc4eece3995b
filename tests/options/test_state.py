"""Option objects carry no hidden state (issue 15): running a query writes
nothing into the option (``ArmOption`` has ``__slots__`` and no
``__dict__``), the profiles an option's instances find are kept by the
library and go when the option goes, the session-wide option of
``enable()`` overrides no method of another module, and an option survives
what SQLAlchemy does to statements and instances: cloning a statement
(``params()``), pickling an instance that carries it.  Values are compared
with stock lazy loading; runs on every backend.
"""

from __future__ import annotations

import gc
import pickle
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, aliased, defaultload

import nplus1loader
from nplus1loader import (
    _arming,
    _session,
    enable,
    nplus1loader_cols,
    nplus1loader_rels,
    raiseload_all,
    raiseload_rel,
)
from nplus1loader import nplus1loader as nplus1
from nplus1loader._options import ArmOption, batch_arming_option
from nplus1loader._session import SessionWideOption
from tests import _oracle as oracle
from tests._db import QueryCounter
from tests.core_models import Article, User, ident, plain, seed


@pytest.fixture
def seeded(engine: Engine) -> Engine:
    seed(engine, users=8)
    return engine


def articles_of(users: list[Any]) -> dict[Any, Any]:
    return {ident(u): plain(u.articles) for u in users}


def stock_articles(engine: Engine) -> dict[Any, Any]:
    return oracle.stock(engine, select(User).order_by(User.id), articles_of).values


def slot_values(option: Any) -> dict[str, Any]:
    """Everything the option holds (a ``__dict__`` too, if it had one)."""
    values = dict(getattr(option, "__dict__", {}))
    for cls in type(option).__mro__:
        for name in vars(cls).get("__slots__", ()):
            if name != "__weakref__":
                values[name] = getattr(option, name)
    return values


_ALIAS = aliased(User)

#: Each option, and the entity a query selects for it.
OPTIONS: dict[str, Any] = {
    "nplus1loader('*')": lambda: (User, nplus1("*")),
    "nplus1loader(User.articles)": lambda: (User, nplus1(User.articles)),
    "nplus1loader_rels(alias.articles)": lambda: (_ALIAS, nplus1loader_rels(_ALIAS.articles)),
    "nplus1loader_cols('bio')": lambda: (User, nplus1loader_cols("bio")),
    "chained": lambda: (User, defaultload(User.articles).nplus1loader("*")),
    "raiseload_rel('*')": lambda: (User, raiseload_rel("*")),
    "batch option": lambda: (User, batch_arming_option(None)),
    "enable()'s option": lambda: (User, _session._OPTIONS["load"]),
}


@pytest.mark.parametrize("make", list(OPTIONS))
def test_an_option_has_no_dict_to_write_into(make: str) -> None:
    _, option = OPTIONS[make]()
    assert isinstance(option, ArmOption)
    assert not hasattr(option, "__dict__")
    with pytest.raises(AttributeError):
        option.nplus1_profiles = {}


def test_arm_option_classes_are_slotted_and_override_nothing() -> None:
    assert "__dict__" not in dir(ArmOption)
    assert ArmOption.__weakrefoffset__  # the profile store holds it weakly
    assert SessionWideOption.__slots__ == ()
    # No method of ArmOption (private or not) is overridden: the
    # session-wide behaviour is ArmOption's own session_wide flag.
    # (SQLAlchemy itself memoizes generated functions on the class.)
    own = {
        name
        for name, value in vars(SessionWideOption).items()
        if getattr(value, "__qualname__", "").startswith("SessionWideOption.")
    }
    assert own == {"__init__"}
    assert all(option.session_wide for option in _session._OPTIONS.values())
    assert not nplus1("*").session_wide


@pytest.mark.parametrize("make", list(OPTIONS))
def test_running_queries_changes_nothing_on_the_option(seeded: Engine, make: str) -> None:
    entity, option = OPTIONS[make]()
    before = slot_values(option)
    key = option._generate_cache_key()
    with Session(seeded) as session:
        users = list(session.scalars(select(entity).options(option).order_by(entity.id)))
        try:
            articles_of(users)
            [u.bio for u in users]
        except nplus1loader.LazyLoadingAttributeError:
            assert make == "raiseload_rel('*')"
        session.commit()
        [u.name for u in users]
    assert slot_values(option) == before
    assert option._generate_cache_key() == key


def test_enabled_sessions_batch_and_leave_the_module_options_alone(seeded: Engine) -> None:
    want = stock_articles(seeded)
    before = {mode: slot_values(option) for mode, option in _session._OPTIONS.items()}
    for _ in range(2):  # the second run finds the profiles of the first's option
        with enable(Session(seeded)) as session:
            users = list(session.scalars(select(User).order_by(User.id)))
            with QueryCounter(seeded) as q:
                got = articles_of(users)
            assert (got, q.count) == (want, 1)
            session.commit()  # expired: columns refresh in one query, as before
            with QueryCounter(seeded) as q:
                assert [u.name for u in users] == [f"user{i}" for i in range(1, 9)]
            assert q.count == 1
    assert {mode: slot_values(o) for mode, o in _session._OPTIONS.items()} == before


def test_the_profiles_of_an_option_go_with_it(seeded: Engine) -> None:
    # No statement cache: the cached statement would keep the option alive.
    uncached = seeded.execution_options(compiled_cache=None)
    want = stock_articles(seeded)
    option = nplus1("*")
    ref = weakref.ref(option)
    with Session(uncached) as session:
        users = list(session.scalars(select(User).options(option).order_by(User.id)))
        assert id(option) in _arming._by_option
        with QueryCounter(seeded) as q:
            assert articles_of(users) == want
        assert q.count == 1
        # The recorder keeps each statement's compiled construct, and with it
        # the option.
        del users, q
    del option
    gc.collect()
    assert ref() is None
    assert id(ref) not in _arming._by_option
    assert all(entry[0]() is not None for entry in _arming._by_option.values())


def test_two_executions_of_one_option_share_its_profiles(seeded: Engine) -> None:
    option = nplus1("*")
    want = stock_articles(seeded)
    for _ in range(2):
        with Session(seeded) as session:
            users = list(session.scalars(select(User).options(option).order_by(User.id)))
            with QueryCounter(seeded) as q:
                assert articles_of(users) == want
            assert q.count == 1
            assert _arming.profile_of(users[0]._sa_instance_state) is not None  # type: ignore[attr-defined]
    assert len(_arming.option_profiles(option)) == 1


def test_a_cloned_statement_keeps_the_option_and_batches(seeded: Engine) -> None:
    option = nplus1(User.articles)
    stmt = select(User).options(option).order_by(User.id)
    cloned = stmt.params()  # copies the statement (cloned_traverse)
    assert cloned is not stmt
    assert cloned._with_options == (option,)  # an immutable option is not copied
    assert cloned._generate_cache_key() == stmt._generate_cache_key()
    want = stock_articles(seeded)
    with Session(seeded) as session:
        users = list(session.scalars(cloned))
        with QueryCounter(seeded) as q:
            assert articles_of(users) == want
        assert q.count == 1


@pytest.mark.parametrize("bound", ["User.articles", "aliased(User).articles", "'*'", "chained"])
def test_an_instance_carrying_the_option_pickles(seeded: Engine, bound: str) -> None:
    """``state.load_options`` is pickled with an instance: a bound option
    used to fail there (Mappers do not pickle).  As for SQLAlchemy's own
    options, an aliased class comes back as its mapper."""
    entity: Any = aliased(User) if bound.startswith("aliased") else User
    option = {
        "User.articles": lambda: nplus1(User.articles),
        "aliased(User).articles": lambda: nplus1(entity.articles),
        "'*'": lambda: nplus1("*"),
        "chained": lambda: defaultload(User.articles).nplus1loader("*"),
    }[bound]()
    with Session(seeded) as session:
        user = session.scalars(select(entity).where(entity.id == 3).options(option)).one()
        copy = pickle.loads(pickle.dumps(user))
    again = pickle.loads(pickle.dumps(option))
    assert isinstance(again, ArmOption)
    assert slot_values(again).keys() == slot_values(option).keys()
    assert [e.mapper for e in again.bound_entities] == [e.mapper for e in option.bound_entities]
    with Session(seeded) as other:
        other.add(copy)
        assert plain(copy.articles) == stock_articles(seeded)[(3,)]


def test_raise_options_raise_after_the_store_moved(seeded: Engine) -> None:
    with Session(seeded) as session:
        users = list(session.scalars(select(User).options(raiseload_all("*"))))
        with pytest.raises(nplus1loader.LazyLoadingAttributeError):
            len(users[0].articles)


@pytest.fixture
def article_session(seeded: Engine) -> Iterator[Session]:
    with Session(seeded) as session:
        yield session


def test_nested_batches_reuse_one_option_per_chunk_size(article_session: Session) -> None:
    """The option a batch adds stays one object per chunk size and mode
    (its profiles, kept beside it, are found again)."""
    assert batch_arming_option(None) is batch_arming_option(None)
    assert batch_arming_option(7) is not batch_arming_option(None)
    assert batch_arming_option(None).arms_batches
    articles = list(article_session.scalars(select(Article).options(nplus1("*"))))
    assert sum(len(a.comments) for a in articles) > 0
    assert id(batch_arming_option(None)) in _arming._by_option


def test_an_option_pickled_by_an_earlier_version_loads() -> None:
    """Earlier versions pickled the option's ``__dict__``, without the names
    added since (their bound attributes did not pickle at all)."""
    old_state = {
        "option_name": "nplus1loader",
        "kinds": ("columns", "relationships"),
        "mode": "load",
        "strict": False,
        "nested": True,
        "chunk_size": None,
        "prefix": (),
        "names": ("*",),
        "bound": (),
    }
    option = ArmOption.__new__(ArmOption)
    option.__setstate__(old_state)
    assert option._generate_cache_key() == nplus1("*")._generate_cache_key()
