"""The Python client against the real DPMSF app, served by uvicorn on 127.0.0.1 with tokens required."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpmsf_core.client import CallError, Client
from dpmsf_core.errors import Unauthorized
from dpmsf_core.tenancy.replay import MemoryReplayStore
from dpmsf_core.tenancy.tenants import MemoryTenantRegistry, Tenant, key_lookup
from dpmsf_core.tenancy.tokens import TokenVerifier, generate_key

ADMIN = "00000000-0000-4000-8000-000000000001"
CASE = Path(__file__).parent / "plugins" / "client_case"
MODULE = "client_echo"  # tests/plugins/client_case/client_echo.py: the ``echo`` and ``text`` endpoints

APP_ENV = {
    "ADMIN_ID": ADMIN,
    "DPMSF_REQUIRE_TOKENS": "1",
    "DPMSF_KEY_CACHE": "0",  # a disabled tenant is refused at once, not after the key cache expires
}


class Served:
    """The real app, the server in front of it, and one tenant of its registry."""

    def __init__(self, app: Any, http: httpx.Client, tenant: Tenant) -> None:
        self.app = app
        self.http = http
        self.url = str(http.base_url).rstrip("/")
        self.tenant = tenant

    def client(self, base_url: str | None = None, key: str | None = None) -> Client:
        return Client(base_url or self.url, self.tenant.id, key or self.tenant.key)


def bad_gateway_proxy(app: Any) -> Callable[..., Any]:
    """A proxy in front of DPMSF: 502 text/html for paths under /broken, everything else passed to ``app``."""

    async def proxy(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/broken/"):
            body = b"<h1>Bad Gateway</h1>"
            headers = [(b"content-type", b"text/html"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 502, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    return proxy


@pytest.fixture
def build(plugin_dir: Any, make_app: Callable[..., Any], serve: Callable[[Any], httpx.Client]) -> Callable[..., Served]:
    """``build(wrap=...)``: the real app on the client_case plugins, optionally behind ``wrap``, served on 127.0.0.1."""

    def start(wrap: Callable[[Any], Any] | None = None) -> Served:
        plugin_dir.write(f"{MODULE}.py", (CASE / f"{MODULE}.py").read_text(encoding="utf-8"))
        app = make_app(plugin_dir.path, env=APP_ENV)
        tenant = app.get_security().tenants.add(name="client-test")
        return Served(app, serve(wrap(app) if wrap else app), tenant)

    return start


@pytest.fixture
def served(build: Callable[..., Served]) -> Served:
    return build()


@pytest.fixture
def client(served: Served) -> Client:
    return served.client(served.url + "/")  # a trailing slash on the base URL is dropped


def test_get_with_url_params_and_repeated_query_keys(client: Client, served: Served) -> None:
    results = client.call("echo", 1, 2, params={"x": "y", "tag": ["a", "b"]})
    auth = results.pop("authorization")
    arguments = {"x": "y", "tag": ["a", "b"], "parm_1": "1", "parm_2": "2"}
    assert results == {
        "method": "GET",
        "path": "/rest/services/echo/1/2/",
        "query": arguments,
        "kwargs": arguments,
        "body": None,
        "content_type": None,
        "accept": "application/json",
        "tenant": served.tenant.id,
    }
    assert auth.startswith("Bearer ") and len(auth) > len("Bearer ") + 100


def test_post_json_to_a_qualified_module_url(client: Client, served: Served) -> None:
    results = client.call("echo", "7", method="post", json={"title": "ünïcode", "done": False}, module=MODULE)
    assert (results["method"], results["path"]) == ("POST", f"/rest/services/{MODULE}/echo/7/")
    assert results["body"] == {"title": "ünïcode", "done": False}
    assert results["kwargs"] == {"parm_1": "7", "title": "ünïcode", "done": False}
    assert results["content_type"] == "application/json"
    assert results["tenant"] == served.tenant.id


def test_url_params_are_percent_encoded(client: Client) -> None:
    assert client.url("echo", "a/b c", "?&#") == client.base_url + "/rest/services/echo/a%2Fb%20c/%3F%26%23/"
    assert client.url("echo", 7, module=MODULE) == client.base_url + f"/rest/services/{MODULE}/echo/7/"
    # Unencoded, "?" would start the query and "#" a fragment; encoded, each value reaches the function whole.
    results = client.call("echo", "b c", "?&#", "ü")
    assert results["kwargs"] == {"parm_1": "b c", "parm_2": "?&#", "parm_3": "ü"}
    assert results["path"] == "/rest/services/echo/b c/?&#/ü/"  # the server's decoded path
    # The client sends "a%2Fb", but the server decodes %2F before it splits the path: two URL params arrive.
    assert client.call("echo", "a/b")["kwargs"] == {"parm_1": "a", "parm_2": "b"}


def test_every_call_uses_a_fresh_token(client: Client, served: Served) -> None:
    tokens = []
    for method in ("GET", "PUT", "DELETE", "GET"):
        results = client.call("echo", method=method)  # the server refuses a replayed token: each call minted anew
        assert (results["method"], results["tenant"]) == (method, served.tenant.id)
        tokens.append(results["authorization"])
    assert len(set(tokens)) == 4
    replayed = served.http.get("/rest/services/echo/", headers={"authorization": tokens[0]})
    assert (replayed.status_code, replayed.json()["detail"]) == (401, "invalid or expired token")


def test_wrong_key_raises_call_error_with_the_problem_document(served: Served) -> None:
    with pytest.raises(CallError) as info:
        served.client(key=generate_key()).call("echo")
    error = info.value
    assert error.status == 401
    request_id = error.problem.pop("request_id")  # the client sends no X-Request-Id: the server made one up
    assert error.problem == {
        "type": "https://dpmsf.dev/problems/unauthorized",
        "title": "Unauthorized",
        "status": 401,
        "detail": "invalid or expired token",
        "instance": "/rest/services/echo/",
    }
    assert len(request_id) == 24 and error.headers["x-request-id"] == request_id
    assert error.headers["content-type"] == "application/problem+json"
    assert error.headers["www-authenticate"] == 'Bearer realm="dpmsf"'
    assert (error.title, error.detail) == ("Unauthorized", "invalid or expired token")
    assert str(error) == "401 Unauthorized: invalid or expired token"


def test_disabled_tenant_is_403(client: Client, served: Served) -> None:
    assert client.call("echo")["tenant"] == served.tenant.id
    served.app.get_security().tenants.disable(served.tenant.id)
    with pytest.raises(CallError) as info:
        client.call("echo")
    assert (info.value.status, info.value.title, info.value.detail) == (403, "Forbidden", "tenant disabled")
    assert info.value.problem["type"] == "https://dpmsf.dev/problems/forbidden"


def test_plain_text_answer_is_returned_as_bytes(client: Client) -> None:
    assert client.call("text") == b"just text"
    assert client.call("text", module=MODULE) == b"just text"


def test_html_error_page_from_a_proxy_becomes_a_call_error(build: Callable[..., Served]) -> None:
    served = build(wrap=bad_gateway_proxy)
    assert served.client().call("echo")["tenant"] == served.tenant.id  # the proxy passes DPMSF's paths through
    with pytest.raises(CallError) as info:
        served.client(served.url + "/broken").call("echo")
    error = info.value
    assert error.status == 502
    assert error.problem == {"title": "Bad Gateway", "status": 502, "detail": "<h1>Bad Gateway</h1>"}
    assert error.headers["content-type"] == "text/html"
    assert str(error) == "502 Bad Gateway: <h1>Bad Gateway</h1>"


def test_token_for_other_http_libraries(client: Client, served: Served) -> None:
    headers = {"authorization": f"Bearer {client.token()}"}
    answer = served.http.get(f"/rest/services/{MODULE}/echo/", params={"via": "httpx"}, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"]["tenant"] == client.tenant_id == served.tenant.id
    assert answer.json()["results"]["kwargs"] == {"via": "httpx"}
    assert served.http.get("/rest/services/echo/", headers=headers).status_code == 401  # single use
    assert client.token() != client.token()


@pytest.mark.parametrize(
    ("tenant_id", "key", "ttl", "message"),
    [
        ("acme", generate_key(), 60, "not a UUID"),
        ("6f1c1b1e-8a8e-4c57-9a53-0d5c6f3f4a10", "short", 60, "Tenant key"),
        ("6f1c1b1e-8a8e-4c57-9a53-0d5c6f3f4a10", generate_key(), 0, "ttl"),
    ],
)
def test_bad_arguments_fail_at_construction(tenant_id: str, key: str, ttl: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Client("http://127.0.0.1:9", tenant_id, key, ttl=ttl)


# The browser module, run by node (which has the same Web Crypto API), must mint tokens Python accepts.

JS_MODULE = Path(__file__).resolve().parents[1] / "dpmsf_core" / "static" / "dpmsf-token.js"

_NODE_SCRIPT = """
import { mintToken, bearer } from "./dpmsf-token.mjs";
const [tenant, key] = process.argv.slice(2);
const out = { tokens: [], bearer: await bearer(tenant.toUpperCase(), key, 5), errors: [] };
for (let i = 0; i < 5; i++) out.tokens.push(await mintToken(tenant, key));
out.short = await mintToken(tenant, key + "=", 0.5);
for (const args of [["not-a-uuid", key], [tenant, "short"], [tenant, "a$b"], [tenant, "abcdef"], [tenant, key, 0]]) {
  try { await mintToken(...args); out.errors.push("no error"); } catch (e) { out.errors.push(e.message); }
}
console.log(JSON.stringify(out));
"""


@pytest.mark.slow
def test_browser_module_mints_tokens_python_accepts(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; cannot run the browser token module")
    shutil.copy(JS_MODULE, tmp_path / "dpmsf-token.mjs")  # .mjs: node loads it as an ES module, like a browser
    (tmp_path / "mint.mjs").write_text(_NODE_SCRIPT)
    tenants = MemoryTenantRegistry()
    tenant = tenants.add(name="browser")
    run = subprocess.run(
        [node, "mint.mjs", tenant.id, tenant.key], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)

    now = time.time()
    verifier = TokenVerifier(key_lookup(tenants), MemoryReplayStore(), clock=lambda: now)
    claims = [verifier.verify(token) for token in out["tokens"]]
    assert {c.tenant for c in claims} == {tenant.id}
    assert len({c.jti for c in claims}) == 5
    assert all(c.exp - c.iat in (60, 61) and abs(c.iat - now) < 30 for c in claims)
    assert verifier.verify(out["bearer"]).exp - int(now) in range(-30, 31)
    with pytest.raises(Unauthorized):
        verifier.verify(out["tokens"][0])  # single use, whoever minted it
    short = verifier.verify(out["short"])
    assert short.exp - short.iat in (0, 1)

    assert out["errors"][0] == "DPMSF tenant id 'not-a-uuid' is not a UUID"
    assert out["errors"][1] == out["errors"][2] == "DPMSF key is not base64url text"
    assert out["errors"][3] == "DPMSF key is 4 bytes long, expected 32"
    assert out["errors"][4] == "DPMSF token ttl 0 is not a positive number of seconds"
