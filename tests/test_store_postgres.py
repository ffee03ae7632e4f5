"""What only a shared PostgreSQL store must show (the common contract runs in test_store.py and
test_store_quotas.py): replicas writing for one tenant at once never pass its quota together, each sees the others'
writes, and a server that cannot be reached is a 503 that never shows the URL's password."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from ports import free_port

from dpmsf_core.config import Settings
from dpmsf_core.errors import ConfigError, ServiceUnavailable, UnprocessableArguments
from dpmsf_core.store import PostgresStore, SQLiteStore, make_store
from dpmsf_core.tenancy.quotas import QuotaExceeded, Quotas

pytest_plugins = ["pgserver"]


def size(text_len: int) -> int:
    return text_len + 100


def test_replicas_writing_for_one_tenant_at_once_never_pass_its_quota(pg_url: str) -> None:
    quota = Quotas(store_mb=50_000 / 1024 / 1024)  # 50,000 bytes: 12 documents of 4,000 bytes and their overhead
    replicas = [PostgresStore(pg_url, quotas=quota) for _ in range(3)]  # three pools: three replicas
    doc = {"v": "x" * 3_992}  # {"v":"..."} is 4,000 bytes of JSON
    stored: list[str] = []
    refused: list[int] = []
    start = threading.Barrier(6)

    def writer(store: PostgresStore, name: str) -> None:
        start.wait()
        for i in range(10):
            try:
                store.put("T", "c", f"{name}-{i}", doc)
                stored.append(f"{name}-{i}")
            except QuotaExceeded:
                refused.append(1)

    threads = [threading.Thread(target=writer, args=(replicas[n % 3], f"w{n}")) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert len(stored) == 50_000 // size(4_000) == 12 and len(refused) == 60 - 12
        for store in replicas:  # every replica sees every acknowledged write, and the same count
            assert store.usage("T") == 12 * size(4_000)
            assert all(store.get("T", "c", name) == doc for name in stored)
        assert replicas[0].delete("T", "c", stored[0])
        assert replicas[1].usage("T") == 11 * size(4_000)
    finally:
        for store in replicas:
            store.close()


def test_concurrent_updates_from_replicas_lose_nothing(pg_url: str) -> None:
    replicas = [PostgresStore(pg_url) for _ in range(2)]
    replicas[0].put("_", "c", "counter", {})

    def bump(store: PostgresStore, worker: int) -> None:
        for i in range(8):
            store.update("_", "c", "counter", {f"w{worker}": i})

    threads = [threading.Thread(target=bump, args=(replicas[n % 2], n)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert replicas[1].get("_", "c", "counter") == {f"w{n}": 7 for n in range(4)}
    finally:
        for store in replicas:
            store.close()


def test_ids_list_in_the_same_order_as_on_sqlite_nul_included(pg_url: str, tmp_path: Path) -> None:
    """Ids are stored as their UTF-8 bytes: any character (NUL too, which PostgreSQL text refuses), and the same
    byte order as SQLite's whatever the database's locale (a collation would put 'B' after 'a')."""
    ids = ["a", "a\x00b", "a\x01", "B", "ab", "é", "z", "\U0001f600", "A b", "a/b"]
    stores = [PostgresStore(pg_url), SQLiteStore(tmp_path / "store.db")]
    try:
        listed = []
        for store in stores:
            for doc_id in ids:
                store.put("T", "c", doc_id, {"id": doc_id})
            pages, cursor = [], None
            while True:  # pages of 3: every cursor is an id, NUL included
                page, cursor = store.list("T", "c", limit=3, cursor=cursor)
                pages += [d["id"] for d in page]
                if cursor is None:
                    break
            listed.append(pages)
            assert store.get("T", "c", "a\x00b") == {"id": "a\x00b"} and store.delete("T", "c", "a\x00b")
        assert listed[0] == listed[1] == sorted(ids, key=str.encode)
    finally:
        for store in stores:
            store.close()
    with pytest.raises(UnprocessableArguments):
        PostgresStore(pg_url).put("T\x00", "c", "d", {})


def test_unreachable_server_is_503_without_the_password(caplog: pytest.LogCaptureFixture) -> None:
    password = "pw-" + uuid.uuid4().hex
    store = PostgresStore(f"postgresql://dpmsf:{password}@127.0.0.1:{free_port()}/dpmsf", timeout=1.0)
    calls: list[Any] = [
        lambda: store.get("_", "c", "d"),
        lambda: store.put("_", "c", "d", {"a": 1}),
        lambda: store.update("_", "c", "d", {"a": 2}),
        lambda: store.delete("_", "c", "d"),
        lambda: store.list("_", "c"),
        lambda: store.usage("_"),
    ]
    try:
        for call in calls:
            with pytest.raises(ServiceUnavailable) as info:
                call()
            assert info.value.status == 503 and password not in str(info.value.detail)
    finally:
        store.close()
    assert password not in caplog.text


def test_the_host_may_be_a_query_parameter_as_for_cloud_sql_sockets(pg_url: str) -> None:
    """Cloud Run reaches Cloud SQL through a socket folder: ``postgresql://u:p@/db?host=/cloudsql/P:R:I``. The same
    form with a TCP host, against the real server: accepted by the settings and served."""
    parts = urlsplit(pg_url)
    url = f"postgresql://{parts.username}:{parts.password}@{parts.path}?host={parts.hostname}&port={parts.port}"
    assert Settings.from_env({"DPMSF_STORE": url, "DPMSF_TENANTS": url}, dotenv=None).store_url == url
    made = make_store(url)
    try:
        made.put("_", "c", "d", {"via": "query host"})
        assert PostgresStore(pg_url).get("_", "c", "d") == {"via": "query host"}
    finally:
        made.close()  # type: ignore[attr-defined]
    socket = "postgresql://u:p@/dpmsf?host=/cloudsql/project:region:instance"
    assert Settings.from_env({"DPMSF_STORE": socket}, dotenv=None).store_url == socket
    with pytest.raises(ConfigError):
        Settings.from_env({"DPMSF_STORE": "postgresql://u:p@/dpmsf"}, dotenv=None)  # no host at all


def test_make_store_and_settings_take_a_postgresql_url(pg_url: str) -> None:
    made = make_store(pg_url)
    try:
        assert isinstance(made, PostgresStore)
        made.put("_", "c", "d", {"a": 1})
        assert PostgresStore(pg_url).get("_", "c", "d") == {"a": 1}
    finally:
        made.close()  # type: ignore[attr-defined]
    assert Settings.from_env({"DPMSF_STORE": pg_url}, dotenv=None).store_url == pg_url
