"""Tenant registries (memory, SQLite, moto DynamoDB, Firestore emulator, a real PostgreSQL server) and the cached key
lookup of the verifier."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from dpmsf_core.errors import Forbidden, Unauthorized
from dpmsf_core.tenancy.keys import MasterKey
from dpmsf_core.tenancy.replay import MemoryReplayStore, create_dynamodb_table
from dpmsf_core.tenancy.tenants import (
    DynamoDBTenantRegistry,
    MemoryTenantRegistry,
    SQLiteTenantRegistry,
    Tenant,
    TenantNotFound,
    TenantRegistry,
    key_lookup,
    make_tenant_registry,
    tenant_id,
)
from dpmsf_core.tenancy.tenants_firestore import FirestoreTenantRegistry
from dpmsf_core.tenancy.tokens import TenantKey, TokenVerifier, decode_key, generate_key, mint

pytest_plugins = ["firestore_emulator", "pgserver"]

TID = "6f1c1b1e-8a8e-4c57-9a53-0d5c6f3f4a10"
MASTER = generate_key()  # DPMSF_MASTER_KEY of the DynamoDB registries in these tests


@pytest.fixture
def table(moto_url: str, aws_env: None) -> str:
    name = f"dpmsf-{uuid.uuid4().hex[:8]}"
    create_dynamodb_table(name, endpoint_url=moto_url)
    return name


@pytest.fixture(params=["memory", "sqlite", "dynamodb", "firestore", "postgresql"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> TenantRegistry:
    if request.param == "memory":
        return MemoryTenantRegistry()
    if request.param == "postgresql":
        from dpmsf_core.tenancy.tenants_postgres import PostgresTenantRegistry

        return PostgresTenantRegistry(request.getfixturevalue("pg_url"), master_key=MASTER)
    if request.param == "sqlite":
        return SQLiteTenantRegistry(str(tmp_path / "tenants.db"))
    if request.param == "firestore":
        request.getfixturevalue("firestore_env")
        return FirestoreTenantRegistry("dpmsf", master_key=MASTER)
    return DynamoDBTenantRegistry(
        request.getfixturevalue("table"), endpoint_url=request.getfixturevalue("moto_url"), master_key=MASTER
    )


def test_add_generates_id_and_key(registry: TenantRegistry) -> None:
    tenant = registry.add(name="acme")
    assert tenant == Tenant(id=tenant.id, key=tenant.key, enabled=True, name="acme", admin=False)
    assert str(uuid.UUID(tenant.id)) == tenant.id
    assert len(decode_key(tenant.key)) == 32
    assert registry.get(tenant.id) == tenant


def test_add_with_given_id_key_and_admin(registry: TenantRegistry) -> None:
    key = generate_key()
    tenant = registry.add(name="root", tenant_id=TID.upper(), key=key, admin=True)
    assert tenant == Tenant(id=TID, key=key, enabled=True, name="root", admin=True)
    assert registry.get(TID) == registry.get(uuid.UUID(TID).hex) == tenant


def test_add_twice_is_refused(registry: TenantRegistry) -> None:
    registry.add(tenant_id=TID)
    with pytest.raises(ValueError, match=f"Tenant '{TID}' already exists."):
        registry.add(tenant_id=TID, name="again")
    assert registry.get(TID).name == ""  # type: ignore[union-attr]


def test_list_in_creation_order(registry: TenantRegistry) -> None:
    assert registry.list() == []
    added = [registry.add(name=f"t{i}") for i in range(3)]
    assert registry.list() == added


def test_disable_enable_rotate(registry: TenantRegistry) -> None:
    tenant = registry.add(name="acme")
    assert registry.disable(tenant.id) == Tenant(tenant.id, tenant.key, False, "acme")
    assert registry.get(tenant.id).enabled is False  # type: ignore[union-attr]
    assert registry.enable(tenant.id) == tenant
    rotated = registry.rotate_key(tenant.id)
    assert rotated.key != tenant.key and len(decode_key(rotated.key)) == 32
    assert registry.get(tenant.id) == rotated == Tenant(tenant.id, rotated.key, True, "acme")


def test_unknown_tenant(registry: TenantRegistry) -> None:
    stranger = str(uuid.uuid4())
    assert registry.get(stranger) is None
    for change in (registry.disable, registry.enable, registry.rotate_key):
        with pytest.raises(TenantNotFound, match=f"No tenant with id '{stranger}'."):
            change(stranger)
    assert registry.list() == []


@pytest.mark.parametrize("bad", ["", "acme", "6f1c1b1e-8a8e-4c57-9a53", "../etc/passwd"])
def test_ids_must_be_uuids(registry: TenantRegistry, bad: str) -> None:
    message = re.escape(f"Tenant id {bad!r} is not a UUID.")
    with pytest.raises(ValueError, match=message):
        registry.add(tenant_id=bad)
    for call in (registry.get, registry.disable, registry.enable, registry.rotate_key):
        with pytest.raises(ValueError, match=message):
            call(bad)


def test_bad_key_is_refused_before_storing(registry: TenantRegistry) -> None:
    with pytest.raises(ValueError, match="Tenant key"):
        registry.add(tenant_id=TID, key="too-short")
    assert registry.get(TID) is None


def test_key_is_not_in_repr() -> None:
    tenant = Tenant(id=TID, key=generate_key(), enabled=True)
    assert tenant.key not in repr(tenant) and TID in repr(tenant)


def test_tenant_id_canonical_form() -> None:
    assert tenant_id(TID.upper()) == tenant_id("{" + TID + "}") == TID


def test_sqlite_registry_persists(tmp_path: Path) -> None:
    path = str(tmp_path / "tenants.db")
    tenant = SQLiteTenantRegistry(path).add(name="kept")
    assert SQLiteTenantRegistry(path).get(tenant.id) == tenant


def test_dynamodb_item_shape(table: str, moto_url: str) -> None:
    import boto3

    tenant = DynamoDBTenantRegistry(table, endpoint_url=moto_url, master_key=MASTER).add(name="acme", tenant_id=TID)
    item = boto3.client("dynamodb", endpoint_url=moto_url).get_item(
        TableName=table, Key={"pk": {"S": f"tenant#{TID}"}, "sk": {"S": "tenant"}}
    )["Item"]
    wrapped = item["key"]["S"]
    assert wrapped.startswith("wrap1:") and tenant.key not in wrapped  # the key is stored wrapped, never in clear
    assert {k: v for k, v in item.items() if k not in ("created_at", "key")} == {
        "pk": {"S": f"tenant#{TID}"},
        "sk": {"S": "tenant"},
        "id": {"S": TID},
        "name": {"S": "acme"},
        "enabled": {"BOOL": True},
        "admin": {"BOOL": False},
    }
    assert float(item["created_at"]["N"]) > 1e9


def test_dynamodb_list_ignores_other_items(table: str, moto_url: str) -> None:
    from dpmsf_core.tenancy.replay import DynamoDBReplayStore

    registry = DynamoDBTenantRegistry(table, endpoint_url=moto_url, master_key=MASTER)
    DynamoDBReplayStore(table, endpoint_url=moto_url).claim(uuid.uuid4().hex, 4e9)
    tenant = registry.add()
    assert registry.list() == [tenant]


def test_make_tenant_registry(tmp_path: Path, table: str, moto_url: str) -> None:
    assert isinstance(make_tenant_registry("memory"), MemoryTenantRegistry)
    sqlite_registry = make_tenant_registry(f"sqlite:///{tmp_path}/t.db")
    assert isinstance(sqlite_registry, SQLiteTenantRegistry) and sqlite_registry.path == f"{tmp_path}/t.db"
    dynamo = make_tenant_registry(f"dynamodb://{table}?endpoint_url={moto_url}", master_key=MASTER)
    assert isinstance(dynamo, DynamoDBTenantRegistry) and dynamo.table_name == table
    assert dynamo.get(dynamo.add().id) is not None


def _firestore_document(collection: str, tid: str) -> dict[str, Any]:
    from google.cloud import firestore

    return firestore.Client().collection(collection).document(f"tenant#{tid}").get().to_dict()


def test_firestore_document_shape(firestore_env: str) -> None:
    tenant = FirestoreTenantRegistry("dpmsf", master_key=MASTER).add(name="acme", tenant_id=TID)
    document = _firestore_document("dpmsf", TID)
    wrapped = document.pop("key")
    assert wrapped.startswith("wrap1:") and tenant.key not in wrapped  # the key is stored wrapped, never in clear
    assert MasterKey(MASTER).unwrap(TID, wrapped) == tenant.key
    assert document.pop("created_at") > 1e9
    assert document == {"kind": "tenant", "id": TID, "name": "acme", "enabled": True, "admin": False}


def test_firestore_list_ignores_other_documents(firestore_env: str) -> None:
    from dpmsf_core.store import FirestoreStore
    from dpmsf_core.tenancy.replay import FirestoreReplayStore

    registry = FirestoreTenantRegistry("dpmsf", master_key=MASTER)
    FirestoreReplayStore("dpmsf").claim(uuid.uuid4().hex, 4e9)  # the three stores may share one root collection
    tenant = registry.add()
    FirestoreStore("dpmsf").put(tenant.id, "tasks", "t1", {"title": "x"})
    assert registry.list() == [tenant]


def test_firestore_clear_key_is_wrapped_when_read(firestore_env: str, caplog: pytest.LogCaptureFixture) -> None:
    from google.cloud import firestore

    key = generate_key()
    firestore.Client().collection("dpmsf").document(f"tenant#{TID}").set(
        {"kind": "tenant", "id": TID, "name": "old", "key": key, "enabled": True, "admin": False, "created_at": 1000.0}
    )
    registry = FirestoreTenantRegistry("dpmsf", master_key=MASTER)
    with caplog.at_level("WARNING", logger="dpmsf.tenants"):
        assert [t.key for t in registry.list()] == [key]
    stored = _firestore_document("dpmsf", TID)["key"]
    assert key not in stored and MasterKey(MASTER).unwrap(TID, stored) == key
    assert [r.getMessage() for r in caplog.records] == [
        f"tenant collection dpmsf: wrapped the key of tenant {TID}, stored in clear by an older version"
    ]
    assert registry.get(TID) == Tenant(id=TID, key=key, enabled=True, name="old")


def test_firestore_registry_requires_a_master_key(firestore_env: str) -> None:
    with pytest.raises(ValueError, match="Firestore tenant registry 'dpmsf' needs DPMSF_MASTER_KEY"):
        make_tenant_registry("firestore://dpmsf")


def test_make_tenant_registry_firestore(firestore_env: str) -> None:
    made = make_tenant_registry("firestore://dpmsf-tenants", master_key=MASTER)
    assert isinstance(made, FirestoreTenantRegistry) and made.collection == "dpmsf-tenants"
    assert made.get(made.add().id) is not None


@pytest.mark.parametrize(
    "url", ["", "postgres://x", "sqlite://", "dynamodb://", "firestore://", "firestore://a/b", "firestore://a?x=1"]
)
def test_make_tenant_registry_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"Tenant registry URL has value {url!r}. Choices are: memory|")):
        make_tenant_registry(url)


class CountingRegistry(MemoryTenantRegistry):
    """A real registry that also counts lookups, to see the cache work."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    def get(self, tenant_id: str) -> Tenant | None:
        self.gets += 1
        return super().get(tenant_id)


def test_key_lookup_answers_and_caches() -> None:
    registry = CountingRegistry()
    tenant = registry.add()
    now = [100.0]
    key_for = key_lookup(registry, cache_seconds=5, clock=lambda: now[0])
    stranger = str(uuid.uuid4())

    assert key_for(tenant.id) == TenantKey(decode_key(tenant.key), enabled=True)
    assert key_for(stranger) is None
    for _ in range(100):
        key_for(tenant.id)
        key_for(stranger)
    assert registry.gets == 2

    registry.disable(tenant.id)
    assert key_for(tenant.id) == TenantKey(decode_key(tenant.key), enabled=True)  # still cached
    now[0] += 5
    # disabled: the key is still given (the verifier checks the token with it before saying "disabled")
    assert key_for(tenant.id) == TenantKey(decode_key(tenant.key), enabled=False)
    assert key_for(tenant.id) == TenantKey(decode_key(tenant.key), enabled=False)
    assert registry.gets == 3

    registry.enable(tenant.id)
    rotated = registry.rotate_key(tenant.id)
    now[0] += 5
    assert key_for(tenant.id) == TenantKey(decode_key(rotated.key), enabled=True)


def test_key_lookup_with_verifier(registry: TenantRegistry) -> None:
    tenant = registry.add()
    verifier = TokenVerifier(key_lookup(registry, cache_seconds=0), MemoryReplayStore())
    assert verifier.verify("Bearer " + mint(tenant.id, tenant.key)).tenant == tenant.id

    registry.disable(tenant.id)
    with pytest.raises(Forbidden) as info:
        verifier.verify(mint(tenant.id, tenant.key))
    assert (info.value.status, info.value.detail) == (403, "tenant disabled")
    with pytest.raises(Unauthorized) as forged:  # without the key: the same answer as for an unknown tenant
        verifier.verify(mint(tenant.id, generate_key()))
    assert (forged.value.status, forged.value.detail) == (401, "invalid or expired token")

    registry.enable(tenant.id)
    old_key = tenant.key
    rotated = registry.rotate_key(tenant.id)
    with pytest.raises(Unauthorized):
        verifier.verify(mint(tenant.id, old_key))
    assert verifier.verify(mint(tenant.id, rotated.key)).tenant == tenant.id

    with pytest.raises(Unauthorized):
        verifier.verify(mint(str(uuid.uuid4()), generate_key()))


# -- quota overrides, kept by every registry -------------------------------------------------------------------


def test_quota_overrides_are_kept_with_the_tenant(registry: TenantRegistry) -> None:
    tenant = registry.add(name="acme")
    other = registry.add(name="other")
    assert tenant.quotas == {}
    changed = registry.set_quotas(tenant.id, {"store_mb": "2.5", "max_doc": 1000, "concurrency": "3", "rate": 0})
    assert changed.quotas == {"store_mb": 2.5, "max_doc": 1000, "concurrency": 3, "rate": 0.0}
    assert registry.get(tenant.id) == changed and registry.get(other.id) == other
    assert [t.quotas for t in registry.list()] == [changed.quotas, {}]
    assert registry.disable(tenant.id).quotas == changed.quotas  # other changes keep them
    assert registry.rotate_key(tenant.id).quotas == changed.quotas
    cleared = registry.set_quotas(tenant.id, {"store_mb": None, "modules": 7})  # None: back to the default
    assert cleared.quotas == {"max_doc": 1000, "concurrency": 3, "rate": 0.0, "modules": 7}
    assert isinstance(cleared.quotas["max_doc"], int) and isinstance(cleared.quotas["rate"], float)


def test_bad_quota_overrides_are_refused_before_storing(registry: TenantRegistry) -> None:
    tenant = registry.add()
    registry.set_quotas(tenant.id, {"modules": 5})
    for changes, message in [
        ({"colour": 1}, "Unknown quota 'colour'"),
        ({"modules": -1}, "Must be at least 0"),
        ({"concurrency": 0}, "Must be at least 1"),
        ({"store_mb": "lots"}, "Not a number"),
        ({"max_doc": 2.5}, "Not a whole number"),
        ({"rate": float("inf")}, "Not a finite number"),
        ({"modules": True}, "Not a number"),
        ({"modules": 6, "upload_mb": "x"}, "upload_mb"),  # all or nothing
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            registry.set_quotas(tenant.id, changes)
    assert registry.get(tenant.id).quotas == {"modules": 5}  # type: ignore[union-attr]
    with pytest.raises(TenantNotFound):
        registry.set_quotas(str(uuid.uuid4()), {"modules": 1})


def test_sqlite_registry_of_an_older_version_gets_the_quotas_column(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "tenants.db"
    old = sqlite3.connect(path)  # the schema before quotas existed, with a tenant in it
    old.execute(
        "CREATE TABLE tenants (id TEXT PRIMARY KEY, name TEXT NOT NULL, key TEXT NOT NULL,"
        " enabled INTEGER NOT NULL, admin INTEGER NOT NULL, created_at REAL NOT NULL)"
    )
    old.execute("INSERT INTO tenants VALUES (?, 'old', ?, 1, 0, 1.0)", (TID, generate_key()))
    old.commit()
    old.close()
    registry = SQLiteTenantRegistry(str(path))
    assert registry.get(TID).quotas == {}  # type: ignore[union-attr]
    assert registry.set_quotas(TID, {"rate": 2}).quotas == {"rate": 2.0}
    assert SQLiteTenantRegistry(str(path)).get(TID).quotas == {"rate": 2.0}  # type: ignore[union-attr]


def test_dynamodb_quotas_are_a_map_attribute(table: str, moto_url: str) -> None:
    import boto3

    DynamoDBTenantRegistry(table, endpoint_url=moto_url, master_key=MASTER).add(tenant_id=TID)
    DynamoDBTenantRegistry(table, endpoint_url=moto_url, master_key=MASTER).set_quotas(TID, {"store_mb": 5})
    item = boto3.client("dynamodb", endpoint_url=moto_url).get_item(
        TableName=table, Key={"pk": {"S": f"tenant#{TID}"}, "sk": {"S": "tenant"}}
    )["Item"]
    assert item["quotas"] == {"M": {"store_mb": {"N": "5.0"}}}


def test_firestore_quotas_are_a_map_field(firestore_env: str) -> None:
    registry = FirestoreTenantRegistry("dpmsf", master_key=MASTER)
    registry.add(tenant_id=TID)
    registry.set_quotas(TID, {"modules": 3, "upload_mb": 1.5})
    assert _firestore_document("dpmsf", TID)["quotas"] == {"modules": 3, "upload_mb": 1.5}


# -- PostgreSQL ----------------------------------------------------------------------------------------------------


def _pg_row(url: str, tid: str) -> dict[str, Any]:
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(url, row_factory=dict_row) as conn:
        row = conn.execute("SELECT * FROM dpmsf_tenants WHERE id = %s", (tid,)).fetchone()
    assert row is not None
    return dict(row)


def _pg_execute(url: str, statement: str, params: tuple[Any, ...]) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement, params)


def test_postgres_row_shape_holds_no_clear_key(pg_url: str) -> None:
    from dpmsf_core.tenancy.tenants_postgres import PostgresTenantRegistry

    registry = PostgresTenantRegistry(pg_url, master_key=MASTER)
    tenant = registry.add(name="acme", tenant_id=TID)
    row = _pg_row(pg_url, TID)
    assert row["key"].startswith("wrap1:") and tenant.key not in repr(row)
    assert MasterKey(MASTER).unwrap(TID, row["key"]) == tenant.key
    assert {k: v for k, v in row.items() if k not in ("created_at", "key")} == {
        "id": TID,
        "name": "acme",
        "enabled": True,
        "admin": False,
        "quotas": "{}",
    }
    rotated = registry.rotate_key(TID)
    assert rotated.key not in repr(_pg_row(pg_url, TID))
    registry.set_quotas(TID, {"store_mb": 5})
    assert _pg_row(pg_url, TID)["quotas"] == '{"store_mb": 5.0}'


def test_postgres_registry_is_shared_and_a_wrong_master_key_reads_no_key(pg_url: str) -> None:
    from dpmsf_core.tenancy.tenants_postgres import PostgresTenantRegistry

    tenant = PostgresTenantRegistry(pg_url, master_key=MASTER).add(tenant_id=TID)
    assert PostgresTenantRegistry(pg_url, master_key=MASTER).get(TID) == tenant  # another replica reads it
    wrong = PostgresTenantRegistry(pg_url, master_key=generate_key())
    assert wrong.get(TID).key == ""  # type: ignore[union-attr]
    verifier = TokenVerifier(key_lookup(wrong), MemoryReplayStore())
    with pytest.raises(Unauthorized, match="invalid or expired token"):
        verifier.verify(mint(TID, tenant.key))


def test_postgres_wrapped_key_cannot_be_moved_to_another_tenant(pg_url: str) -> None:
    from dpmsf_core.tenancy.tenants_postgres import PostgresTenantRegistry

    registry = PostgresTenantRegistry(pg_url, master_key=MASTER)
    victim = registry.add(tenant_id=TID)
    other = str(uuid.uuid4())
    registry.add(tenant_id=other)
    _pg_execute(pg_url, "UPDATE dpmsf_tenants SET key = %s WHERE id = %s", (_pg_row(pg_url, TID)["key"], other))
    assert registry.get(other).key == ""  # type: ignore[union-attr]
    verifier = TokenVerifier(key_lookup(registry), MemoryReplayStore())
    with pytest.raises(Unauthorized):
        verifier.verify(mint(other, victim.key))


def test_postgres_clear_key_is_wrapped_when_read(pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    from dpmsf_core.tenancy.tenants_postgres import PostgresTenantRegistry

    registry = PostgresTenantRegistry(pg_url, master_key=MASTER)
    registry.add(name="made", tenant_id=TID)
    key = generate_key()
    _pg_execute(pg_url, "UPDATE dpmsf_tenants SET key = %s WHERE id = %s", (key, TID))  # written in clear by hand
    with caplog.at_level("WARNING", logger="dpmsf.tenants"):
        assert [t.key for t in registry.list()] == [key]
    stored = _pg_row(pg_url, TID)["key"]
    assert key not in stored and MasterKey(MASTER).unwrap(TID, stored) == key
    assert any("stored in clear" in r.getMessage() for r in caplog.records)


def test_postgres_registry_requires_a_master_key(pg_url: str) -> None:
    from dpmsf_core.tenancy.tenants_postgres import PostgresTenantRegistry

    with pytest.raises(ValueError, match="needs DPMSF_MASTER_KEY"):
        PostgresTenantRegistry(pg_url)
    with pytest.raises(ValueError, match="needs DPMSF_MASTER_KEY"):
        make_tenant_registry(pg_url)


def test_make_tenant_registry_postgres(pg_url: str) -> None:
    from dpmsf_core.tenancy.tenants_postgres import PostgresTenantRegistry

    made = make_tenant_registry(pg_url, master_key=MASTER)
    assert isinstance(made, PostgresTenantRegistry)
    assert made.get(made.add().id) is not None


def test_postgres_quota_changes_at_once_from_two_replicas_all_hold(pg_url: str) -> None:
    import threading

    from dpmsf_core.tenancy.tenants_postgres import PostgresTenantRegistry

    one, two = (PostgresTenantRegistry(pg_url, master_key=MASTER) for _ in range(2))
    one.add(tenant_id=TID)
    names = ["store_mb", "max_doc", "concurrency", "rate", "modules", "upload_mb"]
    barrier = threading.Barrier(len(names))

    def change(n: int) -> None:
        barrier.wait()
        (one if n % 2 else two).set_quotas(TID, {names[n]: n + 1})

    threads = [threading.Thread(target=change, args=(n,)) for n in range(len(names))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert set(one.get(TID).quotas) == set(names)  # type: ignore[union-attr]  # no change lost to another
