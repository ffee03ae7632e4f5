"""The SQLite document store: one file shared by the worker processes of a machine (WAL, a connection per thread),
private (0600 in a 0700 folder)."""

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
from .validation import check_key, check_limit, decode_cursor, encode_cursor, encode_doc

log = logging.getLogger("dpmsf.store")

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

    def put(self, tenant: str, collection: str, doc_id: str, doc: dict[str, Any]) -> dict[str, Any]:
        check_key(tenant, collection, doc_id)
        text = encode_doc(doc)
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO dpmsf_store (tenant, collection, id, doc, updated_at) VALUES (?, ?, ?, ?, ?)",
                (tenant, collection, doc_id, text, time.time()),
            )
        return json.loads(text)

    def update(self, tenant: str, collection: str, doc_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        check_key(tenant, collection, doc_id)
        encode_doc(changes, "Changes")
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT doc FROM dpmsf_store WHERE tenant = ? AND collection = ? AND id = ?",
                (tenant, collection, doc_id),
            ).fetchone()
            if row is None:
                return None
            text = encode_doc({**json.loads(row[0]), **changes})
            conn.execute(
                "UPDATE dpmsf_store SET doc = ?, updated_at = ? WHERE tenant = ? AND collection = ? AND id = ?",
                (text, time.time(), tenant, collection, doc_id),
            )
        return json.loads(text)

    def delete(self, tenant: str, collection: str, doc_id: str) -> bool:
        check_key(tenant, collection, doc_id)
        with self._transaction() as conn:
            cur = conn.execute(
                "DELETE FROM dpmsf_store WHERE tenant = ? AND collection = ? AND id = ?", (tenant, collection, doc_id)
            )
        return cur.rowcount > 0

    def list(
        self, tenant: str, collection: str, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        check_key(tenant, collection)
        limit = check_limit(limit)
        after = decode_cursor(cursor)
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
        next_cursor = encode_cursor(page[-1][0]) if len(rows) > limit else None
        return [json.loads(doc) for _, doc in page], next_cursor

    def close(self) -> None:
        """Close this thread's connection."""
        self._sqlite.close()
