"""The Lambda adapter's eager runner: a coroutine that never waits needs no loop; one that waits runs as usual."""

from __future__ import annotations

import asyncio
import contextvars
import threading

from dpmsf_core.aws.eager import run_eagerly

marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")


def test_a_coroutine_that_never_waits_finishes_without_running_the_loop() -> None:
    loop = asyncio.new_event_loop()
    seen: list[object] = []

    async def plain() -> str:
        seen.append(asyncio.get_running_loop())
        marker.set("inside")
        return "done"

    try:
        assert run_eagerly(plain(), loop) == "done"
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
        ident, error, kept = run_eagerly(waits(), loop)
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
        run_eagerly(spawns(), loop)
        assert ran == ["background"]
    finally:
        loop.close()
