"""Plugin change notifications on a real PostgreSQL server: another process's announcement reaches the listener at
once, its own does not; a dropped connection is taken up again and what may have been missed is re-listed; a
server that cannot be reached leaves the listener retrying, its error without the password. Which server carries
them follows the settings (``DPMSF_NOTIFY``, else the stores' postgresql:// URL, ``off``)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from ports import free_port

from dpmsf_core.config import Settings
from dpmsf_core.errors import ConfigError
from dpmsf_core.sources.changes import APPLICATION_NAME, PluginChanges, notify_url

pytest_plugins = ["pgserver"]


class Calls:
    """``on_change`` for a listener: counts calls, and lets a test wait for the next one."""

    def __init__(self) -> None:
        self.count = 0
        self._cond = threading.Condition()

    def __call__(self) -> None:
        with self._cond:
            self.count += 1
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 5.0) -> float:
        start = time.monotonic()
        with self._cond:
            assert self._cond.wait_for(lambda: self.count >= count, timeout), f"{self.count} calls, not {count}"
        return time.monotonic() - start


@pytest.fixture
def listener(pg_url: str) -> Iterator[tuple[PluginChanges, Calls]]:
    calls = Calls()
    changes = PluginChanges(pg_url, calls, retry_seconds=0.2)
    changes.ensure_started()
    calls.wait_for(1)  # connected: it re-lists once for what it may have missed
    yield changes, calls
    changes.close()


def wait(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_another_replicas_change_arrives_and_its_own_does_not(
    listener: tuple[PluginChanges, Calls], pg_url: str
) -> None:
    changes, calls = listener
    assert changes.listening and changes.status()["listening"] is True
    other = PluginChanges(pg_url, lambda: None)
    assert other.announce("hello", "put")
    took = calls.wait_for(2)
    assert took < 1.0 and changes.received == 1
    assert changes.announce("hello", "put")  # its own: already reloaded where it was made
    time.sleep(0.5)
    assert calls.count == 2


def test_a_dropped_connection_is_taken_up_again(listener: tuple[PluginChanges, Calls], pg_url: str) -> None:
    import psycopg

    changes, calls = listener
    with psycopg.connect(pg_url, autocommit=True) as conn:
        killed = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s AND datname = current_database()",
            (APPLICATION_NAME,),
        ).fetchall()
    assert killed == [(True,)]
    calls.wait_for(2)  # reconnected, and re-listed once for what it may have missed
    wait(lambda: changes.listening)
    PluginChanges(pg_url, lambda: None).announce("after", "put")
    calls.wait_for(3)


def test_an_unreachable_server_is_retried_and_never_shows_the_password() -> None:
    password = "pw-" + uuid.uuid4().hex
    calls = Calls()
    changes = PluginChanges(f"postgresql://u:{password}@127.0.0.1:{free_port()}/db", calls, retry_seconds=0.1)
    changes.ensure_started()
    try:
        wait(lambda: changes.last_error is not None)
        assert not changes.listening and calls.count == 0
        assert password not in str(changes.status())
        assert changes.announce("x", "put") is False  # the upload is stored all the same; others poll
    finally:
        changes.close()


def test_which_server_carries_the_notifications() -> None:
    pg = "postgresql://u:p@db:5432/dpmsf"
    other = "postgresql://u:p@other:5432/n"

    def url(**env: str) -> str | None:
        return notify_url(Settings.from_env(env, dotenv=None))

    assert url() is None  # SQLite stores: nothing to carry them, polling only
    assert url(DPMSF_TENANTS=pg) == url(DPMSF_STORE=pg) == url(DPMSF_REPLAY_STORE=pg) == pg
    assert url(DPMSF_STORE=pg, DPMSF_NOTIFY=other) == other
    assert url(DPMSF_STORE=pg, DPMSF_NOTIFY="off") is None
    with pytest.raises(ConfigError, match="DPMSF_NOTIFY"):
        url(DPMSF_NOTIFY="redis://x")
