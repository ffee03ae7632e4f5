"""The SQLite document store: one file shared by the worker processes of a machine (WAL, a connection per thread),
private (0600 in a 0700 folder). Each tenant's stored bytes are a row of ``dpmsf_store_usage``, changed in the
transaction that changes a document, so the ``store_mb`` quota costs one indexed read per write."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

from .._backends import SQLitePerThread
from ..errors import ServiceUnavailable
from ..tenancy.quotas import Quotas
from .validation import (
    DOC_OVERHEAD,
    MAX_PAGE_BYTES,
    QuotaLookup,
    check_doc,
    check_key,
    check_limit,
    check_room,
    decode_cursor,
    encode_cursor,
    encode_doc,
    page_budget,
    quota_lookup,
    stored_size,
    within_page,
)

log = logging.getLogger("dpmsf.store")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS dpmsf_store (tenant TEXT NOT NULL, collection TEXT NOT NULL, id TEXT NOT NULL,"
    " doc TEXT NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (tenant, collection, id)) WITHOUT ROWID"
)
_USAGE_SCHEMA = "CREATE TABLE IF NOT EXISTS dpmsf_store_usage (tenant TEXT PRIMARY KEY, bytes INTEGER NOT NULL)"
_SIZE = f"length(CAST(doc AS BLOB)) + {DOC_OVERHEAD}"  # a stored document's ``stored_size``, read by SQLite


class SQLiteStore:
    """Documents in one SQLite file shared by the worker processes of a machine (WAL, one connection per thread)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout_ms: int = 5000,
        quotas: QuotaLookup | Quotas | None = None,
        page_bytes: int = MAX_PAGE_BYTES,
    ) -> None:
        self.path = str(path)
        self._sqlite = SQLitePerThread(self.path, [_SCHEMA, _USAGE_SCHEMA], busy_timeout_ms=busy_timeout_ms)
        self._quotas = quota_lookup(quotas)
        self.page_bytes = page_bytes
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
        check_key(tenant, collection, doc_id)
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

    @staticmethod
    def _used(conn: sqlite3.Connection, tenant: str) -> int:
        """The tenant's stored bytes; the first write of a tenant with older documents counts them once."""
        row = conn.execute("SELECT bytes FROM dpmsf_store_usage WHERE tenant = ?", (tenant,)).fetchone()
        if row is not None:
            return int(row[0])
        used = conn.execute(f"SELECT COALESCE(SUM({_SIZE}), 0) FROM dpmsf_store WHERE tenant = ?", (tenant,))
        total = int(used.fetchone()[0])
        conn.execute("INSERT INTO dpmsf_store_usage (tenant, bytes) VALUES (?, ?)", (tenant, total))
        return total

    @staticmethod
    def _size(conn: sqlite3.Connection, tenant: str, collection: str, doc_id: str) -> int:
        """The stored size of one document, 0 if there is none (SQLite reads the length, not the text)."""
        row = conn.execute(
            f"SELECT {_SIZE} FROM dpmsf_store WHERE tenant = ? AND collection = ? AND id = ?",
            (tenant, collection, doc_id),
        ).fetchone()
        return int(row[0]) if row else 0

    def _write(self, conn: sqlite3.Connection, key: tuple[str, str, str], text: str, old_size: int) -> None:
        """Store ``text`` under ``key`` if the tenant's quota has room; its usage row changes in the same
        transaction (the caller's), so a refused or failed write changes neither."""
        tenant = key[0]
        delta = stored_size(text) - old_size
        check_room(tenant, self._quotas(tenant), self._used(conn, tenant), delta)
        conn.execute(
            "INSERT OR REPLACE INTO dpmsf_store (tenant, collection, id, doc, updated_at) VALUES (?, ?, ?, ?, ?)",
            (*key, text, time.time()),
        )
        conn.execute("UPDATE dpmsf_store_usage SET bytes = bytes + ? WHERE tenant = ?", (delta, tenant))

    def put(self, tenant: str, collection: str, doc_id: str, doc: dict[str, Any]) -> dict[str, Any]:
        check_key(tenant, collection, doc_id)
        text = encode_doc(doc, max_bytes=self._quotas(tenant).max_doc)
        with self._transaction() as conn:
            self._write(conn, (tenant, collection, doc_id), text, self._size(conn, tenant, collection, doc_id))
        stored: dict[str, Any] = json.loads(text)
        return stored

    def update(self, tenant: str, collection: str, doc_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        check_key(tenant, collection, doc_id)
        max_doc = self._quotas(tenant).max_doc
        encode_doc(check_doc(changes, "Changes"), "Changes", max_bytes=max_doc)
        with self._transaction() as conn:
            row = conn.execute(
                f"SELECT doc, {_SIZE} FROM dpmsf_store WHERE tenant = ? AND collection = ? AND id = ?",
                (tenant, collection, doc_id),
            ).fetchone()
            if row is None:
                return None
            text = encode_doc({**json.loads(row[0]), **changes}, max_bytes=max_doc)
            self._write(conn, (tenant, collection, doc_id), text, int(row[1]))
        stored: dict[str, Any] = json.loads(text)
        return stored

    def delete(self, tenant: str, collection: str, doc_id: str) -> bool:
        check_key(tenant, collection, doc_id)
        with self._transaction() as conn:
            size = self._size(conn, tenant, collection, doc_id)
            if not size:
                return False
            self._used(conn, tenant)  # counted before, so the subtraction lands on a complete total
            conn.execute(
                "DELETE FROM dpmsf_store WHERE tenant = ? AND collection = ? AND id = ?", (tenant, collection, doc_id)
            )
            conn.execute("UPDATE dpmsf_store_usage SET bytes = bytes - ? WHERE tenant = ?", (size, tenant))
        return True

    def usage(self, tenant: str) -> int:
        """Bytes the tenant stores (its ``store_mb`` quota counts these): one indexed read, a write only the first
        time a tenant with documents from before the count is asked about."""
        with self._errors():
            row = self._conn().execute("SELECT bytes FROM dpmsf_store_usage WHERE tenant = ?", (tenant,)).fetchone()
        if row is not None:
            return int(row[0])
        with self._transaction() as conn:
            return self._used(conn, tenant)

    def list(
        self, tenant: str, collection: str, limit: int = 100, cursor: str | None = None, max_bytes: int | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Up to ``limit`` documents and at most ``page_bytes`` of them (at least one), read row by row: the server
        never holds more than a page (and the row after it), however large the documents."""
        check_key(tenant, collection)
        limit = check_limit(limit)
        after = decode_cursor(cursor)
        budget = page_budget(self.page_bytes, max_bytes)
        page: list[dict[str, Any]] = []
        last_id, page_bytes, more = "", 0, False
        with self._errors():
            rows = self._conn().execute(
                "SELECT id, doc FROM dpmsf_store WHERE tenant = ? AND collection = ? AND id > ? ORDER BY id LIMIT ?",
                (tenant, collection, after or "", limit + 1),
            )
            try:
                for doc_id, text in rows:
                    size = len(text.encode())
                    if len(page) == limit or not within_page(page_bytes, size, budget, len(page)):
                        more = True
                        break
                    page.append(json.loads(text))
                    last_id, page_bytes = doc_id, page_bytes + size
            finally:
                rows.close()
        return page, encode_cursor(last_id) if more else None

    def close(self) -> None:
        """Close this thread's connection."""
        self._sqlite.close()
