"""Where usage is persisted: per tenant and per hour, so a report survives restarts and is read by other processes.

- ``SQLiteUsageSink``: ``<state dir>/usage.db`` (0600 in the 0700 state directory), one row per tenant and hour;
  every process of the machine adds its figures to the row (``ON CONFLICT ... DO UPDATE SET x = x + ...``).
  The default, and whenever the document store is SQLite (one machine).
- ``StoreUsageSink``: the deployment's shared document store (DynamoDB, Firestore), under the reserved namespace
  ``dpmsf.usage`` (not a UUID, so no tenant's namespace). Many instances write at once and the store has no
  atomic increment, so each process writes its own document per tenant and hour, holding its running total for
  that hour (a plain put, never a lost update); the report adds them up.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .counts import FIELDS, Counts

if TYPE_CHECKING:
    import sqlite3

    from ..config import Settings
    from ..store import StoreBackend

NAMESPACE = "dpmsf.usage"  # the store's tenant slot for usage documents: tenants are UUIDs, so never theirs
COLLECTION = "hours"
Rows = Mapping[tuple[str, int], Counts]

_COLUMNS = ", ".join(FIELDS)
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS dpmsf_usage (tenant TEXT NOT NULL, hour INTEGER NOT NULL, "
    + ", ".join(
        f"{name} {'REAL' if name in ('cpu_ms', 'wall_ms', 'gb_seconds') else 'INTEGER'} NOT NULL DEFAULT 0"
        for name in FIELDS
    )  # fmt: skip
    + ", PRIMARY KEY (tenant, hour)) WITHOUT ROWID"
)
_UPSERT = (
    f"INSERT INTO dpmsf_usage (tenant, hour, {_COLUMNS}) VALUES (?, ?, {', '.join('?' * len(FIELDS))}) "
    f"ON CONFLICT (tenant, hour) DO UPDATE SET {', '.join(f'{n} = {n} + excluded.{n}' for n in FIELDS)}"
)


class UsageSink(Protocol):
    """Adds hourly figures, and reads the sums per tenant from an hour on."""

    def add(self, rows: Rows) -> None: ...

    def read(self, tenant: str | None = None, since_hour: int | None = None) -> dict[str, Counts]: ...


def usage_file(settings: Settings) -> str | None:
    """The SQLite file usage is kept in, or None when it goes to the shared document store (DynamoDB, Firestore,
    PostgreSQL)."""
    from .._backends import parse_backend_url

    kinds = ("sqlite", "dynamodb", "firestore", "postgresql")
    found = parse_backend_url(settings.store_url, "Config 'DPMSF_STORE'", kinds)
    return os.path.join(settings.state_dir, "usage.db") if found.kind == "sqlite" else None


def sink_for(settings: Settings) -> UsageSink:
    """A SQLite file in the state directory, unless the document store is shared (DynamoDB, Firestore, PostgreSQL):
    then there."""
    path = usage_file(settings)
    if path is not None:
        return SQLiteUsageSink(path, state_dir=settings.state_dir)
    from ..store import make_store

    return StoreUsageSink(make_store(settings.store_url))


class SQLiteUsageSink:
    """Hourly rows in one SQLite file, shared by the processes of a machine (WAL)."""

    def __init__(self, path: str, *, state_dir: str | None = None) -> None:
        from .._backends import SQLitePerThread
        from ..tenancy.state_files import private_sqlite

        self.path = path
        private_sqlite(path, state_dir=state_dir)  # who used what is the operator's business only
        self._sqlite = SQLitePerThread(path, [_SCHEMA])

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._sqlite.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def add(self, rows: Rows) -> None:
        values = [(tenant, hour, *(getattr(c, n) for n in FIELDS)) for (tenant, hour), c in rows.items()]
        with self._transaction() as conn:
            conn.executemany(_UPSERT, values)

    def read(self, tenant: str | None = None, since_hour: int | None = None) -> dict[str, Counts]:
        sums = ", ".join(f"SUM({n})" for n in FIELDS)
        query = f"SELECT tenant, {sums} FROM dpmsf_usage WHERE hour >= ?"
        args: list[Any] = [since_hour or 0]
        if tenant is not None:
            query += " AND tenant = ?"
            args.append(tenant)
        rows = self._sqlite.connection().execute(query + " GROUP BY tenant ORDER BY tenant", args).fetchall()
        return {row[0]: Counts(*row[1:]) for row in rows}


class StoreUsageSink:
    """Hourly documents in the document store, one per tenant, hour and writing process (see the module's doc)."""

    def __init__(self, backend: StoreBackend, *, instance: str | None = None) -> None:
        self.backend = backend
        self.instance = instance or os.urandom(6).hex()
        self._written: dict[tuple[str, int], Counts] = {}  # this process's running totals of recent hours

    def add(self, rows: Rows) -> None:
        newest = max(hour for _, hour in rows)
        for (tenant, hour), delta in rows.items():
            doc_id = f"{hour}.{self.instance}.{tenant}"
            total = self._written.get((tenant, hour))
            if total is None:  # an hour this process had let go of: go on from what it wrote then
                stored = self.backend.get(NAMESPACE, COLLECTION, doc_id)
                total = Counts(**{n: stored[n] for n in FIELDS}) if stored else Counts()
            total.add(delta)
            self.backend.put(NAMESPACE, COLLECTION, doc_id, {"tenant": tenant, "hour": hour, **total.as_dict()})
            self._written[(tenant, hour)] = total
        for key in [k for k in self._written if k[1] < newest - 3600]:  # bounded: the last two hours
            del self._written[key]

    def read(self, tenant: str | None = None, since_hour: int | None = None) -> dict[str, Counts]:
        out: dict[str, Counts] = {}
        cursor = None
        while True:
            page, cursor = self.backend.list(NAMESPACE, COLLECTION, 1000, cursor)
            for doc in page:
                if (tenant is None or doc.get("tenant") == tenant) and doc.get("hour", 0) >= (since_hour or 0):
                    out.setdefault(str(doc["tenant"]), Counts()).add({n: doc.get(n, 0) for n in FIELDS})
            if not cursor:
                return dict(sorted(out.items()))
