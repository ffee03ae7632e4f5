"""The usage meter: each tenant's figures added up in memory, flushed into hourly buckets by a background thread.

Counting is a dict update under a lock, on whatever thread serves the request: no I/O. Every ``flush_seconds``
(10 s), a daemon thread hands what was counted since the last flush to the sink (a SQLite file, or the shared
document store), added to the tenant's bucket for the hour it was counted in; ``close()`` flushes the rest at
shutdown. Memory stays bounded: the unflushed part holds at most the tenants of a few hours, and the running
totals (``/metrics``) at most ``max_tenants`` tenants; any further tenant is counted under ``OVERFLOW``. Only
tenants the server vouches for reach the meter (a verified token's tenant, the owner of a stored module), so a
flood of forged tenant ids cannot grow it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .counts import FIELDS, HOUR, Counts

if TYPE_CHECKING:
    from ..sandbox.usage import CallUsage
    from .sinks import UsageSink

log = logging.getLogger("dpmsf.metering")

FLUSH_SECONDS = 10.0
MAX_TENANTS = 10_000
OVERFLOW = "-"  # the tenants past ``max_tenants``, together (never expected: tenants are created by the operator)


_KNOWN = frozenset(FIELDS)


class UsageMeter:
    """Each tenant's usage: running totals for this process, and what is still to be written to ``sink``.

    ``sink`` is a factory, called on the first flush (in the flush thread): opening a database is never on a
    request's path. ``per_invocation`` keeps a third tally that ``drain_invocation()`` empties (EMF on Lambda).
    """

    def __init__(
        self,
        sink: Callable[[], UsageSink] | None = None,
        *,
        flush_seconds: float = FLUSH_SECONDS,
        clock: Callable[[], float] = time.time,
        max_tenants: int = MAX_TENANTS,
        per_invocation: bool = False,
    ) -> None:
        self.flush_seconds = flush_seconds
        self.max_tenants = max_tenants
        self._clock = clock
        self._sink_factory = sink
        self._sink: UsageSink | None = None
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._totals: dict[str, Counts] = {}
        self._pending: dict[tuple[str, int], Counts] = {}
        self._invocation: dict[str, Counts] | None = {} if per_invocation else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False

    # -- counting (any thread, no I/O) ---------------------------------------------------------------------------

    def count(self, tenant: str, **counts: float) -> None:
        """Add ``counts`` (names from ``Counts``) to ``tenant``'s usage now."""
        if not _KNOWN.issuperset(counts):
            unknown = sorted(counts.keys() - _KNOWN)
            raise TypeError(f"UsageMeter.count: unknown figure(s) {unknown}; known: {', '.join(FIELDS)}")
        hour = int(self._clock()) // HOUR * HOUR
        with self._lock:
            key = self._admitted(tenant)
            total = self._totals.get(key)
            if total is None:
                total = self._totals[key] = Counts()
            total.add(counts)
            if self._sink_factory is not None:  # nothing to persist to: nothing kept for it
                pending = self._pending.get((key, hour))
                if pending is None:
                    pending = self._pending[(key, hour)] = Counts()
                pending.add(counts)
            if self._invocation is not None:
                self._invocation.setdefault(key, Counts()).add(counts)
        if self._thread is None and self._sink_factory is not None:
            self._start()

    def request(self, tenant: str, status: int) -> None:
        """One request served for ``tenant``; an error when it answered 500 or above."""
        self.count(tenant, requests=1, errors=int(status >= 500))

    def call(self, usage: CallUsage) -> None:
        """One sandboxed call (``SandboxPool(on_call=...)``): its CPU, wall time and GB-seconds, to its owner."""
        if usage.tenant:
            self.count(
                usage.tenant,
                cpu_ms=usage.cpu_seconds * 1000,
                wall_ms=usage.wall_seconds * 1000,
                gb_seconds=usage.memory_mb / 1024 * usage.wall_seconds,
            )

    def _admitted(self, tenant: str) -> str:
        """``tenant``, or ``OVERFLOW`` once ``max_tenants`` tenants are known (under the lock)."""
        if tenant in self._totals or len(self._totals) < self.max_tenants:
            return tenant
        if not self._warned:
            self._warned = True
            log.warning("usage meter: more than %d tenants; the rest are counted together as %r", self.max_tenants,
                        OVERFLOW)  # fmt: skip
        return OVERFLOW

    # -- reading --------------------------------------------------------------------------------------------------

    def metered_store(self, backend: Any, tenant: str) -> Any:
        """``backend`` as ``tenant``'s calls use it: each operation and its bytes counted here (``store.py``)."""
        from .store import MeteredStore  # only once a tenant touches the store

        return MeteredStore(backend, tenant, self)

    def totals(self) -> dict[str, Counts]:
        """Every tenant's usage since this process started (``/metrics``), copied."""
        with self._lock:
            return {tenant: replace(c) for tenant, c in self._totals.items()}

    def drain_invocation(self) -> dict[str, Counts]:
        """What was counted since the last drain (one Lambda invocation), emptied."""
        with self._lock:
            if not self._invocation:
                return {}
            drained, self._invocation = self._invocation, {}
            return drained

    def report(self, tenant: str | None = None, since: float | None = None) -> dict[str, Counts]:
        """Persisted usage per tenant from the hour ``since`` falls in (all of it when None), this process's
        unflushed figures included (other processes' last few seconds are not). Does I/O: not on the event loop."""
        self.flush()
        return self.sink().read(tenant, None if since is None else int(since) // HOUR * HOUR)

    # -- persisting -----------------------------------------------------------------------------------------------

    def sink(self) -> UsageSink:
        if self._sink is None:
            if self._sink_factory is None:
                raise RuntimeError("this usage meter persists nothing (no sink)")
            self._sink = self._sink_factory()
        return self._sink

    def flush(self) -> None:
        """Hand what was counted since the last flush to the sink; kept for the next flush if the sink fails."""
        if self._sink_factory is None:
            return
        with self._flush_lock:
            with self._lock:
                rows, self._pending = self._pending, {}
            if not rows:
                return
            try:
                self.sink().add(rows)
            except Exception as exc:  # a lost database or table: keep counting, try again next time
                log.warning("usage meter: could not write usage (%s); will retry", exc)
                with self._lock:
                    for key, counts in rows.items():
                        self._pending.setdefault(key, Counts()).add(counts)
                    self._bound_pending()

    def _bound_pending(self) -> None:
        """A sink that stays down must not grow memory without end: past ``max_tenants`` x 4 unwritten rows the
        oldest hours are dropped, with a warning (``/metrics`` and EMF still have them)."""
        excess = len(self._pending) - self.max_tenants * 4
        if excess <= 0:
            return
        for key in sorted(self._pending, key=lambda k: k[1])[:excess]:
            del self._pending[key]
        log.warning("usage meter: the sink is still failing; dropped %d unwritten hourly rows", excess)

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._run, name="dpmsf-usage-flush", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            self.flush()

    def close(self) -> None:
        """Stop the flush thread and write what is left (at shutdown)."""
        self._stop.set()
        self.flush()

    def __repr__(self) -> str:
        return f"UsageMeter(tenants={len(self._totals)}, pending={len(self._pending)})"

    def stats(self) -> dict[str, Any]:
        """Sizes of the in-memory tallies (for tests: bounded memory)."""
        with self._lock:
            return {"tenants": len(self._totals), "pending": len(self._pending)}
