"""The per-tenant document store, on SQLite, on DynamoDB (a real moto server on 127.0.0.1), on Firestore (Google's
emulator on 127.0.0.1) and on PostgreSQL (a real server from Debian's package, tests/pgserver.py)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from motoserver import REGION, moto_server
from motoserver import client as moto_client
from ports import free_port

from dpmsf_core import store
from dpmsf_core.context import RequestInfo, reset_current, set_current
from dpmsf_core.errors import ConfigError, ServiceUnavailable, UnprocessableArguments
from dpmsf_core.store import Collection, DynamoDBStore, FirestoreStore, PostgresStore, SQLiteStore, make_store
from dpmsf_core.tenancy.quotas import QuotaExceeded
from dpmsf_core.tenancy.replay import create_dynamodb_table

ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ["firestore_emulator", "pgserver"]


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials and region, so boto3 clients built from the environment never find real ones."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def dynamodb(moto_url: str) -> Any:
    return moto_client("dynamodb", moto_url)


@pytest.fixture
def table(dynamodb: Any) -> str:
    name = f"dpmsf-{uuid.uuid4().hex[:8]}"
    create_dynamodb_table(name, client=dynamodb)
    return name


@pytest.fixture(params=["sqlite", "dynamodb", "firestore", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "sqlite":
        sqlite = SQLiteStore(tmp_path / "state" / "store.db")
        yield sqlite
        sqlite.close()
    elif request.param == "postgresql":
        postgres = PostgresStore(request.getfixturevalue("pg_url"))
        yield postgres
        postgres.close()
    elif request.param == "firestore":
        request.getfixturevalue("firestore_env")
        yield FirestoreStore("dpmsf")
    else:
        yield DynamoDBStore(request.getfixturevalue("table"), client=request.getfixturevalue("dynamodb"))


@pytest.fixture
def as_tenant() -> Iterator[Any]:
    """``with as_tenant("A"): ...`` runs code as if serving a request of tenant A."""
    import contextlib

    @contextlib.contextmanager
    def use(tenant: str | None) -> Iterator[None]:
        token = set_current(RequestInfo(method="GET", path="/", headers={}, query={}, body=b"", tenant=tenant))
        try:
            yield
        finally:
            reset_current(token)

    return use


DOC = {"title": "Write docs", "price": 12.75, "tags": ["a", "é"], "nested": {"n": [1, None, True, {"x": -0.5}]}}


def test_crud(backend: Any) -> None:
    assert backend.get("_", "things", "one") is None
    assert backend.put("_", "things", "one", DOC) == DOC
    assert backend.get("_", "things", "one") == DOC  # floats, nesting and unicode round-trip
    assert backend.put("_", "things", "one", {"title": "replaced"}) == {"title": "replaced"}
    assert backend.update("_", "things", "one", {"done": True, "title": "merged"}) == {"title": "merged", "done": True}
    assert backend.get("_", "things", "one") == {"title": "merged", "done": True}
    assert backend.update("_", "things", "missing", {"done": True}) is None
    assert backend.get("_", "things", "missing") is None  # update never creates
    assert backend.delete("_", "things", "one") is True
    assert backend.delete("_", "things", "one") is False
    assert backend.get("_", "things", "one") is None


def test_collections_are_separate(backend: Any) -> None:
    backend.put("_", "a", "same-id", {"in": "a"})
    backend.put("_", "b", "same-id", {"in": "b"})
    assert backend.get("_", "a", "same-id") == {"in": "a"}
    assert backend.list("_", "b") == ([{"in": "b"}], None)


def test_list_pages_with_cursor(backend: Any) -> None:
    ids = [f"doc-{i:02d}" for i in range(25)]
    for doc_id in random.sample(ids, len(ids)):
        backend.put("_", "pages", doc_id, {"n": doc_id})
    seen: list[str] = []
    cursor = None
    sizes = []
    while True:
        page, cursor = backend.list("_", "pages", limit=10, cursor=cursor)
        sizes.append(len(page))
        seen += [doc["n"] for doc in page]
        if cursor is None:
            break
        assert isinstance(cursor, str)
    assert sizes == [10, 10, 5]
    assert seen == ids  # stable order by id, nothing twice


def test_list_exact_multiple_has_no_empty_last_page(backend: Any) -> None:
    for i in range(4):
        backend.put("_", "pages", f"k{i}", {"i": i})
    first, cursor = backend.list("_", "pages", limit=2)
    second, last = backend.list("_", "pages", limit=2, cursor=cursor)
    assert [d["i"] for d in first + second] == [0, 1, 2, 3] and last is None
    assert backend.list("_", "empty") == ([], None)


def test_collection_api(backend: Any) -> None:
    tasks = Collection("tasks", backend=backend)
    created = tasks.create({"title": "a"})
    assert len(created["id"]) == 32 and int(created["id"], 16) >= 0
    assert tasks.get(created["id"]) == created
    assert tasks.create({"title": "b"}, id="fixed") == {"title": "b", "id": "fixed"}
    assert tasks.put("fixed", {"title": "c", "id": "ignored"}) == {"title": "c", "id": "fixed"}
    assert tasks.update("fixed", {"done": True}) == {"title": "c", "id": "fixed", "done": True}
    with pytest.raises(UnprocessableArguments, match="may not set 'id'"):
        tasks.update("fixed", {"id": "other"})
    page, cursor = tasks.list()
    assert sorted(d["id"] for d in page) == sorted([created["id"], "fixed"]) and cursor is None
    assert tasks.delete("fixed") and not tasks.delete("fixed")


def test_tenant_isolation(backend: Any, as_tenant: Any) -> None:
    tasks = Collection("tasks", backend=backend)
    with as_tenant("tenant-a"):
        mine = tasks.create({"title": "A's secret"})
    with as_tenant("tenant-b"):
        assert tasks.get(mine["id"]) is None
        assert tasks.list() == ([], None)
        assert tasks.update(mine["id"], {"title": "hijacked"}) is None
        assert tasks.delete(mine["id"]) is False
        tasks.put(mine["id"], {"title": "B's own"})  # same id, B's own document
    with as_tenant(None):  # anonymous / local / admin: the "_" tenant
        assert tasks.get(mine["id"]) is None
        tasks.create({"title": "anonymous"})
    with as_tenant("tenant-a"):
        assert tasks.get(mine["id"]) == {"title": "A's secret", "id": mine["id"]}
        assert len(tasks.list()[0]) == 1
    assert [d["title"] for d in backend.list("_", "tasks")[0]] == ["anonymous"]


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param(["not", "a", "dict"], id="list"),
        pytest.param("text", id="str"),
        pytest.param(None, id="none"),
        pytest.param({"when": object()}, id="not-json"),
        pytest.param({"s": {1, 2}}, id="set"),
        pytest.param({"x": float("nan")}, id="nan"),
        pytest.param({"s": "\ud800"}, id="lone-surrogate"),
    ],
)
def test_bad_documents_are_422(backend: Any, doc: Any) -> None:
    with pytest.raises(UnprocessableArguments) as info:
        backend.put("_", "things", "d", doc)
    assert info.value.status == 422
    with pytest.raises(UnprocessableArguments):
        Collection("things", backend=backend).create(doc)
    assert backend.list("_", "things") == ([], None)


@pytest.mark.parametrize(
    "doc_id",
    [
        pytest.param("", id="empty"),
        pytest.param("x" * 257, id="too-long"),
        pytest.param(42, id="int"),
        None,
        pytest.param("\ud800", id="lone-surrogate"),
        pytest.param("ok\udfff", id="trailing-surrogate"),
    ],
)
def test_bad_ids_are_422(backend: Any, doc_id: Any) -> None:
    for call in (
        lambda: backend.put("_", "things", doc_id, {}),
        lambda: backend.get("_", "things", doc_id),
        lambda: backend.update("_", "things", doc_id, {}),
        lambda: backend.delete("_", "things", doc_id),
    ):
        with pytest.raises(UnprocessableArguments, match="Document id"):
            call()
    assert backend.put("_", "things", "x" * 256, {}) == {}  # the longest allowed id


def test_bad_collection_cursor_and_limit_are_422(backend: Any) -> None:
    for name in ("", "has space", "slash/no", "x" * 65, "hash#no"):
        with pytest.raises(UnprocessableArguments, match="Collection name"):
            backend.put("_", name, "d", {})
    with pytest.raises(UnprocessableArguments, match="Collection name"):
        store.collection("bad name")
    for cursor in ("garbage!", "eyJ4IjogMX0", "bm90IGpzb24"):
        with pytest.raises(UnprocessableArguments, match="cursor"):
            backend.list("_", "things", cursor=cursor)
    for limit in (0, -1, 1001, "10", True):
        with pytest.raises(UnprocessableArguments, match="limit"):
            backend.list("_", "things", limit=limit)
    with pytest.raises(UnprocessableArguments, match="Changes must be a JSON object"):
        backend.update("_", "things", "d", ["x"])


def test_failed_update_leaves_the_document_unchanged(backend: Any) -> None:
    backend.put("_", "things", "d", {"a": "x" * 200_000})
    with pytest.raises(QuotaExceeded, match="bytes as JSON") as info:
        backend.update("_", "things", "d", {"b": "y" * 200_000})  # each part fits, the merge does not
    assert info.value.status == 413 and info.value.quota == "max_doc"
    assert backend.get("_", "things", "d") == {"a": "x" * 200_000}


def test_concurrent_updates_lose_nothing(backend: Any) -> None:
    backend.put("_", "things", "counter", {})

    def bump(worker: int) -> None:
        for i in range(8):
            backend.update("_", "things", "counter", {f"w{worker}": i})

    threads = [threading.Thread(target=bump, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert backend.get("_", "things", "counter") == {f"w{n}": 7 for n in range(4)}


def test_importing_the_store_leaves_boto3_and_firestore_out() -> None:
    code = (
        "import sys, dpmsf_core.store; assert 'boto3' not in sys.modules, 'boto3 imported';"
        " assert 'google.cloud.firestore' not in sys.modules, 'google-cloud-firestore imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=30)


def test_dynamodb_item_shape(table: str, dynamodb: Any) -> None:
    DynamoDBStore(table, client=dynamodb).put("tenant-1", "tasks", "t1", {"price": 0.1, "n": [1, 2]})
    item = dynamodb.get_item(TableName=table, Key={"pk": {"S": "store#tenant-1#tasks"}, "sk": {"S": "t1"}})["Item"]
    assert json.loads(item["doc"]["S"]) == {"price": 0.1, "n": [1, 2]}
    assert item["tenant"] == {"S": "tenant-1"} and item["collection"] == {"S": "tasks"}
    size = len(item["doc"]["S"]) + 100
    assert item["size"] == {"N": str(size)}
    usage = dynamodb.get_item(TableName=table, Key={"pk": {"S": "store-usage#tenant-1"}, "sk": {"S": "bytes"}})
    assert usage["Item"]["bytes"] == {"N": str(size)}  # the tenant's bytes, one atomic counter


def test_firestore_document_shape(firestore_env: str) -> None:
    from google.cloud import firestore

    FirestoreStore("dpmsf").put("tenant-1", "tasks", "t1", {"price": 0.1, "n": [[1, 2]], "big": 2**70})
    path = "dpmsf/store#tenant-1/tasks/t1"  # a subcollection per tenant and collection
    document = firestore.Client().document(path).get().to_dict()
    assert json.loads(document.pop("doc")) == {"price": 0.1, "n": [[1, 2]], "big": 2**70}  # what maps could not hold
    assert document.pop("updated_at") > 1e9
    text = json.dumps({"price": 0.1, "n": [[1, 2]], "big": 2**70}, separators=(",", ":"))
    assert document == {"id": "t1", "tenant": "tenant-1", "collection": "tasks", "size": len(text) + 100}
    usage = firestore.Client().document("dpmsf/store#tenant-1").get().to_dict()  # the tenant's bytes, one counter
    assert usage == {"stored_bytes": len(text) + 100}


def test_firestore_ids_firestore_would_refuse(firestore_env: str) -> None:
    """Ids with '/', '.', '..', '__x__' or '%' are escaped in document names, kept as given, ordered as given."""
    backend = FirestoreStore("dpmsf")
    ids = sorted(["a/b", ".", "..", "__x__", "%2F", "a%2Fb", "ü", "a"])
    for doc_id in ids:
        assert backend.put("_", "..", doc_id, {"v": doc_id}) == {"v": doc_id}  # '..' as a collection name too
    for doc_id in ids:
        assert backend.get("_", "..", doc_id) == {"v": doc_id}
    first, cursor = backend.list("_", "..", limit=5)
    rest, last = backend.list("_", "..", limit=5, cursor=cursor)
    assert [d["v"] for d in first + rest] == ids and last is None
    assert backend.update("_", "..", "a/b", {"w": 1}) == {"v": "a/b", "w": 1}
    assert backend.delete("_", "..", "__x__") and backend.get("_", "..", "__x__") is None


def every_operation(backend: Any) -> list[Callable[[], Any]]:
    """One call of each store operation on ``backend``: each must fail alike when it cannot be reached."""
    return [
        lambda: backend.put("_", "c", "d", {"a": 1}),
        lambda: backend.get("_", "c", "d"),
        lambda: backend.update("_", "c", "d", {"a": 1}),
        lambda: backend.delete("_", "c", "d"),
        lambda: backend.list("_", "c"),
    ]


def test_firestore_unreachable_is_503(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
    down = FirestoreStore("dpmsf", timeout=0.5)
    started = time.monotonic()
    for call in every_operation(down):
        with pytest.raises(ServiceUnavailable) as info:
            call()
        assert info.value.status == 503
        assert (
            info.value.detail
            == "The document store is unavailable: Firestore answered ServiceUnavailable until the 0.5 s timeout."
        )
    assert time.monotonic() - started < 10  # the library's default policy retries a refused connection for 300 s


def test_firestore_without_credentials_is_503(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No emulator, no Application Default Credentials: a 503 that says so, not a traceback."""
    for name in ("FIRESTORE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))  # no gcloud login to find
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("GCE_METADATA_HOST", f"127.0.0.1:{free_port()}")  # no metadata server either
    monkeypatch.setenv("GCE_METADATA_IP", f"127.0.0.1:{free_port()}")
    with pytest.raises(ServiceUnavailable) as info:
        FirestoreStore("dpmsf", timeout=0.5).get("_", "c", "d")
    assert info.value.detail == "The document store is unavailable: Firestore answered DefaultCredentialsError."


def test_sqlite_unreachable_is_503(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    broken = SQLiteStore(blocker / "sub" / "store.db")  # its folder can never exist, even for root
    for call in every_operation(broken):
        with pytest.raises(ServiceUnavailable) as info:
            call()
        assert info.value.status == 503


def test_sqlite_not_a_database_is_503(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    path.write_bytes(b"this is not a SQLite file" * 100)
    with pytest.raises(ServiceUnavailable):
        SQLiteStore(path).put("_", "c", "d", {"a": 1})


def test_dynamodb_unreachable_is_503(aws_env: None) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    down = DynamoDBStore("any", endpoint_url=closed, connect_timeout=0.3, read_timeout=0.5, max_attempts=1)
    started = time.monotonic()
    for call in every_operation(down):
        with pytest.raises(ServiceUnavailable, match="unavailable"):
            call()
    assert time.monotonic() - started < 10


def test_dynamodb_missing_table_is_503(dynamodb: Any) -> None:
    with pytest.raises(ServiceUnavailable, match="ResourceNotFoundException"):
        DynamoDBStore("no-such-table", client=dynamodb).put("_", "c", "d", {})


_WRITER = textwrap.dedent(
    """
    import sys
    from dpmsf_core.store import SQLiteStore

    path, worker = sys.argv[1], sys.argv[2]
    s = SQLiteStore(path, busy_timeout_ms=10000)
    for i in range(100):
        s.put("_", "shared", f"{worker}-{i:02d}", {"worker": worker, "i": i})
        s.update("_", "shared", "tally", {worker: i})
    """
)


@pytest.mark.slow
def test_sqlite_several_processes_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    shared = SQLiteStore(path)
    shared.put("_", "shared", "tally", {})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), f"w{n}"], env=env, stderr=subprocess.PIPE)
        for n in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
    docs, cursor = shared.list("_", "shared", limit=1000)
    assert cursor is None and len(docs) == 3 * 100 + 1
    assert shared.get("_", "shared", "tally") == {"w0": 99, "w1": 99, "w2": 99}  # no update was lost
    shared.close()


def test_make_store(tmp_path: Path, moto_url: str, aws_env: None, table: str) -> None:
    sqlite = make_store(f"sqlite:///{tmp_path}/made/store.db")
    assert isinstance(sqlite, SQLiteStore) and sqlite.path == f"{tmp_path}/made/store.db"
    sqlite.put("_", "c", "d", {"ok": 1})
    assert (tmp_path / "made" / "store.db").is_file()
    sqlite.close()
    dynamo = make_store(f"dynamodb://{table}?endpoint_url={moto_url}")
    assert isinstance(dynamo, DynamoDBStore)
    assert dynamo.put("_", "c", "d", {"ok": 2}) == {"ok": 2}
    for bad in (
        "",
        "memory",
        "sqlite://",
        "sqlite:///",
        "postgres://x",
        "dynamodb://",
        "dynamodb://t/x",
        "dynamodb://t?x=1",
        "firestore://",
        "firestore://c/sub",
        "firestore://c?endpoint_url=http://x",
        "firestore://c?database=",
        "firestore://c?database=UPPER",
        "firestore://__c__",
        "firestore://.",
    ):
        with pytest.raises(ConfigError, match="Store URL has value .*. Choices are: sqlite:///"):  # a ValueError too
            make_store(bad)


def test_make_store_firestore(firestore_env: str) -> None:
    made = make_store("firestore://dpmsf-store")
    assert isinstance(made, FirestoreStore) and made.collection == "dpmsf-store"
    assert made.put("_", "c", "d", {"ok": 3}) == {"ok": 3} and made.get("_", "c", "d") == {"ok": 3}
    named = make_store("firestore://dpmsf?database=(default)")
    assert isinstance(named, FirestoreStore) and named.get("_", "c", "d") is None  # another root collection


def test_settings_accept_firestore_urls_and_name_the_variable_of_a_bad_one() -> None:
    from dpmsf_core.config import Settings

    urls = {
        "DPMSF_TENANTS": "firestore://dpmsf-tenants",
        "DPMSF_REPLAY_STORE": "firestore://dpmsf-replay?database=prod-db",
        "DPMSF_STORE": "firestore://dpmsf-store",
    }
    settings = Settings.from_env(urls | {"FIRESTORE_EMULATOR_HOST": "127.0.0.1:8086"}, dotenv=None)
    assert (settings.tenants_url, settings.replay_store, settings.store_url) == tuple(urls.values())
    with pytest.raises(ConfigError, match=r"Config 'DPMSF_STORE' has value 'firestore://a/b'\. Choices are: sqlite"):
        Settings.from_env({"DPMSF_STORE": "firestore://a/b"}, dotenv=None)


def test_the_store_is_the_one_bound_to_the_context_and_none_outside(tmp_path: Path, as_tenant: Any) -> None:
    notes = store.collection("notes")
    with pytest.raises(ServiceUnavailable, match=r"outside one .* store\.using"):
        notes.list()  # no app serving a request and no store.using: no global backend to fall back on
    first, second = SQLiteStore(tmp_path / "first.db"), SQLiteStore(tmp_path / "second.db")
    try:
        with store.using(first), as_tenant("t1"):
            saved = notes.create({"text": "hi"})
            with store.using(second):
                assert notes.list() == ([], None)  # the inner binding wins, and sees none of the outer's data
                notes.put("only-second", {"text": "there"})
            assert notes.get(saved["id"]) == saved  # the outer one is back
            assert notes.get("only-second") is None
        assert first.get("t1", "notes", saved["id"]) == saved
        assert second.get("t1", "notes", "only-second") == {"id": "only-second", "text": "there"}
        with pytest.raises(ServiceUnavailable):
            notes.get(saved["id"])  # unbound again once the block ends
    finally:
        first.close()
        second.close()


def test_sqlite_store_files_are_private(tmp_path: Path) -> None:
    import stat

    store = SQLiteStore(tmp_path / "state" / "store.db")
    store.put("_", "notes", "a", {"id": "a"})
    folder = tmp_path / "state"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert modes and set(modes.values()) == {0o600}, modes
