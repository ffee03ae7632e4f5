"""``/healthz`` and ``/readyz``: what an orchestrator (Kubernetes, Knative, Cloud Run, a load balancer) asks.

``/healthz`` says the process lives and its event loop answers: no store is touched, so a slow database never
gets a live replica restarted. ``/readyz`` says this replica can serve: the plugins are loaded (and every remote
plugin source synced once) and each configured store answers (the document store, the tenant registry, the replay
store when it is not in memory). Each store check has ``timeout`` seconds (1 s); the answer is cached for
``cache_seconds`` (1 s) and a check still running is awaited again rather than started twice, so a flood of
probes costs at most one round of checks per second and never piles up threads. The answer names each part
and says ``ok``, ``unreachable`` or ``timeout``: never a URL, a path, a password or an exception's text, which
go to the log (once per change of state, with credentials in URLs masked).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._backends import parse_backend_url, redact
from .errors import ServiceUnavailable

if TYPE_CHECKING:
    from .config import Settings
    from .loading.registry import Registry

__all__ = ["Readiness", "probe_for"]

log = logging.getLogger("dpmsf.health")

Probe = Callable[[], None]  # returns when the part answers, raises when it does not

_STORE_KINDS = ("memory", "sqlite", "dynamodb", "firestore", "postgresql")


class NotReady(Exception):
    """A part that is there but cannot serve yet (plugins not loaded, a remote source never synced)."""


def probe_for(url: str, timeout: float = 1.0) -> Probe | None:
    """A cheap check that the backend named by ``url`` answers; None for ``memory`` (always there)."""
    found = parse_backend_url(url, "Backend URL", _STORE_KINDS)
    if found.kind == "sqlite":
        return _sqlite_probe(found.target)
    if found.kind == "dynamodb":
        return _dynamodb_probe(found.target, found.endpoint_url, timeout)
    if found.kind == "firestore":
        return _firestore_probe(found.target, found.database, timeout)
    if found.kind == "postgresql":
        return _postgresql_probe(url, timeout)
    return None


def _sqlite_probe(path: str) -> Probe:
    """The file can be written, or, before its first write (stores open lazily), the folder it will be made in."""

    def probe() -> None:
        if os.path.exists(path):
            if not os.access(path, os.R_OK | os.W_OK):
                raise OSError("the SQLite file is not writable")
            import sqlite3

            conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=1.0)
            try:
                conn.execute("PRAGMA schema_version").fetchone()
            finally:
                conn.close()
            return
        folder = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(folder):  # made on first use, like the state folder
            folder = os.path.dirname(folder)
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
            raise OSError("the SQLite file cannot be created")

    return probe


def _dynamodb_probe(table: str, endpoint_url: str | None, timeout: float) -> Probe:
    client: list[Any] = []  # made on first probe (boto3 costs ~0.1 s), then kept

    def probe() -> None:
        if not client:
            from ._backends import aws_client

            client.append(
                aws_client(
                    "dynamodb",
                    endpoint_url,
                    connect_timeout=timeout,
                    read_timeout=timeout,
                    retries={"total_max_attempts": 1},
                )
            )
        client[0].describe_table(TableName=table)

    return probe


def _firestore_probe(collection: str, database: str | None, timeout: float) -> Probe:
    from ._backends import FirestorePerProcess

    firestore = FirestorePerProcess(database, timeout=timeout)

    def probe() -> None:
        firestore.client().collection(collection).document("readyz").get(**firestore.options())

    return probe


def _postgresql_probe(url: str, timeout: float) -> Probe:
    def probe() -> None:
        from ._backends import postgres_ping

        postgres_ping(url, timeout)

    return probe


class Readiness:
    """The checks behind ``/readyz``, run in a small pool of their own (a hung backend never takes the threads that
    run plugin functions), at most once per ``cache_seconds``."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        *,
        timeout: float = 1.0,
        cache_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._registry = registry
        self._settings = settings
        self._checks: dict[str, Probe] | None = None
        self._running: dict[str, concurrent.futures.Future[None]] = {}
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, str]] | None = None
        self._last_states: dict[str, str] = {}

    def _build_checks(self) -> dict[str, Probe]:
        settings = self._settings
        checks: dict[str, Probe] = {"plugins": self._plugins}
        for name, url in (
            ("store", settings.store_url),
            ("tenants", settings.tenants_url),
            ("replay", settings.replay_store),
        ):
            probe = probe_for(url, self.timeout)
            if probe is not None:
                checks[name] = probe
        return checks

    def _plugins(self) -> None:
        if self._registry.snapshot.version == 0:
            raise NotReady("plugins not loaded yet")
        for status in self._registry.source_status():
            if status.get("last_sync") is None:
                raise NotReady("a plugin source has not synced yet")

    async def states(self) -> dict[str, str]:
        """Each part's state, ``ok`` or why not; at most ``timeout`` seconds, cached ``cache_seconds``."""
        cached = self._cached
        now = self._clock()
        if cached is not None and now - cached[0] < self.cache_seconds:
            return cached[1]
        futures = self._start()
        waiting = {name: asyncio.wrap_future(f) for name, f in futures.items()}
        for future in waiting.values():  # one that ends after we stopped waiting has its error read, not reported
            future.add_done_callback(_retrieve)
        await asyncio.wait(waiting.values(), timeout=self.timeout)
        states = {name: _state(f) for name, f in waiting.items()}
        self._cached = (self._clock(), states)
        self._log_changes(states, futures)
        return states

    def _start(self) -> dict[str, concurrent.futures.Future[None]]:
        """One future per check: the one still running from an earlier probe, else a new one."""
        with self._lock:
            if self._checks is None:
                self._checks = self._build_checks()
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(len(self._checks), thread_name_prefix="dpmsf-ready")
            for name, check in self._checks.items():
                running = self._running.get(name)
                if running is None or running.done():
                    self._running[name] = self._pool.submit(check)
            return dict(self._running)

    def _log_changes(self, states: dict[str, str], futures: dict[str, concurrent.futures.Future[None]]) -> None:
        for name, state in states.items():
            if self._last_states.get(name, "ok") != state:
                if state == "ok":
                    log.info("readiness: %s is ok again", name)
                else:
                    future = futures[name]
                    error = future.exception() if future.done() else None
                    why = redact(f"{type(error).__name__}: {error}") if error is not None else "no answer in time"
                    log.warning("readiness: %s is %s (%s)", name, state, why)
        self._last_states = states

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def _state(future: asyncio.Future[None]) -> str:
    if not future.done():
        return "timeout"
    error = future.exception()
    if error is None:
        return "ok"
    return "not ready" if isinstance(error, NotReady) else "unreachable"


async def answer_ready(readiness: Readiness) -> dict[str, Any]:
    """The body of a 200 ``/readyz``; raises ServiceUnavailable (503 problem+json) naming the parts not ready."""
    states = await readiness.states()
    failing = sorted(name for name, state in states.items() if state != "ok")
    if failing:
        raise ServiceUnavailable(
            f"Not ready: {', '.join(failing)}.",
            headers={"Cache-Control": "no-store", "Retry-After": "1"},
            extra={"checks": states},
        )
    return {"status": "ready", "checks": states}
