"""Admission of sandboxed calls: each tenant's rate and concurrency quotas (``TenantGate``), then the pool's threads,
fairly across owners (``FairGate``).

``TenantGate`` runs first, on the event loop, before any guest work: a tenant over its request rate is refused at
once (429, ``Retry-After`` until its next token), and a tenant may run ``concurrency`` calls at once with a bounded
queue of ``QUEUE_PER_SLOT`` times as many waiting behind them; past that queue, or after waiting as long as a call
may wait for a guest, it is refused with 429 too. So a tenant's own flood costs that tenant, not the others: it
never holds more than its quota of threads and guest turns.

A call that must wait for a guest holds a thread while it waits, and the threads are few, so who gets the next
free thread is decided here too, fairly across owners.

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
import time
from collections import deque
from collections.abc import Callable

from ..tenancy.quotas import QuotaExceeded

QUEUE_PER_SLOT = 4  # calls a tenant may have waiting, per call its concurrency quota lets it run at once
_RETRY_BUSY = 1.0  # Retry-After for a full concurrency queue: about a few trivial calls' turnover
_FORGET_AFTER = 4096  # owners remembered with nothing running, waiting or owed: pruned beyond this


class TenantGate:
    """Each owner's (tenant's) rate and concurrency quotas on its sandboxed calls; thread-safe, loop-agnostic.

    ``charge`` takes one token of the owner's bucket (``rate`` a second, a burst of one second's worth, at least
    one); ``enter`` waits for one of the owner's ``concurrency`` running slots, in order, behind at most
    ``QUEUE_PER_SLOT * concurrency`` others of the same owner, and ``leave`` hands the slot to the owner's next.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float, float]] = {}  # owner -> (tokens, when counted, rate)
        self._running: dict[str, int] = {}
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}

    def charge(self, owner: str, rate: float) -> None:
        """One request of ``owner``; QuotaExceeded("rate") with the seconds until its next token when none is left."""
        if rate <= 0:
            return
        burst = max(1.0, rate)
        now = self._clock()
        with self._lock:
            tokens, when, _ = self._buckets.get(owner, (burst, now, rate))
            tokens = min(burst, tokens + (now - when) * rate)
            if tokens < 1.0:
                self._buckets[owner] = (tokens, now, rate)
                raise QuotaExceeded(
                    "rate",
                    f"Too many requests for this tenant's functions: its rate quota is {rate:g} a second.",
                    retry_after=(1.0 - tokens) / rate,
                )
            self._buckets[owner] = (tokens - 1.0, now, rate)
            if len(self._buckets) > _FORGET_AFTER:  # a bucket that has refilled is the same as none
                self._buckets = {o: b for o, b in self._buckets.items() if b[0] + (now - b[1]) * b[2] < max(1.0, b[2])}

    async def enter(self, owner: str, concurrency: int, timeout: float, quota: int | None = None) -> bool:
        """Return once ``owner`` may run one more call (True if it had to wait behind the owner's own calls); it
        must call :meth:`leave` exactly once afterwards.

        Raises QuotaExceeded("concurrency") at once when the owner's queue is full (``QUEUE_PER_SLOT`` times its
        concurrency ``quota``, by default ``concurrency``, which the pool may run fewer at once than), or after
        ``timeout`` seconds of waiting behind the owner's own calls.
        """
        limit = QUEUE_PER_SLOT * (quota or concurrency)
        with self._lock:
            running = self._running.get(owner, 0)
            queue = self._waiting.get(owner)
            if running < concurrency and not queue:
                self._running[owner] = running + 1
                return False
            if queue is not None and len(queue) >= limit:
                raise QuotaExceeded(
                    "concurrency",
                    f"This tenant's functions have {running} calls running and {len(queue)} waiting, its quota "
                    f"({concurrency} at once, {limit} waiting); try again shortly.",
                    retry_after=_RETRY_BUSY,
                )
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(owner, deque()).append(turn)
        try:
            await asyncio.wait_for(asyncio.shield(turn), max(0.0, timeout))
        except (TimeoutError, asyncio.CancelledError) as exc:
            with self._lock:
                queue = self._waiting.get(owner)
                still_waiting = queue is not None and turn in queue
                if queue is not None and still_waiting:
                    queue.remove(turn)
                    if not queue:
                        del self._waiting[owner]
            if not still_waiting:  # the slot was handed to us meanwhile: hand it on
                self.leave(owner)
            if isinstance(exc, TimeoutError):
                raise QuotaExceeded(
                    "concurrency",
                    f"This call waited {timeout:.1f} s behind the tenant's own {concurrency} running at once (its "
                    f"concurrency quota); try again shortly.",
                    retry_after=_RETRY_BUSY,
                ) from None
            raise
        return True

    def leave(self, owner: str) -> None:
        """``owner``'s call ended: its slot goes to the owner's oldest waiting call, else it is free."""
        with self._lock:
            queue = self._waiting.get(owner)
            while queue:
                turn = queue.popleft()
                if not queue:
                    del self._waiting[owner]
                if not turn.done():
                    turn.get_loop().call_soon_threadsafe(self._wake, owner, turn)
                    return
            self._running[owner] -= 1
            if not self._running[owner]:
                del self._running[owner]

    def _wake(self, owner: str, turn: asyncio.Future[None]) -> None:
        """On the waiter's loop: its turn came (if it is gone, the slot goes on)."""
        if turn.done():
            self.leave(owner)
        else:
            turn.set_result(None)

    def load(self, owner: str) -> tuple[int, int]:
        """(running, waiting) calls of ``owner`` (for tests and diagnostics)."""
        with self._lock:
            return self._running.get(owner, 0), len(self._waiting.get(owner, ()))


class FairGate:
    """At most ``slots`` holders at once; each freed slot goes to the waiting owner that holds the fewest."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._lock = threading.Lock()
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        self._holding: dict[str, int] = {}
        self._admitted: dict[str, int] = {}  # owner -> when (in admissions) it was last let in
        self._admissions = itertools.count()

    async def enter(self, owner: str, backlog: bool = False) -> None:
        """Return once the caller holds a slot; it must call :meth:`leave` with the same owner exactly once.

        ``backlog``: the call already waited behind its owner's own calls, so it is no newcomer."""
        with self._lock:
            if self._free and not self._waiting:
                self._free -= 1
                self._hold(owner)
                return
            if not backlog and owner not in self._holding and owner not in self._waiting:
                self._admitted.pop(owner, None)  # it had nothing in flight: a newcomer, ahead of every backlog
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
