"""Tenant keys at rest: wrapped with the master key, bound to their tenant, migrated from clear, never leaked.

Each test attacks one promise by reading what is really stored (sqlite3 on the file, raw bytes, boto3 on the
table) or by using the wrong master key, and checks the effect a caller would see.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpmsf_core.config import Settings
from dpmsf_core.errors import Unauthorized
from dpmsf_core.security import Security
from dpmsf_core.tenancy.replay import MemoryReplayStore, create_dynamodb_table
from dpmsf_core.tenancy.tenants import (
    MASTER_KEY_FILE,
    DynamoDBTenantRegistry,
    MasterKey,
    SQLiteTenantRegistry,
    TenantRegistry,
    key_lookup,
    load_master_key,
)
from dpmsf_core.tenancy.tokens import TokenVerifier, decode_key, generate_key, mint

ROOT = Path(__file__).resolve().parents[1]
TID = "6f1c1b1e-8a8e-4c57-9a53-0d5c6f3f4a10"
OTHER = "0b7f5e0a-3c1d-4e2f-8a9b-1c2d3e4f5a6b"
ADMIN = "00000000-0000-4000-8000-0000000000ad"
OLD_SCHEMA = (
    "CREATE TABLE tenants (id TEXT PRIMARY KEY, name TEXT NOT NULL, key TEXT NOT NULL,"
    " enabled INTEGER NOT NULL, admin INTEGER NOT NULL, created_at REAL NOT NULL)"
)


def raw_rows(path: Path) -> list[tuple[Any, ...]]:
    """The tenants table as stored, read with sqlite3 directly (not through DPMSF)."""
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT * FROM tenants ORDER BY id").fetchall()


def disk_bytes(path: Path) -> bytes:
    """Every byte SQLite keeps for the database: the file and its -wal/-shm/-journal siblings."""
    out = b""
    for suffix in ("", "-wal", "-shm", "-journal"):
        file = Path(str(path) + suffix)
        if file.exists():
            out += file.read_bytes()
    return out


def verifier_for(registry: TenantRegistry) -> TokenVerifier:
    return TokenVerifier(key_lookup(registry, cache_seconds=0), MemoryReplayStore())


def refused(registry: TenantRegistry, tid: str, key: str) -> Unauthorized:
    with pytest.raises(Unauthorized) as info:
        verifier_for(registry).verify(mint(tid, key))
    return info.value


# -- SQLite ---------------------------------------------------------------------------------------------------


def test_sqlite_row_and_file_hold_no_clear_key(tmp_path: Path) -> None:
    path = tmp_path / "tenants.db"
    registry = SQLiteTenantRegistry(str(path), master_key=generate_key())
    tenant = registry.add(name="acme", tenant_id=TID)
    [row] = raw_rows(path)
    assert all(tenant.key not in str(value) for value in row)
    assert row[2].startswith("wrap1:")
    blob = disk_bytes(path)
    assert tenant.key.encode() not in blob and decode_key(tenant.key) not in blob  # neither the text nor the bytes
    rotated = registry.rotate_key(TID)
    blob = disk_bytes(path)
    assert rotated.key.encode() not in blob and decode_key(rotated.key) not in blob
    assert verifier_for(registry).verify(mint(TID, rotated.key)).tenant == TID


def test_every_wrap_is_different(tmp_path: Path) -> None:
    """Random nonces: two tenants given the same key do not get the same stored text."""
    path = tmp_path / "tenants.db"
    registry = SQLiteTenantRegistry(str(path), master_key=generate_key())
    key = generate_key()
    registry.add(tenant_id=TID, key=key)
    registry.add(tenant_id=OTHER, key=key)
    stored = [row[2] for row in raw_rows(path)]
    assert len(set(stored)) == 2


def test_same_master_key_reads_the_tenants_back(tmp_path: Path) -> None:
    master = generate_key()
    tenant = SQLiteTenantRegistry(str(tmp_path / "t.db"), master_key=master).add(name="kept")
    again = SQLiteTenantRegistry(str(tmp_path / "t.db"), master_key=master)
    assert again.get(tenant.id) == tenant
    assert verifier_for(again).verify(mint(tenant.id, tenant.key)).tenant == tenant.id


def test_wrong_master_key_means_no_key_401_and_one_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "tenants.db")
    tenant = SQLiteTenantRegistry(path, master_key=generate_key()).add(name="acme", tenant_id=TID)
    before = raw_rows(Path(path))

    wrong = SQLiteTenantRegistry(path, master_key=generate_key())
    with caplog.at_level(logging.ERROR, logger="dpmsf.tenants"):
        got = wrong.get(TID)
        assert got is not None and got.key == "" and got.name == "acme"  # known, but no usable key
        assert [t.key for t in wrong.list()] == [""]
        for _ in range(3):
            error = refused(wrong, TID, tenant.key)
            assert (error.status, error.detail) == (401, "invalid or expired token")
    lines = [r for r in caplog.records if r.name == "dpmsf.tenants"]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    message = lines[0].getMessage()
    assert TID in message and "does not unwrap" in message and "DPMSF_MASTER_KEY" in message
    assert tenant.key not in message
    assert raw_rows(Path(path)) == before  # opening with the wrong key rewrites nothing


def test_rotate_key_recovers_a_tenant_under_a_new_master_key(tmp_path: Path) -> None:
    path = str(tmp_path / "tenants.db")
    SQLiteTenantRegistry(path, master_key=generate_key()).add(tenant_id=TID)
    registry = SQLiteTenantRegistry(path, master_key=generate_key())
    rotated = registry.rotate_key(TID)
    assert rotated.key and verifier_for(registry).verify(mint(TID, rotated.key)).tenant == TID


def test_wrapped_key_cannot_be_moved_to_another_tenant(tmp_path: Path) -> None:
    """The tenant id is associated data: copying one row's stored key into another row gives no key at all."""
    path = tmp_path / "tenants.db"
    registry = SQLiteTenantRegistry(str(path), master_key=generate_key())
    victim = registry.add(tenant_id=TID)
    registry.add(tenant_id=OTHER)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE tenants SET key = (SELECT key FROM tenants WHERE id = ?) WHERE id = ?", (TID, OTHER))
    moved = registry.get(OTHER)
    assert moved is not None and moved.key == ""
    # the attacker who swapped the rows cannot mint for OTHER with the victim's key
    assert refused(registry, OTHER, victim.key).detail == "invalid or expired token"
    assert verifier_for(registry).verify(mint(TID, victim.key)).tenant == TID  # the victim still works


def _old_database(path: Path, rows: list[tuple[str, str]]) -> None:
    """A tenants.db as the previous version wrote it: WAL mode, keys in clear."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(OLD_SCHEMA)
    for i, (tid, key) in enumerate(rows):
        conn.execute("INSERT INTO tenants VALUES (?, ?, ?, 1, 0, ?)", (tid, f"old-{i}", key, 1000.0 + i))
    conn.close()


def test_clear_keys_of_an_old_database_are_wrapped_on_open(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "tenants.db"
    keys = {TID: generate_key(), OTHER: generate_key() + "="}  # an old row may hold a padded key
    keys.update({str(uuid.uuid4()): generate_key() for _ in range(18)})  # enough rows that free space would keep some
    _old_database(path, list(keys.items()))
    assert keys[TID].encode() in disk_bytes(path)  # the attack surface: clear keys on disk

    with caplog.at_level(logging.WARNING, logger="dpmsf.tenants"):
        registry = SQLiteTenantRegistry(str(path), master_key=generate_key())
    assert any("wrapped 20 tenant key(s)" in r.getMessage() for r in caplog.records)
    for row in raw_rows(path):
        assert row[2].startswith("wrap1:")
    blob = disk_bytes(path)
    for key in keys.values():
        assert key.rstrip("=").encode() not in blob and decode_key(key) not in blob  # gone from free pages and WAL
    # the old tenants keep working with the keys they were given
    for tid, key in keys.items():
        tenant = registry.get(tid)
        assert tenant is not None and tenant.key == key.rstrip("=")
        assert verifier_for(registry).verify(mint(tid, key)).tenant == tid


def test_a_clear_key_written_after_open_is_wrapped_when_read(tmp_path: Path) -> None:
    """An older process still running during an upgrade may write a clear row; the first read wraps it."""
    path = tmp_path / "tenants.db"
    registry = SQLiteTenantRegistry(str(path), master_key=generate_key())
    key = generate_key()
    with sqlite3.connect(path) as conn:
        conn.execute(  # the older version's own statement: named columns, so the newer quotas column defaults
            "INSERT INTO tenants (id, name, key, enabled, admin, created_at) VALUES (?, 'late', ?, 1, 0, 1.0)",
            (TID, key),
        )
    assert registry.get(TID).key == key  # type: ignore[union-attr]
    assert raw_rows(path)[0][2].startswith("wrap1:")


def test_default_master_key_file_is_private_and_shared(tmp_path: Path) -> None:
    state = tmp_path / "state"
    registry = SQLiteTenantRegistry(str(state / "tenants.db"))
    tenant = registry.add()
    key_file = state / MASTER_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    master_text = key_file.read_text().strip()
    assert len(decode_key(master_text)) == 32 and master_text != tenant.key
    assert master_text.encode() not in disk_bytes(state / "tenants.db")
    # another process (here: another instance) reads the same key file, so the tenant still works
    again = SQLiteTenantRegistry(str(state / "tenants.db"))
    assert again.get(tenant.id) == tenant
    assert key_file.read_text().strip() == master_text
    # and the file really is the key the rows are wrapped with
    assert SQLiteTenantRegistry(str(state / "tenants.db"), master_key=master_text).get(tenant.id) == tenant


def test_master_key_file_is_tightened_if_too_open(tmp_path: Path) -> None:
    load_master_key(None, tmp_path)
    key_file = tmp_path / MASTER_KEY_FILE
    os.chmod(key_file, 0o644)
    os.chmod(tmp_path, 0o755)
    load_master_key(None, tmp_path)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o700


def test_a_damaged_master_key_file_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / MASTER_KEY_FILE).write_text("not a key\n")
    with pytest.raises(ValueError, match=r"Master key from key file .*master.key is not valid") as info:
        SQLiteTenantRegistry(str(tmp_path / "tenants.db"))
    assert "not a key" not in str(info.value)


_RACER = """
import sys
from dpmsf_core.tenancy.tenants import load_master_key
sys.stdin.readline()
print(load_master_key(None, sys.argv[1]).wrap(sys.argv[2], sys.argv[3]), flush=True)
"""


@pytest.mark.slow
def test_processes_starting_together_agree_on_one_master_key(tmp_path: Path) -> None:
    """Workers starting at once each wrap with the master key they loaded: every one must be the file's key."""
    state = tmp_path / "fresh-state"
    key = generate_key()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(state), TID, key],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(6)
    ]
    for racer in racers:
        assert racer.stdin is not None
        racer.stdin.write("go\n")
        racer.stdin.flush()
    wrapped = [racer.communicate(timeout=60)[0].strip() for racer in racers]
    assert all(racer.returncode == 0 for racer in racers)
    master = MasterKey((state / MASTER_KEY_FILE).read_text().strip())
    assert [master.unwrap(TID, w) for w in wrapped] == [key] * 6
    assert [p.name for p in state.iterdir()] == [MASTER_KEY_FILE]  # no temporary files left behind


def test_master_key_never_in_repr() -> None:
    text = generate_key()
    assert text not in repr(MasterKey(text)) and text not in repr(Settings(master_key=text))


def test_master_key_unwrap_refuses_other_tenant_and_damage() -> None:
    master = MasterKey(generate_key())
    key = generate_key()
    wrapped = master.wrap(TID, key)
    assert master.unwrap(TID, wrapped) == key
    for bad in (wrapped[:-2], wrapped[:-1] + ("A" if wrapped[-1] != "A" else "B"), "wrap1:", key):
        with pytest.raises(ValueError):
            master.unwrap(TID, bad)
    with pytest.raises(ValueError):
        master.unwrap(OTHER, wrapped)
    with pytest.raises(ValueError):
        MasterKey(generate_key()).unwrap(TID, wrapped)


# -- through Settings and Security ----------------------------------------------------------------------------


def test_security_uses_dpmsf_master_key(tmp_path: Path) -> None:
    master = generate_key()
    settings = Settings.from_env(
        {"DPMSF_STATE_DIR": str(tmp_path), "DPMSF_MASTER_KEY": master, "ADMIN_ID": ADMIN}, dotenv=None
    )
    security = Security(settings)
    admin = security.tenants.get(ADMIN)
    assert admin is not None and admin.key
    assert not (tmp_path / MASTER_KEY_FILE).exists()  # the environment's key is used, no file is made
    [row] = raw_rows(tmp_path / "tenants.db")
    assert MasterKey(master).unwrap(ADMIN, row[2]) == admin.key


def test_wrong_master_key_over_http(
    plugin_dir: Any, make_app: Callable[..., Any], serve: Callable[[Any], httpx.Client]
) -> None:
    plugin_dir.write(
        "guarded.py", "from dpmsf_core import expose\n\n@expose.endpoint(API='who')\ndef who():\n    return 1\n"
    )
    env = {"ADMIN_ID": ADMIN, "DPMSF_REQUIRE_TOKENS": "1", "DPMSF_MASTER_KEY": generate_key()}
    first = make_app(plugin_dir.path, env=env)
    tenant = first.get_security().tenants.add(name="acme")
    admin_key = first.get_security().tenants.get(ADMIN).key
    client = serve(first)
    assert client.get(
        "/rest/services/who/", headers={"authorization": f"Bearer {mint(tenant.id, tenant.key)}"}
    ).json() == {"results": 1}

    second = make_app(plugin_dir.path, env={**env, "DPMSF_MASTER_KEY": generate_key()})  # same state directory
    client = serve(second)
    for tid, key in ((tenant.id, tenant.key), (ADMIN, admin_key)):
        r = client.get("/rest/services/who/", headers={"authorization": f"Bearer {mint(tid, key)}"})
        assert r.status_code == 401 and r.json()["detail"] == "invalid or expired token"
        assert "traceback" not in r.text.lower() and "x-dpmsf-next-token" not in r.headers


# -- DynamoDB (moto server) -----------------------------------------------------------------------------------


@pytest.fixture
def table(moto_url: str, aws_env: None) -> str:
    name = f"dpmsf-{uuid.uuid4().hex[:8]}"
    create_dynamodb_table(name, endpoint_url=moto_url)
    return name


def _item(dynamodb: Any, table: str, tid: str) -> dict[str, Any]:
    return dynamodb.get_item(TableName=table, Key={"pk": {"S": f"tenant#{tid}"}, "sk": {"S": "tenant"}})["Item"]


def test_dynamodb_item_holds_no_clear_key(table: str, moto_url: str, dynamodb: Any) -> None:
    registry = DynamoDBTenantRegistry(table, endpoint_url=moto_url, master_key=generate_key())
    tenant = registry.add(name="acme", tenant_id=TID)
    item = _item(dynamodb, table, TID)
    assert tenant.key not in repr(item)
    rotated = registry.rotate_key(TID)
    assert rotated.key not in repr(_item(dynamodb, table, TID))
    assert verifier_for(registry).verify(mint(TID, rotated.key)).tenant == TID


def test_dynamodb_wrong_master_key_is_401_and_one_log_line(
    table: str, moto_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = DynamoDBTenantRegistry(table, endpoint_url=moto_url, master_key=generate_key()).add(tenant_id=TID)
    wrong = DynamoDBTenantRegistry(table, endpoint_url=moto_url, master_key=generate_key())
    with caplog.at_level(logging.ERROR, logger="dpmsf.tenants"):
        assert wrong.get(TID).key == ""  # type: ignore[union-attr]
        assert refused(wrong, TID, tenant.key).detail == "invalid or expired token"
        assert refused(wrong, TID, tenant.key).status == 401
    lines = [r.getMessage() for r in caplog.records if r.name == "dpmsf.tenants"]
    assert len(lines) == 1 and TID in lines[0] and table in lines[0]


def test_dynamodb_wrapped_key_cannot_be_moved(table: str, moto_url: str, dynamodb: Any) -> None:
    registry = DynamoDBTenantRegistry(table, endpoint_url=moto_url, master_key=generate_key())
    victim = registry.add(tenant_id=TID)
    registry.add(tenant_id=OTHER)
    dynamodb.update_item(
        TableName=table,
        Key={"pk": {"S": f"tenant#{OTHER}"}, "sk": {"S": "tenant"}},
        UpdateExpression="SET #k = :v",
        ExpressionAttributeNames={"#k": "key"},
        ExpressionAttributeValues={":v": _item(dynamodb, table, TID)["key"]},
    )
    assert registry.get(OTHER).key == ""  # type: ignore[union-attr]
    assert refused(registry, OTHER, victim.key).status == 401


def test_dynamodb_clear_item_of_an_old_version_is_wrapped_when_read(
    table: str, moto_url: str, dynamodb: Any, caplog: pytest.LogCaptureFixture
) -> None:
    key = generate_key()
    dynamodb.put_item(
        TableName=table,
        Item={
            "pk": {"S": f"tenant#{TID}"},
            "sk": {"S": "tenant"},
            "id": {"S": TID},
            "name": {"S": "old"},
            "key": {"S": key},
            "enabled": {"BOOL": True},
            "admin": {"BOOL": False},
            "created_at": {"N": "1000"},
        },
    )
    master = generate_key()
    registry = DynamoDBTenantRegistry(table, endpoint_url=moto_url, master_key=master)
    with caplog.at_level(logging.WARNING, logger="dpmsf.tenants"):
        assert [t.key for t in registry.list()] == [key]
    stored = _item(dynamodb, table, TID)["key"]["S"]
    assert key not in stored and MasterKey(master).unwrap(TID, stored) == key
    assert any("stored in clear" in r.getMessage() for r in caplog.records)
    assert verifier_for(registry).verify(mint(TID, key)).tenant == TID


def test_dynamodb_registry_requires_a_master_key(table: str, moto_url: str) -> None:
    with pytest.raises(ValueError, match="needs DPMSF_MASTER_KEY"):
        DynamoDBTenantRegistry(table, endpoint_url=moto_url)
    settings = Settings.from_env({"DPMSF_TENANTS": f"dynamodb://{table}?endpoint_url={moto_url}"}, dotenv=None)
    with pytest.raises(ValueError, match="needs DPMSF_MASTER_KEY"):
        Security(settings)
