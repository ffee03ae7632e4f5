"""Tokens and plugin upload over real HTTP: every bad token refused, single use under races, uploads checked."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from dpmsf_core.tenancy.tokens import mint

ADMIN = "00000000-0000-4000-8000-000000000001"
UNKNOWN = "99999999-9999-4999-8999-999999999999"

PLUGIN = """
from dpmsf_core import RequestInfo, expose

@expose.endpoint(method="GET|POST", API="secret")
def secret(request: RequestInfo):
    return {"tenant": request.tenant}

@expose.endpoint(method="GET", API="public", auth=False)
def public():
    return "open"
"""


class Env:
    def __init__(self, app: Any, client: httpx.Client) -> None:
        self.app = app
        self.client = client
        self.security = app.get_security()

    def key(self, tenant: str) -> str:
        return self.security.tenants.get(tenant).key

    def token(self, tenant: str = ADMIN, **kw: Any) -> str:
        return mint(tenant, self.key(tenant), **kw)

    def auth(self, tenant: str = ADMIN, **kw: Any) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token(tenant, **kw)}"}


@pytest.fixture
def env(plugin_dir: Any, make_app: Callable[..., Any], serve: Callable[[Any], httpx.Client], tmp_path) -> Env:
    plugin_dir.write("guarded.py", PLUGIN)
    app = make_app(
        plugin_dir.path,
        env={
            "ADMIN_ID": ADMIN,
            "DPMSF_REQUIRE_TOKENS": "1",
            "DPMSF_REPLAY_STORE": f"sqlite:///{tmp_path / 'replay.db'}",
            "DPMSF_UPLOAD_MAX": "2000",
            "DPMSF_KEY_CACHE": "0",  # registry changes (disable, rotate) are seen at once
        },
    )
    return Env(app, serve(app))


def unauthorized(r: httpx.Response) -> None:
    assert r.status_code == 401, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["detail"] in ("missing bearer token", "invalid or expired token")


def test_valid_token_then_next_token(env: Env) -> None:
    r = env.client.get("/rest/services/secret/", headers=env.auth())
    assert r.json() == {"results": {"tenant": ADMIN}}
    nxt = r.headers["x-dpmsf-next-token"]
    r2 = env.client.get("/rest/services/secret/", headers={"authorization": f"Bearer {nxt}"})
    assert r2.status_code == 200 and r2.headers["x-dpmsf-next-token"] != nxt


def test_missing_token(env: Env) -> None:
    unauthorized(env.client.get("/rest/services/secret/"))


def test_endpoint_can_opt_out(env: Env) -> None:
    assert env.client.get("/rest/services/public/").json() == {"results": "open"}


def test_replayed_token(env: Env) -> None:
    headers = env.auth()
    assert env.client.get("/rest/services/secret/", headers=headers).status_code == 200
    unauthorized(env.client.get("/rest/services/secret/", headers=headers))


def test_expired_token(env: Env) -> None:
    unauthorized(env.client.get("/rest/services/secret/", headers=env.auth(ttl=1, now=time.time() - 120)))


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-5],  # truncated
        lambda t: t[:40] + ("A" if t[40] != "A" else "B") + t[41:],  # tampered
        lambda t: "not*base64",
        lambda t: "x",
        lambda t: t + t,
    ],
)
def test_malformed_truncated_tampered(env: Env, mangle: Callable[[str], str]) -> None:
    unauthorized(env.client.get("/rest/services/secret/", headers={"authorization": f"Bearer {mangle(env.token())}"}))


def test_unknown_tenant_and_wrong_key(env: Env) -> None:
    from dpmsf_core.tenancy.tokens import generate_key

    unauthorized(
        env.client.get("/rest/services/secret/", headers={"authorization": f"Bearer {mint(UNKNOWN, generate_key())}"})
    )
    unauthorized(
        env.client.get("/rest/services/secret/", headers={"authorization": f"Bearer {mint(ADMIN, generate_key())}"})
    )


def _seen(r: httpx.Response) -> tuple[int, str, str | None, str | None, dict[str, Any]]:
    """All a caller learns from an answer: status, content type, WWW-Authenticate, next token, body (no request id)."""
    body = {k: v for k, v in r.json().items() if k not in ("request_id", "instance")}
    headers = r.headers
    return (
        r.status_code,
        headers["content-type"],
        headers.get("www-authenticate"),
        headers.get("x-dpmsf-next-token"),
        body,
    )


def test_disabled_tenant_is_403(env: Env) -> None:
    tenant = env.security.tenants.add(name="t")
    token = mint(tenant.id, tenant.key)
    env.security.tenants.disable(tenant.id)
    r = env.client.get("/rest/services/public/", headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 403 and r.json()["detail"] == "tenant disabled"
    assert "x-dpmsf-next-token" not in r.headers  # no fresh token for a disabled tenant


def test_forged_token_for_disabled_tenant_is_401_like_an_unknown_tenant(env: Env) -> None:
    """Without the key, a disabled tenant id and an id nobody has answer byte for byte the same."""
    from dpmsf_core.tenancy.tokens import generate_key

    tenant = env.security.tenants.add(name="soon-disabled")
    env.security.tenants.disable(tenant.id)
    for path in ("/rest/services/public/", "/rest/services/secret/"):
        forged_disabled = env.client.get(path, headers={"authorization": f"Bearer {mint(tenant.id, generate_key())}"})
        forged_unknown = env.client.get(path, headers={"authorization": f"Bearer {mint(UNKNOWN, generate_key())}"})
        unauthorized(forged_disabled)
        assert forged_disabled.json()["detail"] == "invalid or expired token"
        assert _seen(forged_disabled) == _seen(forged_unknown)
    # the tenant really is disabled: its own key gets 403
    r = env.client.get("/rest/services/public/", headers={"authorization": f"Bearer {mint(tenant.id, tenant.key)}"})
    assert (r.status_code, r.json()["detail"]) == (403, "tenant disabled")


def test_token_living_longer_than_max_ttl_is_refused(env: Env) -> None:
    assert env.security.settings.token_max_ttl == 300  # the default of DPMSF_TOKEN_MAX_TTL
    long_lived = env.auth(ttl=301, max_ttl=None)  # a client that ignores the limit
    r = env.client.get("/rest/services/secret/", headers=long_lived)
    unauthorized(r)
    garbage = env.client.get("/rest/services/secret/", headers={"authorization": "Bearer x"})
    assert _seen(r) == _seen(garbage)  # says nothing a bad token would not
    day_long = env.client.get("/rest/services/public/", headers=env.auth(ttl=86_400, max_ttl=None))
    unauthorized(day_long)  # an open endpoint still checks a token it is sent
    r = env.client.get("/rest/services/secret/", headers=env.auth(ttl=300))
    assert r.json() == {"results": {"tenant": ADMIN}}  # at the limit is fine


def test_next_token_lives_token_ttl(env: Env) -> None:
    import base64
    import json

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from dpmsf_core.tenancy.tokens import decode_key

    nxt = env.client.get("/rest/services/secret/", headers=env.auth()).headers["x-dpmsf-next-token"]
    raw = base64.urlsafe_b64decode(nxt + "=" * (-len(nxt) % 4))
    claims = json.loads(AESGCM(decode_key(env.key(ADMIN))).decrypt(raw[17:29], raw[29:], raw[:17]))
    assert claims["exp"] - claims["iat"] == env.security.settings.token_ttl == 60


def test_configured_max_ttl_is_enforced(plugin_dir: Any, make_app: Callable[..., Any], serve: Any) -> None:
    plugin_dir.write("guarded.py", PLUGIN)
    app = make_app(
        plugin_dir.path,
        env={"ADMIN_ID": ADMIN, "DPMSF_TOKEN_MAX_TTL": "30", "DPMSF_TOKEN_TTL": "20"},
    )
    env = Env(app, serve(app))
    unauthorized(env.client.get("/rest/services/secret/", headers=env.auth(ttl=31, max_ttl=None)))
    assert env.client.get("/rest/services/secret/", headers=env.auth(ttl=30)).status_code == 200


def test_racing_requests_with_one_token_exactly_one_wins(env: Env) -> None:
    headers = env.auth()
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def call() -> None:
        with httpx.Client(base_url=str(env.client.base_url)) as c:
            barrier.wait()
            statuses.append(c.get("/rest/services/secret/", headers=headers).status_code)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] + [401] * 7


def test_directory_and_openapi_need_a_token_when_required(env: Env) -> None:
    unauthorized(env.client.get("/rest/services/__dir__/"))
    assert env.client.get("/rest/services/__dir__/", headers=env.auth()).status_code == 200
    spec = env.client.get("/openapi.json", headers=env.auth()).json()
    assert spec["paths"]["/rest/services/secret/"]["get"]["security"] == [{"dpmsfToken": []}]


# -- upload -------------------------------------------------------------------------------------------------------

UPLOADED = """
from dpmsf_core import expose

@expose.endpoint(method="GET", API="uploaded", auth=False)
def uploaded():
    return "fresh"
"""


def test_admin_uploads_lists_reads_deletes(env: Env) -> None:
    c = env.client
    r = c.put("/rest/admin/plugins/fresh", content=UPLOADED, headers=env.auth())
    assert r.status_code == 201, r.text
    assert r.json()["results"] == {
        "name": "fresh",
        "tenant": None,
        "url": "/rest/services/fresh/",
        "status": "loaded",
        "error": None,
        "endpoints": ["uploaded"],
    }
    assert c.get("/rest/services/uploaded/").json() == {"results": "fresh"}
    # every upload is stamped with its owner, the admin's too (commit 767cd34: no module is ownerless)
    assert c.get("/rest/admin/plugins/", headers=env.auth()).json() == {"results": [{"name": "fresh", "tenant": ADMIN}]}
    stored = c.get("/rest/admin/plugins/fresh", headers=env.auth()).text
    assert f'__tenant__ = "{ADMIN}"' in stored and UPLOADED.strip() in stored
    assert c.delete("/rest/admin/plugins/fresh", headers=env.auth()).status_code == 204
    assert c.get("/rest/services/uploaded/").status_code == 404
    assert c.delete("/rest/admin/plugins/fresh", headers=env.auth()).status_code == 404


def test_tenant_upload_is_stamped_with_its_id(env: Env) -> None:
    tenant = env.security.tenants.add(name="t")
    claims_admin = UPLOADED.replace("from dpmsf_core", f'__tenant__ = "{ADMIN}"\nfrom dpmsf_core')
    r = env.client.put(
        "/rest/admin/plugins/mine",
        content=claims_admin,
        headers={"authorization": f"Bearer {mint(tenant.id, tenant.key)}"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["results"]["tenant"] == tenant.id
    stored = env.app.admin.store.get("mine")
    assert f'__tenant__ = "{tenant.id}"' in stored and ADMIN not in stored
    # the admin's listing shows the owner; another tenant cannot read or overwrite it
    other = env.security.tenants.add(name="other")
    other_auth = {"authorization": f"Bearer {mint(other.id, other.key)}"}
    assert env.client.get("/rest/admin/plugins/mine", headers=other_auth).status_code == 404
    other_auth = {"authorization": f"Bearer {mint(other.id, other.key)}"}
    r = env.client.put("/rest/admin/plugins/mine", content=UPLOADED, headers=other_auth)
    assert r.status_code == 409  # another owner's name is taken (commit 767cd34)
    assert f'__tenant__ = "{tenant.id}"' in env.app.admin.store.get("mine")  # and was not overwritten


@pytest.mark.parametrize(
    ("name", "body", "status"),
    [
        ("..%2Fescape", UPLOADED, 404),  # decoded to ../escape: not a plugin route at all
        ("a.b", UPLOADED, 400),
        ("not-an-identifier", UPLOADED, 400),
        ("_private", UPLOADED, 400),
        ("broken", "def f(:\n", 422),
        ("huge", "x = 1\n" * 1000, 413),
    ],
)
def test_bad_uploads(env: Env, name: str, body: str, status: int) -> None:
    r = env.client.put(f"/rest/admin/plugins/{name}", content=body, headers=env.auth())
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert env.app.admin.store.list() == []


def test_upload_needs_a_token(env: Env) -> None:
    unauthorized(env.client.put("/rest/admin/plugins/x", content=UPLOADED))
