"""Things done once per mapper (a listener, a class-level hook), and the
test that they were, which runs several times per armed query execution.

A ``weakref.WeakSet`` would do, but its membership test builds a weak
reference in Python on every call; :class:`MapperSet` is tested with
``id(mapper) in mappers``, one dict lookup at C speed, and still lets a
test's throwaway mappers go.
"""

from __future__ import annotations

import weakref
from typing import Any


class MapperSet(dict[int, "weakref.ref[Any]"]):
    """Mappers, held weakly, keyed by id: test with ``id(mapper) in it``.

    An entry is dropped when its mapper goes, before the id can be taken by
    another object (the weak reference's callback), and only if it is still
    that mapper's entry."""

    __slots__ = ()

    def add(self, mapper: Any) -> None:
        key = id(mapper)
        self[key] = weakref.ref(mapper, lambda ref: self._forget(key, ref))

    def _forget(self, key: int, ref: weakref.ref[Any]) -> None:
        if self.get(key) is ref:
            del self[key]
