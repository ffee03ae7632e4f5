"""HTTP in and out for the ASGI app: request headers, the body (bounded), and the one response each request gets."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .errors import PROBLEM_CONTENT_TYPE, BadRequest, DPMSFError, PayloadTooLarge, ServiceUnavailable
from .responses import dumps, too_large

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON = b"application/json"
# A scope's own keys, read as from a plain dict: the Lambda adapter's LazyScope overrides ``get`` in Python to build
# ``headers``/``query_string`` on demand, which no other key needs (a few per request on the hot path).
scope_get = dict.get
_EXPOSE = b"X-Request-Id, X-DPMSF-Next-Token, DPMSF-Plugin-Version"

log = logging.getLogger("dpmsf")


class Responder:
    """Sends one response with the headers every answer carries (request id, CORS, next token)."""

    __slots__ = ("_send", "cors", "extra", "method", "origin", "rid", "status")

    def __init__(self, send: Send, rid: str, method: str, origin: str | None, cors: tuple[str, ...]) -> None:
        self._send = send
        self.rid = rid.encode("latin-1")
        self.method = method
        self.origin = origin
        self.cors = cors
        self.status = 0
        self.extra: list[tuple[bytes, bytes]] = []

    def add_header(self, name: str, value: str) -> None:
        self.extra.append((name.lower().encode("latin-1"), value.encode("latin-1")))

    def _common(self) -> list[tuple[bytes, bytes]]:
        headers = [(b"x-request-id", self.rid), *self.extra]
        if self.origin and ("*" in self.cors or self.origin in self.cors):
            headers.append((b"access-control-allow-origin", b"*" if "*" in self.cors else self.origin.encode()))
            headers.append((b"access-control-expose-headers", _EXPOSE))
            if "*" not in self.cors:
                headers.append((b"vary", b"Origin"))
        return headers

    async def send(
        self, status: int, body: bytes, content_type: bytes, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        self.status = status
        raw = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *self._common()]
        if headers:
            raw.extend(headers)
        await self._send({"type": "http.response.start", "status": status, "headers": raw})
        await self._send({"type": "http.response.body", "body": b"" if self.method == "HEAD" else body})

    async def json(self, status: int, value: Any) -> None:
        await self.send(status, dumps(value), JSON)

    async def problem(self, exc: DPMSFError, instance: str | None) -> None:
        if self.status:  # the response already started: nothing sensible can be sent, but it must not vanish
            log.error(
                "error after the response started (status %d sent) for %s, request %s: %d %s",
                self.status,
                instance,
                self.rid.decode("latin-1"),
                exc.status,
                exc.detail,
            )
            return
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
        rid = self.rid.decode("latin-1")
        await self.send(exc.status, exc.problem_json(rid, instance), PROBLEM_CONTENT_TYPE.encode(), headers)

    async def preflight(self, allow: list[str], headers: dict[str, str]) -> None:
        extra = [(b"allow", ", ".join(allow).encode())]
        if self.origin and headers.get("access-control-request-method"):
            extra += [
                (b"access-control-allow-methods", ", ".join(allow).encode()),
                (
                    b"access-control-allow-headers",
                    headers.get("access-control-request-headers", "authorization, content-type").encode(),
                ),
                (b"access-control-max-age", b"600"),
            ]
        await self.send(204, b"", b"text/plain", extra)

    async def passthrough(self, response: Any, scope: Scope, receive: Receive, limit: int, api: str) -> None:
        """A Response the function built goes out as built, plus our request id (and CORS/next-token headers), within
        ``limit`` bytes (DPMSF_MAX_RESPONSE): a built body or a declared length over it answers 500 instead; a
        streamed body is cut off where it passes it (its iterator is not read further, the connection is aborted)."""
        _refuse_built_over(response, limit, api)
        self._add_missing_headers(response)
        sent = 0
        # On Lambda the whole answer is one payload anyway: held back until complete, so one over the limit is the
        # problem instead of a cut-off 200. A server streams it, and can only abort the connection.
        held: list[dict[str, Any]] | None = [] if scope_get(scope, "aws.event") is not None else None

        async def bounded(message: dict[str, Any]) -> None:
            nonlocal sent
            kind = message["type"]
            if kind == "http.response.start":
                declared = _declared_length(message.get("headers") or ())
                if declared is not None and declared > limit:
                    raise too_large(api, declared, limit)  # nothing sent yet: the caller gets the problem
            elif kind == "http.response.body":
                sent += len(message.get("body") or b"")
                if sent > limit:
                    raise self._cut_off(api, sent, limit, streaming=held is None)
            if held is not None:
                held.append(message)
                return
            if kind == "http.response.start":
                self.status = message["status"]
            await self._send(message)

        await response(scope, receive, bounded)
        for message in held or ():
            if message["type"] == "http.response.start":
                self.status = message["status"]
            await self._send(message)

    def _add_missing_headers(self, response: Any) -> None:
        """Our request id, CORS and next-token headers on a response the function built, unless it set them."""
        present = {k for k, _ in response.raw_headers}
        for name, value in self._common():
            if name not in present:
                response.raw_headers.append((name, value))

    def _cut_off(self, api: str, sent: int, limit: int, *, streaming: bool) -> DPMSFError:
        """The refusal of a body that passed ``limit``; a stream cut off is logged too, since its caller only sees
        the connection end."""
        if streaming:
            log.error(
                "API '%s' streamed more than %d bytes (DPMSF_MAX_RESPONSE): answer cut off, request %s",
                api,
                limit,
                self.rid.decode("latin-1"),
            )
        return too_large(api, sent, limit, at_least=True)


def _refuse_built_over(response: Any, limit: int, api: str) -> None:
    """A body built whole and over ``limit`` answers 500 instead, and is dropped at once: whoever still holds the
    response (the call's future, this traceback) must not keep megabytes alive."""
    built = getattr(response, "body", None)
    if isinstance(built, bytes | bytearray | memoryview) and len(built) > limit:
        size = len(built)
        response.body = built = b""  # refused: freed now, whoever still holds the response (the call's future)
        raise too_large(api, size, limit)


def _declared_length(headers: Any) -> int | None:
    for name, value in headers:
        if bytes(name).lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def request_headers(scope: Scope) -> dict[str, str]:
    """Lower-cased names (ASGI already lower-cases; comparing case-insensitively costs nothing more)."""
    out: dict[str, str] = {}
    for name, value in scope["headers"]:
        key = name.decode("latin-1").lower()
        val = value.decode("latin-1")
        out[key] = f"{out[key]}, {val}" if key in out else val
    return out


class BodyBudget:
    """The request-body bytes this process is receiving at once, all requests together (``DPMSF_BODY_BUDGET_MB``).

    Each body may be ``DPMSF_MAX_BODY``, and a client may send all of it but the last byte and wait: many such
    clients would hold gigabytes. A body is charged as its bytes arrive (not as declared: a lying
    ``Content-Length`` costs nothing) and given back when it is complete or abandoned; one that does not fit is
    refused 503 with ``Retry-After``. Bodies that are complete go on to the function, bounded elsewhere."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> None:
        if self.used + size > self.limit:
            raise ServiceUnavailable(
                f"The server is receiving {self.limit // (1024 * 1024)} MB of request bodies already "
                "(DPMSF_BODY_BUDGET_MB); try again shortly.",
                headers={"Retry-After": "5"},
            )
        self.used += size

    def give(self, size: int) -> None:
        self.used = max(0, self.used - size)


async def read_body(
    scope: Scope, receive: Receive, headers: dict[str, str], limit: int, budget: BodyBudget | None = None
) -> bytes:
    declared = headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLarge(f"Body of {declared} bytes is over the limit of {limit} bytes (DPMSF_MAX_BODY).")
        except ValueError:
            pass
    chunks: list[bytes] = []
    size = charged = 0
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":  # a body cut short (the client left, or its deadline passed)
                raise BadRequest("The request's body ended early: the client disconnected.")
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"Body is over the limit of {limit} bytes (DPMSF_MAX_BODY).")
                if budget is not None and more:  # held while more is awaited; a body in one message never waits
                    budget.take(len(chunk))
                    charged += len(chunk)
                chunks.append(chunk)
            if not more:
                break
    finally:
        if budget is not None:
            budget.give(charged)
    return b"".join(chunks) if len(chunks) != 1 else chunks[0]
