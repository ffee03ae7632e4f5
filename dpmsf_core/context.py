"""Per-request context that plugin code and core services (store, tokens) can read without globals."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RequestInfo:
    """What a function may ask about the call it serves: ``def f(request: RequestInfo, ...)`` or ``current()``."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    query: dict[str, Any]
    body: bytes
    tenant: str | None = None
    request_id: str = ""
    api: str = ""
    module: str = ""
    event: dict[str, Any] | None = None  # the Lambda event, on Lambda
    context: Any = None  # the Lambda context, on Lambda
    root_path: str = ""  # where the app is mounted (``/Prod`` behind an API Gateway stage): prefix URLs you build
    extra: dict[str, Any] = field(default_factory=dict)

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)


_current: ContextVar[RequestInfo | None] = ContextVar("dpmsf_request", default=None)


def current() -> RequestInfo | None:
    """The request being served in this task or thread, or None outside a request."""
    return _current.get()


def current_tenant() -> str | None:
    """The tenant of the request being served (None: anonymous or admin-less local use)."""
    info = _current.get()
    return info.tenant if info else None


def set_current(info: RequestInfo | None):
    return _current.set(info)


def reset_current(token) -> None:
    _current.reset(token)
