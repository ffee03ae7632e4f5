"""The one copy of the plumbing every backend needs: URLs, a SQLite connection per thread, AWS clients and errors.

Used by the document store, the replay store, the tenant registry, the upload stores and the S3 plugin source.
Nothing here imports boto3 until a client is asked for.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .errors import ConfigError

__all__ = [
    "BackendURL",
    "BackendURLError",
    "SQLitePerThread",
    "aws_client",
    "aws_error",
    "aws_error_code",
    "parse_backend_url",
]

# -- backend URLs --------------------------------------------------------------------------------------------------

_FORMS = {"memory": "memory", "sqlite": "sqlite:///path/to/file.db", "dynamodb": "dynamodb://table-name"}


class BackendURLError(ConfigError, ValueError):
    """A backend URL that names no backend: a bad setting (ConfigError), and a bad value (ValueError) for callers."""


@dataclass(frozen=True)
class BackendURL:
    """``kind`` is ``memory``, ``sqlite`` or ``dynamodb``; ``target`` the SQLite path or the table name."""

    kind: str
    target: str = ""
    endpoint_url: str | None = None


def parse_backend_url(url: str, what: str, kinds: Sequence[str] = ("memory", "sqlite", "dynamodb")) -> BackendURL:
    """``memory``, ``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or ``dynamodb://table[?endpoint_url=...]``.

    ``what`` names the setting in the error: ``Store URL has value 'x'. Choices are: ...``.
    """
    raw = (url or "").strip() if isinstance(url, str) else ""
    if "memory" in kinds and raw == "memory":
        return BackendURL("memory")
    if "sqlite" in kinds and raw.startswith("sqlite:///") and len(raw) > len("sqlite:///"):
        return BackendURL("sqlite", raw[len("sqlite:///") :])
    if "dynamodb" in kinds and raw.startswith("dynamodb://"):
        parts = urlsplit(raw)
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if parts.netloc and not parts.path and set(options) <= {"endpoint_url"}:
            return BackendURL("dynamodb", parts.netloc, options.get("endpoint_url"))
    choices = "|".join(_FORMS[k] for k in kinds)
    local = " (add '?endpoint_url=http://...' for a local DynamoDB)" if "dynamodb" in kinds else ""
    raise BackendURLError(f"{what} has value {url!r}. Choices are: {choices}{local}")


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
