"""Plugin changes told to every replica at once, so an upload through one is served by all within seconds.

Replicas share plugins through an S3 or Cloud Storage prefix and mirror it (``mirror.py``); each re-lists it every
``DPMSF_S3_REFRESH``/``DPMSF_GCS_REFRESH`` seconds (polling, the fallback). When a PostgreSQL server is at hand,
an upload or delete through the admin API also sends ``NOTIFY dpmsf_plugins`` after writing the object, and every
replica's listener (``LISTEN``, one connection and one thread per process) re-lists the prefix and reloads at once.

The server is ``DPMSF_NOTIFY`` (a ``postgresql://`` URL), else the first ``postgresql://`` URL among
``DPMSF_TENANTS``, ``DPMSF_STORE`` and ``DPMSF_REPLAY_STORE``; ``DPMSF_NOTIFY=off`` turns it off. A notification is
a hint, never the data: a lost one (the server restarting, the listener reconnecting) costs at most one polling
interval, and after each (re)connection the listener re-lists once, for what it may have missed.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from .._backends import redact

log = logging.getLogger("dpmsf.changes")

CHANNEL = "dpmsf_plugins"
APPLICATION_NAME = "dpmsf-plugin-changes"
_KEEPALIVE: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}


class NotifySettings(Protocol):
    """What choosing the server reads of ``config.Settings`` (the settings sit above the sources)."""

    @property
    def notify(self) -> str: ...

    @property
    def tenants(self) -> str: ...

    @property
    def store(self) -> str: ...

    @property
    def replay_store(self) -> str: ...


def notify_url(settings: NotifySettings) -> str | None:
    """The PostgreSQL server that carries change notifications, or None (polling only)."""
    if settings.notify == "off":
        return None
    if settings.notify:
        return settings.notify
    for url in (settings.tenants, settings.store, settings.replay_store):
        if url.startswith(("postgresql://", "postgres://")):
            return url
    return None


def listen(
    settings: NotifySettings, load: Callable[[], Any], serving: Callable[[], AbstractContextManager[Any]], upload: Any
) -> PluginChanges | None:
    """This process's listener, started (None without a server): it runs ``load`` (the registry's: re-list the
    sources, reload) inside ``serving()`` (the app's store for modules imported again); ``upload`` (the admin
    endpoint, if any) announces through it."""
    url = notify_url(settings)
    if url is None:
        return None

    def reload() -> None:
        with serving():
            load()

    changes = PluginChanges(url, reload)
    if upload is not None:
        upload.changes = changes
    changes.ensure_started()
    return changes


class PluginChanges:
    """Announces this process's plugin changes and listens for the others'; ``on_change`` runs in the listener's
    thread (it re-lists the shared source and reloads), never on the event loop."""

    def __init__(
        self,
        url: str,
        on_change: Callable[[], Any],
        *,
        retry_seconds: float = 1.0,
        ping_seconds: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.origin = os.urandom(8).hex()  # this process: its own announcements need no reload
        self._on_change = on_change
        self._retry = retry_seconds
        self._ping = ping_seconds
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self.listening = False
        self.received = 0
        self.last_error: str | None = None

    # -- announcing ------------------------------------------------------------------------------------------------

    def announce(self, name: str, change: str) -> bool:
        """Tell every replica that module ``name`` was ``put`` or ``deleted``; False (logged) if the server cannot
        be reached: the change is stored all the same, and the others see it at their next poll."""
        import psycopg

        payload = json.dumps({"origin": self.origin, "module": name, "change": change})
        try:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=3) as conn:
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
        except psycopg.Error as exc:
            log.warning("could not announce plugin change %s (%s): %s", name, change, redact(str(exc)))
            return False
        return True

    # -- listening -------------------------------------------------------------------------------------------------

    def ensure_started(self) -> None:
        """Start this process's listener (again after a ``fork()``: threads do not survive it)."""
        if self._pid == os.getpid() or self._stop.is_set():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._thread = threading.Thread(target=self._run, name="dpmsf-plugin-changes", daemon=True)
            self._pid = os.getpid()
            self._thread.start()

    def close(self) -> None:
        """Stop listening (at shutdown); the thread ends within about half a second."""
        self._stop.set()
        thread = self._thread
        if thread is not None and self._pid == os.getpid() and thread is not threading.current_thread():
            thread.join(timeout=3)

    def status(self) -> dict[str, Any]:
        """For ``__dir__``'s sources: whether this process listens, how many changes it heard, the last error."""
        return {
            "channel": CHANNEL,
            "listening": self.listening,
            "received": self.received,
            "last_error": self.last_error,
        }

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception as exc:  # the server went away or never came: poll meanwhile, try again
                self.listening = False
                reason = redact(f"{type(exc).__name__}: {exc}".strip())
                if reason != self.last_error:
                    log.warning("plugin change notifications paused (polling meanwhile): %s", reason)
                self.last_error = reason
            self._stop.wait(self._retry)

    def _listen(self) -> None:
        import psycopg

        options = {**_KEEPALIVE, "application_name": APPLICATION_NAME}  # named in pg_stat_activity
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5, **options) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            self.listening, self.last_error = True, None
            log.info("listening for plugin changes on PostgreSQL channel %s", CHANNEL)
            self._changed()  # whatever was announced while nobody listened
            pinged = self._clock()
            while not self._stop.is_set():
                for note in conn.notifies(timeout=0.5):
                    if self._foreign(note.payload):
                        self.received += 1
                        self._changed()
                    if self._stop.is_set():
                        break
                if self._clock() - pinged >= self._ping:  # a silent peer may be a dead one: ask
                    conn.execute("SELECT 1")
                    pinged = self._clock()

    def _foreign(self, payload: str) -> bool:
        try:
            origin = json.loads(payload).get("origin")
        except (ValueError, AttributeError):
            return True  # not ours to read: re-listing costs one listing
        return bool(origin != self.origin)

    def _changed(self) -> None:
        try:
            self._on_change()
        except Exception:  # a failed reload is the registry's to report; the listener keeps listening
            log.exception("reloading plugins after a change notification failed")
