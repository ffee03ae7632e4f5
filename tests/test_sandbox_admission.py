"""The pool's thread admission: a tenant with nothing running goes ahead of another's backlog."""

from __future__ import annotations

import asyncio

from dpmsf_core.sandbox.admission import FairGate


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
