"""The ASGI scope of a Lambda HTTP event, with its byte-encoded parts built only if something reads them.

The app reads the request's headers and query from ``dpmsf.headers`` / ``dpmsf.query``, decoded once by the
adapter; ASGI's ``headers`` (a list of byte pairs) and REST's ``query_string`` (the query re-encoded) are for
whatever else might read the scope, a Starlette ``Request`` in a plugin for instance, and cost about a tenth of a
warm invoke to build. So they are built on first access, through every way a dict is read (``scope[k]``,
``get``, ``in``, iteration, ``dict(scope)``, ``{**scope}``), and then kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

_LAZY = ("headers", "query_string")
_ABSENT = object()
_get = dict.get


class LazyScope(dict[str, Any]):
    """A scope dict; ``headers`` comes from ``dpmsf.headers``, ``query_string`` (if absent) from ``dpmsf.params``."""

    def __missing__(self, key: str) -> Any:
        if key == "headers":
            value: Any = [(k.encode(), v.encode()) for k, v in dict.__getitem__(self, "dpmsf.headers").items()]
        elif key == "query_string" and dict.__contains__(self, "dpmsf.params"):
            params = dict.__getitem__(self, "dpmsf.params")
            from urllib.parse import urlencode  # when something reads it: the app reads dpmsf.query

            value = urlencode(params, doseq=True).encode() if params else b""
        else:
            raise KeyError(key)
        dict.__setitem__(self, key, value)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        value = _get(self, key, _ABSENT)
        if value is not _ABSENT:
            return value
        if key in _LAZY:
            try:
                return self.__missing__(key)
            except KeyError:
                pass
        return default

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or (key in _LAZY and self.get(key) is not None)

    def _whole(self) -> None:
        for key in _LAZY:
            self.get(key)

    def __iter__(self) -> Iterator[str]:
        self._whole()
        return dict.__iter__(self)

    def keys(self) -> Any:  # dict's own view types
        self._whole()
        return dict.keys(self)

    def items(self) -> Any:
        self._whole()
        return dict.items(self)

    def values(self) -> Any:
        self._whole()
        return dict.values(self)

    def __len__(self) -> int:
        self._whole()
        return dict.__len__(self)

    def copy(self) -> dict[str, Any]:
        self._whole()
        return dict(dict.items(self))
