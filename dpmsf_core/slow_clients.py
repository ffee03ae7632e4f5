"""Deadlines for slow clients, and a connection limit, in the HTTP protocol uvicorn runs for each connection.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but waits for a request's headers, and for its
body, for ever: 50 clients sending a header byte now and then ("slowloris") hold 50 connections, and their
memory, indefinitely. ``guarded_protocol()`` is uvicorn's own protocol class (httptools when installed, else h11,
as uvicorn's ``auto`` picks) with three additions:

- the request line and headers must arrive within ``DPMSF_HEADER_TIMEOUT`` seconds (default 10) of the first byte
  of a request, or of the connection's start;
- the body must arrive within ``DPMSF_BODY_TIMEOUT`` seconds (default 60) of the headers;
- at most ``DPMSF_MAX_CONNECTIONS`` connections (default 500) per server process; one more is answered 503 and
  closed at once; and, when ``DPMSF_MAX_CONNECTIONS_PER_IP`` is set (default 0: off), at most that many from one
  client address. Off by default because behind App Engine, a load balancer or any proxy every connection comes
  from the proxy's address; set it when clients connect directly, so that one address cannot take every slot;
- the request line and headers together at most ``DPMSF_MAX_HEADER_BYTES`` (default 65536, as nginx's and
  h11's order of size): a larger head is answered **431** and the connection closed, before it is buffered further
  (h11 has its own, smaller bound of 16 kB and answers 400);
- once a body has been arriving for 5 s it must average at least ``DPMSF_BODY_MIN_RATE`` bytes per second
  (default 1024; 0 turns it off), else 408: a trickled body no longer holds its connection for the whole
  ``DPMSF_BODY_TIMEOUT``. Time during which the server itself stopped reading (the app has not taken the body
  yet) does not count against the client;
- an answer the client does not read: when the connection's send buffer has stayed full (uvicorn's
  ``pause_writing``) for ``DPMSF_SEND_TIMEOUT`` seconds (default 30), the connection is aborted and its buffered
  answer freed (``close()`` would wait for it to drain, for ever).

Past a deadline the client gets **408** (problem+json, ``Connection: close``) if no answer has started, and the
connection is closed either way; the app's ``receive()`` then reports a disconnect. ``dpmsf serve`` and the
gunicorn worker of App Engine and the container (``dpmsf_core.gunicorn_worker``) use it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # no httptools (PyPy): ``guarded_protocol`` picks GuardedH11, GuardedHttpTools is never used
    # a stand-in class under the same name, so the class below still defines (mypy sees two classes for one name)
    from uvicorn.protocols.http.h11_impl import H11Protocol as HttpToolsProtocol  # type: ignore[assignment]

from .errors import (
    PROBLEM_CONTENT_TYPE,
    ConfigError,
    DPMSFError,
    HeadersTooLarge,
    RequestTimeout,
    ServiceUnavailable,
)

if TYPE_CHECKING:
    from uvicorn.config import Config

__all__ = ["GuardedH11", "GuardedHttpTools", "Limits", "guarded_protocol"]

log = logging.getLogger("dpmsf.http")


class Limits:
    """The three settings, read once from the environment, checked like every other setting."""

    def __init__(
        self,
        header_timeout: float = 10.0,
        body_timeout: float = 60.0,
        max_connections: int = 500,
        *,
        max_header_bytes: int = 65536,
        body_min_rate: float = 1024.0,
        send_timeout: float = 30.0,
        max_per_client: int = 0,
    ) -> None:
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_connections = max_connections
        self.max_header_bytes = max_header_bytes
        self.body_min_rate = body_min_rate
        self.send_timeout = send_timeout
        self.max_per_client = max_per_client

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Limits:
        env = os.environ if env is None else env
        return cls(
            _number(env, "DPMSF_HEADER_TIMEOUT", 10.0),
            _number(env, "DPMSF_BODY_TIMEOUT", 60.0),
            int(_number(env, "DPMSF_MAX_CONNECTIONS", 500, integer=True)),
            max_header_bytes=int(_number(env, "DPMSF_MAX_HEADER_BYTES", 65536, integer=True)),
            body_min_rate=_number(env, "DPMSF_BODY_MIN_RATE", 1024.0, zero_ok=True),
            send_timeout=_number(env, "DPMSF_SEND_TIMEOUT", 30.0),
            max_per_client=int(_number(env, "DPMSF_MAX_CONNECTIONS_PER_IP", 0, integer=True, zero_ok=True)),
        )


def _number(
    env: Mapping[str, str], name: str, default: float, *, integer: bool = False, zero_ok: bool = False
) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"Config '{name}' has value '{raw}'. Not {kind}.") from None
    if value < 0 or (value == 0 and not zero_ok):
        raise ConfigError(f"Config '{name}' has value '{raw}'. Must be greater than 0.")
    return value


RATE_GRACE = 5.0  # seconds a body may take before its average rate is checked (a slow start, a TCP ramp-up)


def _problem(error: DPMSFError) -> bytes:
    """A whole HTTP/1.1 answer, written on the socket by the protocol: no request reached the app."""
    body = error.problem_json()
    head = (
        f"HTTP/1.1 {error.status} {error.title}\r\ncontent-type: {PROBLEM_CONTENT_TYPE}\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class _Deadlines:
    """The mixin: one timer per connection, armed while a request's headers or body are awaited."""

    limits: Limits
    transport: asyncio.Transport
    connections: set[Any]
    cycle: Any
    client: Any
    flow: Any
    _timer: asyncio.TimerHandle | None = None
    _phase: str = ""
    _head_bytes: int = 0
    _rate_timer: asyncio.TimerHandle | None = None
    _body_bytes: int = 0
    _body_since: float = 0.0
    _send_timer: asyncio.TimerHandle | None = None

    def _arm(self, phase: str, seconds: float) -> None:
        self._disarm()
        self._phase = phase
        self._timer = asyncio.get_running_loop().call_later(seconds, self._expired, phase, seconds)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._rate_timer is not None:
            self._rate_timer.cancel()
            self._rate_timer = None
        self._phase = ""

    def _stop_all(self) -> None:
        self._disarm()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    # -- the head's size --------------------------------------------------------------------------------------

    def _count_head(self, data: bytes) -> None:
        """Bytes that may belong to a request's head (before its headers are complete) are counted before the
        parser buffers them; ``_head_too_large`` is asked after, when a completed head has reset the count."""
        if self._phase != "body":
            self._head_bytes += len(data)

    def _head_too_large(self) -> bool:
        limit = self.limits.max_header_bytes
        if self._phase == "body" or self._head_bytes <= limit or self.transport.is_closing():
            return False
        detail = f"The request line and headers are over {limit} bytes (DPMSF_MAX_HEADER_BYTES)."
        log.info("closing a connection from %s: %s", _peer(self.client), detail)
        cycle = self.cycle
        if cycle is None or not cycle.response_started:
            self.transport.write(_problem(HeadersTooLarge(detail)))
        self._stop_all()
        self.transport.close()
        return True

    # -- the body's rate -------------------------------------------------------------------------------------

    def _body_started(self) -> None:
        self._head_bytes = 0
        self._body_bytes = 0
        self._body_since = asyncio.get_running_loop().time()
        if self.limits.body_min_rate > 0:
            self._rate_timer = asyncio.get_running_loop().call_later(RATE_GRACE, self._check_rate)

    def _check_rate(self) -> None:
        self._rate_timer = None
        if self.transport.is_closing() or self._phase != "body":
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if getattr(self.flow, "read_paused", False):  # we stopped reading, not the client: start counting again
            self._body_bytes, self._body_since = 0, now
        elif self._body_bytes < self.limits.body_min_rate * (now - self._body_since):
            rate = self._body_bytes / max(now - self._body_since, 1e-3)
            detail = (
                f"The request's body arrived at {rate:.0f} bytes/s, below the minimum of "
                f"{self.limits.body_min_rate:g} bytes/s (DPMSF_BODY_MIN_RATE)."
            )
            log.info("closing a connection from %s: %s", _peer(self.client), detail)
            cycle = self.cycle
            if cycle is None or not cycle.response_started:
                self.transport.write(_problem(RequestTimeout(detail)))
            self._stop_all()
            self.transport.close()
            return
        self._rate_timer = loop.call_later(1.0, self._check_rate)

    # -- an answer nobody reads ------------------------------------------------------------------------------

    def _writing_paused(self) -> None:
        if self._send_timer is None:
            self._send_timer = asyncio.get_running_loop().call_later(self.limits.send_timeout, self._send_expired)

    def _writing_resumed(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_expired(self) -> None:
        """The send buffer stayed full: abort, since ``close()`` waits for a drain that will not come."""
        self._send_timer = None
        log.info(
            "aborting a connection from %s: it read none of its answer for %g s (DPMSF_SEND_TIMEOUT)",
            _peer(self.client),
            self.limits.send_timeout,
        )
        self._disarm()
        self.transport.abort()

    def _expired(self, phase: str, seconds: float) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        setting = "DPMSF_HEADER_TIMEOUT" if phase == "headers" else "DPMSF_BODY_TIMEOUT"
        detail = f"The request's {phase} did not arrive within {seconds:g} s ({setting})."
        log.info("closing a connection from %s: %s", _peer(self.client), detail)
        cycle = self.cycle
        if cycle is None or not cycle.response_started:
            self.transport.write(_problem(RequestTimeout(detail)))
        self.transport.close()

    def _from_same_client(self) -> int:
        return _same_client(self.connections, self.client[0])

    def _admit(self) -> bool:
        """False (and the connection answered 503 and closed) when this process already holds its maximum."""
        limit = self.limits.max_connections
        per_client = self.limits.max_per_client
        if len(self.connections) > limit:
            detail = f"This server holds its maximum of {limit} connections (DPMSF_MAX_CONNECTIONS); try again later."
        elif per_client and self.client and self._from_same_client() > per_client:
            detail = (
                f"This address holds its maximum of {per_client} connections (DPMSF_MAX_CONNECTIONS_PER_IP); "
                "try again later."
            )
        else:
            return True
        self.transport.write(_problem(ServiceUnavailable(detail)))
        self.transport.close()
        return False


def _same_client(connections: set[Any], address: str) -> int:
    return sum(1 for other in connections if getattr(other, "client", None) and other.client[0] == address)


def _peer(client: Any) -> str:
    return f"{client[0]}:{client[1]}" if client else "?"


def guarded_protocol(limits: Limits | None = None) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools if installed, else h11) with header and body deadlines and a connection
    limit; pass it as ``uvicorn.Config(http=...)``, and ``limits`` as the config's ``dpmsf_limits`` attribute (read
    from the environment otherwise). Module-level classes: uvicorn's worker processes receive them pickled."""
    try:
        import httptools  # noqa: F401  (uvicorn's "auto" picks it when installed; so do we)
    except ImportError:
        return GuardedH11
    return GuardedHttpTools


def limits_of(config: Config) -> Limits:
    found = getattr(config, "dpmsf_limits", None)
    return found if isinstance(found, Limits) else Limits.from_env()


class GuardedHttpTools(_Deadlines, HttpToolsProtocol):
    """httptools calls back when a message begins, its headers end and it completes: each moves the deadline."""

    def __init__(self, config: Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.limits = limits_of(config)

    # as in uvicorn's own protocols: asyncio declares a BaseTransport, a TCP server hands a Transport
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self._admit():
            self._arm("headers", self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_all()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._count_head(data)
        super().data_received(data)
        self._head_too_large()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._writing_paused()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._writing_resumed()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._phase != "headers":
            self._arm("headers", self.limits.header_timeout)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm("body", self.limits.body_timeout)
        self._body_started()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()


class GuardedH11(_Deadlines, H11Protocol):
    """h11 says where the peer is (``their_state``): IDLE before a request's headers end, SEND_BODY after."""

    def __init__(self, config: Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.limits = limits_of(config)

    # as in uvicorn's own protocols: asyncio declares a BaseTransport, a TCP server hands a Transport
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self._admit():
            self._arm("headers", self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_all()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._writing_paused()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._writing_resumed()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE and self._phase != "headers":
            self._arm("headers", self.limits.header_timeout)  # the first byte of a keep-alive connection's next request
        if self._phase == "body":
            self._body_bytes += len(data)
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.SEND_BODY and self._phase != "body":
            self._arm("body", self.limits.body_timeout)
            self._body_started()
        elif state is not h11.IDLE and state is not h11.SEND_BODY:
            self._disarm()
