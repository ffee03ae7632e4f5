"""One HTTP request through the ASGI app, its answer buffered: Mangum's ``HTTPCycle``, without what costs here.

Mangum's cycle builds an ``asyncio.Queue`` (with its ``Event``), a ``BytesIO`` and a logger per request, and logs
a line per answer; on a warm invoke that is a noticeable share of the whole. This one hands the body over once,
then a disconnect, and keeps the answer's parts in a list. Like Mangum's, an app that fails before it answers
gets a 500, and one that fails half-way keeps nothing of what it sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, MutableMapping
from typing import TYPE_CHECKING, Any

from ..lazyloop import LazyLoop, ensure_running_loop
from .eager import run_eagerly

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger("dpmsf.lambda")
_FAILED_HEADERS = [[b"content-type", b"text/plain; charset=utf-8"]]
App = Callable[..., Coroutine[Any, Any, None]]


class BufferedCycle:
    """``cycle(app, lazy_loop)`` runs the app on ``scope`` and ``body`` and returns Mangum's response dict."""

    __slots__ = ("_body", "_chunks", "_complete", "_done", "_eager", "_pending", "headers", "scope", "status")

    def __init__(self, scope: MutableMapping[str, Any], body: bytes, *, eager: bool = True) -> None:
        self.scope = scope
        self._eager = eager  # False: always as a task (asyncio.timeout needs one)
        self._body = body
        self._pending = True  # the body is yet to be received
        self._done: asyncio.Future[None] | None = None  # created only if the app waits for a disconnect
        self._chunks: list[bytes] | None = None  # set once the response has started
        self._complete = False  # the whole answer is buffered
        self.status = 0
        self.headers: list[Any] = []

    def __call__(self, app: Callable[..., Coroutine[Any, Any, None]], lazy: LazyLoop) -> dict[str, Any]:
        if self._eager:
            run_eagerly(self._run(app), lazy)
        else:
            lazy.get().run_until_complete(self._run(app))
        if self._chunks is None:
            return {"status": 500, "headers": list(_FAILED_HEADERS), "body": b"Internal Server Error"}
        return {"status": self.status, "headers": self.headers, "body": b"".join(self._chunks)}

    async def _run(self, app: App) -> None:
        try:
            await app(self.scope, self._receive, self._send)
        except BaseException:
            log.exception("The application failed serving %s %s", self.scope.get("method"), self.scope.get("path"))
            if not self._complete:  # half an answer is no answer
                self._chunks = None

    async def _receive(self) -> dict[str, Any]:
        if self._pending:
            self._pending = False
            return {"type": "http.request", "body": self._body, "more_body": False}
        if not self._complete:  # the client "disconnects" once the whole answer is buffered
            if self._done is None:
                ensure_running_loop()
                import asyncio

                self._done = asyncio.get_running_loop().create_future()
            await self._done
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start" and self._chunks is None:
            self.status = message["status"]
            self.headers = list(message.get("headers", []))
            self._chunks = []
        elif kind == "http.response.body" and self._chunks is not None and not self._complete:
            self._chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                self._complete = True
                if self._done is not None:
                    self._done.set_result(None)
        else:
            raise RuntimeError(f"Unexpected ASGI message {kind!r}")
