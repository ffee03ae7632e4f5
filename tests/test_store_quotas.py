"""Store quotas and bounded listings, attacked on every backend (SQLite, DynamoDB on a moto server, Firestore on its
emulator, PostgreSQL on a real server): a refused write stores nothing and counts nothing, a tenant's usage is what
it stores, and a listing never makes the server hold more than about a page, however large the documents."""

from __future__ import annotations

import base64
import json
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from motoserver import client as moto_client
from motoserver import moto_server

from dpmsf_core.errors import UnprocessableArguments
from dpmsf_core.store import Collection, DynamoDBStore, FirestoreStore, PostgresStore, SQLiteStore
from dpmsf_core.tenancy.quotas import QuotaExceeded, Quotas
from dpmsf_core.tenancy.replay import create_dynamodb_table

pytest_plugins = ["firestore_emulator", "pgserver"]

Make = Callable[..., Any]


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "dynamodb", "firestore", "postgresql"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Make:
    """``make(quotas=..., page_bytes=...)``: a fresh, empty backend of the parametrized kind."""
    if request.param == "sqlite":
        return lambda **kw: SQLiteStore(tmp_path / "state" / f"store-{uuid.uuid4().hex[:6]}.db", **kw)
    if request.param == "postgresql":
        database = request.getfixturevalue("pg_database")

        def postgres(**kw: Any) -> PostgresStore:
            made = PostgresStore(database(), **kw)  # a database each: a fresh, empty store
            request.addfinalizer(made.close)
            return made

        return postgres
    if request.param == "firestore":
        request.getfixturevalue("firestore_env")
        return lambda **kw: FirestoreStore(f"dpmsf-{uuid.uuid4().hex[:6]}", **kw)
    dynamodb = moto_client("dynamodb", request.getfixturevalue("moto_url"))

    def dynamo(**kw: Any) -> DynamoDBStore:
        table = f"dpmsf-{uuid.uuid4().hex[:8]}"
        create_dynamodb_table(table, client=dynamodb)
        return DynamoDBStore(table, client=dynamodb, **kw)

    return dynamo


def size(doc: dict[str, Any]) -> int:
    """What a document counts against ``store_mb``: its compact JSON and 100 bytes."""
    return len(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()) + 100


def everything(backend: Any, tenant: str, collection: str) -> list[dict[str, Any]]:
    docs, cursor = backend.list(tenant, collection, limit=1000)
    while cursor is not None:
        page, cursor = backend.list(tenant, collection, limit=1000, cursor=cursor)
        docs += page
    return docs


def test_a_document_over_max_doc_is_413_and_nothing_is_stored(make: Make) -> None:
    backend = make(quotas=Quotas(max_doc=1_000))
    backend.put("T", "c", "keep", {"v": "x" * 900})
    for write in (
        lambda: backend.put("T", "c", "big", {"v": "x" * 1_000}),
        lambda: backend.put("T", "c", "keep", {"v": "y" * 1_000}),  # a replacement too
        lambda: backend.update("T", "c", "keep", {"w": "y" * 200}),  # the merge passes the limit
        lambda: Collection("c", backend=backend, tenant="T").create({"v": "x" * 2_000}),
    ):
        with pytest.raises(QuotaExceeded) as info:
            write()
        assert info.value.status == 413 and info.value.quota == "max_doc"
        assert "max_doc" in info.value.detail and "DPMSF_STORE_MAX_DOC" in info.value.detail
    assert everything(backend, "T", "c") == [{"v": "x" * 900}]
    assert backend.usage("T") == size({"v": "x" * 900})


def test_store_mb_refuses_the_write_that_passes_it_and_stores_nothing(make: Make) -> None:
    quota = Quotas(store_mb=20_000 / 1024 / 1024)  # 20,000 bytes
    backend = make(quotas=lambda tenant: quota if tenant == "small" else Quotas())
    doc = {"v": "x" * 3_900}
    stored = 0
    while True:  # the attack: store until refused
        try:
            backend.put("small", "c", f"d{stored:03d}", doc)
        except QuotaExceeded as exc:
            refused = exc
            break
        stored += 1
        assert stored < 10, "the quota never refused a write"
    assert stored == 20_000 // size(doc)
    assert refused.status == 413 and refused.quota == "store_mb"
    assert "store_mb" in refused.detail and "Nothing was stored" in refused.detail
    before = backend.usage("small")
    assert before == stored * size(doc) <= 20_000
    for write in (  # nothing more gets in, by any write
        lambda: backend.put("small", "c", "another", doc),
        lambda: backend.put("small", "other", "d000", doc),
        lambda: backend.update("small", "c", "d000", {"more": "y" * 4_000}),
    ):
        with pytest.raises(QuotaExceeded):
            write()
    assert len(everything(backend, "small", "c")) == stored and everything(backend, "small", "other") == []
    assert backend.get("small", "c", "d000") == doc
    assert backend.usage("small") == before
    backend.put("big", "c", "d", {"v": "x" * 50_000})  # another tenant has its own (default) quota
    assert backend.delete("small", "c", "d000")  # deleting frees room
    backend.put("small", "c", "again", doc)
    assert backend.usage("small") == before


def test_usage_is_what_the_tenant_stores(make: Make) -> None:
    backend = make()
    backend.put("T", "a", "1", {"n": 1})
    backend.put("T", "a", "1", {"n": "replaced, longer"})
    backend.put("T", "b", "2", {"n": 2})
    backend.update("T", "b", "2", {"more": [1, 2, 3]})
    backend.put("T", "a", "3", {"n": "é" * 10})  # bytes, not characters
    backend.delete("T", "a", "3")
    assert not backend.delete("T", "a", "3")  # a second delete counts nothing
    assert backend.update("T", "a", "missing", {"x": 1}) is None
    backend.put("U", "a", "1", {"other": "tenant"})
    expected = sum(size(d) for d in everything(backend, "T", "a") + everything(backend, "T", "b"))
    assert backend.usage("T") == expected == size({"n": "replaced, longer"}) + size({"n": 2, "more": [1, 2, 3]})
    assert backend.usage("U") == size({"other": "tenant"})


def test_a_tenant_over_a_lowered_quota_may_still_shrink_and_delete(make: Make) -> None:
    quotas = {"T": Quotas()}
    backend = make(quotas=lambda tenant: quotas[tenant])
    backend.put("T", "c", "a", {"v": "x" * 10_000})
    backend.put("T", "c", "b", {"v": "x" * 10_000})
    quotas["T"] = Quotas(store_mb=5_000 / 1024 / 1024)  # the operator lowers it below what is stored
    with pytest.raises(QuotaExceeded):
        backend.put("T", "c", "new", {"v": 1})
    backend.put("T", "c", "a", {"v": "small"})  # shrinking is allowed
    assert backend.delete("T", "c", "b")
    assert backend.usage("T") == size({"v": "small"})


def test_listing_is_paged_by_bytes_and_loses_nothing(make: Make) -> None:
    backend = make(page_bytes=10_000)
    docs = {f"d{i:02d}": {"i": i, "pad": "x" * (1_000 + 700 * (i % 5))} for i in range(30)}
    for doc_id, doc in docs.items():
        backend.put("T", "c", doc_id, doc)
    seen: list[int] = []
    pages = 0
    cursor = None
    while True:
        page, cursor = backend.list("T", "c", limit=1000, cursor=cursor)
        pages += 1
        assert page, "a page is never empty while documents remain"
        assert sum(len(json.dumps(d, separators=(",", ":"))) for d in page) <= 10_000
        seen += [d["i"] for d in page]
        if cursor is None:
            break
    assert seen == list(range(30)) and pages >= 5
    assert backend.list("T", "c", limit=3)[0] == [docs["d00"], docs["d01"], docs["d02"]]  # count still limits
    lone, more = make(page_bytes=10).list("T", "empty")
    assert lone == [] and more is None


def test_a_document_larger_than_a_page_is_listed_alone(make: Make) -> None:
    backend = make(page_bytes=1_000)
    backend.put("T", "c", "a", {"v": "x" * 5_000})
    backend.put("T", "c", "b", {"v": "y"})
    first, cursor = backend.list("T", "c")
    rest, last = backend.list("T", "c", cursor=cursor)
    assert first == [{"v": "x" * 5_000}] and rest == [{"v": "y"}] and last is None


def test_listing_large_documents_holds_about_one_page_in_memory(make: Make) -> None:
    """The issue's attack, scaled down: list(limit=1000) over 340 kB documents. Before: every row was fetched and
    decoded at once (1,000 of them took the server from 165 MB to 1,463 MB); now a page stops at its byte budget."""
    backend = make()
    doc = {"v": "x" * 340_000}
    for i in range(24):  # 8 MB
        backend.put("T", "big", f"d{i:02d}", doc)
    backend.list("T", "big", limit=1000)  # warm up the client (its first call imports and caches)
    tracemalloc.start()
    try:
        page, cursor = backend.list("T", "big", limit=1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(page) == 2 and cursor is not None  # 1 MB of 340 kB documents
    assert peak < 4_000_000, f"listing held {peak / 1e6:.1f} MB for a page of {len(page)} documents"


@pytest.mark.parametrize(
    "doc_id", [pytest.param("\ud800", id="lone-high"), pytest.param("a\udc80b", id="surrogate-escape")]
)
def test_a_lone_surrogate_id_is_422_on_every_method(make: Make, doc_id: str) -> None:
    backend = make()
    for call in (
        lambda: backend.get("T", "c", doc_id),
        lambda: backend.put("T", "c", doc_id, {}),
        lambda: backend.update("T", "c", doc_id, {}),
        lambda: backend.delete("T", "c", doc_id),
    ):
        with pytest.raises(UnprocessableArguments, match="not valid"):
            call()
    with pytest.raises(UnprocessableArguments, match="lone surrogate"):
        backend.put("T", "c", "ok", {"title": doc_id})
    forged = base64.urlsafe_b64encode(json.dumps({"after": doc_id}).encode()).decode()  # a cursor made by hand
    with pytest.raises(UnprocessableArguments, match="cursor"):
        backend.list("T", "c", cursor=forged)
    assert everything(backend, "T", "c") == [] and backend.usage("T") == 0


def test_sqlite_counts_documents_an_older_version_stored(tmp_path: Path) -> None:
    """A file written before quotas existed: the first write of each tenant counts what it already stores."""
    import sqlite3

    path = tmp_path / "store.db"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE dpmsf_store (tenant TEXT NOT NULL, collection TEXT NOT NULL, id TEXT NOT NULL,"
        " doc TEXT NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (tenant, collection, id)) WITHOUT ROWID"
    )
    for i in range(3):
        old.execute(
            "INSERT INTO dpmsf_store VALUES ('T', 'c', ?, ?, 1.0)",
            (f"d{i}", json.dumps({"pad": "x" * 9_000}, separators=(",", ":"))),
        )
    old.commit()
    old.close()
    backend = SQLiteStore(path, quotas=Quotas(store_mb=30_000 / 1024 / 1024))
    assert backend.usage("T") == 3 * size({"pad": "x" * 9_000})
    with pytest.raises(QuotaExceeded):
        backend.put("T", "c", "d3", {"pad": "x" * 9_000})  # 27 kB stored before: 9 kB more passes 30,000 bytes
    assert backend.delete("T", "c", "d0")
    backend.put("T", "c", "d3", {"pad": "x" * 9_000})
    assert backend.usage("T") == sum(size(d) for d in everything(backend, "T", "c"))
    backend.close()
