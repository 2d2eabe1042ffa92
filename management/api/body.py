"""Typed access to a JSON request body: each getter names the field and type it wanted."""

from __future__ import annotations

from typing import Any

from management.errors import BadRequest
from schooner.types import BatchSize

_MISSING = object()


class Body:
    """A parsed JSON object; getters raise BadRequest("field 'x' must be <type>")."""

    def __init__(self, data: Any) -> None:
        if not isinstance(data, dict):
            raise BadRequest("request body must be a JSON object")
        self.data = data

    def _get(self, name: str, default: Any, what: str) -> Any:
        value = self.data.get(name, _MISSING)
        if value is _MISSING or value is None:
            if default is _MISSING:
                raise BadRequest(f"field '{name}' is required and must be {what}")
            return default
        return value

    @staticmethod
    def _fail(name: str, what: str) -> BadRequest:
        return BadRequest(f"field '{name}' must be {what}")

    def string(self, name: str, default: Any = _MISSING, *, allow_empty: bool = True) -> Any:
        """A string field."""
        value = self._get(name, default, "a string")
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str) or (not allow_empty and not value):
            raise self._fail(name, "a string" if allow_empty else "a non-empty string")
        return value

    def version(self, name: str, default: Any = _MISSING) -> Any:
        """A model version: a string or an integer (Clipper sends ints), returned as a string."""
        value = self._get(name, default, "a string or an integer")
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
            raise self._fail(name, "a string or an integer")
        return str(value)

    def integer(self, name: str, default: Any = _MISSING, *, minimum: int | None = None) -> Any:
        """An integer field (booleans are refused), optionally bounded below."""
        what = "an integer" if minimum is None else f"an integer >= {minimum}"
        value = self._get(name, default, what)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
            raise self._fail(name, what)
        return value

    def batch_size(self, name: str, default: Any = _MISSING) -> Any:
        """A :class:`~schooner.types.BatchSize`: a positive integer, -1 (Clipper's adaptive) or "adaptive"."""
        value = self._get(name, default, "a positive integer, or -1 / \"adaptive\" for adaptive batching")
        if value is default and default is not _MISSING:
            return value
        try:
            return BatchSize.parse(value, f"field '{name}'")
        except ValueError as err:
            raise BadRequest(str(err)) from None

    def number(self, name: str, default: Any = _MISSING, *, minimum: float | None = None) -> Any:
        """A number field (int or float)."""
        what = "a number" if minimum is None else f"a number >= {minimum}"
        value = self._get(name, default, what)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                minimum is not None and value < minimum):
            raise self._fail(name, what)
        return float(value)

    def boolean(self, name: str, default: Any = _MISSING) -> Any:
        """A boolean field."""
        value = self._get(name, default, "a boolean")
        if not isinstance(value, bool):
            raise self._fail(name, "a boolean")
        return value

    def strings(self, name: str, default: Any = _MISSING) -> Any:
        """A list of strings."""
        value = self._get(name, default, "a list of strings")
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._fail(name, "a list of strings")
        return value

    def integers(self, name: str, default: Any = _MISSING, *, minimum: int | None = None) -> Any:
        """A list of integers, each optionally bounded below."""
        what = "a list of integers" if minimum is None else f"a list of integers >= {minimum}"
        value = self._get(name, default, what)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) and (minimum is None or v >= minimum)
                for v in value):
            raise self._fail(name, what)
        return value

    def obj(self, name: str, default: Any = _MISSING) -> Any:
        """A JSON object field."""
        value = self._get(name, default, "a JSON object")
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, dict):
            raise self._fail(name, "a JSON object")
        return value
