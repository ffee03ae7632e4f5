"""What one sandboxed call cost, as the pool reports it to whoever meters tenants (``SandboxPool(on_call=...)``)."""

from __future__ import annotations

from typing import NamedTuple


class CallUsage(NamedTuple):
    """One finished call of a guest: who owns it and what it spent (CPU as the worker measured it, not wall)."""

    tenant: str | None  # the guest's owner; None for a module with no tenant
    function: str
    cpu_seconds: float  # the worker process's CPU time during the call (user + system)
    wall_seconds: float  # from the guest taking the call to its answer (queueing not included)
    memory_mb: int  # the guest's memory limit: GB-seconds = memory_mb / 1024 * wall_seconds
    ok: bool  # answered without error (a function's own exception or a breach counts as not ok)
