"""Per-request context that plugin code and core services (store, tokens) can read without globals."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol


class RequestLog(NamedTuple):
    """What a log line says about the request it is written in; the endpoint is read from the scope when the line
    is written, because dispatch records it (``scope["dpmsf.endpoint"]``) after the request began."""

    request_id: str
    scope: Mapping[str, Any]
    trace_header: str | None = None  # X-Cloud-Trace-Context, else traceparent
    started: float = 0.0  # time.perf_counter() at the start of the request

    @property
    def endpoint(self) -> str | None:
        found = self.scope.get("dpmsf.endpoint")
        return str(found) if found else None


# The request the current log line belongs to: set by the app per HTTP request, read by every log formatter.
current_request: ContextVar[RequestLog | None] = ContextVar("dpmsf_request_log", default=None)


def elapsed_ms(request: RequestLog) -> float:
    """Milliseconds since the request began."""
    return (time.perf_counter() - request.started) * 1000


class LambdaContext(Protocol):
    """What DPMSF and plugins read of the Lambda context: AWS's object, ``testing.LambdaContext`` and a test's
    stand-in all fit, and nothing of AWS is imported to say so."""

    @property
    def aws_request_id(self) -> str: ...
    @property
    def function_name(self) -> str: ...
    @property
    def function_version(self) -> str: ...
    @property
    def invoked_function_arn(self) -> str: ...
    @property
    def memory_limit_in_mb(self) -> int | str: ...  # AWS's runtime gives the environment's string
    @property
    def log_group_name(self) -> str: ...
    @property
    def log_stream_name(self) -> str: ...
    def get_remaining_time_in_millis(self) -> int: ...


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
    context: LambdaContext | None = None  # the Lambda context, on Lambda
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


def set_current(info: RequestInfo | None) -> Token[RequestInfo | None]:
    return _current.set(info)


def reset_current(token: Token[RequestInfo | None]) -> None:
    _current.reset(token)


# -- metering: the app serving this request puts its meter here, so that the store, the upload handler and the
# sandbox pool count a tenant's usage without holding the app (``dpmsf_core/metering``). A zero-argument callable
# that returns the meter: the meter is built on first use, so a request that meters nothing imports nothing.
_meter: ContextVar[Callable[[], Any] | None] = ContextVar("dpmsf_meter", default=None)


def set_meter(source: Callable[[], Any] | None) -> Token[Callable[[], Any] | None]:
    return _meter.set(source)


def reset_meter(token: Token[Callable[[], Any] | None]) -> None:
    _meter.reset(token)


def metered(tenant: str | None, **counts: float) -> None:
    """Add ``counts`` (``upload_bytes=...``) to ``tenant``'s usage in this request's meter; nothing outside one."""
    source = _meter.get()
    if source is not None and tenant:
        source().count(tenant, **counts)


def metered_call(usage: Any) -> None:
    """``SandboxPool(on_call=...)``: one sandboxed call's ``CallUsage``, to this request's meter."""
    source = _meter.get()
    if source is not None:
        source().call(usage)


# -- the document store: the app serving this request puts its store here (a zero-argument callable that opens it on
# first use), so that plugin code's ``store.collection(...)`` reaches that app's own backend: two apps in one process
# (tests, ``fastapi_app.mount(create_app())``) each keep their own data, and nothing is installed module-wide.
_store: ContextVar[Callable[[], Any] | None] = ContextVar("dpmsf_store", default=None)


def set_store(source: Callable[[], Any] | None) -> Token[Callable[[], Any] | None]:
    return _store.set(source)


def reset_store(token: Token[Callable[[], Any] | None]) -> None:
    _store.reset(token)


def current_store() -> Any | None:
    """The store backend of the app serving this request (or of ``store.using``), None outside both."""
    source = _store.get()
    return source() if source is not None else None


def metered_store(backend: Any, tenant: str) -> tuple[Any, str]:
    """The store ``backend`` as ``tenant``'s calls should use it: counted (operations, bytes) in a request's meter.

    Anonymous and local data (``"_"``) is no tenant's and is not counted.
    """
    source = _meter.get()
    if source is None or tenant == "_":
        return backend, tenant
    return source().metered_store(backend, tenant), tenant
