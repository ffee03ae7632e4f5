"""The usage report, as ``dpmsf tenant usage`` prints it and ``GET /rest/admin/usage`` answers it.

``--since`` / ``?since=`` is an ISO 8601 time (``2026-12-07T09:00:00Z``; without a zone: UTC) or a duration back
from now (``90s``, ``15m``, ``6h``, ``30d``). Usage is kept by the hour, so a report covers whole hours: from the
start of the hour ``since`` falls in.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from .counts import HOUR, Counts

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str | None, now: float) -> float | None:
    """``since`` as a Unix time (None: from the beginning); ValueError quoting the bad value and the forms."""
    if text is None or not text.strip():
        return None
    raw = text.strip()
    found = _DURATION.match(raw)
    if found:
        return now - float(found[1]) * _UNIT[found[2]]
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"since={raw[:60]!r} is not valid. Expected an ISO 8601 time (2026-12-07T09:00:00Z) or a duration"
            " such as 90s, 15m, 6h, 30d."
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def report_rows(usage: Mapping[str, Counts]) -> list[dict[str, Any]]:
    """One dict per tenant, ``tenant`` first; milliseconds and GB-seconds rounded for reading."""
    rows = []
    for tenant, counts in sorted(usage.items()):
        figures = counts.as_dict()
        for name in ("cpu_ms", "wall_ms"):
            figures[name] = round(figures[name], 3)
        figures["gb_seconds"] = round(figures["gb_seconds"], 6)
        rows.append({"tenant": tenant, **{k: v if isinstance(v, float) else int(v) for k, v in figures.items()}})
    return rows


def report(usage: Mapping[str, Counts], since: float | None) -> dict[str, Any]:
    """The whole report: whence it counts (the start of ``since``'s hour) and the rows."""
    start = None if since is None else int(since) // HOUR * HOUR
    return {"since": None if start is None else iso(start), "results": report_rows(usage)}
