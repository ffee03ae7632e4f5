"""An event loop made the first time a request needs one, so that a Lambda cold start never imports asyncio.

``asyncio`` and what it pulls in (``ssl``, ``socket``, ``concurrent.futures``, ``subprocess``) cost about a third
of a cold start budget, and a request to a plain function never waits for anything: the Lambda adapter steps its
coroutine without a loop. What does need a running loop (an ``async def`` plugin function, a framework response
that streams, the sandbox, a program-backed endpoint, a timer) says so first with :func:`ensure_running_loop`,
which makes the loop and sets it running for the rest of that step; the adapter keeps it for later requests.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asyncio import AbstractEventLoop


class LazyLoop:
    """One container's event loop, made on first use (``asyncio`` is imported then, not before)."""

    __slots__ = ("loop",)

    def __init__(self) -> None:
        self.loop: AbstractEventLoop | None = None

    def get(self) -> AbstractEventLoop:
        if self.loop is None:
            import asyncio

            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)  # for get_event_loop() outside a request; inside one it is running
        return self.loop

    def close(self) -> None:
        if self.loop is not None:
            self.loop.close()


# set, in the context a request is stepped in, while that step runs without a loop
stepping_without_loop: ContextVar[LazyLoop | None] = ContextVar("dpmsf_stepping_without_loop", default=None)


def ensure_running_loop() -> None:
    """Make sure ``asyncio.get_running_loop()`` works from here on; free when a loop is running already."""
    lazy = stepping_without_loop.get()
    if lazy is None:
        return
    from asyncio import events

    if events._get_running_loop() is None:
        events._set_running_loop(lazy.get())
