"""Tenant registry: who may mint tokens (id + secret key), whether they are enabled, and who is admin.

Backends, chosen with ``make_tenant_registry(url)``:

- ``memory``                 tests and throw-away servers,
- ``sqlite:///path.db``      one machine (``sqlite:////abs/path.db`` is absolute),
- ``dynamodb://table-name``  the single DPMSF table: ``pk="tenant#<uuid>"``, ``sk="tenant"``.

``key_lookup(registry)`` turns a registry into the ``key_for`` callback of ``tokens.TokenVerifier``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from .errors import Forbidden
from .replay import dynamodb_client, parse_store_url
from .tokens import decode_key, generate_key

__all__ = [
    "DynamoDBTenantRegistry",
    "MemoryTenantRegistry",
    "SQLiteTenantRegistry",
    "Tenant",
    "TenantNotFound",
    "TenantRegistry",
    "key_lookup",
    "make_tenant_registry",
    "tenant_id",
]


@dataclass(frozen=True)
class Tenant:
    """One tenant; ``key`` is base64url text from ``tokens.generate_key()`` and is kept out of ``repr``."""

    id: str
    key: str = field(repr=False)
    enabled: bool
    name: str = ""
    admin: bool = False


class TenantNotFound(LookupError):
    """No tenant has this id."""

    def __init__(self, tenant: str) -> None:
        super().__init__(f"No tenant with id '{tenant}'.")
        self.tenant = tenant


def tenant_id(value: str) -> str:
    """The canonical (lowercase, hyphenated) form of a tenant UUID; ValueError quoting the bad value."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ValueError(f"Tenant id {value!r} is not a UUID. Expected e.g. '{uuid.uuid4()}'.") from None


_canonical = tenant_id  # methods take a ``tenant_id`` parameter, which shadows the function


def _new_tenant(name: str, tid: str | None, key: str | None, admin: bool) -> Tenant:
    key = key if key is not None else generate_key()
    decode_key(key)  # ValueError for a bad key, before anything is stored
    return Tenant(
        id=tenant_id(tid) if tid is not None else str(uuid.uuid4()), key=key, enabled=True, name=name, admin=admin
    )


def _exists(tenant: str) -> ValueError:
    return ValueError(f"Tenant '{tenant}' already exists.")


class TenantRegistry(Protocol):
    """Where tenants are kept; every method validates the id and raises TenantNotFound for unknown ones."""

    def add(self, name: str = "", tenant_id: str | None = None, key: str | None = None, admin: bool = False) -> Tenant:
        """Create an enabled tenant (new UUID and key unless given); ValueError if the id exists."""
        ...

    def get(self, tenant_id: str) -> Tenant | None: ...

    def list(self) -> list[Tenant]: ...

    def disable(self, tenant_id: str) -> Tenant: ...

    def enable(self, tenant_id: str) -> Tenant: ...

    def rotate_key(self, tenant_id: str) -> Tenant:
        """Give the tenant a new key; tokens minted with the old one stop working."""
        ...


class MemoryTenantRegistry:
    """Tenants in a dict, for tests and servers that need no persistence."""

    def __init__(self) -> None:
        self._tenants: dict[str, Tenant] = {}
        self._lock = threading.Lock()

    def add(self, name: str = "", tenant_id: str | None = None, key: str | None = None, admin: bool = False) -> Tenant:
        tenant = _new_tenant(name, tenant_id, key, admin)
        with self._lock:
            if tenant.id in self._tenants:
                raise _exists(tenant.id)
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


class SQLiteTenantRegistry:
    """Tenants in a SQLite file (one connection per thread; safe for several processes)."""

    def __init__(self, path: str, *, busy_timeout_ms: int = 5000) -> None:
        self.path = str(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        if self.path != ":memory:" and not self.path.startswith("file:"):
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn()  # a bad path fails at start-up

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():  # never reuse a connection across fork()
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout_ms / 1000, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS tenants (id TEXT PRIMARY KEY, name TEXT NOT NULL, key TEXT NOT NULL,"
                " enabled INTEGER NOT NULL, admin INTEGER NOT NULL, created_at REAL NOT NULL)"
            )
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @staticmethod
    def _tenant(row: tuple[Any, ...]) -> Tenant:
        return Tenant(id=row[0], name=row[1], key=row[2], enabled=bool(row[3]), admin=bool(row[4]))

    def add(self, name: str = "", tenant_id: str | None = None, key: str | None = None, admin: bool = False) -> Tenant:
        tenant = _new_tenant(name, tenant_id, key, admin)
        try:
            self._conn().execute(
                "INSERT INTO tenants (id, name, key, enabled, admin, created_at) VALUES (?, ?, ?, 1, ?, ?)",
                (tenant.id, tenant.name, tenant.key, int(tenant.admin), time.time()),
            )
        except sqlite3.IntegrityError:
            raise _exists(tenant.id) from None
        return tenant

    def get(self, tenant_id: str) -> Tenant | None:
        row = (
            self._conn()
            .execute("SELECT id, name, key, enabled, admin FROM tenants WHERE id = ?", (_canonical(tenant_id),))
            .fetchone()
        )
        return self._tenant(row) if row else None

    def list(self) -> list[Tenant]:
        rows = self._conn().execute("SELECT id, name, key, enabled, admin FROM tenants ORDER BY created_at, id")
        return [self._tenant(row) for row in rows]

    def _set(self, tid: str, column: str, value: Any) -> Tenant:
        tid = _canonical(tid)
        if self._conn().execute(f"UPDATE tenants SET {column} = ? WHERE id = ?", (value, tid)).rowcount == 0:
            raise TenantNotFound(tid)
        tenant = self.get(tid)
        assert tenant is not None
        return tenant

    def disable(self, tenant_id: str) -> Tenant:
        return self._set(tenant_id, "enabled", 0)

    def enable(self, tenant_id: str) -> Tenant:
        return self._set(tenant_id, "enabled", 1)

    def rotate_key(self, tenant_id: str) -> Tenant:
        return self._set(tenant_id, "key", generate_key())


class DynamoDBTenantRegistry:
    """Tenants in the single DPMSF DynamoDB table (``pk="tenant#<uuid>"``, ``sk="tenant"``); boto3 imported lazily."""

    def __init__(self, table_name: str, *, client: Any = None, endpoint_url: str | None = None) -> None:
        self.table_name = table_name
        self._client = dynamodb_client(client, endpoint_url)

    @staticmethod
    def _key(tid: str) -> dict[str, Any]:
        return {"pk": {"S": f"tenant#{tid}"}, "sk": {"S": "tenant"}}

    @staticmethod
    def _tenant(item: dict[str, Any]) -> Tenant:
        return Tenant(
            id=item["id"]["S"],
            name=item.get("name", {}).get("S", ""),
            key=item["key"]["S"],
            enabled=item["enabled"]["BOOL"],
            admin=item.get("admin", {}).get("BOOL", False),
        )

    def add(self, name: str = "", tenant_id: str | None = None, key: str | None = None, admin: bool = False) -> Tenant:
        tenant = _new_tenant(name, tenant_id, key, admin)
        item = {
            **self._key(tenant.id),
            "id": {"S": tenant.id},
            "name": {"S": tenant.name},
            "key": {"S": tenant.key},
            "enabled": {"BOOL": True},
            "admin": {"BOOL": tenant.admin},
            "created_at": {"N": repr(time.time())},
        }
        client = self._client
        try:
            client.put_item(TableName=self.table_name, Item=item, ConditionExpression="attribute_not_exists(pk)")
        except client.exceptions.ConditionalCheckFailedException:
            raise _exists(tenant.id) from None
        return tenant

    def get(self, tenant_id: str) -> Tenant | None:
        answer = self._client.get_item(
            TableName=self.table_name, Key=self._key(_canonical(tenant_id)), ConsistentRead=True
        )
        return self._tenant(answer["Item"]) if "Item" in answer else None

    def list(self) -> list[Tenant]:
        items: list[dict[str, Any]] = []
        pages = self._client.get_paginator("scan").paginate(
            TableName=self.table_name,
            FilterExpression="sk = :sk AND begins_with(pk, :prefix)",
            ExpressionAttributeValues={":sk": {"S": "tenant"}, ":prefix": {"S": "tenant#"}},
            ConsistentRead=True,
        )
        for page in pages:
            items.extend(page.get("Items", []))
        items.sort(key=lambda item: (float(item.get("created_at", {}).get("N", "0")), item["id"]["S"]))
        return [self._tenant(item) for item in items]

    def _set(self, tid: str, attribute: str, value: dict[str, Any]) -> Tenant:
        tid = _canonical(tid)
        client = self._client
        try:
            answer = client.update_item(
                TableName=self.table_name,
                Key=self._key(tid),
                UpdateExpression="SET #attr = :value",
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeNames={"#attr": attribute},
                ExpressionAttributeValues={":value": value},
                ReturnValues="ALL_NEW",
            )
        except client.exceptions.ConditionalCheckFailedException:
            raise TenantNotFound(tid) from None
        return self._tenant(answer["Attributes"])

    def disable(self, tenant_id: str) -> Tenant:
        return self._set(tenant_id, "enabled", {"BOOL": False})

    def enable(self, tenant_id: str) -> Tenant:
        return self._set(tenant_id, "enabled", {"BOOL": True})

    def rotate_key(self, tenant_id: str) -> Tenant:
        return self._set(tenant_id, "key", {"S": generate_key()})


def make_tenant_registry(url: str) -> TenantRegistry:
    """The tenant registry named by ``url`` (see the module docstring)."""
    kind, target, options = parse_store_url(url, "Tenant registry")
    if kind == "memory":
        return MemoryTenantRegistry()
    if kind == "sqlite":
        return SQLiteTenantRegistry(target)
    return DynamoDBTenantRegistry(target, endpoint_url=options.get("endpoint_url"))


_UNKNOWN = b""  # cached "no such tenant"
_DISABLED = b"-"  # cached "tenant disabled"


def key_lookup(
    registry: TenantRegistry, cache_seconds: float = 5, clock: Callable[[], float] = time.monotonic
) -> Callable[[str], bytes | None]:
    """A ``key_for`` callback for TokenVerifier that caches answers briefly, so a hot path rarely hits the registry.

    It returns the tenant's key bytes, None for an unknown tenant, and raises Forbidden for a disabled one.
    A disabled, enabled or rotated tenant is seen within ``cache_seconds``.
    """
    cache: dict[str, tuple[float, bytes]] = {}
    lock = threading.Lock()

    def key_for(tid: str) -> bytes | None:
        now = clock()
        hit = cache.get(tid)
        if hit is None or hit[0] <= now:
            tenant = registry.get(tid)
            value = _UNKNOWN if tenant is None else decode_key(tenant.key) if tenant.enabled else _DISABLED
            with lock:
                if len(cache) >= 10_000:
                    cache.clear()
                cache[tid] = hit = (now + cache_seconds, value)
        value = hit[1]
        if value is _DISABLED:
            raise Forbidden("tenant disabled")
        return value or None

    return key_for
