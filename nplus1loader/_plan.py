"""The plan an option writes: what a query arms, attribute by attribute.

At compile time an nplus1 option (``_options``) writes one
:class:`ArmedElement` per attribute it covers into
``compile_state.attributes``, keyed like SQLAlchemy's own per-attribute
options, and names one of the strategy keys below; SQLAlchemy then calls
the strategy registered for that key (``_strategies``), which reads the
element.  This module sits between the two so that neither imports the
other's code: the options know the plan, the strategies read it.

The one thing a strategy needs from the option layer, the option a batch
adds to its own statements to arm what it brings in (``nested=True``), is
handed down through :func:`batch_option`, which ``_options`` provides at
import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.util import immutabledict

from . import _sqla
from ._modes import LOAD, RAISE, WARN

REL_KEYS = {
    LOAD: (("lazy", "nplus1loader"),),
    WARN: (("lazy", "nplus1loader"),),
    RAISE: (("lazy", "nplus1loader_raise"),),
}
COL_KEYS = {
    LOAD: (("nplus1loader", LOAD),),
    WARN: (("nplus1loader", LOAD),),
    RAISE: (("nplus1loader", RAISE),),
}
#: Every strategy key of ours: a wildcard over one of them arms.
OUR_KEYS = frozenset(REL_KEYS.values()) | frozenset(COL_KEYS.values())


class ArmedElement(_sqla.LoadElementLike):
    """What an nplus1 option leaves in ``compile_state.attributes`` for one
    attribute at one path: it quacks like SQLAlchemy's ``_LoadElement`` where
    SQLAlchemy reads it (``_sqla.LoadElementLike``), and carries our
    settings for the strategy.

    ``underlying`` is the per-attribute option another option had set there
    before (``defer(User.bio)``), so a wildcard knows what it replaced.
    """

    __slots__ = (
        "anchor",
        "chunk_size",
        "local_opts",
        "mode",
        "nested",
        "raise_keys",
        "refreshes",
        "strategy",
        "underlying",
        "wild",
    )

    def __init__(
        self,
        strategy: tuple[Any, ...],
        mode: str,
        wild: bool,
        underlying: Any,
        nested: bool,
        chunk_size: int | None,
        anchor: bool = False,
        raise_keys: frozenset[str] | None = None,
        refreshes: bool = True,
    ) -> None:
        self.anchor = anchor
        self.raise_keys = raise_keys
        self.refreshes = refreshes
        self.strategy = strategy
        self.mode = mode
        self.wild = wild
        self.underlying = underlying
        self.nested = nested
        self.chunk_size = chunk_size
        self.local_opts: immutabledict[str, Any] = immutabledict()

    def over(self, replacement: Any) -> ArmedElement:
        """This wildcard again, now on top of ``replacement``: the option a
        later SQLAlchemy option put at the same key (see ArmedAttributes)."""
        return ArmedElement(
            self.strategy,
            self.mode,
            self.wild,
            replacement,
            self.nested,
            self.chunk_size,
            self.anchor,
            self.raise_keys,
            self.refreshes,
        )

    def __repr__(self) -> str:
        return f"ArmedElement(mode={self.mode!r}, wild={self.wild!r})"


class ArmedAttributes(dict):  # type: ignore[type-arg]
    """``compile_state.attributes`` once an nplus1 option has run.

    SQLAlchemy processes options in the order given, and a later option for
    the same attribute replaces ours (``nplus1loader('*'), defer(User.name)``).
    A wildcard only arms what the query leaves unloaded, so it must see what
    the query finally asks for, whatever the order: when a later option
    takes the key of a wildcard element, the wildcard goes back on top of
    it, with the later option as what it delegates to or judges by.  An
    option naming the attribute replaces ours outright, as SQLAlchemy's
    later-option-wins rule says.
    """

    __slots__ = ()

    def __setitem__(self, key: Any, value: Any) -> None:
        existing = self.get(key)
        if (
            isinstance(existing, ArmedElement)
            and existing.wild
            and value is not existing
            and not isinstance(value, ArmedElement)
        ):
            value = existing.over(value)
        super().__setitem__(key, value)


def watch_later_options(compile_state: Any) -> None:
    """Make the compile state's option registry an :class:`ArmedAttributes`
    (once per compilation; SQLAlchemy reads and writes it by key only)."""
    _sqla.option_registry(compile_state=compile_state, kind=ArmedAttributes)


_batch_option_factory: Callable[[int, str], Any] | None = None


def provide_batch_option(factory: Callable[[int, str], Any]) -> None:
    """Called once by ``_options``: how to make the option of a batch."""
    global _batch_option_factory
    _batch_option_factory = factory


def batch_option(chunk_size: int, mode: str) -> Any:
    """The option a batch (or a stock load with nested arming) adds to its
    statements so that what it brings in is armed in turn, in the mode of
    the loader that ran it (a nested N+1 pattern warns or raises as the
    first did)."""
    assert _batch_option_factory is not None, "nplus1loader._options provides it at import"
    return _batch_option_factory(chunk_size, mode)
