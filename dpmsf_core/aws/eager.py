"""Run a coroutine eagerly: step it in place, and hand it to the event loop only if it actually waits.

On Lambda a warm invoke of a plain function never waits for anything: the body is already in memory, the answer
goes to a buffer. Running it as a task costs a full loop cycle anyway (a task, the ready queue, an ``epoll``
call, the done callback), a large part of a warm invoke. Here the first step runs directly, with the loop set as
the running loop (so ``get_running_loop``, futures and ``create_task`` work as usual) and in a copy of the
context, as a task's would be; if the coroutine finishes, that was all. If it waits on a future (a thread, a
timer, a socket), the rest runs as a task on the loop, exactly as asyncio would have run it. Callbacks it left
ready or timers it scheduled get one loop iteration, so background work still makes progress.

Before any request needed a loop, there is none: the first step runs without one (and ``asyncio`` is not even
imported), and whatever needs one asks for it first (``lazyloop.ensure_running_loop``).

What does not exist during the first step is a current task: ``asyncio.current_task()`` is None and
``asyncio.timeout`` refuses to start there, so the dispatcher uses no timer when no timeout is set (on Lambda,
which enforces its own).
"""

from __future__ import annotations

import contextvars
from collections.abc import Coroutine
from typing import Any

from ..lazyloop import LazyLoop, stepping_without_loop


def run_eagerly(coro: Coroutine[Any, Any, Any], lazy: LazyLoop) -> Any:
    """``loop.run_until_complete(coro)``, without the loop when ``coro`` never waits."""
    context = contextvars.copy_context()
    loop = lazy.loop
    if loop is None:
        return _step_without_loop(coro, lazy, context)
    events = _asyncio_events()
    previous = events._get_running_loop()
    events._set_running_loop(loop)
    try:
        awaited = context.run(coro.send, None)
    except StopIteration as done:
        events._set_running_loop(previous)
        _settle(loop)
        return done.value
    finally:
        events._set_running_loop(previous)
    return _finish(coro, awaited, loop, context)


def _asyncio_events() -> Any:
    """``asyncio.events``, imported once a loop exists (every warm invoke would otherwise run the import statement)."""
    global _events
    if _events is None:
        from asyncio import events

        _events = events
    return _events


_events: Any = None


def _step_without_loop(coro: Coroutine[Any, Any, Any], lazy: LazyLoop, context: contextvars.Context) -> Any:
    """The first step with no loop at all; what needs one during it makes it (and it is kept for later requests)."""
    context.run(stepping_without_loop.set, lazy)
    try:
        awaited = context.run(coro.send, None)
    except StopIteration as done:
        if lazy.loop is not None:
            _not_running(lazy)
            _settle(lazy.loop)
        return done.value
    finally:
        if lazy.loop is not None:
            _not_running(lazy)
    return _finish(coro, awaited, lazy.get(), context)


def _not_running(lazy: LazyLoop) -> None:
    from asyncio import events

    if events._get_running_loop() is lazy.loop:
        events._set_running_loop(None)


def _settle(loop: Any) -> None:
    """Callbacks the finished coroutine left ready, or timers it scheduled, get one turn of the loop."""
    if getattr(loop, "_ready", True) or getattr(loop, "_scheduled", True):
        import asyncio

        loop.run_until_complete(asyncio.sleep(0))


def _finish(coro: Coroutine[Any, Any, Any], awaited: Any, loop: Any, context: contextvars.Context) -> Any:
    return loop.run_until_complete(loop.create_task(_resume(coro, awaited), context=context))


async def _resume(coro: Coroutine[Any, Any, Any], awaited: Any) -> Any:
    """The rest of a coroutine that was stepped outside the loop, driven as ``asyncio.Task`` drives one."""
    import asyncio

    while True:
        try:
            if awaited is None:  # a bare yield: give the loop one turn
                await asyncio.sleep(0)
            elif asyncio.isfuture(awaited):
                awaited._asyncio_future_blocking = False
                try:
                    await awaited
                except BaseException:  # the coroutine reads the outcome from the future itself
                    pass
            else:
                awaited = coro.throw(RuntimeError(f"Task got bad yield: {awaited!r}"))
                continue
            awaited = coro.send(None)
        except StopIteration as done:
            return done.value
