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
# seconds a tenant's next call waits after each death of its guests (they add up): what a start from nothing took.
# A guest forked from a template starts in a few ms, so a tenant that ends its guest on purpose (a frame flood)
# would otherwise get a fresh one at once, call after call; an honest tenant's guests do not die.
PACE = 0.5
_FORGET_AFTER = 4096  # owners remembered; those with no death in the window are pruned beyond this


class Restarts:
    """Guest deaths per owner within ``WINDOW``; ``check`` refuses an owner within its back-off. Thread-safe."""

    def __init__(self, free: int = 10, clock: Callable[[], float] = time.monotonic, pace: float = PACE) -> None:
        self.free = free
        self.pace = pace
        self._clock = clock
        self._lock = threading.Lock()
        self._deaths: dict[str, deque[float]] = {}
        self._paced: dict[str, float] = {}  # owner -> when its next call may take a guest, after its guests' deaths

    def died(self, owner: str) -> None:
        """A guest of ``owner`` ended during one of its calls."""
        now = self._clock()
        with self._lock:
            deaths = self._deaths.setdefault(owner, deque())
            deaths.append(now)
            self._prune(deaths, now)
            self._paced[owner] = max(now, self._paced.get(owner, now)) + self.pace
            if len(self._deaths) > _FORGET_AFTER:
                self._deaths = {o: d for o, d in self._deaths.items() if d and d[-1] > now - WINDOW}
                self._paced = {o: t for o, t in self._paced.items() if t > now}

    def pause(self, owner: str) -> float:
        """Seconds ``owner``'s next call waits before it takes a guest (0: none): ``pace`` for each recent death."""
        with self._lock:
            return max(0.0, self._paced.get(owner, 0.0) - self._clock())

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
