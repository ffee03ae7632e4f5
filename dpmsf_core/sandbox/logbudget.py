"""How much a tenant may make the server log: its printed output and its errors fill the operator's logs (on
Lambda, CloudWatch bills every byte), so each tenant gets a byte budget per second, refilled continuously.

Past it, the tenant's lines are dropped and counted; the first line logged after that says how many were dropped,
so the operator sees the flood without paying for it. The budget is per server process, in memory, bounded in
tenants (only tenants whose code runs reach it).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

DEFAULT_BYTES_PER_SECOND = 4096
DEFAULT_BURST = 16384
_MAX_TENANTS = 10_000


class LogBudget:
    """A token bucket of log bytes per tenant: ``admit(tenant, text)`` is the text to log (with a note of what was
    dropped before it), or None when the tenant is over its budget."""

    def __init__(self, bytes_per_second: float = DEFAULT_BYTES_PER_SECOND, burst: int = DEFAULT_BURST) -> None:
        self.rate = bytes_per_second
        self.burst = burst
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # tenant -> [tokens, last refill, dropped]

    def admit(self, tenant: str | None, text: str) -> str | None:
        key = tenant or "-"
        cost = len(text)
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = [float(self.burst), now, 0.0]
                self._buckets[key] = bucket
                if len(self._buckets) > _MAX_TENANTS:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
            bucket[0] = min(float(self.burst), bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
            if bucket[0] < cost:
                bucket[2] += 1
                return None
            bucket[0] -= cost
            dropped, bucket[2] = int(bucket[2]), 0.0
        return f"{text} [{dropped} earlier line(s) of this tenant dropped: over its log budget]" if dropped else text
