"""The memory all guests of a pool take together, held within a budget (``DPMSF_SANDBOX_MEMORY_MB_TOTAL``).

What a guest costs is its proportional set size (``Pss`` in ``/proc/<pid>/smaps_rollup``): a page shared by k
processes counts 1/k in each, so the copy-on-write pages that guests forked from one template share are counted
once over all of them, and the sum over the template and its guests is the memory they really take. Reading it
costs about a millisecond per process, so it is measured in the background (``sample``), each guest soon after
it starts and then every ``STALE`` seconds; a guest not measured yet counts as the average of those that were.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

STALE = 10.0  # seconds after which a guest's measurement is taken again
FIRST_GUESS_MB = 8.0  # what a guest counts before any guest of the pool was measured


def pss_mb(pid: int) -> float | None:
    """The process's proportional set size in MB; None once it is gone (or on a system without smaps_rollup)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            for line in fh:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class MemoryBudget:
    """Each live guest's last measured memory, the template's, and whether one more guest fits. Thread-safe."""

    def __init__(
        self,
        total_mb: float,
        others: Callable[[], Iterable[int]] = tuple,
        measure: Callable[[int], float | None] = pss_mb,
        stale: float = STALE,
    ) -> None:
        self.total_mb = total_mb
        self.stale = stale
        self.others = others  # pids counted but not guests: the template
        self.measure = measure
        self._lock = threading.Lock()
        self._mb: dict[int, float | None] = {}  # guest pid -> MB (None: not measured yet)
        self._when: dict[int, float] = {}
        self._others_mb = 0.0
        self._guess = FIRST_GUESS_MB

    def add(self, pid: int) -> None:
        with self._lock:
            self._mb[pid] = None
            self._when[pid] = 0.0

    def remove(self, pid: int) -> None:
        with self._lock:
            self._mb.pop(pid, None)
            self._when.pop(pid, None)

    def used_mb(self) -> float:
        """The guests' memory (each guest not measured yet counted as the average) and the template's."""
        with self._lock:
            return self._others_mb + sum(self._guess if mb is None else mb for mb in self._mb.values())

    def room(self) -> bool:
        """Whether one more guest fits within the budget."""
        return self.used_mb() + self._guess <= self.total_mb

    def over(self) -> bool:
        return self.used_mb() > self.total_mb

    def capacity(self) -> int:
        """How many guests the budget holds, at what a guest takes on average (at least one)."""
        with self._lock:
            return max(1, int((self.total_mb - self._others_mb) / self._guess))

    def guest_mb(self) -> float:
        """What a guest takes, on average over those measured."""
        return self._guess

    def sample(self, limit: int = 64) -> None:
        """Measure the template and up to ``limit`` guests whose measurement is missing or ``STALE``, oldest first."""
        others = sum(mb for mb in map(self.measure, self.others()) if mb is not None)
        now = time.monotonic()
        with self._lock:
            self._others_mb = others
            due = sorted((when, pid) for pid, when in self._when.items() if now - when >= self.stale or not when)
        for _, pid in due[:limit]:
            mb = self.measure(pid)
            with self._lock:
                if pid not in self._mb:
                    continue
                self._when[pid] = time.monotonic()
                if mb is not None:
                    self._mb[pid] = mb
        with self._lock:
            measured = [v for v in self._mb.values() if v is not None]
            if measured:
                self._guess = sum(measured) / len(measured)
