"""Each tenant's guest deaths: a call that ends its own guest (a crash, a breach of a limit) makes the server start
a new one, which costs a start's CPU (~0.3 s) for a call that may have cost the tenant nothing. Past ``free``
deaths in a minute, the tenant's next calls are refused for a back-off that doubles with each further death (429
with ``Retry-After``), so a tenant whose guests keep dying waits instead of keeping a core busy starting guests.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from ..tenancy.quotas import QuotaExceeded

WINDOW = 60.0  # seconds over which deaths are counted
MAX_BACKOFF = 60.0  # seconds a tenant waits at most after its latest death
_FORGET_AFTER = 4096  # owners remembered; those with no death in the window are pruned beyond this


class Restarts:
    """Guest deaths per owner within ``WINDOW``; ``check`` refuses an owner within its back-off. Thread-safe."""

    def __init__(self, free: int = 10, clock: Callable[[], float] = time.monotonic) -> None:
        self.free = free
        self._clock = clock
        self._lock = threading.Lock()
        self._deaths: dict[str, deque[float]] = {}

    def died(self, owner: str) -> None:
        """A guest of ``owner`` ended during one of its calls."""
        now = self._clock()
        with self._lock:
            deaths = self._deaths.setdefault(owner, deque())
            deaths.append(now)
            self._prune(deaths, now)
            if len(self._deaths) > _FORGET_AFTER:
                self._deaths = {o: d for o, d in self._deaths.items() if d and d[-1] > now - WINDOW}

    @staticmethod
    def _prune(deaths: deque[float], now: float) -> None:
        while deaths and deaths[0] <= now - WINDOW:
            deaths.popleft()

    def backoff(self, owner: str) -> float:
        """Seconds ``owner`` must still wait before its next call (0: none)."""
        now = self._clock()
        with self._lock:
            deaths = self._deaths.get(owner)
            if not deaths:
                return 0.0
            self._prune(deaths, now)
            over = len(deaths) - self.free
            if over < 0 or not deaths:
                return 0.0
            return max(0.0, deaths[-1] + min(MAX_BACKOFF, 2.0**over) - now)

    def check(self, owner: str) -> None:
        """QuotaExceeded("guest_restarts") with ``Retry-After`` while ``owner`` is within its back-off."""
        wait = self.backoff(owner)
        if wait > 0:
            raise QuotaExceeded(
                "guest_restarts",
                f"This tenant's sandbox guests ended {self.free} or more times within {WINDOW:g} s (a crash or a "
                f"breach of a limit each); its next call may run in {wait:.1f} s.",
                retry_after=wait,
            )
