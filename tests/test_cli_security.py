"""``dpmsf token`` and ``dpmsf tenant`` with the lifetime bound and wrapped keys, run as a user runs them."""

from __future__ import annotations

import base64
import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from test_cli import run

from dpmsf_core.tenancy.replay import create_dynamodb_table
from dpmsf_core.tenancy.tokens import decode_key, generate_key

ADMIN = "00000000-0000-4000-8000-0000000000ad"


def lifetime(token: str, key: str) -> int:
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    claims = json.loads(AESGCM(decode_key(key)).decrypt(raw[17:29], raw[29:], raw[:17]))
    return claims["exp"] - claims["iat"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"DPMSF_STATE_DIR": str(tmp_path), "ADMIN_ID": ADMIN, "DPMSF_ADMIN_KEY": generate_key()}


def test_token_ttl_defaults_and_limit(env: dict[str, str]) -> None:
    key = env["DPMSF_ADMIN_KEY"]
    assert lifetime(run("token", env=env).stdout.strip(), key) == 60
    assert lifetime(run("token", "--ttl", "300", env=env).stdout.strip(), key) == 300


@pytest.mark.parametrize("ttl", ["301", "86400", "0", "-5"])
def test_token_ttl_beyond_max_is_refused(env: dict[str, str], ttl: str) -> None:
    result = run("token", "--ttl", ttl, env=env)
    assert result.returncode == 2 and result.stdout == ""  # no token is printed
    assert len(result.stderr.strip().splitlines()) == 1 and "DPMSF_TOKEN_MAX_TTL (300 s)" in result.stderr
    assert "Traceback" not in result.stderr


def test_token_ttl_follows_a_configured_max(env: dict[str, str]) -> None:
    env = {**env, "DPMSF_TOKEN_MAX_TTL": "600"}
    assert lifetime(run("token", "--ttl", "600", env=env).stdout.strip(), env["DPMSF_ADMIN_KEY"]) == 600
    assert run("token", "--ttl", "601", env=env).returncode == 2


def test_bad_lifetime_settings_are_one_line(env: dict[str, str]) -> None:
    result = run("token", env={**env, "DPMSF_TOKEN_TTL": "600"})
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "dpmsf: Config 'DPMSF_TOKEN_TTL' has value '600'. Must be at most DPMSF_TOKEN_MAX_TTL (300)."
    )
    result = run("token", env={**env, "DPMSF_TOKEN_MAX_TTL": "x"})
    assert result.stderr.strip() == "dpmsf: Config 'DPMSF_TOKEN_MAX_TTL' has value 'x'. Not a valid int."


def test_tenant_add_with_master_key_stores_it_wrapped(env: dict[str, str], tmp_path: Path) -> None:
    env = {**env, "DPMSF_MASTER_KEY": generate_key()}
    added = json.loads(run("tenant", "add", "--name", "acme", env=env).stdout)
    with sqlite3.connect(tmp_path / "tenants.db") as conn:
        stored = conn.execute("SELECT key FROM tenants WHERE id = ?", (added["id"],)).fetchone()[0]
    assert added["key"] not in stored and stored.startswith("wrap1:")
    assert not (tmp_path / "master.key").exists()
    token = run("token", "--tenant", added["id"], env=env).stdout.strip()
    assert lifetime(token, added["key"]) == 60

    wrong = run("token", "--tenant", added["id"], env={**env, "DPMSF_MASTER_KEY": generate_key()})
    assert wrong.returncode == 1 and wrong.stdout == ""
    assert "no usable key" in wrong.stderr and "Traceback" not in wrong.stderr


def test_bad_master_key_is_one_line(env: dict[str, str]) -> None:
    secret = generate_key()[:20]
    result = run("tenant", "list", env={**env, "DPMSF_MASTER_KEY": secret})
    assert result.returncode == 2 and result.stderr.startswith("dpmsf: Config 'DPMSF_MASTER_KEY' is not valid")
    assert secret not in result.stderr


def test_dynamodb_without_master_key_is_one_line(env: dict[str, str], moto_url: str, aws_env: None) -> None:
    table = f"dpmsf-{uuid.uuid4().hex[:8]}"
    create_dynamodb_table(table, endpoint_url=moto_url)
    aws: dict[str, Any] = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "DPMSF_TENANTS": f"dynamodb://{table}?endpoint_url={moto_url}",
    }
    result = run("tenant", "list", env={**env, **aws})
    assert result.returncode == 2 and "needs DPMSF_MASTER_KEY" in result.stderr and "Traceback" not in result.stderr
    master = generate_key()
    added = json.loads(run("tenant", "add", env={**env, **aws, "DPMSF_MASTER_KEY": master}).stdout)
    listed = run("tenant", "list", env={**env, **aws, "DPMSF_MASTER_KEY": master}).stdout
    assert added["id"] in listed and added["key"] not in listed
