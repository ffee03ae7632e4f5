"""The one copy of the plumbing every backend needs: URLs, a SQLite connection per thread, AWS and Firestore clients,
a PostgreSQL connection pool per process.

Used by the document store, the replay store, the tenant registry, the upload stores and the S3 plugin source.
Nothing here imports boto3, google-cloud-firestore or psycopg until a client is asked for.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import ConfigError

if TYPE_CHECKING:
    import sqlite3

__all__ = [
    "BackendURL",
    "BackendURLError",
    "FirestorePerProcess",
    "PostgresPerProcess",
    "SQLitePerThread",
    "aws_client",
    "aws_error",
    "aws_error_code",
    "firestore_id",
    "firestore_no_document",
    "parse_backend_url",
    "postgres_ignore_exists",
    "postgres_ping",
    "redact",
]

# -- backend URLs --------------------------------------------------------------------------------------------------

_FORMS = {
    "memory": "memory",
    "sqlite": "sqlite:///path/to/file.db",
    "dynamodb": "dynamodb://table-name",
    "firestore": "firestore://collection",
    "postgresql": "postgresql://user:password@host:5432/dbname",
}
_FIRESTORE_COLLECTION = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}$")
_FIRESTORE_DATABASE = re.compile(r"^(\(default\)|[a-z][a-z0-9-]{0,62})$")


class BackendURLError(ConfigError, ValueError):
    """A backend URL that names no backend: a bad setting (ConfigError), and a bad value (ValueError) for callers."""


class BackendURL(NamedTuple):
    """``kind`` is ``memory``, ``sqlite``, ``dynamodb``, ``firestore`` or ``postgresql``; ``target`` the SQLite path,
    the table name, the Firestore root collection or the whole PostgreSQL URL; ``database`` the Firestore database
    (None: ``(default)``)."""

    kind: str
    target: str = ""
    endpoint_url: str | None = None
    database: str | None = None


def parse_backend_url(url: str, what: str, kinds: Sequence[str] = ("memory", "sqlite", "dynamodb")) -> BackendURL:
    """``memory``, ``sqlite:///relative.db``, ``sqlite:////abs/path.db``, ``dynamodb://table[?endpoint_url=...]`` or
    ``firestore://collection[?database=name]`` (the project is the environment's: ``GOOGLE_CLOUD_PROJECT``) or
    ``postgresql://user:password@host:port/dbname[?sslmode=...]`` (a libpq URL; its password is never echoed; the
    host may be given as ``?host=/cloudsql/PROJECT:REGION:INSTANCE``, a Unix socket folder).

    ``what`` names the setting in the error: ``Store URL has value 'x'. Choices are: ...``.
    """
    raw = (url or "").strip() if isinstance(url, str) else ""
    if "memory" in kinds and raw == "memory":
        return BackendURL("memory")
    if "sqlite" in kinds and raw.startswith("sqlite:///") and len(raw) > len("sqlite:///"):
        return BackendURL("sqlite", raw[len("sqlite:///") :])
    from urllib.parse import parse_qs, urlsplit  # here: the default (SQLite) URLs never need it

    if "dynamodb" in kinds and raw.startswith("dynamodb://"):
        parts = urlsplit(raw)
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if parts.netloc and not parts.path and set(options) <= {"endpoint_url"}:
            return BackendURL("dynamodb", parts.netloc, options.get("endpoint_url"))
    if "firestore" in kinds and raw.startswith("firestore://"):
        parts = urlsplit(raw)
        options = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}  # '?database=': bad
        database = options.get("database")
        if (
            _FIRESTORE_COLLECTION.match(parts.netloc)
            and not re.match(r"^__.*__$", parts.netloc)  # reserved by Firestore
            and not parts.path
            and set(options) <= {"database"}
            and (database is None or _FIRESTORE_DATABASE.match(database))
        ):
            return BackendURL("firestore", parts.netloc, database=database)
    if "postgresql" in kinds and raw.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(raw)
        # the host in the URL, or as ``?host=`` (a Unix socket folder: Cloud SQL's /cloudsql/PROJECT:REGION:NAME)
        host = parts.hostname or parse_qs(parts.query).get("host")
        if host and parts.path.strip("/") and "/" not in parts.path.strip("/"):
            return BackendURL("postgresql", raw)
    choices = "|".join(_FORMS[k] for k in kinds)
    local = " (add '?endpoint_url=http://...' for a local DynamoDB)" if "dynamodb" in kinds else ""
    if "firestore" in kinds:
        local += " (Firestore: '?database=name' for a named database; the emulator from FIRESTORE_EMULATOR_HOST)"
    raise BackendURLError(f"{what} has value {redact(str(url))!r}. Choices are: {choices}{local}")


_CREDENTIALS = re.compile(r"(://[^/\s:@]*:)[^@\s/]*@")


def redact(text: str) -> str:
    """``text`` with the password of any ``scheme://user:password@`` in it replaced by ``***`` (for logs, errors)."""
    return _CREDENTIALS.sub(r"\1***@", text)


# -- SQLite --------------------------------------------------------------------------------------------------------


class SQLitePerThread:
    """One connection per thread (and per process: none is reused across ``fork()``), in autocommit mode.

    Each new connection gets ``busy_timeout`` and WAL, then runs ``setup`` (more pragmas, ``CREATE TABLE``).
    """

    def __init__(self, path: str, setup: Sequence[str] = (), *, busy_timeout_ms: int = 5000) -> None:
        self.path = path
        self.setup = tuple(setup)
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            import sqlite3  # on first use: a Lambda cold start that stores nothing never loads it

            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None)
            try:
                conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
                conn.execute("PRAGMA journal_mode=WAL")
                for statement in self.setup:
                    conn.execute(statement)
            except BaseException:
                conn.close()
                raise
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def close(self) -> None:
        """Close this thread's connection; the next use opens a new one."""
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            import sqlite3

            with contextlib.suppress(sqlite3.Error):
                conn.close()


# -- AWS -----------------------------------------------------------------------------------------------------------


def aws_client(service: str, endpoint_url: str | None = None, *, client: Any = None, **config: Any) -> Any:
    """``client`` if given, else a new boto3 client; ``config`` goes to ``botocore.config.Config`` (timeouts, retries).

    boto3 is imported here, so a cold start that never talks to AWS skips it (about 0.1 s).
    """
    if client is not None:
        return client
    import boto3

    if config:
        from botocore.config import Config

        return boto3.client(service, endpoint_url=endpoint_url, config=Config(**config))
    return boto3.client(service, endpoint_url=endpoint_url)


def aws_error(exc: BaseException) -> tuple[str, str] | None:
    """(code, message) of a botocore ClientError, e.g. ``("NoSuchKey", "...")``; None for any other exception."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and isinstance(response.get("Error"), dict):
        err = response["Error"]
        return str(err.get("Code") or ""), str(err.get("Message") or "")
    return None


def aws_error_code(exc: BaseException) -> str | None:
    """The code of a botocore ClientError (``NoSuchKey``, ``PreconditionFailed``, ``404``); None for anything else."""
    found = aws_error(exc)
    return found[0] if found else None


# -- Firestore -----------------------------------------------------------------------------------------------------

_FIRESTORE_TRANSIENT = ("ServiceUnavailable", "InternalServerError", "TooManyRequests", "Aborted", "DeadlineExceeded")


class FirestorePerProcess:
    """One google-cloud-firestore ``Client`` per process (gRPC channels do not survive ``fork()``), made on first use.

    The library is imported then, so a cold start that never touches Firestore skips it (about 0.4 s). The project
    and credentials are the environment's (``GOOGLE_CLOUD_PROJECT``, Application Default Credentials; on App Engine
    both come from the runtime); ``FIRESTORE_EMULATOR_HOST`` points every client at the emulator.
    ``options()`` are the ``retry``/``timeout`` keywords of each call: the library's default retries a refused
    connection for 300 s, so every call passes a policy that gives up after ``timeout`` seconds in all.
    """

    def __init__(self, database: str | None = None, *, client: Any = None, timeout: float = 10.0) -> None:
        self.database = database
        self.timeout = timeout
        self._given = client
        self._client: Any = None
        self._pid = 0
        self._lock = threading.Lock()
        self._options: dict[str, Any] | None = None

    def client(self) -> Any:
        """This process's client (the one given to the constructor, if any)."""
        if self._given is not None:
            return self._given
        if self._client is None or self._pid != os.getpid():
            with self._lock:
                if self._client is None or self._pid != os.getpid():
                    from google.cloud import firestore

                    self._client, self._pid = firestore.Client(database=self.database), os.getpid()
        return self._client

    def options(self) -> dict[str, Any]:
        """``retry=`` (transient errors, jittered backoff, ``timeout`` s in all) and ``timeout=`` for each call."""
        if self._options is None:
            from google.api_core import exceptions
            from google.api_core.retry import Retry, if_exception_type

            transient = if_exception_type(*(getattr(exceptions, name) for name in _FIRESTORE_TRANSIENT))
            retry = Retry(predicate=transient, initial=0.05, maximum=1.0, multiplier=2.0, timeout=self.timeout)
            self._options = {"retry": retry, "timeout": self.timeout}
        return self._options


def firestore_id(value: str) -> str:
    """``value`` as a Firestore document or collection id: ``%`` and ``/`` percent-escaped, and the forms Firestore
    reserves (``.``, ``..``, ``__x__``) escaped on their first character. One-to-one, so ids never collide."""
    escaped = value.replace("%", "%25").replace("/", "%2F")
    if escaped in (".", "..") or (escaped.startswith("__") and escaped.endswith("__")):
        escaped = f"%{ord(escaped[0]):02X}{escaped[1:]}"
    return escaped


_NO_DOCUMENT = re.compile(r"^(\d+ )?no (document|entity) to (update|delete)", re.IGNORECASE)


def firestore_no_document(exc: BaseException) -> bool:
    """True for the NotFound of a write that required an existing document; False for any other NotFound (a
    missing database is also a NotFound, and must not pass for a missing document)."""
    return type(exc).__name__ == "NotFound" and bool(_NO_DOCUMENT.match(str(getattr(exc, "message", "")) or ""))


# -- PostgreSQL ----------------------------------------------------------------------------------------------------


class PostgresPerProcess:
    """One psycopg connection pool per process (connections do not survive ``fork()``), opened on first use.

    psycopg and psycopg_pool are imported then (``pip install 'dpmsf[postgres]'``), so a deployment without a
    ``postgresql://`` URL never loads them. Connections are in autocommit: each statement of ours is one atomic
    step (a conditional insert, an update with its condition), so no transaction is ever left open. ``timeout``
    bounds both the wait for a free connection and a new connection's handshake.
    """

    def __init__(self, url: str, *, max_size: int = 8, timeout: float = 5.0) -> None:
        self.url = url
        self.max_size = max_size
        self.timeout = timeout
        self._pool: Any = None
        self._pid = 0
        self._lock = threading.Lock()

    def pool(self) -> Any:
        """This process's ``psycopg_pool.ConnectionPool``."""
        if self._pool is None or self._pid != os.getpid():
            with self._lock:
                if self._pool is None or self._pid != os.getpid():
                    from psycopg_pool import ConnectionPool

                    self._pool = ConnectionPool(
                        self.url,
                        min_size=1,
                        max_size=self.max_size,
                        timeout=self.timeout,
                        kwargs={"autocommit": True, "connect_timeout": max(2, int(self.timeout))},
                        open=True,
                        name="dpmsf",
                    )
                    self._pid = os.getpid()
                    import weakref

                    # a store dropped without close() closes its connections then, not in the pool's __del__
                    weakref.finalize(self, self._pool.close)
        return self._pool

    def connection(self) -> Any:
        """``with backend.connection() as conn:`` a pooled connection, given back afterwards."""
        return self.pool().connection()

    def close(self) -> None:
        """Close this process's pool (at shutdown; a later use opens a new one)."""
        pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            pool.close()


def postgres_ping(url: str, timeout: float = 1.0) -> None:
    """Raise unless the server at ``url`` answers ``SELECT 1`` (a fresh connection: the probe of ``/readyz``)."""
    import psycopg

    with psycopg.connect(url, connect_timeout=max(2, int(timeout)), autocommit=True) as conn:
        conn.execute("SELECT 1").fetchone()


def postgres_ignore_exists(exc: BaseException) -> bool:
    """True for the error two replicas may get when both create the same table at once (the loser's is harmless)."""
    return type(exc).__name__ in ("UniqueViolation", "DuplicateTable", "DuplicateObject")
