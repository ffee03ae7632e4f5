"""Admission to the sandbox: each tenant's rate and concurrency quotas, then threads and guests fairly by tenant."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import pytest

from dpmsf_core.sandbox.admission import QUEUE_PER_SLOT, FairGate, TenantGate
from dpmsf_core.sandbox.guests import Guests
from dpmsf_core.tenancy.quotas import QuotaExceeded


def test_a_newcomer_goes_ahead_of_a_backlog_and_cancelled_waiters_lose_nothing() -> None:
    async def scenario() -> list[str]:
        gate = FairGate(slots=1)
        order: list[str] = []
        await gate.enter("flood")  # holds the only slot

        async def call(owner: str, tag: str) -> None:
            await gate.enter(owner)
            order.append(tag)
            await asyncio.sleep(0)
            gate.leave(owner)

        backlog = [asyncio.create_task(call("flood", f"flood-{i}")) for i in range(3)]
        await asyncio.sleep(0)
        doomed = asyncio.create_task(call("gone", "never"))
        await asyncio.sleep(0)
        victim = asyncio.create_task(call("victim", "victim"))
        await asyncio.sleep(0)
        assert gate.waiting() == 5
        doomed.cancel()
        await asyncio.sleep(0)
        assert gate.waiting() == 4
        gate.leave("flood")
        await asyncio.gather(victim, *backlog)
        assert gate.waiting() == 0
        await asyncio.wait_for(gate.enter("after"), 1)  # the slot came back: nothing leaked
        return order

    assert asyncio.run(scenario()) == ["victim", "flood-0", "flood-1", "flood-2"]


# -- each tenant's rate and concurrency quotas ------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_rate_quota_is_a_token_bucket_per_tenant() -> None:
    clock = Clock()
    gate = TenantGate(clock)
    for _ in range(4):  # a burst of one second's worth
        gate.charge("flood", 4)
    with pytest.raises(QuotaExceeded) as refused:
        gate.charge("flood", 4)
    assert (refused.value.status, refused.value.quota) == (429, "rate")
    assert refused.value.headers["Retry-After"] == "1"  # a quarter second until the next token, rounded up
    gate.charge("other", 4)  # another tenant's bucket is its own
    gate.charge("unlimited", 0)
    clock.now += 0.25
    gate.charge("flood", 4)  # one token came back, and only one
    with pytest.raises(QuotaExceeded):
        gate.charge("flood", 4)
    gate.charge("slow", 0.5)  # a burst of at least one
    with pytest.raises(QuotaExceeded) as slow:
        gate.charge("slow", 0.5)
    assert slow.value.headers["Retry-After"] == "2"  # two seconds until its next token


def test_the_concurrency_quota_queues_a_few_then_refuses_and_loses_no_slot() -> None:
    async def scenario() -> list[str]:
        gate = TenantGate()
        order: list[str] = []
        assert await gate.enter("flood", 1, 5) is False  # runs at once
        queued = [asyncio.create_task(gate.enter("flood", 1, 5)) for _ in range(QUEUE_PER_SLOT)]
        await asyncio.sleep(0)
        assert gate.load("flood") == (1, QUEUE_PER_SLOT)
        with pytest.raises(QuotaExceeded) as full:  # past the queue: refused at once, nothing waits
            await gate.enter("flood", 1, 5)
        assert (full.value.status, full.value.quota, full.value.headers["Retry-After"]) == (429, "concurrency", "1")
        assert await gate.enter("other", 1, 5) is False  # another tenant is not in this queue
        with pytest.raises(QuotaExceeded, match="waited"):  # nor waits past its time: 429, not 503
            await gate.enter("other", 1, 0.01)
        queued[1].cancel()
        await asyncio.sleep(0)
        for number, task in enumerate(queued):
            if number != 1:
                task.add_done_callback(lambda _, n=number: order.append(f"flood-{n}"))
        for _ in range(QUEUE_PER_SLOT - 1):  # the first holder's, then each woken call's but the last
            gate.leave("flood")
            await asyncio.sleep(0.01)
        assert all(task.result() is True for n, task in enumerate(queued) if n != 1)  # they waited
        assert gate.load("flood") == (1, 0)
        gate.leave("flood")
        gate.leave("other")
        assert gate.load("flood") == gate.load("other") == (0, 0)  # every slot came back
        return order

    assert asyncio.run(scenario()) == ["flood-0", "flood-2", "flood-3"][: QUEUE_PER_SLOT - 1]


# -- who gets the next guest ------------------------------------------------------------------------------------------


class FakeWorker:
    """What ``Guests`` uses of a worker process."""

    pids = itertools.count(1000)

    def __init__(self) -> None:
        self.pid = next(self.pids)
        self.owner: str | None = None
        self.idle_since = 0.0
        self.killed = False
        self.proc = self

    def poll(self) -> int | None:
        return 1 if self.killed else None

    def kill(self) -> None:
        self.killed = True


class Taker(threading.Thread):
    """One call waiting for a guest in a thread; ``got`` once it has one."""

    def __init__(self, guests: Guests, owner: str, order: list[str], backlog: bool = False) -> None:
        super().__init__(daemon=True)
        self.guests, self.owner, self.order, self.backlog = guests, owner, order, backlog
        self.got: Any = None
        self.start()

    def run(self) -> None:
        self.got = self.guests.acquire(self.owner, time.monotonic() + 10, self.backlog)
        self.order.append(self.owner)


def test_a_newcomer_gets_the_next_guest_and_keeps_it_warm_between_calls_while_others_flood() -> None:
    guests = Guests(2, FakeWorker)  # type: ignore[arg-type]  # a stand-in for WorkerProcess
    order: list[str] = []
    a, b = Taker(guests, "flood-a", order), Taker(guests, "flood-b", order)
    a.join(), b.join()
    backlog = [Taker(guests, owner, order, backlog=True) for owner in ("flood-a", "flood-b") * 2]
    time.sleep(0.1)
    assert guests.take_warm("flood-a") is None  # others wait: no call skips the queue on the event loop
    honest = Taker(guests, "honest", order)
    time.sleep(0.1)
    guests.release(a.got, keep=True)
    honest.join(2)
    assert order[2] == "honest"  # ahead of both floods' older calls
    warm = honest.got
    guests.release(warm, keep=True)  # the honest tenant is between calls; the floods still wait for guests
    time.sleep(0.2)
    assert not warm.killed and warm.pid in guests.workers()  # not recycled for a flood while another guest will free
    again = Taker(guests, "honest", order)
    again.join(2)
    assert again.got is warm  # its own warm guest, no start
    guests.release(warm, keep=True)
    guests.release(b.got, keep=True)
    for _ in range(20):  # the floods share the other guest by turns
        for taker in backlog:
            if taker.got is not None and not taker.got.killed and taker.got.pid not in guests.workers():
                guests.release(taker.got, keep=True)
        time.sleep(0.05)
    for taker in backlog:
        taker.join(3)
    assert sorted(t.owner for t in backlog if t.got is not None) == ["flood-a", "flood-a", "flood-b", "flood-b"]
    guests.close()
