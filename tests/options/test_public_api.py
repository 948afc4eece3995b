"""The public surface: ``nplus1loader.__all__`` names exactly the public API,
each name is importable from the package, and ``py.typed`` ships with it so
type checkers read the annotations.

Adding a public name is a decision: it must be added here too.
"""

from __future__ import annotations

import importlib
import logging
import pickle
import re
from importlib import metadata, resources
from pathlib import Path

import pytest
from sqlalchemy.exc import InvalidRequestError

import nplus1loader

PUBLIC = {
    # The core (issue 2).
    "DEFAULT_CHUNK_SIZE",
    "LazyLoadingAttributeError",
    "NPlusOneWarning",
    "bulk_load_attribute_for_instance_states",
    "default_columns",
    "nplus1loader",
    "nplus1loader_cols",
    "nplus1loader_rels",
    "raiseload_all",
    "raiseload_col",
    "raiseload_rel",
    # The N+1 pattern report's settings (issue 17).
    "configure",
    # Production and test ergonomics (issue 6).
    "Stats",
    "disable",
    "disabled",
    "enable",
    "stats",
    # Names for annotations (issue 18).
    "Mode",
    "Nplus1Load",
    "Nplus1Option",
}


def test_all_is_exactly_the_public_api() -> None:
    assert sorted(nplus1loader.__all__) == sorted(PUBLIC)
    assert len(nplus1loader.__all__) == len(set(nplus1loader.__all__))  # no duplicates


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_each_public_name_is_importable(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from nplus1loader import {name}", namespace)
    assert namespace[name] is getattr(importlib.import_module("nplus1loader"), name)
    if callable(namespace[name]) and name != "Mode":  # a Literal alias has no docstring
        assert (namespace[name].__doc__ or "").strip(), f"{name} has no docstring"


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from nplus1loader import *", namespace)
    namespace.pop("__builtins__", None)
    assert set(namespace) == PUBLIC


def test_exceptions_are_what_the_api_promises() -> None:
    error = nplus1loader.LazyLoadingAttributeError("User", "name")
    assert isinstance(error, InvalidRequestError)
    assert str(error) == "User.name is not available due to raiseload"
    assert (error.model_name, error.attribute_name) == ("User", "name")
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is nplus1loader.LazyLoadingAttributeError
    assert str(again) == str(error)
    assert issubclass(nplus1loader.NPlusOneWarning, Warning)
    assert nplus1loader.DEFAULT_CHUNK_SIZE == 500


def test_py_typed_is_in_the_package() -> None:
    marker = resources.files("nplus1loader").joinpath("py.typed")
    assert marker.is_file()


def test_py_typed_is_shipped_in_the_distribution() -> None:
    """From a source checkout, pyproject.toml must put py.typed in the wheel;
    from an installed wheel, the installed files must list it."""
    pyproject = Path(nplus1loader.__file__).resolve().parent.parent / "pyproject.toml"
    if pyproject.is_file():
        text = pyproject.read_text(encoding="utf-8")
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10: the one line is enough
            assert re.search(r'^nplus1loader = \[[^\]]*"py\.typed"', text, re.MULTILINE)
        else:
            data = tomllib.loads(text)["tool"]["setuptools"]["package-data"]
            assert "py.typed" in data["nplus1loader"]
    else:
        files = metadata.files("nplus1loader") or []
        assert any(str(f).replace("\\", "/") == "nplus1loader/py.typed" for f in files)


_WITHOUT_GREENLET = """
import sys

class NoGreenlet:
    def find_spec(self, name, path=None, target=None):
        if name == "greenlet" or name.startswith("greenlet."):
            raise ImportError("greenlet is not installed (blocked by the test)")
        return None

sys.meta_path.insert(0, NoGreenlet())
for name in [m for m in sys.modules if m == "greenlet" or m.startswith("greenlet.")]:
    del sys.modules[name]

from sqlalchemy import Column, ForeignKey, Integer, create_engine, select
from sqlalchemy.orm import DeclarativeBase, relationship, sessionmaker

import nplus1loader


class Base(DeclarativeBase):
    pass


class Parent(Base):
    __tablename__ = "parent"
    id = Column(Integer, primary_key=True)
    children = relationship("Child")


class Child(Base):
    __tablename__ = "child"
    id = Column(Integer, primary_key=True)
    parent_id = Column(ForeignKey("parent.id"))


engine = create_engine("sqlite://")
Base.metadata.create_all(engine)
Session = nplus1loader.enable(sessionmaker(engine))
with Session() as session:
    session.add_all([Parent(id=i, children=[Child(id=i)]) for i in range(1, 4)])
    session.commit()
with Session() as session:
    parents = session.scalars(select(Parent)).all()
    assert [len(p.children) for p in parents] == [1, 1, 1]
    assert nplus1loader.stats(session).batches == 1
print("ok")
"""


def test_works_without_greenlet() -> None:
    """greenlet is optional for SQLAlchemy 2.1 (it is what its asyncio
    support needs): importing nplus1loader and using it with a sync session,
    the session-wide switch included, must not need it."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_GREENLET], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


_BATCH_WITHOUT_LOGGING_SETUP = """
import logging
import sys

from sqlalchemy import Column, ForeignKey, Integer, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Session, relationship

from nplus1loader import nplus1loader


class Base(DeclarativeBase):
    pass


class Parent(Base):
    __tablename__ = "parent"
    id = Column(Integer, primary_key=True)
    children = relationship("Child")


class Child(Base):
    __tablename__ = "child"
    id = Column(Integer, primary_key=True)
    parent_id = Column(ForeignKey("parent.id"))


if sys.argv[1] == "configured":
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
engine = create_engine("sqlite://")
Base.metadata.create_all(engine)
with Session(engine) as session:
    session.add_all([Parent(id=i, children=[Child(id=i)]) for i in range(1, 4)])
    session.commit()
with Session(engine) as session:
    parents = session.scalars(select(Parent).options(nplus1loader())).all()
    print([len(p.children) for p in parents])
"""


@pytest.mark.parametrize("setup", ["unconfigured", "configured"])
def test_batch_log_follows_the_applications_logging_setup(setup: str) -> None:
    """A library adds a NullHandler and nothing else: an application that
    never configured logging sees no WARNING on stderr (logging's last-resort
    handler stays silent), one that did sees the batch's record."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _BATCH_WITHOUT_LOGGING_SETUP, setup],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stdout) == (0, "[1, 1, 1]\n"), done.stderr
    if setup == "unconfigured":
        assert done.stderr == ""
    else:
        assert re.fullmatch(
            r"WARNING nplus1loader\.NPlusOneLazyColumnLoader: Parent\.children: N\+1 loading "
            # Python 3.12 inlines comprehensions: the frame is the module's.
            r"of 3 instances at \S*<string>:36 in (<listcomp>|<module>)\(\)\n",
            done.stderr,
        ), done.stderr


def test_package_logger_has_a_null_handler() -> None:
    handlers = logging.getLogger("nplus1loader").handlers
    assert [type(h) for h in handlers] == [logging.NullHandler]


def test_mode_literal_is_the_modes_the_library_checks() -> None:
    from typing import get_args

    from nplus1loader._modes import MODES

    assert get_args(nplus1loader.Mode) == MODES == ("load", "warn", "raise")


def test_options_are_instances_of_the_public_option_type() -> None:
    """``Nplus1Option`` is what the options return, so annotations with it
    are true at run time; ``Nplus1Load`` is SQLAlchemy's ``Load`` itself."""
    from sqlalchemy.orm import Load, joinedload

    from tests.core_models import User

    options = [
        nplus1loader.nplus1loader(),
        nplus1loader.nplus1loader_cols("name"),
        nplus1loader.nplus1loader_rels(User.articles),
        nplus1loader.raiseload_all(),
        nplus1loader.raiseload_col("bio"),
        nplus1loader.raiseload_rel(),
        nplus1loader.default_columns(User).nplus1loader(),
        joinedload(User.articles).raiseload_all(),
    ]
    assert [isinstance(o, nplus1loader.Nplus1Option) for o in options] == [True] * 8
    assert nplus1loader.Nplus1Load is Load
    assert type(nplus1loader.default_columns(User)) is Load
