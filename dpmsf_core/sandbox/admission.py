"""Admission to the pool's threads: a call that must wait for a guest holds a thread while it waits, and the
threads are few, so who gets the next free thread is decided here, fairly across owners.

Without it, the executor's own queue is first come, first served: a few tenants that each keep their quota of
calls in flight would fill it, and every other tenant's call would wait behind their whole backlog. Here the
next free thread goes to the waiting owner that holds the fewest, then to the one admitted longest ago (the
same rule as ``guests.py`` for guests): a tenant with nothing running goes ahead of every flood. Waiting costs
no thread: it is a future on the caller's event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import deque


class FairGate:
    """At most ``slots`` holders at once; each freed slot goes to the waiting owner that holds the fewest."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._lock = threading.Lock()
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        self._holding: dict[str, int] = {}
        self._admitted: dict[str, int] = {}  # owner -> when (in admissions) it was last let in
        self._admissions = itertools.count()

    async def enter(self, owner: str) -> None:
        """Return once the caller holds a slot; it must call :meth:`leave` with the same owner exactly once."""
        with self._lock:
            if self._free and not self._waiting:
                self._free -= 1
                self._hold(owner)
                return
            admitted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(owner, deque()).append(admitted)
        try:
            await admitted
        except asyncio.CancelledError:
            with self._lock:
                queue = self._waiting.get(owner)
                if queue is not None and admitted in queue:
                    queue.remove(admitted)
                    if not queue:
                        del self._waiting[owner]
                    raise
            if admitted.done() and not admitted.cancelled():  # the slot was ours already: hand it on
                self.leave(owner)
            raise

    def leave(self, owner: str) -> None:
        """``owner`` gives its slot back: to the next waiting owner by fairness (its oldest call), else free."""
        with self._lock:
            self._holding[owner] -= 1
            if not self._holding[owner]:
                del self._holding[owner]
            self._pass_on()

    def _pass_on(self) -> None:
        """Under the lock: one slot is free; give it to a waiter or keep it."""
        while self._waiting:
            owner = min(self._waiting, key=lambda o: (self._holding.get(o, 0), self._admitted.get(o, -1)))
            queue = self._waiting[owner]
            admitted = queue.popleft()
            if not queue:
                del self._waiting[owner]
            if not admitted.done():
                self._hold(owner)
                admitted.get_loop().call_soon_threadsafe(self._admit, owner, admitted)
                return
        self._free += 1

    def _hold(self, owner: str) -> None:
        self._holding[owner] = self._holding.get(owner, 0) + 1
        self._admitted[owner] = next(self._admissions)
        if len(self._admitted) > 4096:  # forget owners neither holding nor waiting
            self._admitted = {o: n for o, n in self._admitted.items() if o in self._holding or o in self._waiting}

    def _admit(self, owner: str, admitted: asyncio.Future[None]) -> None:
        """On the waiter's loop: wake it, or, if it was cancelled meanwhile, pass the slot on."""
        if admitted.done():
            self.leave(owner)
        else:
            admitted.set_result(None)

    def waiting(self) -> int:
        """Calls waiting for a slot (for tests and diagnostics)."""
        with self._lock:
            return sum(len(queue) for queue in self._waiting.values())
