"""One WARNING per batch on ``nplus1loader.NPlusOneLazyColumnLoader``, naming
``Model.attribute``, the number of instances and the user's own line: the
file, line and function of the code that touched the attribute (here, the
test itself), never a frame inside nplus1loader or SQLAlchemy.
"""

from __future__ import annotations

import logging
import os
import sys

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from nplus1loader import nplus1loader, raiseload_all
from tests._db import QueryCounter
from tests.core_models import APIS, User, load, stock, touch_all

LOGGER = "nplus1loader.NPlusOneLazyColumnLoader"
HERE = os.path.abspath(__file__)
USERS = 37


@pytest.fixture
def seed_users() -> int:
    """The conftest ``session`` seeds this many users here."""
    return USERS


def batch_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("key", ["articles", "bio"])
def test_one_warning_per_batch_pointing_at_the_touching_line(
    engine: Engine, session: Session, caplog: pytest.LogCaptureFixture, api: str, key: str
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    users = load(session, api, User, nplus1loader("*"))
    assert len(users) == USERS

    with QueryCounter(engine) as q:
        line = sys._getframe().f_lineno + 1
        getattr(users[10], key)
    assert q.count == 1

    [record] = batch_records(caplog)
    site = f"{HERE}:{line} in test_one_warning_per_batch_pointing_at_the_touching_line()"
    assert record.levelno == logging.WARNING
    assert record.getMessage() == f"User.{key}: N+1 loading of {USERS} instances at {site}"
    assert record.__dict__["nplus1_model"] == "User"
    assert record.__dict__["nplus1_attribute"] == key
    assert record.__dict__["nplus1_instances"] == USERS
    assert record.__dict__["nplus1_call_site"] == site

    # The rest are loaded: touching them logs nothing more.
    got = touch_all(engine, users, lambda u: getattr(u, key))
    assert got.queries == 0
    assert got.values == stock(engine, User, lambda u: getattr(u, key)).values
    assert len(batch_records(caplog)) == 1


def touch_articles_of(users: list[User]) -> None:
    """A helper of the user's own: the call site is this function."""
    for user in users:
        user.articles  # noqa: B018


def test_call_site_is_the_innermost_user_frame(
    engine: Engine, session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    users = load(session, "scalars", User, nplus1loader("*"))
    touch_articles_of(users)
    [record] = batch_records(caplog)
    line = touch_articles_of.__code__.co_firstlineno + 3
    site = f"{HERE}:{line} in touch_articles_of()"
    assert record.getMessage() == f"User.articles: N+1 loading of {USERS} instances at {site}"
    assert record.__dict__["nplus1_call_site"] == site


def test_each_batch_logs_once_even_when_it_takes_several_queries(
    engine: Engine, session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    users = load(session, "scalars", User, nplus1loader("*", chunk_size=10))
    with QueryCounter(engine) as q:
        users[0].articles  # noqa: B018
        users[0].bio  # noqa: B018
    assert q.count == 8  # 37 users by 10, twice
    messages = [r.getMessage().split(" at ")[0] for r in batch_records(caplog)]
    assert messages == [
        f"User.articles: N+1 loading of {USERS} instances",
        f"User.bio: N+1 loading of {USERS} instances",
    ]


def test_a_lone_instance_is_not_logged(
    engine: Engine, session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    [user] = load(session, "scalars", User, nplus1loader("*"), where=User.id == 3)
    user.articles  # noqa: B018
    assert batch_records(caplog) == []


def test_no_record_without_a_batch(
    engine: Engine, session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    plain = load(session, "scalars", User, where=User.id <= 3)
    raising = load(session, "scalars", User, raiseload_all("*"), where=User.id > 3)
    plain[0].articles  # noqa: B018
    with pytest.raises(Exception, match="not available due to raiseload"):
        raising[0].articles  # noqa: B018
    assert batch_records(caplog) == []


def test_a_batch_started_by_a_flush_points_at_the_flush(
    engine: Engine, session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    """The flush reads the expired primary keys of the changed users for its
    UPDATEs: one batch refresh, reported at the user's ``flush()`` line, not
    in the wrapper SQLAlchemy generates around ``Session._flush``."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    users = load(session, "scalars", User, nplus1loader("*"))
    session.commit()
    for user in users:
        user.email = f"changed-{id(user)}@example.com"
    with QueryCounter(engine) as q:
        line = sys._getframe().f_lineno + 1
        session.flush()
    assert q.count == 2  # the batch refresh, then the UPDATEs (one executemany)
    [record] = batch_records(caplog)
    site = f"{HERE}:{line} in test_a_batch_started_by_a_flush_points_at_the_flush()"
    assert record.__dict__["nplus1_call_site"] == site
    assert record.__dict__["nplus1_instances"] == USERS
    session.rollback()
