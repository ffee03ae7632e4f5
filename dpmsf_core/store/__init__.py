"""A small per-tenant document store, so a plugin's data (the todo API's tasks) outlives requests and instances.

Plugins use collections; the tenant comes from the request being served::

    from dpmsf_core import store

    tasks = store.collection("tasks")
    task = tasks.create({"title": "write docs", "done": False})   # -> {"id": "3f2a...", "title": ..., "done": False}
    tasks.update(task["id"], {"done": True})
    page, cursor = tasks.list(limit=50)                            # pass ``cursor`` back for the next page

Documents are JSON objects (dicts) of at most ``MAX_DOC_BYTES``; ids are non-empty strings of up to 256
characters; collection names match ``[A-Za-z0-9_.-]{1,64}``. Each document belongs to one tenant: the
caller's tenant, or the literal ``"_"`` (``ANONYMOUS_TENANT``) for anonymous, local and admin use.
Invalid input raises UnprocessableArguments (422); a backend that cannot be reached raises
ServiceUnavailable (503) and writes nothing.

Backends, chosen with ``make_store(url)`` and installed by the app with ``configure(backend)``:

- ``sqlite:///path.db``      one machine, several worker processes (WAL; ``sqlite:////abs/path.db`` is absolute),
- ``dynamodb://table-name``  the single DPMSF table: ``pk="store#<tenant>#<collection>"``, ``sk=<id>``, the
                             document as a JSON string in ``doc``; add ``?endpoint_url=http://...`` for a local one.

Without ``configure()``, the first use reads ``DPMSF_STORE`` (default ``sqlite:///.dpmsf/store.db``, relative to
the working directory).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import random
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from .._backends import SQLitePerThread, aws_client, aws_error_code, parse_backend_url
from ..context import current_tenant
from ..errors import ServiceUnavailable, UnprocessableArguments

__all__ = [
    "ANONYMOUS_TENANT",
    "Collection",
    "DynamoDBStore",
    "SQLiteStore",
    "StoreBackend",
    "collection",
    "configure",
    "get_backend",
    "make_store",
]

log = logging.getLogger("dpmsf.store")

ANONYMOUS_TENANT = "_"  # the tenant of anonymous, local and admin calls (real tenants are UUIDs)
DEFAULT_URL = "sqlite:///.dpmsf/store.db"
MAX_ID_LENGTH = 256
MAX_LIMIT = 1000
MAX_DOC_BYTES = 350_000  # DynamoDB's item limit is 400 KB; the same cap everywhere keeps backends interchangeable
_COLLECTION = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class StoreBackend(Protocol):
    """Where documents live; every method is keyed by (tenant, collection, id) and validates its input."""

    def get(self, tenant: str, collection: str, doc_id: str) -> dict[str, Any] | None: ...

    def put(self, tenant: str, collection: str, doc_id: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Create or replace; returns the stored document."""
        ...

    def update(self, tenant: str, collection: str, doc_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        """Shallow-merge ``changes`` into the document; None if there is no such document."""
        ...

    def delete(self, tenant: str, collection: str, doc_id: str) -> bool:
        """True if a document was deleted."""
        ...

    def list(
        self, tenant: str, collection: str, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Up to ``limit`` documents in id order, and a cursor for the next page (None on the last one)."""
        ...


# -- validation shared by the backends ---------------------------------------------------------------------------


_NO_ID: Any = object()


def _check_key(tenant: str, collection: str, doc_id: Any = _NO_ID) -> None:
    if not isinstance(tenant, str) or not tenant or len(tenant) > 128:
        raise UnprocessableArguments(f"Store tenant {tenant!r} is not valid. Expected a non-empty string.")
    if not isinstance(collection, str) or not _COLLECTION.match(collection):
        raise UnprocessableArguments(
            f"Collection name {collection!r} is not valid. Expected 1-64 characters from [A-Za-z0-9_.-].",
            errors=[{"param": "collection", "value": str(collection)[:100]}],
        )
    if doc_id is not _NO_ID:
        _check_id(doc_id)


def _check_id(doc_id: Any) -> None:
    if not isinstance(doc_id, str) or not doc_id or len(doc_id) > MAX_ID_LENGTH:
        shown = doc_id if not isinstance(doc_id, str) else doc_id[:40] + ("..." if len(doc_id) > 40 else "")
        raise UnprocessableArguments(
            f"Document id {shown!r} is not valid. Expected a non-empty string of at most {MAX_ID_LENGTH} characters.",
            errors=[{"param": "id", "reason": "invalid document id"}],
        )


def _encode(doc: Any, what: str = "Document") -> str:
    """The document as compact JSON; 422 for anything that is not a JSON object within the size cap."""
    if not isinstance(doc, dict):
        raise UnprocessableArguments(
            f"{what} must be a JSON object (dict), not {type(doc).__name__}.", errors=[{"param": "doc"}]
        )
    try:
        text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UnprocessableArguments(f"{what} is not JSON-encodable: {exc}.", errors=[{"param": "doc"}]) from None
    if len(text.encode()) > MAX_DOC_BYTES:
        raise UnprocessableArguments(
            f"{what} is {len(text.encode())} bytes as JSON. Expected at most {MAX_DOC_BYTES}.",
            errors=[{"param": "doc"}],
        )
    return text


def _check_limit(limit: Any) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise UnprocessableArguments(
            f"limit={limit!r} is not valid. Expected an integer from 1 to {MAX_LIMIT}.", errors=[{"param": "limit"}]
        )
    return limit


def _encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": last_id}).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> str | None:
    """The id a page starts after; 422 for a cursor this store did not issue."""
    if cursor is None or cursor == "":
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        after = json.loads(raw)["after"]
    except (TypeError, ValueError, KeyError, binascii.Error):
        after = None
    if not isinstance(after, str) or not after:
        raise UnprocessableArguments(
            f"cursor {str(cursor)[:60]!r} is not valid. Pass back the cursor a previous list() returned.",
            errors=[{"param": "cursor"}],
        )
    return after


# -- SQLite ------------------------------------------------------------------------------------------------------

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS dpmsf_store (tenant TEXT NOT NULL, collection TEXT NOT NULL, id TEXT NOT NULL,"
    " doc TEXT NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (tenant, collection, id)) WITHOUT ROWID"
)


class SQLiteStore:
    """Documents in one SQLite file shared by the worker processes of a machine (WAL, one connection per thread)."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_ms: int = 5000) -> None:
        self.path = str(path)
        self._sqlite = SQLitePerThread(self.path, [_SCHEMA], busy_timeout_ms=busy_timeout_ms)
        self._write_lock = threading.Lock()
        if self.path != ":memory:" and not self.path.startswith("file:"):
            from ..tenancy.state_files import private_sqlite

            with contextlib.suppress(OSError):  # an unusable folder answers 503 on use, like a lost database
                private_sqlite(self.path)  # tenants' documents: 0600 files (and -wal/-shm) in 0700 folders

    def _conn(self) -> sqlite3.Connection:
        return self._sqlite.connection()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """sqlite3 failures (no file, locked past busy_timeout, disk full) become 503."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            log.warning("document store %s failed: %s", self.path, exc)
            self.close()  # the next call reconnects (the file may be back)
            raise ServiceUnavailable(f"The document store is unavailable: {exc}.") from None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT: a read-modify-write is atomic and a failure leaves nothing half-written.

        Writers of one process queue on a lock first: threads left to SQLite's busy handler back off for up to
        100 ms at a time, which made p99 of concurrent creates hundreds of milliseconds."""
        with self._errors(), self._write_lock:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def get(self, tenant: str, collection: str, doc_id: str) -> dict[str, Any] | None:
        _check_key(tenant, collection, doc_id)
        with self._errors():
            row = (
                self._conn()
                .execute(
                    "SELECT doc FROM dpmsf_store WHERE tenant = ? AND collection = ? AND id = ?",
                    (tenant, collection, doc_id),
                )
                .fetchone()
            )
        return json.loads(row[0]) if row else None

    def put(self, tenant: str, collection: str, doc_id: str, doc: dict[str, Any]) -> dict[str, Any]:
        _check_key(tenant, collection, doc_id)
        text = _encode(doc)
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO dpmsf_store (tenant, collection, id, doc, updated_at) VALUES (?, ?, ?, ?, ?)",
                (tenant, collection, doc_id, text, time.time()),
            )
        return json.loads(text)

    def update(self, tenant: str, collection: str, doc_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        _check_key(tenant, collection, doc_id)
        _encode(changes, "Changes")
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT doc FROM dpmsf_store WHERE tenant = ? AND collection = ? AND id = ?",
                (tenant, collection, doc_id),
            ).fetchone()
            if row is None:
                return None
            text = _encode({**json.loads(row[0]), **changes})
            conn.execute(
                "UPDATE dpmsf_store SET doc = ?, updated_at = ? WHERE tenant = ? AND collection = ? AND id = ?",
                (text, time.time(), tenant, collection, doc_id),
            )
        return json.loads(text)

    def delete(self, tenant: str, collection: str, doc_id: str) -> bool:
        _check_key(tenant, collection, doc_id)
        with self._transaction() as conn:
            cur = conn.execute(
                "DELETE FROM dpmsf_store WHERE tenant = ? AND collection = ? AND id = ?", (tenant, collection, doc_id)
            )
        return cur.rowcount > 0

    def list(
        self, tenant: str, collection: str, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        _check_key(tenant, collection)
        limit = _check_limit(limit)
        after = _decode_cursor(cursor)
        with self._errors():
            rows = (
                self._conn()
                .execute(
                    "SELECT id, doc FROM dpmsf_store WHERE tenant = ? AND collection = ? AND id > ?"
                    " ORDER BY id LIMIT ?",
                    (tenant, collection, after or "", limit + 1),
                )
                .fetchall()
            )
        page = rows[:limit]
        next_cursor = _encode_cursor(page[-1][0]) if len(rows) > limit else None
        return [json.loads(doc) for _, doc in page], next_cursor

    def close(self) -> None:
        """Close this thread's connection."""
        self._sqlite.close()


# -- DynamoDB ----------------------------------------------------------------------------------------------------


class DynamoDBStore:
    """Documents in the single DPMSF DynamoDB table; updates are optimistic (a ``ver`` token, retried)."""

    _UPDATE_ATTEMPTS = 12  # with jittered backoff: ~1 s of contention on one document before a 503

    def __init__(
        self,
        table_name: str,
        client: Any = None,
        endpoint_url: str | None = None,
        *,
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        max_attempts: int = 3,
    ) -> None:
        self.table_name = table_name
        self._client = aws_client(
            "dynamodb",
            endpoint_url,
            client=client,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": max_attempts, "mode": "standard"},
        )

    @staticmethod
    def _pk(tenant: str, collection: str) -> dict[str, str]:
        return {"S": f"store#{tenant}#{collection}"}

    def _key(self, tenant: str, collection: str, doc_id: str) -> dict[str, Any]:
        return {"pk": self._pk(tenant, collection), "sk": {"S": doc_id}}

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Connection failures, throttling and a missing table become 503 (nothing was written)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            code = aws_error_code(exc) or "ClientError"
            log.warning("document store table %s failed: %s", self.table_name, exc)
            raise ServiceUnavailable(f"The document store is unavailable: DynamoDB answered {code}.") from None
        except BotoCoreError as exc:
            log.warning("document store table %s failed: %s", self.table_name, exc)
            raise ServiceUnavailable(f"The document store is unavailable: {type(exc).__name__}.") from None

    def _item(self, tenant: str, collection: str, doc_id: str, text: str) -> dict[str, Any]:
        return {
            **self._key(tenant, collection, doc_id),
            "doc": {"S": text},
            "ver": {"S": uuid.uuid4().hex},
            "tenant": {"S": tenant},
            "collection": {"S": collection},
            "updated_at": {"N": repr(round(time.time(), 3))},
        }

    def _read(self, tenant: str, collection: str, doc_id: str) -> dict[str, Any] | None:
        with self._errors():
            answer = self._client.get_item(
                TableName=self.table_name,
                Key=self._key(tenant, collection, doc_id),
                ConsistentRead=True,
                ProjectionExpression="doc, ver",
            )
        return answer.get("Item")

    def get(self, tenant: str, collection: str, doc_id: str) -> dict[str, Any] | None:
        _check_key(tenant, collection, doc_id)
        item = self._read(tenant, collection, doc_id)
        return json.loads(item["doc"]["S"]) if item else None

    def put(self, tenant: str, collection: str, doc_id: str, doc: dict[str, Any]) -> dict[str, Any]:
        _check_key(tenant, collection, doc_id)
        text = _encode(doc)
        with self._errors():
            self._client.put_item(TableName=self.table_name, Item=self._item(tenant, collection, doc_id, text))
        return json.loads(text)

    def update(self, tenant: str, collection: str, doc_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        _check_key(tenant, collection, doc_id)
        _encode(changes, "Changes")
        for attempt in range(self._UPDATE_ATTEMPTS):
            if attempt:
                time.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))
            item = self._read(tenant, collection, doc_id)
            if item is None:
                return None
            text = _encode({**json.loads(item["doc"]["S"]), **changes})
            with self._errors():
                try:
                    self._client.put_item(
                        TableName=self.table_name,
                        Item=self._item(tenant, collection, doc_id, text),
                        ConditionExpression="ver = :ver",  # nobody wrote in between (and it was not deleted)
                        ExpressionAttributeValues={":ver": item["ver"]},
                    )
                except self._client.exceptions.ConditionalCheckFailedException:
                    continue  # read again and merge into the newer version
            return json.loads(text)
        raise ServiceUnavailable(f"Document '{doc_id}' kept changing under {self._UPDATE_ATTEMPTS} updates; retry.")

    def delete(self, tenant: str, collection: str, doc_id: str) -> bool:
        _check_key(tenant, collection, doc_id)
        with self._errors():
            answer = self._client.delete_item(
                TableName=self.table_name, Key=self._key(tenant, collection, doc_id), ReturnValues="ALL_OLD"
            )
        return bool(answer.get("Attributes"))

    def list(
        self, tenant: str, collection: str, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        _check_key(tenant, collection)
        limit = _check_limit(limit)
        after = _decode_cursor(cursor)
        items: list[dict[str, Any]] = []
        start = {"pk": self._pk(tenant, collection), "sk": {"S": after}} if after else None
        while len(items) <= limit:  # one more than asked tells whether there is a next page
            query: dict[str, Any] = {
                "TableName": self.table_name,
                "KeyConditionExpression": "pk = :pk",
                "ExpressionAttributeValues": {":pk": self._pk(tenant, collection)},
                "ProjectionExpression": "sk, doc",
                "ConsistentRead": True,
                "Limit": limit + 1 - len(items),
            }
            if start:
                query["ExclusiveStartKey"] = start
            with self._errors():
                answer = self._client.query(**query)
            items.extend(answer.get("Items", []))
            start = answer.get("LastEvaluatedKey")
            if not start:
                break
        page = items[:limit]
        next_cursor = _encode_cursor(page[-1]["sk"]["S"]) if len(items) > limit else None
        return [json.loads(item["doc"]["S"]) for item in page], next_cursor


# -- choosing and installing a backend ---------------------------------------------------------------------------


def make_store(url: str) -> StoreBackend:
    """``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or ``dynamodb://table[?endpoint_url=...]``."""
    found = parse_backend_url(url, "Store URL", ("sqlite", "dynamodb"))
    if found.kind == "sqlite":
        return SQLiteStore(found.target)
    return DynamoDBStore(found.target, endpoint_url=found.endpoint_url)


_backend: StoreBackend | None = None
_configured_url: str | None = None
_backend_lock = threading.Lock()


def configure(backend: StoreBackend | str | None) -> None:
    """Install the backend plugins use (the app calls this at start-up); a URL is passed to ``make_store``.

    ``None`` forgets it, so the next use reads ``DPMSF_STORE`` again.
    """
    global _backend, _configured_url
    with _backend_lock:
        if isinstance(backend, str):  # opened on first use: an app that never stores anything pays nothing
            _backend, _configured_url = None, backend
        else:
            _backend, _configured_url = backend, None


def get_backend() -> StoreBackend:
    """The configured backend, else one made from ``DPMSF_STORE`` (default ``sqlite:///.dpmsf/store.db``)."""
    global _backend
    backend = _backend
    if backend is None:
        with _backend_lock:
            if _backend is None:
                _backend = make_store(_configured_url or os.environ.get("DPMSF_STORE") or DEFAULT_URL)
            backend = _backend
    return backend


@dataclass(frozen=True)
class Collection:
    """A named set of documents of the calling tenant (``"_"`` outside a tenant's request)."""

    name: str
    backend: StoreBackend | None = None  # None: the configured one, looked up on each call
    tenant: str | None = None  # None: the tenant of the request being served (the sandbox passes its call's)

    def __post_init__(self) -> None:
        _check_key(self.tenant or ANONYMOUS_TENANT, self.name)

    def _where(self) -> tuple[StoreBackend, str]:
        return self.backend or get_backend(), self.tenant or current_tenant() or ANONYMOUS_TENANT

    def get(self, id: str) -> dict[str, Any] | None:
        backend, tenant = self._where()
        return backend.get(tenant, self.name, id)

    def put(self, id: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Create or replace document ``id``; the stored document carries ``"id": id``."""
        _encode(doc)
        backend, tenant = self._where()
        return backend.put(tenant, self.name, id, {"id": id, **{k: v for k, v in doc.items() if k != "id"}})

    def create(self, doc: dict[str, Any], id: str | None = None) -> dict[str, Any]:
        """Store a new document under ``id`` or a fresh uuid4 hex id, kept in the document as ``"id"``."""
        return self.put(id if id is not None else uuid.uuid4().hex, doc)

    def update(self, id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        """Shallow-merge ``changes``; None if there is no document ``id``. The id itself cannot change."""
        if isinstance(changes, dict) and "id" in changes and changes["id"] != id:
            raise UnprocessableArguments(
                f"Changes may not set 'id' to {changes['id']!r}: the document's id is {id!r}.",
                errors=[{"param": "id"}],
            )
        backend, tenant = self._where()
        return backend.update(tenant, self.name, id, changes)

    def delete(self, id: str) -> bool:
        backend, tenant = self._where()
        return backend.delete(tenant, self.name, id)

    def list(self, limit: int = 100, cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        backend, tenant = self._where()
        return backend.list(tenant, self.name, limit, cursor)


def collection(name: str) -> Collection:
    """``store.collection("tasks")``: documents of the calling tenant in collection ``name``."""
    return Collection(name)
