"""Public exception and warning classes."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import InvalidRequestError

__all__ = ["LazyLoadingAttributeError", "NPlusOneWarning"]


class LazyLoadingAttributeError(InvalidRequestError):
    """An attribute was touched that nplus1loader forbids loading.

    Raised by :func:`nplus1loader.raiseload_all`, :func:`raiseload_col` and
    :func:`raiseload_rel` every time the attribute is touched, and in
    ``mode="raise"`` for an N+1 pattern (a touch whose batch would load two
    instances or more).  The message says where the instances were loaded,
    where the attribute was touched and the option that loads it; for an
    N+1 pattern ``pattern`` holds the same as fields (``instances``,
    ``query_site``, ``touch_site``, ``fix``).  It subclasses
    :class:`sqlalchemy.exc.InvalidRequestError`, so code that already handles
    SQLAlchemy's own ``raiseload`` errors handles it too.
    """

    def __init__(
        self,
        model_name: str,
        attribute_name: str,
        message: str | None = None,
        pattern: Any = None,
    ) -> None:
        self.model_name = model_name
        self.attribute_name = attribute_name
        self.pattern = pattern
        super().__init__(
            message or f"{model_name}.{attribute_name} is not available due to raiseload"
        )

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        return (type(self), (self.model_name, self.attribute_name, str(self), self.pattern))


class NPlusOneWarning(Warning):
    """Emitted in ``mode="warn"``: an N+1 pattern was batch-loaded.

    ``pattern`` holds the report's fields (``instances``, ``query_site``,
    ``touch_site``, ``fix``), as on :class:`LazyLoadingAttributeError`.
    """

    pattern: Any = None


LazyLoadingAttributeError.__module__ = "nplus1loader"
NPlusOneWarning.__module__ = "nplus1loader"
