"""The Lambda adapter's buffered HTTP cycle: what the app sends is what Lambda answers, failures are a 500."""

from __future__ import annotations

import asyncio
from typing import Any

from dpmsf_core.aws.cycle import BufferedCycle
from dpmsf_core.lazyloop import LazyLoop

SCOPE = {"type": "http", "method": "GET", "path": "/x"}


def run(app: Any, *, eager: bool = True) -> dict[str, Any]:
    lazy = LazyLoop()  # made only if the app waits (the disconnect, a sleep)
    try:
        return BufferedCycle(dict(SCOPE), b"hello", eager=eager)(app, lazy)
    finally:
        lazy.close()


def test_chunks_are_joined_and_the_app_may_wait_for_the_disconnect() -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(await receive())
        await send({"type": "http.response.start", "status": 201, "headers": [(b"a", b"1")]})
        await send({"type": "http.response.body", "body": b"one ", "more_body": True})
        await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b"two"})
        seen.append(await receive())

    for eager in (True, False):
        seen.clear()
        assert run(app, eager=eager) == {"status": 201, "headers": [(b"a", b"1")], "body": b"one two"}
        assert seen == [{"type": "http.request", "body": b"hello", "more_body": False}, {"type": "http.disconnect"}]


def test_failing_before_or_half_way_is_a_500_and_after_the_answer_keeps_it() -> None:
    async def before(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    async def halfway(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise RuntimeError("boom")

    async def after(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"whole"})
        raise RuntimeError("late")

    failed = {
        "status": 500,
        "headers": [[b"content-type", b"text/plain; charset=utf-8"]],
        "body": b"Internal Server Error",
    }
    assert run(before) == failed
    assert run(halfway) == failed
    assert run(after) == {"status": 200, "headers": [], "body": b"whole"}
