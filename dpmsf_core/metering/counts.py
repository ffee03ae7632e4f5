"""What is counted per tenant (``Counts``), apart from the meter that counts it and the sinks that keep it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

__all__ = ["FIELDS", "HOUR", "Counts"]

HOUR = 3600  # usage is kept in buckets of one hour


@dataclass(slots=True)
class Counts:
    """One tenant's usage over some period; every field adds up."""

    requests: int = 0  # requests served for the tenant: to its own modules, or with its token
    errors: int = 0  # of those, answers of 500 and above
    cpu_ms: float = 0.0  # CPU time of its guests' worker processes during its calls
    wall_ms: float = 0.0  # its guests' wall time, from taking a call to answering it
    gb_seconds: float = 0.0  # guest memory limit / 1024 x guest wall time, summed per call
    store_ops: int = 0  # document-store operations (get, put, create, update, delete, list)
    store_bytes: int = 0  # JSON bytes of the documents those operations wrote and read
    upload_bytes: int = 0  # bytes of the modules it uploaded (accepted uploads)

    def add(self, other: Counts | Mapping[str, float]) -> None:
        items = asdict(other).items() if isinstance(other, Counts) else other.items()
        for name, value in items:
            setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


FIELDS = tuple(f.name for f in fields(Counts))
