"""The guests of a pool: handed out one call at a time, bound to one owner (tenant) each, replaced when they end.
It is over 400 lines because every rule below reads and changes the same state under one lock.

Who gets the next guest, in order:

- a **newcomer** (an owner with nothing running or waiting whose call did not queue behind its own) goes ahead of
  every backlog, and may recycle any idle guest at once: however many tenants flood the pool, another tenant's
  call waits for one guest to free (one guest's turnover), then for its own guest to start if it has none;
- otherwise, **round robin**: the waiting owner that holds the fewest guests, then the one served longest ago
  (first come, first served within one owner);
- except that an owner keeps its own guest for the backlog it has waiting for one **quantum** after the guest was
  bound to it (twice what starting a guest costs), so flooding owners share guests by turns instead of
  recycling one for every call (each recycle burns a start's CPU that every tenant waits for), and a newcomer
  seldom finds every guest starting;
- a backlogged owner recycles only guests that idled ``_AFFINITY_WAIT``, or whose owner is itself waiting: a
  tenant that calls now and then keeps its warm guest between calls while others flood;
- one owner never holds more than ``cap`` guests at once (all but one when there are two or more): calls that
  hold a guest without using CPU (a ``time.sleep``) cannot take every guest, so another tenant's call finds one
  free or waits only for one that another tenant holds.

How many guests there are: at most ``size``, and, with a ``MemoryBudget`` (``memory.py``), as many as fit in it:
a new guest starts only while one more fits, else an idle one is recycled as above; ``cap`` counts what fits.
Should the guests grow past the budget (each one's memory is measured in the background), idle guests are ended,
least recently used first.

A guest that ended is replaced in the background, so the next call finds a warm one.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable

from ..errors import DPMSFError, ServiceUnavailable
from .memory import MemoryBudget
from .process import WorkerProcess

log = logging.getLogger("dpmsf.sandbox")

_AFFINITY_WAIT = 0.5  # how long a guest whose owner is not waiting must sit idle before a backlog may recycle it
_MIN_QUANTUM = 0.25  # the least time a guest serves its owner's backlog before round robin may pass it on
_MEMORY_TICK = 0.5  # seconds between two looks at the guests' memory


class NoGuestInTime(ServiceUnavailable):
    """A call waited for a guest until its deadline (the pool is saturated)."""


class Guests:
    """The workers of one pool, at most ``size`` at once; ``start`` makes a fresh one."""

    def __init__(
        self,
        size: int,
        start: Callable[[], WorkerProcess],
        on_spare: Callable[[WorkerProcess, WorkerProcess], None] | None = None,
        memory: MemoryBudget | None = None,
        spares: int = 0,
    ) -> None:
        self.size = size
        self.memory = memory
        self.spares = spares  # unbound guests kept started while there is room: a newcomer's call takes one
        self.start = start
        self.on_spare = on_spare  # (the guest that ended, its replacement): who pays for the start
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
        self._bound: dict[int, float] = {}  # worker pid -> when it was bound to its current owner
        self._start_cost = _MIN_QUANTUM  # seconds a guest takes to start, averaged: the quantum
        self.replaced = 0  # guests ended after a breach, a timeout, a crash or memory exhaustion
        self.evicted = 0  # idle guests ended because the guests together went past their memory budget
        self.oom_ended = 0  # busy guests ended because, grown during their calls, they held the budget
        self._live: dict[int, WorkerProcess] = {}  # every guest the memory budget counts, by pid
        if memory is not None:
            threading.Thread(target=self._watch_memory, name="dpmsf-sandbox-memory", daemon=True).start()

    @property
    def cap(self) -> int:
        """Guests one owner may hold at once: all but one of what the pool holds (its size, or what fits)."""
        held = self.size if self.memory is None else min(self.size, self.memory.capacity())
        return held - 1 if held > 1 else 1

    def _room(self, owner: str | None = None) -> bool:
        """Under the lock: whether another guest (of ``owner``) may start (the count, and the memory budget)."""
        return self._count < self.size and (self.memory is None or self.memory.room(owner))

    def _started(self, worker: WorkerProcess) -> WorkerProcess:
        if self.memory is not None:
            self.memory.add(worker.pid)
            self._live[worker.pid] = worker
        return worker

    def _calling(self, worker: WorkerProcess) -> WorkerProcess:
        """``worker`` is handed a call: its memory is watched while it runs."""
        if self.memory is not None:
            self.memory.busy(worker.pid, worker.owner)
        return worker

    def _end(self, worker: WorkerProcess) -> None:
        """Kill ``worker`` and forget its memory."""
        worker.kill()
        if self.memory is not None:
            self.memory.remove(worker.pid)
            self._live.pop(worker.pid, None)

    def _watch_memory(self) -> None:
        """Measure the guests now and then; past the budget, end idle guests, least recently used first."""
        assert self.memory is not None
        while True:
            with self._cond:
                if self._closed:
                    return
            self.memory.sample()
            while self.memory.over():
                with self._cond:
                    if self._closed:
                        break
                    victim = self._idle.pop(0) if self._idle else None
                    if victim is not None:
                        self._bound.pop(victim.pid, None)
                        self._count -= 1
                        self.evicted += 1
                        self._cond.notify_all()
                if victim is not None:
                    self._end(victim)
                elif not self._end_largest_busy():
                    break
            time.sleep(_MEMORY_TICK)

    def _end_largest_busy(self) -> bool:
        """Past the budget with no idle guest left: the busy guest that grew the most is killed (its call answers
        as a guest that died, and its tenant backs off), so that the others and newcomers are not starved."""
        assert self.memory is not None
        pid = self.memory.largest_busy()
        worker = self._live.get(pid) if pid is not None else None
        if worker is None or pid is None:
            return False
        log.warning("sandbox: guest %d of %s ended: the guests went past their memory budget", pid, worker.owner)
        with contextlib.suppress(OSError):
            worker.proc.kill()  # the signal only: the calling thread reads its pipes, and reaps it (``release``)
        self.memory.remove(pid)  # counted no more: the next largest is looked at if still over
        self.oom_ended += 1
        return True

    def close(self) -> None:
        """Kill idle workers now; busy ones are killed when their call ends."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._bound.clear()
            self._count -= len(idle)
            self._cond.notify_all()
        for worker in idle:
            self._end(worker)

    def workers(self) -> list[int]:
        """Pids of the idle workers."""
        with self._cond:
            return [w.pid for w in self._idle]

    def acquire(self, owner: str, deadline: float, backlog: bool = False) -> WorkerProcess:
        """A guest for one call of ``owner``: its own idle one, else a fresh one, else another owner's recycled.

        ``backlog``: the call waited behind the owner's own calls before it came here (so it is no newcomer).
        Whose turn it is and which guest may be recycled: see the module's docstring.
        """
        with self._cond:
            fresh = not backlog and owner not in self._busy and all(o != owner for _, o in self._queue)
            if fresh:
                self._served.pop(owner, None)  # it had nothing to do: ahead of every backlog
            ticket = (next(self._tickets), owner)
            self._queue.append(ticket)
            try:
                worker, victim = self._wait_turn(ticket, owner, deadline, fresh)
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()  # the next in the queue may take its turn now
            self._granted(owner)
            self._busy[owner] = self._busy.get(owner, 0) + 1
            if worker is not None:
                spare = worker.owner is None
                if worker.owner != owner:
                    worker.owner = owner
                    self._bound[worker.pid] = time.monotonic()
        if worker is not None:
            if spare:
                self._top_up()
            return self._calling(worker)
        if victim is not None:  # ended meanwhile: a process's exit (its address space torn down) takes ms
            threading.Thread(target=self._end, args=(victim,), name="dpmsf-sandbox-end", daemon=True).start()
        worker = self._start_for(owner)
        self._top_up()
        return self._calling(worker)

    def _wait_turn(
        self, ticket: tuple[int, str], owner: str, deadline: float, fresh: bool
    ) -> tuple[WorkerProcess | None, WorkerProcess | None]:
        """Under the lock, until this call may have a guest: (an idle one, None); (None, None) for a fresh start,
        its place counted; (None, a victim) for another owner's idle guest to end in its place. 503 once the pool
        is closed; ``NoGuestInTime`` at the deadline."""
        while True:
            if self._closed:
                raise ServiceUnavailable("the sandbox pool is closed")
            now = time.monotonic()
            wake = deadline
            turn = self._my_turn(ticket)
            if turn or self._keeps_own(ticket, now):
                worker = _pick(self._idle, owner, unbound=turn)
                if worker is not None:
                    return worker, None
            if turn:
                if self._room(owner):
                    self._count += 1
                    return None, None
                victim, until = self._recycled(now, fresh)
                if victim is not None:
                    return None, victim
                wake = min(deadline, until)
            elif self._idle:  # our quantum may end, or an idle guest become fair game
                wake = min(deadline, now + _MIN_QUANTUM)
            if now >= deadline:
                raise NoGuestInTime(f"all {self.size} sandbox workers stayed busy; try again")
            self._cond.wait(wake - now)

    def _recycled(self, now: float, fresh: bool) -> tuple[WorkerProcess | None, float]:
        """Another owner's idle guest taken out to be ended for this call, or when to look again. A spare on its way
        beats evicting a warm guest."""
        if not self._idle or self._starting:
            return None, math.inf
        victim, until = self._victim(now, fresh)
        if victim is not None:
            self._idle.remove(victim)
            self._bound.pop(victim.pid, None)
        return victim, until

    def _top_up(self) -> None:
        """Start a spare in the background while fewer than ``spares`` are ready and one more guest fits."""
        if not self.spares:
            return
        with self._cond:
            ready = sum(1 for w in self._idle if w.owner is None) + self._starting
            if self._closed or ready >= self.spares or not self._room():
                return
        threading.Thread(target=self._spare, name="dpmsf-sandbox-spare", daemon=True).start()

    def _start_for(self, owner: str) -> WorkerProcess:
        """A fresh guest for ``owner``, whose place is counted already: given back if the start fails."""
        started = time.monotonic()
        try:
            worker = self._started(self.start())
        except BaseException:
            with self._cond:
                self._count -= 1
                self._unbusy(owner)
                self._cond.notify_all()
            raise
        worker.owner = owner
        with self._cond:
            self._bound[worker.pid] = time.monotonic()
            self._start_cost = 0.8 * self._start_cost + 0.2 * (time.monotonic() - started)
        return worker

    def quantum(self) -> float:
        """How long a guest serves its owner's backlog before round robin may pass it on: twice what a start costs,
        so that at most a third of the guests' time goes to starting them, whoever floods."""
        return max(_MIN_QUANTUM, 2 * self._start_cost)

    def _capped(self, owner: str) -> bool:
        """Under the lock: ``owner`` holds as many guests as one owner may."""
        return self._busy.get(owner, 0) >= self.cap

    def _waiting_owners(self) -> set[str]:
        return {o for _, o in self._queue}

    def _keeps_own(self, ticket: tuple[int, str], now: float) -> bool:
        """Under the lock: out of turn, ``owner`` may still take its own idle guest within the guest's quantum,
        unless a newcomer waits."""
        number, owner = ticket
        if self._capped(owner) or any(n < number and o == owner for n, o in self._queue):
            return False
        if any(o not in self._served for _, o in self._queue if o != owner):  # a newcomer waits
            return False
        quantum = self.quantum()
        return any(w.owner == owner and now - self._bound.get(w.pid, now) < quantum for w in self._idle)

    def _victim(self, now: float, fresh: bool) -> tuple[WorkerProcess | None, float]:
        """Under the lock: the idle guest that may be recycled now, or None and when one may be.

        A guest whose owner waits too goes first once its quantum ended (for a newcomer, at once), unless that owner
        is a newcomer itself (it takes its own guest in a moment). A guest whose owner is not waiting is kept warm
        for ``_AFFINITY_WAIT`` while another guest is busy and so will free soon (for a newcomer too: an occasional
        tenant keeps its guest between calls); then least recently used first.
        """
        waiting = self._waiting_owners()
        quantum = self.quantum()
        others_busy = self._count > len(self._idle)
        until = now + _AFFINITY_WAIT
        for worker in self._idle:
            if worker.owner in waiting and worker.owner in self._served:  # a waiting newcomer takes its own
                ends = self._bound.get(worker.pid, now - quantum) + quantum
                if fresh or ends <= now:
                    return worker, now
                until = min(until, ends)
        for worker in self._idle:
            if worker.owner in waiting:
                continue
            if (fresh and not others_busy) or now - worker.idle_since >= _AFFINITY_WAIT:
                return worker, now
            until = min(until, worker.idle_since + _AFFINITY_WAIT)
        return None, until

    def _priority(self, owner: str) -> tuple[int, int]:
        """Lower goes first: fewer guests held, then served longest ago (called under the lock)."""
        return (self._busy.get(owner, 0), self._served.get(owner, -1))

    def _my_turn(self, ticket: tuple[int, str]) -> bool:
        """The owner's oldest waiting call, and no waiting owner goes before it by ``_priority``."""
        number, owner = ticket
        if self._capped(owner) or any(n < number and o == owner for n, o in self._queue):
            return False
        mine = self._priority(owner)
        return not any(o != owner and not self._capped(o) and self._priority(o) < mine for _, o in self._queue)

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
            if self._queue or self._capped(owner):  # others are waiting: take a turn like everybody else
                return None
            for worker in self._idle:
                if worker.owner == owner:
                    self._idle.remove(worker)
                    self._granted(owner)
                    self._busy[owner] = self._busy.get(owner, 0) + 1
                    return self._calling(worker)
        return None

    def _unbusy(self, owner: str | None) -> None:
        if owner is not None and self._busy.get(owner):
            self._busy[owner] -= 1
            if not self._busy[owner]:
                del self._busy[owner]

    def release(self, worker: WorkerProcess, keep: bool) -> None:
        if keep and worker.proc.poll() is None:
            if self.memory is not None:
                self.memory.refresh(worker.pid)
            with self._cond:
                self._unbusy(worker.owner)
                parked = self._park(worker)
            if not parked:
                self._end(worker)
            return
        self._end(worker)
        with self._cond:
            self._bound.pop(worker.pid, None)
            self._unbusy(worker.owner)
            self._count -= 1
            self.replaced += 1
            closed = self._closed
            self._cond.notify_all()
        if not closed:  # in the caller's context: its meter is told what the start cost
            spare = functools.partial(contextvars.copy_context().run, self._spare, worker)
            threading.Thread(target=spare, name="dpmsf-sandbox-spare", daemon=True).start()

    def _spare(self, ended: WorkerProcess | None = None) -> None:
        """Start a replacement in the background so the next call finds a warm worker."""
        with self._cond:
            if self._closed or not self._room():
                return
            self._count += 1
            self._starting += 1
        try:
            worker = self._started(self.start())
        except DPMSFError as exc:
            log.warning("sandbox spare worker failed to start: %s", exc)
            with self._cond:
                self._count -= 1
                self._starting -= 1
                self._cond.notify_all()
            return
        if ended is not None and self.on_spare is not None:
            try:
                self.on_spare(ended, worker)
            except Exception:
                log.exception("sandbox: the on_spare hook failed")
        with self._cond:
            self._starting -= 1
            parked = self._park(worker)
        if not parked:
            self._end(worker)

    def _park(self, worker: WorkerProcess) -> bool:
        """Under the lock: ``worker`` becomes idle (False, and it no longer counts, once the pool is closed)."""
        if self._closed:
            self._count -= 1
            return False
        worker.idle_since = time.monotonic()
        self._idle.append(worker)
        self._cond.notify_all()
        return True


def _pick(idle: list[WorkerProcess], owner: str, unbound: bool = True) -> WorkerProcess | None:
    """An idle guest of ``owner``, else (when ``unbound``) one bound to nobody yet; taken out of ``idle``."""
    candidates = [w for w in idle if w.owner == owner]
    if unbound:
        candidates += [w for w in idle if w.owner is None]
    if not candidates:
        return None
    idle.remove(candidates[0])
    return candidates[0]
