"""Tenant registry: who may mint tokens (id + secret key), whether they are enabled, and who is admin.

Backends, chosen with ``make_tenant_registry(url)``:

- ``memory``                 tests and throw-away servers,
- ``sqlite:///path.db``      one machine (``sqlite:////abs/path.db`` is absolute),
- ``dynamodb://table-name``  the single DPMSF table: ``pk="tenant#<uuid>"``, ``sk="tenant"``.

``key_lookup(registry)`` turns a registry into the ``key_for`` callback of ``tokens.TokenVerifier``.

Keys at rest: the SQLite and DynamoDB registries never store a tenant key in clear. Each is wrapped with
AES-256-GCM under the server master key, the tenant id being associated data (a wrapped key copied to another
tenant's row does not unwrap), and stored as ``wrap1:`` + base64url(nonce || ciphertext || tag). A copy of the
database, a backup or a DynamoDB export then gives no tenant keys without the master key. The master key is
``DPMSF_MASTER_KEY`` (base64url of 32 bytes, e.g. from ``tokens.generate_key()``); without it, the SQLite registry
creates ``master.key`` in the state directory (0600, in a 0700 folder: ``state_files``). That keeps a laptop
working with no setup, but the file sits next to the database, so production should set ``DPMSF_MASTER_KEY``. The
DynamoDB registry requires ``DPMSF_MASTER_KEY``: a key file on one machine could not be read by the others.
A row that does not unwrap (another master key) has no usable key: its tokens fail as invalid and one log line
says why. Keys written in clear by older versions are wrapped when the SQLite registry opens, and by the
DynamoDB registry whenever it reads them.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .._backends import SQLitePerThread, aws_client, parse_backend_url
from .state_files import private_dir, private_sqlite, write_secret_once
from .tokens import TenantKey, decode_key, encode_key, generate_key

__all__ = [
    "MASTER_KEY_FILE",
    "DynamoDBTenantRegistry",
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

MASTER_KEY_FILE = "master.key"  # in the state directory, when DPMSF_MASTER_KEY is not set
_WRAP_PREFIX = "wrap1:"
_NONCE_LEN = 12


@dataclass(frozen=True)
class Tenant:
    """One tenant; ``key`` is base64url text from ``tokens.generate_key()`` and is kept out of ``repr``.

    ``key`` is ``""`` when the stored key cannot be unwrapped (the registry was written under another master
    key): such a tenant cannot mint or verify tokens until its key is rotated or the right master key is set.
    """

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
    key = encode_key(decode_key(key)) if key is not None else generate_key()  # ValueError before anything is stored
    return Tenant(
        id=tenant_id(tid) if tid is not None else str(uuid.uuid4()), key=key, enabled=True, name=name, admin=admin
    )


def _exists(tenant: str) -> ValueError:
    return ValueError(f"Tenant '{tenant}' already exists.")


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class MasterKey:
    """The server master key: wraps tenant keys for storage and unwraps them, bound to their tenant id.

    Wrapped form: ``wrap1:`` + base64url(nonce(12) || AES-256-GCM(master, nonce, key(32), aad) incl. 16-byte tag),
    ``aad = b"wrap1:" + tenant id`` (canonical UUID text). ``source`` names where the key came from, for log lines;
    the key itself is never shown.
    """

    def __init__(self, key: bytes | str, source: str = "DPMSF_MASTER_KEY") -> None:
        try:
            raw = decode_key(key)
        except ValueError:
            raise ValueError(
                f"Master key from {source} is not valid. Expected 32 bytes as base64url without padding"
                " (43 characters, e.g. from dpmsf_core.tenancy.tokens.generate_key())."
            ) from None
        self._aead = AESGCM(raw)
        self.source = source

    def __repr__(self) -> str:
        return f"MasterKey(source={self.source!r})"

    @staticmethod
    def _aad(tid: str) -> bytes:
        return _WRAP_PREFIX.encode() + tid.encode("ascii")

    def wrap(self, tid: str, key: str) -> str:
        """``key`` (generate_key() text) sealed for tenant ``tid``; every call gives a different text."""
        nonce = os.urandom(_NONCE_LEN)
        return _WRAP_PREFIX + _b64encode(nonce + self._aead.encrypt(nonce, decode_key(key), self._aad(tid)))

    def unwrap(self, tid: str, stored: str) -> str:
        """The key text sealed by ``wrap(tid, ...)``; ValueError for another master key, tenant or a damaged value."""
        if not stored.startswith(_WRAP_PREFIX):
            raise ValueError("not a wrapped key")
        try:
            raw = _b64decode(stored[len(_WRAP_PREFIX) :])
            return encode_key(self._aead.decrypt(raw[:_NONCE_LEN], raw[_NONCE_LEN:], self._aad(tid)))
        except (InvalidTag, ValueError, binascii.Error):
            raise ValueError("wrapped key does not unwrap") from None


def load_master_key(
    master_key: MasterKey | bytes | str | None, state_dir: str | os.PathLike[str] | None, *, tighten: bool = True
) -> MasterKey:
    """The given master key, else the one in ``<state_dir>/master.key``, created on first use.

    The key file is for local use: it is created 0600 in a 0700 state directory (an existing one we own is
    tightened to 0700 unless ``tighten`` is False, for a folder that is not the configured state directory), by
    whichever process gets there first; the others read the same key. With no ``state_dir`` either (an
    in-memory database), a random key lives as long as the process, like the data it protects.
    """
    if isinstance(master_key, MasterKey):
        return master_key
    if master_key is not None and master_key != "":
        return MasterKey(master_key)
    if state_dir is None:
        return MasterKey(os.urandom(32), source="a key of this process only")
    folder = private_dir(state_dir, tighten=tighten)
    path = folder / MASTER_KEY_FILE
    text = write_secret_once(path, (generate_key() + "\n").encode("ascii")).decode("ascii", "replace").strip()
    return MasterKey(text, source=f"key file {path}")


class _Sealer:
    """A registry's master key, plus one log line per tenant whose stored key cannot be used."""

    def __init__(self, master: MasterKey, where: str) -> None:
        self.master = master
        self.where = where
        self._reported: set[str] = set()

    def seal(self, tid: str, key: str) -> str:
        return self.master.wrap(tid, key)

    def open(self, tid: str, stored: str) -> tuple[str, bool]:
        """(key text or ``""`` if unusable, True when ``stored`` was clear text that should be rewritten wrapped)."""
        if stored.startswith(_WRAP_PREFIX):
            try:
                return self.master.unwrap(tid, stored), False
            except ValueError:
                self._report(tid, f"its stored key does not unwrap with the master key from {self.master.source}")
                return "", False
        try:
            return encode_key(decode_key(stored)), True  # written in clear by an older version
        except ValueError:
            self._report(tid, "its stored key is neither wrapped nor a valid key")
            return "", False

    def _report(self, tid: str, why: str) -> None:
        if tid not in self._reported:
            self._reported.add(tid)
            log.error(
                "tenant %s in %s: %s; its tokens are refused until its key is rotated"
                " (dpmsf tenant rotate-key) or the right DPMSF_MASTER_KEY is set",
                tid,
                self.where,
                why,
            )


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
        self._sealer = _Sealer(master, f"tenant registry {self.path}")
        self._conn()
        self._migrate()

    def _conn(self) -> sqlite3.Connection:
        return self._sqlite.connection()

    _CLEAR = f"SELECT id, key FROM tenants WHERE substr(key, 1, {len(_WRAP_PREFIX)}) != '{_WRAP_PREFIX}'"

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

    def _tenant(self, row: tuple[Any, ...]) -> Tenant:
        tid, stored = row[0], row[2]
        key, clear = self._sealer.open(tid, stored)
        if clear:  # written in clear since we opened (an older process still running): wrap it now
            self._conn().execute(
                "UPDATE tenants SET key = ? WHERE id = ? AND key = ?", (self._sealer.seal(tid, key), tid, stored)
            )
        return Tenant(id=tid, name=row[1], key=key, enabled=bool(row[3]), admin=bool(row[4]))

    def add(self, name: str = "", tenant_id: str | None = None, key: str | None = None, admin: bool = False) -> Tenant:
        tenant = _new_tenant(name, tenant_id, key, admin)
        try:
            self._conn().execute(
                "INSERT INTO tenants (id, name, key, enabled, admin, created_at) VALUES (?, ?, ?, 1, ?, ?)",
                (tenant.id, tenant.name, self._sealer.seal(tenant.id, tenant.key), int(tenant.admin), time.time()),
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

    def close(self) -> None:
        """Close this thread's connection."""
        self._sqlite.close()


class DynamoDBTenantRegistry:
    """Tenants in the single DPMSF DynamoDB table (``pk="tenant#<uuid>"``, ``sk="tenant"``); boto3 imported lazily.

    ``master_key`` (``DPMSF_MASTER_KEY``) is required: the table is shared by every instance, so a key file made
    on one machine would leave the others unable to read the tenants. An item whose key is still in clear (an
    older version wrote it) is rewritten wrapped the first time it is read, with a condition so a concurrent
    change is never overwritten; ``list()`` (``dpmsf tenant list``) therefore wraps them all.
    """

    def __init__(
        self,
        table_name: str,
        *,
        client: Any = None,
        endpoint_url: str | None = None,
        master_key: MasterKey | bytes | str | None = None,
    ) -> None:
        if master_key is None or master_key == "":
            raise ValueError(
                f"The DynamoDB tenant registry '{table_name}' needs DPMSF_MASTER_KEY (32 bytes as base64url,"
                " e.g. from dpmsf_core.tenancy.tokens.generate_key()): tenant keys are stored wrapped with it."
            )
        self.table_name = table_name
        self._sealer = _Sealer(load_master_key(master_key, None), f"tenant table {table_name}")
        self._client = aws_client("dynamodb", endpoint_url, client=client)

    @staticmethod
    def _key(tid: str) -> dict[str, Any]:
        return {"pk": {"S": f"tenant#{tid}"}, "sk": {"S": "tenant"}}

    def _tenant(self, item: dict[str, Any]) -> Tenant:
        tid, stored = item["id"]["S"], item["key"]["S"]
        key, clear = self._sealer.open(tid, stored)
        if clear:
            self._rewrap(tid, key, stored)
        return Tenant(
            id=tid,
            name=item.get("name", {}).get("S", ""),
            key=key,
            enabled=item["enabled"]["BOOL"],
            admin=item.get("admin", {}).get("BOOL", False),
        )

    def _rewrap(self, tid: str, key: str, stored: str) -> None:
        """Replace a clear key with its wrapped form, only if nobody changed it meanwhile."""
        client = self._client
        try:
            client.update_item(
                TableName=self.table_name,
                Key=self._key(tid),
                UpdateExpression="SET #key = :wrapped",
                ConditionExpression="#key = :clear",
                ExpressionAttributeNames={"#key": "key"},
                ExpressionAttributeValues={":wrapped": {"S": self._sealer.seal(tid, key)}, ":clear": {"S": stored}},
            )
        except client.exceptions.ConditionalCheckFailedException:
            return
        log.warning(
            "tenant table %s: wrapped the key of tenant %s, stored in clear by an older version", self.table_name, tid
        )

    def add(self, name: str = "", tenant_id: str | None = None, key: str | None = None, admin: bool = False) -> Tenant:
        tenant = _new_tenant(name, tenant_id, key, admin)
        item = {
            **self._key(tenant.id),
            "id": {"S": tenant.id},
            "name": {"S": tenant.name},
            "key": {"S": self._sealer.seal(tenant.id, tenant.key)},
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
        return self._set(_canonical(tenant_id), "enabled", {"BOOL": False})

    def enable(self, tenant_id: str) -> Tenant:
        return self._set(_canonical(tenant_id), "enabled", {"BOOL": True})

    def rotate_key(self, tenant_id: str) -> Tenant:
        tid = _canonical(tenant_id)
        return self._set(tid, "key", {"S": self._sealer.seal(tid, generate_key())})


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
    found = parse_backend_url(url, "Tenant registry URL")
    if found.kind == "memory":
        return MemoryTenantRegistry()
    if found.kind == "sqlite":
        return SQLiteTenantRegistry(found.target, master_key=master_key, state_dir=state_dir)
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
