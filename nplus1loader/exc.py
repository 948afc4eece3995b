"""Public exception and warning classes."""

from __future__ import annotations

from sqlalchemy.exc import InvalidRequestError

__all__ = ["LazyLoadingAttributeError", "NPlusOneWarning"]


class LazyLoadingAttributeError(InvalidRequestError):
    """An attribute was touched that a raiseload option forbids loading.

    Raised by :func:`nplus1loader.raiseload_all`, :func:`raiseload_col` and
    :func:`raiseload_rel`, every time the attribute is touched, so that a test
    suite sees each N+1 pattern production would emit.  It subclasses
    :class:`sqlalchemy.exc.InvalidRequestError`, so code that already handles
    SQLAlchemy's own ``raiseload`` errors handles it too.
    """

    def __init__(self, model_name: str, attribute_name: str) -> None:
        self.model_name = model_name
        self.attribute_name = attribute_name
        super().__init__(f"{model_name}.{attribute_name} is not available due to raiseload")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (type(self), (self.model_name, self.attribute_name))


class NPlusOneWarning(Warning):
    """Emitted in ``mode="warn"``: an N+1 pattern was batch-loaded."""


LazyLoadingAttributeError.__module__ = "nplus1loader"
NPlusOneWarning.__module__ = "nplus1loader"
