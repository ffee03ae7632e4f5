"""The memory all guests of a pool take together, held within a budget (``DPMSF_SANDBOX_MEMORY_MB_TOTAL``).

Measured from ``/proc/<pid>/smaps_rollup``. Guests forked from a template share its pages until they write them,
so the memory they all take is the template's resident set (``Rss``) plus each guest's private pages
(``Private_Clean`` + ``Private_Dirty``): every page counted once, and a figure that does not move when a sibling
ends (a proportional set size would, as shared pages are split among fewer processes). Guests started from nothing
count their proportional set size (``Pss``). Reading one costs about a millisecond, so it is done in the
background (``sample``): each guest soon after it starts, at every tick while it runs a call (only a running
guest grows: an idle one cannot), once after each call, then every ``STALE`` seconds; a guest not measured yet
counts as the average of those that were. ``largest_busy`` names the guest to end when busy guests alone hold
more than the budget: a guest that grew during its calls is ended then, not left holding the memory of others.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

STALE = 10.0  # seconds after which a guest's measurement is taken again
FIRST_GUESS_MB = 8.0  # what a guest counts before any guest of the pool was measured


def smaps_mb(pid: int, fields: tuple[bytes, ...]) -> float | None:
    """The sum of ``fields`` of ``/proc/<pid>/smaps_rollup`` in MB; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            return sum(int(line.split()[1]) for line in fh if line.startswith(fields)) / 1024
    except (OSError, ValueError, IndexError):
        return None


def pss_mb(pid: int) -> float | None:
    """The process's proportional set size in MB (what the kernel counts it for, shared pages split)."""
    return smaps_mb(pid, (b"Pss:",))


def private_mb(pid: int) -> float | None:
    """The pages only this process maps: what a guest forked from a template adds to the template's."""
    return smaps_mb(pid, (b"Private_Clean:", b"Private_Dirty:"))


def rss_mb(pid: int) -> float | None:
    """Every page the process maps: a template's, which its guests share until they write them."""
    return smaps_mb(pid, (b"Rss:",))


class MemoryBudget:
    """Each live guest's last measured memory, the template's, and whether one more guest fits. Thread-safe."""

    def __init__(
        self,
        total_mb: float,
        others: Callable[[], Iterable[int]] = tuple,
        measure: Callable[[int], float | None] = pss_mb,
        stale: float = STALE,
        measure_others: Callable[[int], float | None] | None = None,
    ) -> None:
        self.total_mb = total_mb
        self.stale = stale
        self.others = others  # pids counted but not guests: the template
        self.measure = measure
        self.measure_others = measure_others or measure
        self._lock = threading.Lock()
        self._mb: dict[int, float | None] = {}  # guest pid -> MB (None: not measured yet)
        self._when: dict[int, float] = {}
        self._others_mb = 0.0
        self._others_seen: tuple[int, ...] = ()  # the pids _others_mb was measured for
        self._guess = FIRST_GUESS_MB
        self._served: set[int] = set()  # guests measured after a call: what a guest grows to, for the average
        self._busy: dict[int, str | None] = {}  # guests running a call, and whose: measured at every sample
        self._peak: dict[str, float] = {}  # owner -> the most a guest of its has been measured at

    def add(self, pid: int) -> None:
        with self._lock:
            self._mb[pid] = None
            self._when[pid] = 0.0

    def busy(self, pid: int, owner: str | None = None) -> None:
        """``pid`` runs a call of ``owner``: measured at every sample until ``refresh``, and counted meanwhile as
        at least what a guest of that owner grew to before (a guest grows only while it runs a call)."""
        with self._lock:
            if pid in self._when:
                self._busy[pid] = owner

    def refresh(self, pid: int) -> None:
        """``pid`` ended a call: measured again at the next sample (what it wrote, it keeps)."""
        with self._lock:
            self._busy.pop(pid, None)
            if pid in self._when:
                self._when[pid] = 0.0
                self._served.add(pid)

    def _note_peak(self, owner: str | None, mb: float) -> None:
        """Under the lock: remember what a guest of ``owner`` grew to (bounded: forgotten all at once past 10,000
        owners, as a server sees fewer active tenants than that)."""
        if owner is None or mb <= self._peak.get(owner, 0.0):
            return
        if len(self._peak) >= 10_000:
            self._peak.clear()
        self._peak[owner] = mb

    def largest_busy(self) -> int | None:
        """The busy guest holding the most memory: the one to end when the budget is exceeded and no idle guest is
        left to end."""
        with self._lock:
            sized = [(mb, pid) for pid in self._busy if (mb := self._mb.get(pid)) is not None]
        return max(sized)[1] if sized else None

    def remove(self, pid: int) -> None:
        with self._lock:
            self._mb.pop(pid, None)
            self._when.pop(pid, None)
            self._served.discard(pid)
            self._busy.pop(pid, None)

    def used_mb(self) -> float:
        """The guests' memory (each guest not measured yet counted as the average) and the template's."""
        with self._lock:
            return self._others_mb + sum(self._counted(pid, mb) for pid, mb in self._mb.items())

    def _counted(self, pid: int, mb: float | None) -> float:
        """Under the lock: a guest as measured (the average until it is), and a busy one at least at its owner's
        peak: a tenant whose calls grew a guest before is counted so from the start of its next call."""
        size = self._guess if mb is None else mb
        if pid in self._busy:
            owner = self._busy[pid]
            size = max(size, self._peak.get(owner, 0.0) if owner is not None else 0.0)
        return size

    def room(self, owner: str | None = None) -> bool:
        """Whether one more guest (of ``owner``: at least its peak) fits within the budget (a template that just
        started is measured first)."""
        if tuple(self.others()) != self._others_seen:
            self._measure_others()
        with self._lock:
            wanted = max(self._guess, self._peak.get(owner, 0.0) if owner is not None else 0.0)
        return self.used_mb() + wanted <= self.total_mb

    def _measure_others(self) -> None:
        pids = tuple(self.others())
        others = sum(mb for mb in map(self.measure_others, pids) if mb is not None)
        with self._lock:
            self._others_mb, self._others_seen = others, pids

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
        self._measure_others()
        now = time.monotonic()
        with self._lock:
            due = sorted((when, pid) for pid, when in self._when.items() if now - when >= self.stale or not when)
            running = [pid for pid in self._busy if pid in self._when]
            owners = dict(self._busy)
        picked = [pid for _, pid in due[:limit]]
        for pid in picked + [pid for pid in running if pid not in picked]:
            mb = self.measure(pid)
            with self._lock:
                if pid not in self._mb:
                    continue
                self._when[pid] = time.monotonic()
                if mb is not None:
                    self._mb[pid] = mb
                    self._note_peak(owners.get(pid), mb)
        with self._lock:
            served = [mb for pid, mb in self._mb.items() if mb is not None and pid in self._served]
            measured = served or [mb for mb in self._mb.values() if mb is not None]  # a fresh guest is smaller
            if measured:
                self._guess = sum(measured) / len(measured)
