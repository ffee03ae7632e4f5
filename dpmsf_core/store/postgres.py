"""The PostgreSQL document store, for replicas on any platform (Kubernetes, Knative, Cloud Run) sharing one database.

Documents are JSON text in ``dpmsf_store`` (text, not jsonb: the bytes a tenant's quota counts are the bytes stored);
ids are their UTF-8 bytes (``bytea``): listed in byte order as on the other backends, whatever the database's
locale, and an id may hold any character, NUL included, which PostgreSQL text cannot.
Each tenant's stored bytes are a row of ``dpmsf_store_usage``, changed by one conditional ``UPDATE`` (room left, or
nothing) in the transaction that changes a document, so replicas writing for one tenant at once never pass its
``store_mb`` quota together, and each write holds that row only from its last statement to its commit. A
listing page is chosen by the server (a running sum of ``octet_length(doc)``), so a replica receives only the page.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

from .._backends import PostgresPerProcess, postgres_ignore_exists, redact
from ..errors import ServiceUnavailable, UnprocessableArguments
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
)

log = logging.getLogger("dpmsf.store")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS dpmsf_store (tenant TEXT NOT NULL, collection TEXT NOT NULL,"
    " id BYTEA NOT NULL, doc TEXT NOT NULL, updated_at DOUBLE PRECISION NOT NULL,"
    " PRIMARY KEY (tenant, collection, id))",
    "CREATE TABLE IF NOT EXISTS dpmsf_store_usage (tenant TEXT PRIMARY KEY, bytes BIGINT NOT NULL)",
)
_SIZE = f"octet_length(doc) + {DOC_OVERHEAD}"  # a stored document's ``stored_size``, read by the server
_KEY = "tenant = %s AND collection = %s AND id = %s"
# The rows after ``id > cursor`` in id order, with the running byte count: the page's rows carry their document, the
# first row past the page (by bytes or by count) only its id, so its presence says "more" without sending it (a
# row is sent when the one before it fits; the first always fits).
_PAGE = (
    "SELECT id, CASE WHEN n <= %(limit)s AND (n = 1 OR running <= %(budget)s) THEN doc END FROM ("
    " SELECT id, doc, row_number() OVER w AS n, sum(octet_length(doc)) OVER w AS running"
    " FROM dpmsf_store WHERE tenant = %(tenant)s AND collection = %(collection)s AND id > %(after)s"
    " WINDOW w AS (ORDER BY id ROWS UNBOUNDED PRECEDING) ORDER BY id LIMIT %(limit)s + 1) AS rows"
    " WHERE n <= 2 OR running - octet_length(doc) <= %(budget)s ORDER BY id"
)


def _key(tenant: str, collection: str, doc_id: str) -> tuple[str, str, bytes]:
    """A document's primary key as stored: the id as its UTF-8 bytes."""
    return tenant, collection, doc_id.encode()


class PostgresStore:
    """Documents in one PostgreSQL database shared by every replica; psycopg imported on first use, a pool per
    process. Reads run in autocommit; each write is one transaction: the document first, its tenant's count last."""

    def __init__(
        self,
        url: str,
        *,
        quotas: QuotaLookup | Quotas | None = None,
        page_bytes: int = MAX_PAGE_BYTES,
        timeout: float = 5.0,
        backend: PostgresPerProcess | None = None,
    ) -> None:
        self._pg = backend or PostgresPerProcess(url, timeout=timeout)
        self._quotas = quota_lookup(quotas)
        self.page_bytes = page_bytes
        self._ready = False  # the tables exist (made on first use: the server may come up after us)

    @contextlib.contextmanager
    def _conn(self) -> Iterator[Any]:
        """A pooled connection, the tables made first; a server that cannot be reached (or a pool with no free
        connection within the timeout) becomes 503, naming the failure without the URL's password."""
        import psycopg

        try:
            with self._pg.connection() as conn:
                self._ensure_tables(conn)
                yield conn
        except psycopg.OperationalError as exc:  # also psycopg_pool.PoolTimeout
            log.warning("document store (PostgreSQL) failed: %s", redact(str(exc)))
            raise ServiceUnavailable(f"The document store is unavailable: {type(exc).__name__}.") from None
        except psycopg.DataError as exc:  # a value PostgreSQL cannot hold (a tenant name with NUL): the caller's
            raise UnprocessableArguments(f"The document store cannot store this value: {exc}.") from None

    def _ensure_tables(self, conn: Any) -> None:
        if self._ready:
            return
        for statement in _SCHEMA:
            try:
                conn.execute(statement)
            except Exception as exc:
                if not postgres_ignore_exists(exc):  # another replica made it at the same moment: there it is
                    raise
        self._ready = True

    def get(self, tenant: str, collection: str, doc_id: str) -> dict[str, Any] | None:
        check_key(tenant, collection, doc_id)
        with self._conn() as conn:
            row = conn.execute(f"SELECT doc FROM dpmsf_store WHERE {_KEY}", _key(tenant, collection, doc_id)).fetchone()
        return json.loads(row[0]) if row else None

    def _count(self, conn: Any, tenant: str, delta: int) -> None:
        """Add ``delta`` bytes to the tenant's usage in the caller's transaction, or raise QuotaExceeded (and the
        caller's write rolls back). One conditional UPDATE: the usage row is locked only from it to the commit, so
        one tenant's writes queue for that moment alone. A tenant's first write counts what it stores then."""
        quotas = self._quotas(tenant)
        for _ in range(5):  # each turn ends in an answer unless another writer changed the row in between
            row = conn.execute(
                "UPDATE dpmsf_store_usage SET bytes = bytes + %(d)s"
                " WHERE tenant = %(t)s AND (%(d)s <= 0 OR bytes + %(d)s <= %(q)s) RETURNING bytes",
                {"d": delta, "t": tenant, "q": quotas.store_bytes},
            ).fetchone()
            if row is not None:
                return
            found = conn.execute("SELECT bytes FROM dpmsf_store_usage WHERE tenant = %s", (tenant,)).fetchone()
            if found is not None:
                check_room(tenant, quotas, int(found[0]), delta)  # raises, unless room was made meanwhile
                continue
            total = conn.execute(  # this transaction's write included
                f"SELECT COALESCE(SUM({_SIZE}), 0) FROM dpmsf_store WHERE tenant = %s", (tenant,)
            ).fetchone()[0]
            check_room(tenant, quotas, int(total) - delta, delta)
            made = conn.execute(
                "INSERT INTO dpmsf_store_usage (tenant, bytes) VALUES (%s, %s) ON CONFLICT (tenant) DO NOTHING"
                " RETURNING 1",
                (tenant, int(total)),
            ).fetchone()
            if made is not None:
                return
        raise ServiceUnavailable("The document store is too busy to count this write; try again.")

    def _upsert(self, conn: Any, key: tuple[str, str, bytes], text: str) -> int:
        """Write the document (locked until the commit); the stored size it replaced, 0 for a new one."""
        for _ in range(5):
            created = conn.execute(
                "INSERT INTO dpmsf_store (tenant, collection, id, doc, updated_at) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (tenant, collection, id) DO NOTHING RETURNING 1",
                (*key, text, time.time()),
            ).fetchone()
            if created is not None:
                return 0
            old = conn.execute(f"SELECT {_SIZE} FROM dpmsf_store WHERE {_KEY} FOR UPDATE", key).fetchone()
            if old is not None:  # else deleted since the INSERT saw it: insert again
                conn.execute(
                    f"UPDATE dpmsf_store SET doc = %s, updated_at = %s WHERE {_KEY}", (text, time.time(), *key)
                )
                return int(old[0])
        raise ServiceUnavailable("The document store is too busy to write this document; try again.")

    def put(self, tenant: str, collection: str, doc_id: str, doc: dict[str, Any]) -> dict[str, Any]:
        check_key(tenant, collection, doc_id)
        text = encode_doc(doc, max_bytes=self._quotas(tenant).max_doc)
        with self._conn() as conn, conn.transaction():
            old_size = self._upsert(conn, _key(tenant, collection, doc_id), text)
            self._count(conn, tenant, stored_size(text) - old_size)
        stored: dict[str, Any] = json.loads(text)
        return stored

    def update(self, tenant: str, collection: str, doc_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        check_key(tenant, collection, doc_id)
        max_doc = self._quotas(tenant).max_doc
        encode_doc(check_doc(changes, "Changes"), "Changes", max_bytes=max_doc)
        key = _key(tenant, collection, doc_id)
        with self._conn() as conn, conn.transaction():
            row = conn.execute(f"SELECT doc, {_SIZE} FROM dpmsf_store WHERE {_KEY} FOR UPDATE", key).fetchone()
            if row is None:
                return None
            text = encode_doc({**json.loads(row[0]), **changes}, max_bytes=max_doc)
            conn.execute(f"UPDATE dpmsf_store SET doc = %s, updated_at = %s WHERE {_KEY}", (text, time.time(), *key))
            self._count(conn, tenant, stored_size(text) - int(row[1]))
        merged: dict[str, Any] = json.loads(text)
        return merged

    def delete(self, tenant: str, collection: str, doc_id: str) -> bool:
        check_key(tenant, collection, doc_id)
        with self._conn() as conn, conn.transaction():
            row = conn.execute(
                f"DELETE FROM dpmsf_store WHERE {_KEY} RETURNING {_SIZE}", _key(tenant, collection, doc_id)
            ).fetchone()
            if row is None:
                return False
            self._count(conn, tenant, -int(row[0]))
        return True

    def usage(self, tenant: str) -> int:
        """Bytes the tenant stores (its ``store_mb`` quota counts these): one indexed read."""
        with self._conn() as conn:
            row = conn.execute("SELECT bytes FROM dpmsf_store_usage WHERE tenant = %s", (tenant,)).fetchone()
            if row is None:  # nothing written yet through this store: what it holds
                row = conn.execute(
                    f"SELECT COALESCE(SUM({_SIZE}), 0) FROM dpmsf_store WHERE tenant = %s", (tenant,)
                ).fetchone()
        return int(row[0])

    def list(
        self, tenant: str, collection: str, limit: int = 100, cursor: str | None = None, max_bytes: int | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Up to ``limit`` documents and at most ``page_bytes`` of them (at least one). The server picks the page's
        rows, so this replica receives the page and one id past it, never the rest, however large the documents."""
        check_key(tenant, collection)
        limit = check_limit(limit)
        params = {
            "tenant": tenant,
            "collection": collection,
            "after": (decode_cursor(cursor) or "").encode(),
            "limit": limit,
            "budget": page_budget(self.page_bytes, max_bytes),
        }
        page: list[dict[str, Any]] = []
        last_id, more = "", False
        with self._conn() as conn:
            rows = conn.execute(_PAGE, params)
            for doc_id, text in rows:
                if text is None:
                    more = True
                    break
                page.append(json.loads(text))
                last_id = bytes(doc_id).decode()
        return page, encode_cursor(last_id) if more else None

    def close(self) -> None:
        """Close this process's connection pool."""
        self._pg.close()
