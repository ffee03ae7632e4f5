"""Tenant registry: who may mint tokens (id + secret key), whether they are enabled, and who is admin.

Backends, chosen with ``make_tenant_registry(url)``:

- ``memory``                 tests and throw-away servers,
- ``sqlite:///path.db``      one machine (``sqlite:////abs/path.db`` is absolute),
- ``dynamodb://table-name``  the single DPMSF table: ``pk="tenant#<uuid>"``, ``sk="tenant"``,
- ``firestore://collection`` documents ``tenant#<uuid>`` of that Firestore root collection (``?database=name`` for
                             a named database; the project is ``GOOGLE_CLOUD_PROJECT``): ``tenants_firestore``,
- ``postgresql://user:password@host:port/dbname`` table ``dpmsf_tenants`` (``tenants_postgres``).

``key_lookup(registry)`` turns a registry into the ``key_for`` callback of ``tokens.TokenVerifier``.
``Tenant.quotas`` (``dpmsf tenant quota``): JSON text in SQLite (added to older files) and PostgreSQL, else a map.

Keys at rest: the SQLite, DynamoDB, Firestore and PostgreSQL registries never store a tenant key in clear. Each is
wrapped with AES-256-GCM under the server master key, the tenant id being associated data (a wrapped key copied to
another tenant's row does not unwrap), and stored as ``wrap1:`` + base64url(nonce || ciphertext || tag). A copy of the
database, a backup or a DynamoDB export then gives no tenant keys without the master key. The master key is
``DPMSF_MASTER_KEY`` (base64url of 32 bytes, e.g. from ``tokens.generate_key()``); without it, the SQLite registry
creates ``master.key`` in the state directory (0600, in a 0700 folder: ``state_files``). That keeps a laptop
working with no setup, but the file sits next to the database, so production should set ``DPMSF_MASTER_KEY``. The
shared registries (DynamoDB, Firestore, PostgreSQL) require it: a key file on one machine is unknown to the others.
A row that does not unwrap (another master key) has no usable key: its tokens fail as invalid, one log line says
why. Keys in clear (older versions) are wrapped when the SQLite registry opens, by the others when read.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from .._backends import SQLitePerThread, parse_backend_url
from .keys import MASTER_KEY_FILE, WRAP_PREFIX, MasterKey, Sealer, load_master_key
from .model import Tenant, TenantNotFound, TenantRegistry, already_exists, new_tenant, tenant_id
from .state_files import private_sqlite
from .tenant_quotas import changed_quotas, quotas_json
from .tokens import TenantKey, decode_key, generate_key

__all__ = [
    "MASTER_KEY_FILE",
    "MasterKey",
    "MemoryTenantRegistry",
    "SQLiteTenantRegistry",
    "Tenant",
    "TenantNotFound",
    "TenantRegistry",
    "key_lookup",
    "load_master_key",
    "make_tenant_registry",
    "tenant_id",
]

log = logging.getLogger("dpmsf.tenants")


_canonical = tenant_id  # methods take a ``tenant_id`` parameter, which shadows the function


class MemoryTenantRegistry:
    """Tenants in a dict, for tests and servers that need no persistence."""

    def __init__(self) -> None:
        self._tenants: dict[str, Tenant] = {}
        self._lock = threading.Lock()

    def add(self, name: str = "", tenant_id: str | None = None, key: str | None = None, admin: bool = False) -> Tenant:
        tenant = new_tenant(name, tenant_id, key, admin)
        with self._lock:
            if tenant.id in self._tenants:
                raise already_exists(tenant.id)
            self._tenants[tenant.id] = tenant
        return tenant

    def get(self, tenant_id: str) -> Tenant | None:
        return self._tenants.get(_canonical(tenant_id))

    def list(self) -> list[Tenant]:
        return list(self._tenants.values())

    def _change(self, tid: str, **changes: Any) -> Tenant:
        tid = _canonical(tid)
        with self._lock:
            if tid not in self._tenants:
                raise TenantNotFound(tid)
            tenant = self._tenants[tid] = replace(self._tenants[tid], **changes)
        return tenant

    def disable(self, tenant_id: str) -> Tenant:
        return self._change(tenant_id, enabled=False)

    def enable(self, tenant_id: str) -> Tenant:
        return self._change(tenant_id, enabled=True)

    def rotate_key(self, tenant_id: str) -> Tenant:
        return self._change(tenant_id, key=generate_key())

    def set_quotas(self, tenant_id: str, changes: Mapping[str, Any]) -> Tenant:
        tenant = self.get(tenant_id)
        if tenant is None:
            raise TenantNotFound(_canonical(tenant_id))
        return self._change(tenant_id, quotas=changed_quotas(tenant.quotas, changes))


class SQLiteTenantRegistry:
    """Tenants in a SQLite file (one connection per thread; safe for several processes); keys stored wrapped.

    The file and its ``-wal``/``-shm`` siblings are 0600; its folder is created 0700, and an existing one is
    tightened to 0700 when it is ``state_dir`` (``state_files.private_sqlite``).
    ``master_key`` defaults to ``master.key`` in ``state_dir``, or beside the database when no state directory
    is given (its default place, ``.dpmsf/``). Opening wraps every key an older version stored in clear, with
    ``secure_delete`` on and the WAL truncated after, so the clear text does not linger in free pages.
    """

    def __init__(
        self,
        path: str,
        *,
        busy_timeout_ms: int = 5000,
        master_key: MasterKey | bytes | str | None = None,
        state_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.path = str(path)
        self._sqlite = SQLitePerThread(
            self.path,
            [
                "PRAGMA secure_delete=ON",  # a replaced key leaves no copy in free space
                "CREATE TABLE IF NOT EXISTS tenants (id TEXT PRIMARY KEY, name TEXT NOT NULL, key TEXT NOT NULL,"
                " enabled INTEGER NOT NULL, admin INTEGER NOT NULL, created_at REAL NOT NULL)",
            ],
            busy_timeout_ms=busy_timeout_ms,
        )
        on_disk = self.path != ":memory:" and not self.path.startswith("file:")
        if on_disk:
            private_sqlite(self.path, state_dir=state_dir)  # a bad path fails here, at start-up
        key_dir = state_dir if state_dir is not None else (Path(self.path).parent if on_disk else None)
        master = load_master_key(master_key, key_dir, tighten=state_dir is not None)
        self._sealer = Sealer(master, f"tenant registry {self.path}")
        self._conn()
        self._add_quotas_column()
        self._migrate()

    def _conn(self) -> sqlite3.Connection:
        return self._sqlite.connection()

    def _add_quotas_column(self) -> None:
        """Files made before quotas existed get the ``quotas`` column (``{}``: no overrides)."""
        conn = self._conn()
        if any(row[1] == "quotas" for row in conn.execute("PRAGMA table_info(tenants)")):
            return
        try:
            conn.execute("ALTER TABLE tenants ADD COLUMN quotas TEXT NOT NULL DEFAULT '{}'")
        except sqlite3.OperationalError as exc:
            if "duplicate column" not in str(exc):  # another process added it first
                raise

    _CLEAR = f"SELECT id, key FROM tenants WHERE substr(key, 1, {len(WRAP_PREFIX)}) != '{WRAP_PREFIX}'"

    def _migrate(self) -> None:
        """Wrap the keys an older version stored in clear (one transaction; safe when several processes open)."""
        conn = self._conn()
        if conn.execute(self._CLEAR + " LIMIT 1").fetchone() is None:
            return
        wrapped = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            for tid, stored in conn.execute(self._CLEAR).fetchall():  # read again under the write lock
                key, clear = self._sealer.open(tid, stored)
                if key and clear:
                    conn.execute("UPDATE tenants SET key = ? WHERE id = ?", (self._sealer.seal(tid, key), tid))
                    wrapped += 1
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # old pages with clear keys leave the WAL too
        if wrapped:
            log.warning(
                "tenant registry %s: wrapped %d tenant key(s) stored in clear by an older version", self.path, wrapped
            )

    _COLUMNS = "id, name, key, enabled, admin, quotas"

    def _tenant(self, row: tuple[Any, ...]) -> Tenant:
        tid, stored = row[0], row[2]
        key, clear = self._sealer.open(tid, stored)
        if clear:  # written in clear since we opened (an older process still running): wrap it now
            self._conn().execute(
                "UPDATE tenants SET key = ? WHERE id = ? AND key = ?", (self._sealer.seal(tid, key), tid, stored)
            )
        return Tenant(
            id=tid, name=row[1], key=key, enabled=bool(row[3]), admin=bool(row[4]), quotas=quotas_json(row[5])
        )

    def add(self, name: str = "", tenant_id: str | None = None, key: str | None = None, admin: bool = False) -> Tenant:
        tenant = new_tenant(name, tenant_id, key, admin)
        try:
            self._conn().execute(
                "INSERT INTO tenants (id, name, key, enabled, admin, created_at) VALUES (?, ?, ?, 1, ?, ?)",
                (tenant.id, tenant.name, self._sealer.seal(tenant.id, tenant.key), int(tenant.admin), time.time()),
            )
        except sqlite3.IntegrityError:
            raise already_exists(tenant.id) from None
        return tenant

    def get(self, tenant_id: str) -> Tenant | None:
        row = (
            self._conn()
            .execute(f"SELECT {self._COLUMNS} FROM tenants WHERE id = ?", (_canonical(tenant_id),))
            .fetchone()
        )
        return self._tenant(row) if row else None

    def list(self) -> list[Tenant]:
        rows = self._conn().execute(f"SELECT {self._COLUMNS} FROM tenants ORDER BY created_at, id")
        return [self._tenant(row) for row in rows.fetchall()]

    def _set(self, tid: str, column: str, value: Any) -> Tenant:
        if self._conn().execute(f"UPDATE tenants SET {column} = ? WHERE id = ?", (value, tid)).rowcount == 0:
            raise TenantNotFound(tid)
        tenant = self.get(tid)
        assert tenant is not None
        return tenant

    def disable(self, tenant_id: str) -> Tenant:
        return self._set(_canonical(tenant_id), "enabled", 0)

    def enable(self, tenant_id: str) -> Tenant:
        return self._set(_canonical(tenant_id), "enabled", 1)

    def rotate_key(self, tenant_id: str) -> Tenant:
        tid = _canonical(tenant_id)
        return self._set(tid, "key", self._sealer.seal(tid, generate_key()))

    def set_quotas(self, tenant_id: str, changes: Mapping[str, Any]) -> Tenant:
        tid = _canonical(tenant_id)
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")  # read, merge and write as one: two changes at once both hold
        try:
            row = conn.execute("SELECT quotas FROM tenants WHERE id = ?", (tid,)).fetchone()
            if row is None:
                raise TenantNotFound(tid)
            quotas = changed_quotas(quotas_json(row[0]), changes)
            conn.execute("UPDATE tenants SET quotas = ? WHERE id = ?", (json.dumps(quotas, sort_keys=True), tid))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        tenant = self.get(tid)
        assert tenant is not None
        return tenant

    def close(self) -> None:
        """Close this thread's connection."""
        self._sqlite.close()


def make_tenant_registry(
    url: str,
    *,
    master_key: MasterKey | bytes | str | None = None,
    state_dir: str | os.PathLike[str] | None = None,
) -> TenantRegistry:
    """The tenant registry named by ``url`` (see the module docstring).

    ``master_key`` is ``DPMSF_MASTER_KEY`` and ``state_dir`` is ``DPMSF_STATE_DIR`` (``Settings`` has both): the
    SQLite file's folder is kept private when it lies in the state directory, and the local master key file lives
    there.
    """
    found = parse_backend_url(url, "Tenant registry URL", ("memory", "sqlite", "dynamodb", "firestore", "postgresql"))
    if found.kind == "memory":
        return MemoryTenantRegistry()
    if found.kind == "sqlite":
        return SQLiteTenantRegistry(found.target, master_key=master_key, state_dir=state_dir)
    if found.kind == "firestore":
        from .tenants_firestore import FirestoreTenantRegistry

        return FirestoreTenantRegistry(found.target, database=found.database, master_key=master_key)
    if found.kind == "postgresql":
        from .tenants_postgres import PostgresTenantRegistry

        return PostgresTenantRegistry(found.target, master_key=master_key)
    from .tenants_dynamodb import DynamoDBTenantRegistry

    return DynamoDBTenantRegistry(found.target, endpoint_url=found.endpoint_url, master_key=master_key)


def key_lookup(
    registry: TenantRegistry, cache_seconds: float = 5, clock: Callable[[], float] = time.monotonic
) -> Callable[[str], TenantKey | None]:
    """A ``key_for`` callback for TokenVerifier that caches answers briefly, so a hot path rarely hits the registry.

    It returns a ``TenantKey`` (the key, and whether the tenant is enabled) or None for an unknown tenant or one
    without a usable key. It never refuses a disabled tenant itself: the verifier says "tenant disabled" only
    after the token has decrypted with that key, so a caller without the key cannot tell disabled from unknown.
    A disabled, enabled or rotated tenant is seen within ``cache_seconds``.
    """
    cache: dict[str, tuple[float, TenantKey | None]] = {}
    lock = threading.Lock()

    def key_for(tid: str) -> TenantKey | None:
        now = clock()
        hit = cache.get(tid)
        if hit is None or hit[0] <= now:
            tenant = registry.get(tid)
            value = TenantKey(decode_key(tenant.key), tenant.enabled) if tenant is not None and tenant.key else None
            with lock:
                if len(cache) >= 10_000:
                    cache.clear()
                cache[tid] = hit = (now + cache_seconds, value)
        return hit[1]

    return key_for


def __getattr__(name: str) -> Any:
    """``DynamoDBTenantRegistry`` and ``FirestoreTenantRegistry`` (their own modules) are imported on first use."""
    if name == "DynamoDBTenantRegistry":
        from .tenants_dynamodb import DynamoDBTenantRegistry

        return DynamoDBTenantRegistry
    if name == "FirestoreTenantRegistry":
        from .tenants_firestore import FirestoreTenantRegistry

        return FirestoreTenantRegistry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
