"""Tenants over real HTTP: each sees only its own modules and the admin's; tenant code runs in the sandbox."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from dpmsf_core.tenancy.tokens import mint

ADMIN = "00000000-0000-4000-8000-00000000000a"
TENANT_A = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
TENANT_B = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"


def tenant_module(tenant: str, api: str) -> str:
    return f'''
from dpmsf_core import expose

__tenant__ = "{tenant}"

@expose.endpoint(method="GET|POST", API="{api}")
def handler(*args, **kwargs):
    """Runs in the sandbox."""
    return {{"tenant_api": "{api}", "n": len(kwargs)}}

@expose.endpoint(method="GET", API="{api}-typed")
def typed(count: int):
    return [i * i for i in range(count)]

@expose.endpoint(method="GET", API="{api}-escape")
def escape():
    return open("/etc/passwd").read()

@expose.endpoint(method="GET", API="{api}-loop")
def loop():
    while True:
        pass
'''


@pytest.fixture
def env(plugin_dir: Any, make_app: Callable[..., Any], serve: Callable[[Any], httpx.Client]) -> Any:
    plugin_dir.write("shared.py", "def admin_func():\n    return 'admin'\n")
    plugin_dir.write("mod_a.py", tenant_module(TENANT_A, "alpha"))
    plugin_dir.write("mod_b.py", tenant_module(TENANT_B, "beta"))
    app = make_app(plugin_dir.path, env={"ADMIN_ID": ADMIN, "DPMSF_SANDBOX_TIMEOUT": "1.5", "DPMSF_KEY_CACHE": "0"})
    security = app.get_security()
    for tid in (TENANT_A, TENANT_B):
        security.tenants.add(name=tid[:4], tenant_id=tid)
    client = serve(app)

    def auth(tid: str) -> dict[str, str]:
        return {"authorization": f"Bearer {mint(tid, security.tenants.get(tid).key)}"}

    return client, auth, app


def test_tenant_module_is_never_imported(env: Any) -> None:
    import sys

    _, _, app = env
    assert not any(name.startswith("dpmsf_plugins.mod_") for name in sys.modules)
    assert app.registry.snapshot.modules["mod_a"].trusted is False


def test_each_tenant_sees_its_own_and_the_admins(env: Any) -> None:
    client, auth, _ = env
    names_a = {m["name"] for m in client.get("/rest/services/__dir__/", headers=auth(TENANT_A)).json()["modules"]}
    assert names_a == {"shared", "mod_a"}
    names_anon = {m["name"] for m in client.get("/rest/services/__dir__/").json()["modules"]}
    assert names_anon == {"shared"}
    paths = client.get("/openapi.json", headers=auth(TENANT_B)).json()["paths"]
    assert "/rest/services/beta/" in paths and "/rest/services/alpha/" not in paths


def test_tenant_calls_its_function_in_the_sandbox(env: Any) -> None:
    client, auth, _ = env
    r = client.get("/rest/services/alpha/?x=1&y=2", headers=auth(TENANT_A))
    assert r.json() == {"results": {"tenant_api": "alpha", "n": 2}}
    assert client.get("/rest/services/alpha-typed/?count=4", headers=auth(TENANT_A)).json() == {"results": [0, 1, 4, 9]}
    assert client.get("/rest/services/admin_func/", headers=auth(TENANT_A)).json() == {"results": "admin"}


def test_other_tenants_modules_answer_404(env: Any) -> None:
    client, auth, _ = env
    assert client.get("/rest/services/beta/", headers=auth(TENANT_A)).status_code == 404
    assert client.get("/rest/services/mod_b/beta/", headers=auth(TENANT_A)).status_code == 404
    assert client.get("/rest/services/alpha/").status_code == 404  # anonymous


def test_sandbox_refusals_over_http(env: Any) -> None:
    client, auth, _ = env
    r = client.get("/rest/services/alpha-escape/", headers=auth(TENANT_A))
    assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json"
    assert "root:" not in r.text
    r = client.get("/rest/services/alpha-loop/", headers=auth(TENANT_A))
    assert r.status_code == 504
    # the admin's functions and other tenants are unaffected
    assert client.get("/rest/services/admin_func/").json() == {"results": "admin"}
    assert client.get("/rest/services/beta/", headers=auth(TENANT_B)).status_code == 200


def test_disabled_tenant_is_forbidden(env: Any) -> None:
    client, auth, app = env
    headers = auth(TENANT_B)
    app.get_security().tenants.disable(TENANT_B)
    assert client.get("/rest/services/beta/", headers=headers).status_code == 403


def test_without_the_sandbox_extra_a_tenant_module_is_reported_not_run(
    plugin_dir: Any, make_app: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from dpmsf_core.sandbox import loader

    monkeypatch.setattr(loader, "sandbox_installed", lambda: False)
    plugin_dir.write("mod_a.py", tenant_module(TENANT_A, "alpha"))
    app = make_app(plugin_dir.path, env={"ADMIN_ID": ADMIN})
    (report,) = [r for r in app.registry.snapshot.reports if r.real_name == "mod_a"]
    assert report.status == "error"
    assert "not installed (pip install 'dpmsf[sandbox]'" in report.error
    assert "mod_a" not in app.registry.snapshot.modules
    assert not any(name.endswith("mod_a") for name in sys.modules)
