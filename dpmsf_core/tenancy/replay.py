"""Replay stores remember which token ids were used, so a token works exactly once.

``claim(jti, expires_at)`` is True only the first time a ``jti`` is seen; an entry may be forgotten
after ``expires_at`` because the verifier rejects the token by then anyway. Backends:

- ``memory``                 one process (a dict with a lock),
- ``sqlite:///path.db``      one machine, several processes (``sqlite:////abs/path.db`` is absolute),
- ``dynamodb://table-name``  Lambda: conditional PutItem on ``pk="token#<jti>"``, ``sk="token"``,
                             TTL attribute ``expires_at``; add ``?endpoint_url=http://...`` for a local DynamoDB,
- ``firestore://collection`` App Engine: ``create()`` of document ``token#<jti>`` in that root collection (it fails
                             when the document exists), with ``expires_at`` as a timestamp for a TTL policy
                             (``gcloud firestore fields ttls update expires_at --collection-group=COLLECTION
                             --enable-ttl``); ``?database=name`` for a named database; the project is
                             ``GOOGLE_CLOUD_PROJECT``,
- ``postgresql://user:password@host:port/dbname``  replicas anywhere (Kubernetes, Knative, Cloud Run): one
                             ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` into table ``dpmsf_used_tokens``
                             (made on first use), so of any number of replicas exactly one accepts a token;
                             expired rows are deleted now and then by whichever replica gets there
                             (``pip install 'dpmsf[postgres]'``).

The SQLite file (and its ``-wal``/``-shm``) is created 0600 in a 0700 folder (``state_files``): the ids of used
tokens are not secrets, but nobody else should be able to fill or empty the store.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from .._backends import (
    FirestorePerProcess,
    PostgresPerProcess,
    SQLitePerThread,
    aws_client,
    firestore_id,
    parse_backend_url,
    postgres_ignore_exists,
)
from .state_files import private_sqlite

__all__ = [
    "DynamoDBReplayStore",
    "FirestoreReplayStore",
    "MemoryReplayStore",
    "PostgresReplayStore",
    "ReplayStore",
    "SQLiteReplayStore",
    "create_dynamodb_table",
    "make_replay_store",
]

_PURGE_EVERY = 1024  # claims between purges of expired entries
_PURGE_SECONDS = 60.0  # ... or seconds, whichever comes first


class ReplayStore(Protocol):
    """Where used token ids are remembered until they expire."""

    def claim(self, jti: str, expires_at: float) -> bool:
        """True the first time ``jti`` is claimed, False on every later claim."""
        ...


class MemoryReplayStore:
    """Used token ids of one process; thread-safe. Every claim drops a few expired ids from the front of the
    insertion order (ids arrive in about expiry order): no pause to sweep a large table at once."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        self._clock = clock

    def claim(self, jti: str, expires_at: float) -> bool:
        with self._lock:
            self._purge(self._clock())
            if jti in self._seen:
                return False
            self._seen[jti] = expires_at
            return True

    def __len__(self) -> int:
        return len(self._seen)

    def _purge(self, now: float, budget: int = 64) -> None:
        seen = self._seen
        while seen and budget:
            jti, expires_at = next(iter(seen.items()))
            if expires_at >= now:
                seen.move_to_end(jti)  # a longer-lived id goes to the back so the expired ones behind it are reached
                return
            seen.popitem(last=False)
            budget -= 1


class SQLiteReplayStore:
    """Used token ids in a SQLite file shared by the processes of one machine (WAL, one connection per thread).

    ``state_dir`` is the configured state directory: when the file lies in it, that folder is tightened to 0700.
    """

    def __init__(
        self,
        path: str,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout_ms: int = 5000,
        state_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.path = str(path)
        self._clock = clock
        self._sqlite = SQLitePerThread(
            self.path,
            [
                "PRAGMA synchronous=NORMAL",
                "CREATE TABLE IF NOT EXISTS used_tokens (jti TEXT PRIMARY KEY, expires_at REAL NOT NULL)",
            ],
            busy_timeout_ms=busy_timeout_ms,
        )
        private_sqlite(self.path, state_dir=state_dir)  # 0600 file in 0700 folders; a bad path fails here
        self._claims = 0
        self._purged_at = clock()
        self._conn()  # create the file and table now: a bad path fails at start-up, not on first request

    def _conn(self) -> sqlite3.Connection:
        return self._sqlite.connection()

    def claim(self, jti: str, expires_at: float) -> bool:
        conn = self._conn()
        self._claims += 1
        if self._claims >= _PURGE_EVERY or self._clock() - self._purged_at > _PURGE_SECONDS:
            self.purge()
        try:
            conn.execute("INSERT INTO used_tokens (jti, expires_at) VALUES (?, ?)", (jti, float(expires_at)))
        except sqlite3.IntegrityError:
            return False
        return True

    def purge(self) -> int:
        """Forget ids whose tokens have expired; returns how many."""
        self._claims = 0
        self._purged_at = now = self._clock()
        return self._conn().execute("DELETE FROM used_tokens WHERE expires_at < ?", (now,)).rowcount

    def close(self) -> None:
        """Close this thread's connection."""
        self._sqlite.close()


class DynamoDBReplayStore:
    """Used token ids in DynamoDB (single-table design) with conditional writes; TTL deletes expired ones."""

    def __init__(self, table_name: str, *, client: Any = None, endpoint_url: str | None = None) -> None:
        self.table_name = table_name
        self._client = aws_client("dynamodb", endpoint_url, client=client)

    def claim(self, jti: str, expires_at: float) -> bool:
        client = self._client
        try:
            client.put_item(
                TableName=self.table_name,
                Item={
                    "pk": {"S": f"token#{jti}"},
                    "sk": {"S": "token"},
                    "expires_at": {"N": str(int(expires_at) + 1)},
                },
                ConditionExpression="attribute_not_exists(pk)",
            )
        except client.exceptions.ConditionalCheckFailedException:
            return False
        return True


class FirestoreReplayStore:
    """Used token ids as documents ``token#<jti>`` of a Firestore root collection, written with ``create()``: the
    write fails when the document exists, so of any number of concurrent claims exactly one wins. A TTL policy on
    ``expires_at`` (a timestamp, one second after the token's expiry) deletes them; until it does, a claim of an
    expired id answers False, which is harmless since the verifier rejects the expired token anyway.
    """

    def __init__(
        self, collection: str, *, database: str | None = None, client: Any = None, timeout: float = 10.0
    ) -> None:
        self.collection = collection
        self._firestore = FirestorePerProcess(database, client=client, timeout=timeout)

    def claim(self, jti: str, expires_at: float) -> bool:
        from google.api_core.exceptions import AlreadyExists

        when = datetime.fromtimestamp(int(expires_at) + 1, UTC)
        ref = self._firestore.client().collection(self.collection).document(f"token#{firestore_id(jti)}")
        try:
            ref.create({"expires_at": when}, **self._firestore.options())
        except AlreadyExists:  # also when a retried create had in fact landed: refusing is the safe side
            return False
        return True


class PostgresReplayStore:
    """Used token ids in a PostgreSQL table shared by every replica: the claim is one conditional insert (``ON
    CONFLICT DO NOTHING RETURNING``), atomic in the server, so exactly one of any number of concurrent claims wins.
    Every ``_PURGE_EVERY`` claims or ``_PURGE_SECONDS`` a replica deletes the expired rows (they would be refused by
    the verifier anyway; deleting them only keeps the table small)."""

    TABLE = "dpmsf_used_tokens"

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
        timeout: float = 5.0,
        backend: PostgresPerProcess | None = None,
    ) -> None:
        self._pg = backend or PostgresPerProcess(url, timeout=timeout)
        self._clock = clock
        self._ready = False  # the table exists (checked once per store, on first use: the server may start later)
        self._claims = 0
        self._purged_at = clock()

    def _ensure_table(self, conn: Any) -> None:
        if self._ready:
            return
        try:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self.TABLE} (jti TEXT PRIMARY KEY, expires_at DOUBLE PRECISION NOT NULL)"
            )
            conn.execute(f"CREATE INDEX IF NOT EXISTS {self.TABLE}_expires ON {self.TABLE} (expires_at)")
        except Exception as exc:
            if not postgres_ignore_exists(exc):  # another replica made it at the same moment: there it is
                raise
        self._ready = True

    def claim(self, jti: str, expires_at: float) -> bool:
        self._claims += 1
        if self._claims >= _PURGE_EVERY or self._clock() - self._purged_at > _PURGE_SECONDS:
            self.purge()
        with self._pg.connection() as conn:
            self._ensure_table(conn)
            row = conn.execute(
                f"INSERT INTO {self.TABLE} (jti, expires_at) VALUES (%s, %s) ON CONFLICT (jti) DO NOTHING RETURNING 1",
                (jti, float(expires_at)),
            ).fetchone()
        return row is not None

    def purge(self) -> int:
        """Forget ids whose tokens have expired; returns how many (this replica's share of the work)."""
        self._claims = 0
        self._purged_at = now = self._clock()
        with self._pg.connection() as conn:
            self._ensure_table(conn)
            return int(conn.execute(f"DELETE FROM {self.TABLE} WHERE expires_at < %s", (now,)).rowcount)

    def close(self) -> None:
        """Close this process's connection pool."""
        self._pg.close()


def create_dynamodb_table(table_name: str, *, client: Any = None, endpoint_url: str | None = None) -> None:
    """Create the single DPMSF table (pk/sk strings, on-demand, TTL on ``expires_at``) for local use and tests."""
    client = aws_client("dynamodb", endpoint_url, client=client)
    client.create_table(
        TableName=table_name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    client.get_waiter("table_exists").wait(TableName=table_name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    client.update_time_to_live(
        TableName=table_name, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
    )


def make_replay_store(url: str, *, state_dir: str | os.PathLike[str] | None = None) -> ReplayStore:
    """The replay store named by ``url`` (see the module docstring); ``state_dir`` as for SQLiteReplayStore."""
    kinds = ("memory", "sqlite", "dynamodb", "firestore", "postgresql")
    found = parse_backend_url(url, "Replay store URL", kinds)
    if found.kind == "memory":
        return MemoryReplayStore()
    if found.kind == "sqlite":
        return SQLiteReplayStore(found.target, state_dir=state_dir)
    if found.kind == "firestore":
        return FirestoreReplayStore(found.target, database=found.database)
    if found.kind == "postgresql":
        return PostgresReplayStore(found.target)
    return DynamoDBReplayStore(found.target, endpoint_url=found.endpoint_url)
