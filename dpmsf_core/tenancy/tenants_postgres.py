"""Tenants in PostgreSQL, for replicas on any platform (Kubernetes, Knative, Cloud Run) that share one registry."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

from .._backends import PostgresPerProcess, postgres_ignore_exists
from .keys import MasterKey, Sealer, load_master_key
from .model import Tenant, TenantNotFound, already_exists, new_tenant
from .model import tenant_id as canonical_tenant_id
from .tenant_quotas import changed_quotas, quotas_json
from .tokens import generate_key

log = logging.getLogger("dpmsf.tenants")

_TABLE = "dpmsf_tenants"
_COLUMNS = "id, name, key, enabled, admin, quotas"


class PostgresTenantRegistry:
    """Tenants in table ``dpmsf_tenants`` (made on first use); psycopg imported lazily, one pool per process.

    ``master_key`` (``DPMSF_MASTER_KEY``) is required, as for DynamoDB and Firestore: every replica reads the same
    rows, so a key file made on one machine would leave the others unable to read them. Keys are stored wrapped
    (``keys.Sealer``, the tenant id as associated data); a row whose key is in clear (written by hand or by an older
    tool) is rewritten wrapped the first time it is read, only if nobody changed it meanwhile. Quota overrides
    are a JSON text column, changed under ``SELECT ... FOR UPDATE`` so two changes at once both hold.
    """

    def __init__(
        self,
        url: str,
        *,
        master_key: MasterKey | bytes | str | None = None,
        timeout: float = 5.0,
        backend: PostgresPerProcess | None = None,
    ) -> None:
        if master_key is None or master_key == "":
            raise ValueError(
                "The PostgreSQL tenant registry needs DPMSF_MASTER_KEY (32 bytes as base64url, e.g. from"
                " dpmsf_core.tenancy.tokens.generate_key()): tenant keys are stored wrapped with it."
            )
        self._sealer = Sealer(load_master_key(master_key, None), f"tenant table {_TABLE}")
        self._pg = backend or PostgresPerProcess(url, timeout=timeout)
        self._ready = False

    @contextlib.contextmanager
    def _conn(self) -> Iterator[Any]:
        """A pooled connection, the table made first (once per registry: the server may come up after us)."""
        with self._pg.connection() as conn:
            self._ensure_table(conn)
            yield conn

    def _ensure_table(self, conn: Any) -> None:
        if self._ready:
            return
        try:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {_TABLE} (id TEXT PRIMARY KEY, name TEXT NOT NULL, key TEXT NOT NULL,"
                " enabled BOOLEAN NOT NULL, admin BOOLEAN NOT NULL, created_at DOUBLE PRECISION NOT NULL,"
                " quotas TEXT NOT NULL DEFAULT '{}')"
            )
        except Exception as exc:
            if not postgres_ignore_exists(exc):  # another replica made it at the same moment
                raise
        self._ready = True

    def _tenant(self, row: tuple[Any, ...]) -> Tenant:
        tid, stored = row[0], row[2]
        key, clear = self._sealer.open(tid, stored)
        if clear:
            self._rewrap(tid, key, stored)
        quotas = quotas_json(row[5])
        return Tenant(id=tid, name=row[1], key=key, enabled=bool(row[3]), admin=bool(row[4]), quotas=quotas)

    def _rewrap(self, tid: str, key: str, stored: str) -> None:
        with self._conn() as conn:
            done = conn.execute(
                f"UPDATE {_TABLE} SET key = %s WHERE id = %s AND key = %s", (self._sealer.seal(tid, key), tid, stored)
            ).rowcount
        if done:
            log.warning("tenant table %s: wrapped the key of tenant %s, stored in clear", _TABLE, tid)

    def add(self, name: str = "", tenant_id: str | None = None, key: str | None = None, admin: bool = False) -> Tenant:
        tenant = new_tenant(name, tenant_id, key, admin)
        with self._conn() as conn:
            row = conn.execute(
                f"INSERT INTO {_TABLE} (id, name, key, enabled, admin, created_at) VALUES (%s, %s, %s, TRUE, %s, %s)"
                " ON CONFLICT (id) DO NOTHING RETURNING id",
                (tenant.id, tenant.name, self._sealer.seal(tenant.id, tenant.key), tenant.admin, time.time()),
            ).fetchone()
        if row is None:
            raise already_exists(tenant.id)
        return tenant

    def get(self, tenant_id: str) -> Tenant | None:
        tid = canonical_tenant_id(tenant_id)
        with self._conn() as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM {_TABLE} WHERE id = %s", (tid,)).fetchone()
        return self._tenant(row) if row else None

    def list(self) -> list[Tenant]:
        with self._conn() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM {_TABLE} ORDER BY created_at, id").fetchall()
        return [self._tenant(row) for row in rows]

    def _set(self, tid: str, column: str, value: Any) -> Tenant:
        with self._conn() as conn:
            row = conn.execute(
                f"UPDATE {_TABLE} SET {column} = %s WHERE id = %s RETURNING {_COLUMNS}", (value, tid)
            ).fetchone()
        if row is None:
            raise TenantNotFound(tid)
        return self._tenant(row)

    def disable(self, tenant_id: str) -> Tenant:
        return self._set(canonical_tenant_id(tenant_id), "enabled", False)

    def enable(self, tenant_id: str) -> Tenant:
        return self._set(canonical_tenant_id(tenant_id), "enabled", True)

    def rotate_key(self, tenant_id: str) -> Tenant:
        tid = canonical_tenant_id(tenant_id)
        return self._set(tid, "key", self._sealer.seal(tid, generate_key()))

    def set_quotas(self, tenant_id: str, changes: Mapping[str, Any]) -> Tenant:
        tid = canonical_tenant_id(tenant_id)
        with self._conn() as conn, conn.transaction():  # read, merge and write as one
            found = conn.execute(f"SELECT quotas FROM {_TABLE} WHERE id = %s FOR UPDATE", (tid,)).fetchone()
            if found is None:
                raise TenantNotFound(tid)
            quotas = changed_quotas(quotas_json(found[0]), changes)
            row = conn.execute(
                f"UPDATE {_TABLE} SET quotas = %s WHERE id = %s RETURNING {_COLUMNS}",
                (json.dumps(quotas, sort_keys=True), tid),
            ).fetchone()
        return self._tenant(row)

    def close(self) -> None:
        """Close this process's connection pool."""
        self._pg.close()
