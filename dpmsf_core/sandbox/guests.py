"""The guests of a pool: handed out one call at a time, bound to one owner (tenant) each, replaced when they end.

Round robin across owners: the next guest goes to the waiting owner that holds the fewest guests, and among
those to the one served longest ago (first come, first served within one owner). An owner whose old calls wait
in the queue therefore never goes ahead of one that was not served since: however many tenants flood the pool,
a call of another tenant gets the next guest that frees. A guest that ended is replaced in the background, so
the next call finds a warm one.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable

from ..errors import DPMSFError, ServiceUnavailable
from .process import WorkerProcess

log = logging.getLogger("dpmsf.sandbox")

_AFFINITY_WAIT = 0.5  # how long another owner's guest must sit idle before a busy owner may recycle it


class Guests:
    """The workers of one pool, at most ``size`` at once; ``start`` makes a fresh one."""

    def __init__(self, size: int, start: Callable[[], WorkerProcess]) -> None:
        self.size = size
        self.start = start
        self._cond = threading.Condition()
        self._idle: list[WorkerProcess] = []  # least recently used first
        self._count = 0  # idle + busy + starting
        self._closed = False
        self._busy: dict[str, int] = {}  # owner -> workers running its calls
        self._starting = 0  # spares being started in the background
        self._queue: list[tuple[int, str]] = []  # (ticket, owner) of the calls waiting for a guest, in order
        self._tickets = itertools.count()
        self._served: dict[str, int] = {}  # owner -> when (in grants) its last call was given a guest
        self._grants = itertools.count()
        self.replaced = 0  # guests ended after a breach, a timeout, a crash or memory exhaustion

    def close(self) -> None:
        """Kill idle workers now; busy ones are killed when their call ends."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._count -= len(idle)
            self._cond.notify_all()
        for worker in idle:
            worker.kill()

    def workers(self) -> list[int]:
        """Pids of the idle workers."""
        with self._cond:
            return [w.pid for w in self._idle]

    def acquire(self, owner: str, deadline: float) -> WorkerProcess:
        """An idle worker of ``owner``, else a fresh one, else recycle another owner's idle worker, else wait.

        An owner that already has a busy worker only recycles another owner's worker once it has sat idle for
        ``_AFFINITY_WAIT``: concurrent calls of one tenant queue for its warm workers instead of evicting the
        other tenants' (a fresh guest costs ~0.2 s); an owner with no worker at all recycles at once. Whose turn it
        is decides ``_my_turn``: while another owner with fewer guests, or served longer ago, waits, an owner takes
        nothing, not even its own idle guest.
        """
        victim: WorkerProcess | None = None
        with self._cond:
            ticket = (next(self._tickets), owner)
            self._queue.append(ticket)
            try:
                while True:
                    if self._closed:
                        raise ServiceUnavailable("the sandbox pool is closed")
                    now = time.monotonic()
                    wake = deadline
                    if self._my_turn(ticket):
                        worker = _pick(self._idle, owner)
                        if worker is not None:
                            worker.owner = owner
                            break
                        if self._count < self.size:
                            self._count += 1
                            break
                        if self._idle and not self._starting:  # a spare on its way beats evicting a warm guest
                            settle = _AFFINITY_WAIT if self._busy.get(owner) else 0.0
                            oldest = self._idle[0]  # least recently used, bound to another owner
                            if now - oldest.idle_since >= settle:
                                victim = self._idle.pop(0)
                                break
                            wake = min(deadline, oldest.idle_since + settle)
                    if now >= deadline:
                        raise ServiceUnavailable(f"all {self.size} sandbox workers stayed busy; try again")
                    self._cond.wait(wake - now)
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()  # the next in the queue may take its turn now
            self._granted(owner)
            self._busy[owner] = self._busy.get(owner, 0) + 1
        if worker is not None:
            return worker
        if victim is not None:
            victim.kill()
        try:
            worker = self.start()
        except BaseException:
            with self._cond:
                self._count -= 1
                self._unbusy(owner)
                self._cond.notify_all()
            raise
        worker.owner = owner
        return worker

    def _priority(self, owner: str) -> tuple[int, int]:
        """Lower goes first: fewer guests held, then served longest ago (called under the lock)."""
        return (self._busy.get(owner, 0), self._served.get(owner, -1))

    def _my_turn(self, ticket: tuple[int, str]) -> bool:
        """The owner's oldest waiting call, and no waiting owner goes before it by ``_priority``."""
        number, owner = ticket
        if any(n < number and o == owner for n, o in self._queue):
            return False
        mine = self._priority(owner)
        return not any(o != owner and self._priority(o) < mine for _, o in self._queue)

    def _granted(self, owner: str) -> None:
        """Under the lock: a call of ``owner`` got a guest; forget owners neither busy nor waiting once many."""
        self._served[owner] = next(self._grants)
        if len(self._served) > 4096:
            active = set(self._busy) | {o for _, o in self._queue} | {owner}
            self._served = {o: n for o, n in self._served.items() if o in active}

    def take_warm(self, owner: str) -> WorkerProcess | None:
        """An idle guest already bound to ``owner``, without waiting; None if there is none right now."""
        with self._cond:
            if self._closed:
                raise ServiceUnavailable("the sandbox pool is closed")
            if self._queue:  # others are waiting: take a turn like everybody else
                return None
            for worker in self._idle:
                if worker.owner == owner:
                    self._idle.remove(worker)
                    self._granted(owner)
                    self._busy[owner] = self._busy.get(owner, 0) + 1
                    return worker
        return None

    def _unbusy(self, owner: str | None) -> None:
        if owner is not None and self._busy.get(owner):
            self._busy[owner] -= 1
            if not self._busy[owner]:
                del self._busy[owner]

    def release(self, worker: WorkerProcess, keep: bool) -> None:
        if keep and worker.proc.poll() is None:
            with self._cond:
                self._unbusy(worker.owner)
                parked = self._park(worker)
            if not parked:
                worker.kill()
            return
        worker.kill()
        with self._cond:
            self._unbusy(worker.owner)
            self._count -= 1
            self.replaced += 1
            closed = self._closed
            self._cond.notify_all()
        if not closed:
            threading.Thread(target=self._spare, name="dpmsf-sandbox-spare", daemon=True).start()

    def _spare(self) -> None:
        """Start a replacement in the background so the next call finds a warm worker."""
        with self._cond:
            if self._closed or self._count >= self.size:
                return
            self._count += 1
            self._starting += 1
        try:
            worker = self.start()
        except DPMSFError as exc:
            log.warning("sandbox spare worker failed to start: %s", exc)
            with self._cond:
                self._count -= 1
                self._starting -= 1
                self._cond.notify_all()
            return
        with self._cond:
            self._starting -= 1
            parked = self._park(worker)
        if not parked:
            worker.kill()

    def _park(self, worker: WorkerProcess) -> bool:
        """Under the lock: ``worker`` becomes idle (False, and it no longer counts, once the pool is closed)."""
        if self._closed:
            self._count -= 1
            return False
        worker.idle_since = time.monotonic()
        self._idle.append(worker)
        self._cond.notify_all()
        return True


def _pick(idle: list[WorkerProcess], owner: str) -> WorkerProcess | None:
    for candidates in ((w for w in idle if w.owner == owner), (w for w in idle if w.owner is None)):
        for worker in candidates:
            idle.remove(worker)
            return worker
    return None
