"""The pool's memory budget, decided with stand-in workers and a stand-in meter (no processes): as many guests as
fit, one owner never holds all of them, and guests that grow past the budget are ended idle-first, least recently
used first. ``test_sandbox_template.py`` checks the same bound against the kernel's count with real guests."""

from __future__ import annotations

import itertools
import time

from dpmsf_core.sandbox.guests import Guests
from dpmsf_core.sandbox.memory import MemoryBudget


class FakeWorker:
    """What ``Guests`` uses of a worker process."""

    pids = itertools.count(5000)

    def __init__(self) -> None:
        self.pid = next(self.pids)
        self.owner: str | None = None
        self.idle_since = 0.0
        self.calls = 0
        self.killed = False
        self.proc = self

    def poll(self) -> int | None:
        return 1 if self.killed else None

    def kill(self) -> None:
        self.killed = True


def test_as_many_guests_as_fit_and_one_owner_never_holds_them_all() -> None:
    sizes: dict[int, float] = {}
    budget = MemoryBudget(100, others=lambda: [1], measure=lambda pid: 20.0 if pid == 1 else sizes.get(pid, 10.0))
    budget.sample()  # the template: 20 MB; a guest counts 8 MB until one is measured
    started: list[FakeWorker] = []

    def start() -> FakeWorker:
        started.append(FakeWorker())
        return started[-1]

    guests = Guests(64, start, memory=budget)  # type: ignore[arg-type]  # a stand-in for WorkerProcess
    try:
        held = [guests.acquire(f"tenant-{k}", time.monotonic() + 5) for k in range(5)]
        for worker in held:
            guests.release(worker, keep=True)
        budget.sample()  # each guest measured: 10 MB
        assert budget.capacity() == 8 and guests.cap == 7  # (100 - 20) / 10; one owner: all but one
        for k in range(5, 40):  # a flood of new tenants, one call each
            guests.release(guests.acquire(f"tenant-{k}", time.monotonic() + 5), keep=True)
            budget.sample()
            assert sum(not w.killed for w in started) <= 8
            assert budget.used_mb() <= 100
        assert len(started) == 40 and sum(not w.killed for w in started) == 8  # recycled, never past the budget
    finally:
        guests.close()


def test_guests_that_grow_past_the_budget_are_ended_least_recently_used_first() -> None:
    sizes: dict[int, float] = {}
    budget = MemoryBudget(60, measure=lambda pid: sizes.get(pid, 10.0), stale=0.2)
    guests = Guests(64, FakeWorker, memory=budget)  # type: ignore[arg-type]
    try:
        order = [guests.acquire(f"tenant-{k}", time.monotonic() + 5) for k in range(5)]
        for worker in order:
            guests.release(worker, keep=True)  # tenant-0 is the least recently used
        time.sleep(0.7)
        assert not any(w.killed for w in order)  # 50 MB of 60
        sizes[order[4].pid] = 30.0  # the most recent one grows: 70 MB in all
        deadline = time.monotonic() + 5
        while not order[0].killed and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [w.killed for w in order] == [True, False, False, False, False]  # the oldest idle one, only
        assert guests.evicted == 1 and budget.used_mb() <= 60
    finally:
        guests.close()
