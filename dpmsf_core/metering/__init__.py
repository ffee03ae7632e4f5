"""Per-tenant metering, so an operator can bill or cap: what each tenant's requests, guests, store and uploads cost.

``meter.py`` adds the figures up in memory (no I/O per request) and flushes them every few seconds, off the event
loop, into per-tenant hourly buckets (``sinks.py``); ``store.py`` counts a tenant's document-store traffic;
``report.py`` reads the buckets back for ``dpmsf tenant usage`` and ``GET /rest/admin/usage``. Nothing here is
imported until a tenant's usage is first counted.
"""

from __future__ import annotations

from .counts import FIELDS, Counts
from .meter import UsageMeter
from .sinks import SQLiteUsageSink, StoreUsageSink, UsageSink, sink_for

__all__ = ["FIELDS", "Counts", "SQLiteUsageSink", "StoreUsageSink", "UsageMeter", "UsageSink", "sink_for"]
