"""The Lambda adapter's eager runner: a coroutine that never waits needs no loop; one that waits runs as usual."""

from __future__ import annotations

import asyncio
import contextvars
import threading

from dpmsf_core.aws.eager import run_eagerly
from dpmsf_core.lazyloop import LazyLoop, ensure_running_loop

marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")


def made(loop: asyncio.AbstractEventLoop) -> LazyLoop:
    """A lazy loop some earlier request already made."""
    lazy = LazyLoop()
    lazy.loop = loop
    return lazy


def test_a_coroutine_that_never_waits_finishes_without_running_the_loop() -> None:
    loop = asyncio.new_event_loop()
    seen: list[object] = []

    async def plain() -> str:
        seen.append(asyncio.get_running_loop())
        marker.set("inside")
        return "done"

    try:
        assert run_eagerly(plain(), made(loop)) == "done"
        assert seen == [loop]
        assert not loop.is_running()
        assert marker.get() == "unset"  # the coroutine ran in a copy of the context, as a task would
    finally:
        loop.close()


def test_a_coroutine_that_waits_is_finished_on_the_loop_with_its_results_and_errors() -> None:
    loop = asyncio.new_event_loop()

    async def waits() -> list[object]:
        marker.set("kept")
        got: list[object] = [await asyncio.to_thread(threading.get_ident)]
        await asyncio.sleep(0.01)
        await asyncio.sleep(0)
        try:
            await loop.run_in_executor(None, int, "not a number")
        except ValueError as exc:
            got.append(type(exc).__name__)
        got.append(marker.get())  # the same context across the steps
        return got

    try:
        ident, error, kept = run_eagerly(waits(), made(loop))
        assert ident != threading.get_ident() and error == "ValueError" and kept == "kept"
    finally:
        loop.close()


def test_background_work_left_by_an_eager_coroutine_still_makes_progress() -> None:
    loop = asyncio.new_event_loop()
    ran: list[str] = []

    async def background() -> None:
        ran.append("background")

    async def spawns() -> None:
        asyncio.get_running_loop().create_task(background())

    try:
        run_eagerly(spawns(), made(loop))
        assert ran == ["background"]
    finally:
        loop.close()


def test_a_coroutine_that_never_waits_needs_no_loop_at_all() -> None:
    lazy = LazyLoop()

    async def plain() -> str:
        return "done"

    assert run_eagerly(plain(), lazy) == "done"
    assert lazy.loop is None  # nothing was made: on a cold start asyncio is not even imported


def test_what_asks_for_a_loop_mid_step_gets_one_and_later_requests_keep_it() -> None:
    lazy = LazyLoop()

    async def needs_a_loop() -> tuple[int, asyncio.AbstractEventLoop]:
        ensure_running_loop()
        ident = await asyncio.to_thread(threading.get_ident)
        return ident, asyncio.get_running_loop()

    try:
        ident, loop = run_eagerly(needs_a_loop(), lazy)
        assert ident != threading.get_ident() and loop is lazy.loop
        with_asyncio = asyncio.events._get_running_loop()
        assert with_asyncio is None  # the loop is not left running in this thread
        again, loop_again = run_eagerly(needs_a_loop(), lazy)
        assert again != threading.get_ident() and loop_again is loop
    finally:
        lazy.close()


def test_a_coroutine_that_asks_for_a_loop_but_never_waits_leaves_it_stopped() -> None:
    lazy = LazyLoop()
    ran: list[str] = []

    async def background() -> None:
        ran.append("background")

    async def spawns() -> None:
        ensure_running_loop()
        asyncio.get_running_loop().create_task(background())

    try:
        run_eagerly(spawns(), lazy)
        assert ran == ["background"] and lazy.loop is not None and not lazy.loop.is_running()
        assert asyncio.events._get_running_loop() is None
    finally:
        lazy.close()
