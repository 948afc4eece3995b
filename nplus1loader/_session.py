"""The session-wide switch: every ORM SELECT made through a session behaves
as if it carried ``nplus1loader('*')``, so users need not edit every query.

It uses only SQLAlchemy's public ``do_orm_execute`` session event.  The
setting is stored on the target itself (the ``Session`` object or class),
never in a module global: what a request sees depends only on its own
session and on the :func:`disabled` context variable, which is per thread
and per asyncio task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import ORMExecuteState, Session, scoped_session, sessionmaker

from ._modes import MODES, check_mode, environment_mode
from ._options import _BOTH, ArmOption, Mode

__all__ = ["disable", "disabled", "enable"]

T = TypeVar("T")

#: On a Session object or class (in its own ``__dict__``): the mode enabled
#: there, or ``None`` where :func:`disable` switched an inherited setting off.
_MODE_ATTR = "_nplus1loader_mode"
#: On a sync Session class that :func:`enable` made for an async_sessionmaker.
_DEDICATED_ATTR = "_nplus1loader_dedicated"
_UNSET = object()

_suspended: ContextVar[bool] = ContextVar("nplus1loader_disabled", default=False)


class SessionWideOption(ArmOption):
    """``nplus1loader('*')`` as added by :func:`enable`.

    It is appended after the query's own options, so SQLAlchemy's options
    (``joinedload``, ``defer``, ``raiseload``...) keep winning as they do with
    a written ``nplus1loader('*')``.  Unlike a written option it never
    replaces what an nplus1 option of the query itself chose for an
    attribute (``raiseload_all('*')``, ``nplus1loader('bio', mode='raise')``):
    explicit options win (``ArmOption.session_wide``).
    """

    __slots__ = ()

    # Its cache key is its own, distinct from a written nplus1loader('*')
    # (``_sqla.OptionBase`` gives every subclass a traversal of its own).

    def __init__(self, mode: str) -> None:
        super().__init__("enable", ("*",), _BOTH, mode, True, None, session_wide=True)


_OPTIONS = {mode: SessionWideOption(mode) for mode in MODES}


def enable(target: T, mode: Mode = "load") -> T:
    """Make every ORM SELECT through ``target`` arm what it leaves unloaded,
    as if it carried ``nplus1loader('*', mode=mode)``.

    ``target`` is a ``Session``, a ``sessionmaker``, a ``Session`` subclass, a
    ``scoped_session`` (Flask-SQLAlchemy's ``db.session``), or their asyncio
    equivalents.  Options written in a query still win.  Enabling again
    changes the mode.  Returns ``target``, so a factory can be enabled where
    it is made::

        SessionLocal = nplus1loader.enable(sessionmaker(engine))

    :param mode: ``"load"`` (batch), ``"warn"`` (batch and emit
        :class:`~nplus1loader.NPlusOneWarning`) or ``"raise"``.
    """
    check_mode(mode, "enable()")
    # A typo in NPLUS1LOADER_MODE fails here, at start-up, not at a touch.
    environment_mode()
    holder = _holder(target)
    _ensure_listener()
    setattr(holder, _MODE_ATTR, mode)
    return target


def enable_every_session(mode: Mode) -> Callable[[], None]:
    """:func:`enable` on ``Session`` itself, so every session of the
    process is enabled (the pytest plugin's ``--nplus1-enable``); returns
    what puts the previous setting back.  Sessions and classes enabled
    or disabled in the code keep their own setting: the most specific
    wins."""
    previous = _own_mode(Session)
    enable(Session, mode)

    def restore() -> None:
        if previous is _UNSET:
            if _own_mode(Session) is not _UNSET:
                delattr(Session, _MODE_ATTR)
        else:
            setattr(Session, _MODE_ATTR, previous)

    return restore


def _ensure_listener() -> None:
    """One listener on ``Session`` itself serves every enabled session: it
    runs once per execution, and asks the session for its mode.  Checked
    on every :func:`enable`, so a listener removed with ``event.remove``
    (or with all session events, as SQLAlchemy's own test suite does)
    comes back."""
    if not event.contains(Session, "do_orm_execute", _on_do_orm_execute):
        event.listen(Session, "do_orm_execute", _on_do_orm_execute)


def disable(target: Any) -> None:
    """Undo :func:`enable` for ``target``.

    Disabling one ``Session`` (or subclass) of an enabled factory (or base
    class) switches it off for that session (or subclass) only.
    """
    holder = _holder(target)
    if _inherited_mode(holder) is not None:
        setattr(holder, _MODE_ATTR, None)
    elif _own_mode(holder) is not _UNSET:
        delattr(holder, _MODE_ATTR)


@contextmanager
def disabled() -> Iterator[None]:
    """Turn the session-wide switch off for the queries of one block.

    Per thread and per asyncio task: other requests running at the same time
    are not affected.  Instances loaded inside the block are not armed;
    instances armed before it stay armed, and options written in a query
    keep working.
    """
    token = _suspended.set(True)
    try:
        yield
    finally:
        _suspended.reset(token)


def enabled_mode(session: Any) -> str | None:
    """The mode :func:`enable` set for ``session`` (a ``Session`` or an
    ``AsyncSession``), or ``None``: the most specific setting wins (the
    session itself, then its class and base classes)."""
    session = getattr(session, "sync_session", session)
    mode = _own_mode(session)
    if mode is _UNSET:
        mode = _inherited_mode(session)
    return mode if isinstance(mode, str) else None


def _on_do_orm_execute(orm_execute_state: ORMExecuteState) -> None:
    state = orm_execute_state
    # Lazy loads, deferred column loads and refreshes replay the options of
    # the query that loaded the instance; adding ours there would do nothing.
    if not state.is_select or state.is_column_load or state.is_relationship_load:
        return
    if _suspended.get():
        return
    mode = enabled_mode(state.session)
    if mode is None:
        return
    state.statement = state.statement.options(_OPTIONS[mode])


def _asyncio_classes() -> tuple[type, type, type] | None:
    """SQLAlchemy's asyncio session classes, or None where they cannot be
    imported (SQLAlchemy 2.1 without greenlet): then no asyncio session can
    exist, and importing nplus1loader must not require them."""
    try:
        from sqlalchemy.ext.asyncio import (
            AsyncSession,
            async_scoped_session,
            async_sessionmaker,
        )
    except ImportError:
        return None
    return AsyncSession, async_scoped_session, async_sessionmaker


def _holder(target: Any) -> Any:
    """The sync ``Session`` object or class the event listener goes on."""
    if isinstance(target, scoped_session):
        return _holder(target.session_factory)
    if isinstance(target, sessionmaker):
        return target.class_  # each sessionmaker makes a Session subclass of its own
    if isinstance(target, Session):
        return target
    if isinstance(target, type) and issubclass(target, Session):
        return target
    found = _asyncio_classes()
    if found is not None:
        return _async_holder(target, *found)
    raise _not_a_session(target)


def _async_holder(
    target: Any, async_session: Any, async_scoped: type[Any], async_maker: type[Any]
) -> Any:
    if isinstance(target, async_scoped):
        return _holder(target.session_factory)
    if isinstance(target, async_session):
        return target.sync_session
    if isinstance(target, async_maker):
        return _dedicated_sync_class(target)
    if isinstance(target, type) and issubclass(target, async_session):
        cls: Any = target  # an AsyncSession subclass
        if cls.sync_session_class is Session:
            raise ArgumentError(
                f"enable({target.__name__}): its sync_session_class is Session itself, so "
                "this would enable every Session of the process; give it a Session "
                "subclass of its own, or enable its async_sessionmaker"
            )
        return cls.sync_session_class
    raise _not_a_session(target)


def _not_a_session(target: Any) -> ArgumentError:
    return ArgumentError(
        "enable()/disable() expect a Session, sessionmaker, Session subclass, "
        f"scoped_session or their asyncio equivalents, got {target!r}"
    )


def _dedicated_sync_class(maker: Any) -> type[Session]:
    """The sync Session class of this async_sessionmaker alone.

    An ``async_sessionmaker``, unlike a ``sessionmaker``, makes no class of
    its own: its sessions share ``AsyncSession.sync_session_class``.  Give it
    a subclass, as ``sessionmaker`` does, so enabling it enables nothing else.
    """
    base = maker.kw.get("sync_session_class") or maker.class_.sync_session_class
    if vars(base).get(_DEDICATED_ATTR):
        return base  # type: ignore[no-any-return]
    dedicated = type(base.__name__, (base,), {_DEDICATED_ATTR: True})
    maker.configure(sync_session_class=dedicated)
    return dedicated


def _own_mode(holder: Any) -> Any:
    return vars(holder).get(_MODE_ATTR, _UNSET)


def _inherited_mode(holder: Any) -> str | None:
    classes = holder.__mro__[1:] if isinstance(holder, type) else type(holder).__mro__
    for cls in classes:
        mode = vars(cls).get(_MODE_ATTR, _UNSET)
        if mode is not _UNSET:
            return mode  # type: ignore[no-any-return]
    return None
