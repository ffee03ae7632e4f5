"""A name an admin module declares stays the admin's while that module fails to load: a tenant's module or API
of the same name never receives the admin's calls (query, body, ``X-Api-Key``).

The tenant's module writes whatever it receives to its own store; each attack checks that nothing was written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpmsf_core.tenancy.tokens import generate_key, mint

pytestmark = pytest.mark.slow

ADMIN = "00000000-0000-4000-8000-00000000000a"
ADMIN_KEY = generate_key()
MALLORY = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
SECRET = "sk-live-admin-only-4242"

# the admin's module: serves ``charge``, but its last line does not parse
BILLING = """from dpmsf_core import expose


@expose.endpoint(method="GET|POST")
def charge(amount: int = 0, card: str = ""):
    return {"charged": amount}

oops(
"""

# Mallory's: an API named like the admin's, recording what it receives
CAPTURE = """from dpmsf_core import current, expose, store


@expose.endpoint(method="GET|POST", API="charge")
def charge(*args, **kwargs):
    info = current()
    seen = {"kwargs": kwargs, "headers": dict(info.headers) if info else {}, "body": info.body if info else ""}
    store.collection("loot").put("seen", {"seen": repr(seen)})
    return "captured"


@expose.endpoint(API="loot")
def loot():
    return store.collection("loot").get("seen")
"""


class Env:
    def __init__(self, client: httpx.Client, app: Any, plugins: Path) -> None:
        self.client, self.app, self.plugins = client, app, plugins

    def auth(self, tenant: str) -> dict[str, str]:
        key = ADMIN_KEY if tenant == ADMIN else self.app.get_security().tenants.get(tenant).key
        return {"authorization": f"Bearer {mint(tenant, key)}"}

    def admin_call(self, url: str) -> httpx.Response:
        headers = {**self.auth(ADMIN), "x-api-key": SECRET}
        return self.client.post(f"/rest/services/{url}?amount=5", json={"card": "4111-1111"}, headers=headers)

    def loot(self, module: str) -> Any:
        r = self.client.get(f"/rest/services/{module}/loot/", headers=self.auth(MALLORY))
        assert r.status_code == 200, r.text
        return r.json()["results"]


@pytest.fixture
def env(plugin_dir: Any, make_app: Callable[..., Any], serve: Callable[[Any], httpx.Client], tmp_path: Path) -> Env:
    app = make_app(
        plugin_dir.path,
        env={
            "ADMIN_ID": ADMIN,
            "DPMSF_ADMIN_KEY": ADMIN_KEY,
            "DPMSF_STORE": f"sqlite:///{tmp_path / 'store.db'}",
            "DPMSF_UPLOAD_DIR": str(tmp_path / "uploads"),
        },
    )
    app.get_security().tenants.add(name="mall", tenant_id=MALLORY)
    return Env(serve(app), app, plugin_dir.path)


def assert_refused(r: httpx.Response) -> None:
    assert r.status_code in (500, 503), r.text
    assert SECRET not in r.text and "4111" not in r.text


def test_a_tenant_api_named_like_a_failing_admin_api_gets_none_of_its_calls(env: Env) -> None:
    (env.plugins / "billing.py").write_text(BILLING)
    r = env.client.put("/rest/admin/plugins/mallory_pay", content=CAPTURE, headers=env.auth(MALLORY))
    assert r.status_code == 201, r.text
    assert_refused(env.admin_call("charge/"))
    assert env.loot("mallory_pay") is None  # Mallory's code never ran for the admin's call
    # the tenant's own API still answers when called by its module's name
    r = env.client.get("/rest/services/mallory_pay/charge/", headers=env.auth(MALLORY))
    assert r.json() == {"results": "captured"}


def test_a_tenant_module_named_like_a_failing_admin_module_gets_none_of_its_calls(env: Env) -> None:
    r = env.client.put("/rest/admin/plugins/billing", content=CAPTURE, headers=env.auth(MALLORY))
    assert r.status_code == 201, r.text  # the name was free then
    (env.plugins / "billing.py").write_text(BILLING)  # the admin's module appears, and fails to load
    assert_refused(env.admin_call("billing/charge/"))
    assert_refused(env.admin_call("charge/"))
    listing = env.client.get("/rest/services/__dir__", headers=env.auth(ADMIN)).json()
    mine = [m for m in listing["modules"] if m["tenant"] == MALLORY]
    assert [m["status"] for m in mine] == ["conflict"]
    (env.plugins / "billing.py").unlink()  # the admin's module is gone: the tenant's serves again
    assert env.loot("billing") is None  # and it never saw the admin's calls
