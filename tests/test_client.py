"""The Python client against a real HTTP server on 127.0.0.1 that checks its tokens like DPMSF does."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dpmsf_core.client import CallError, Client
from dpmsf_core.errors import PROBLEM_CONTENT_TYPE, DPMSFError, Unauthorized
from dpmsf_core.tenancy.replay import MemoryReplayStore
from dpmsf_core.tenancy.tenants import MemoryTenantRegistry, Tenant, key_lookup
from dpmsf_core.tenancy.tokens import TokenVerifier, generate_key


class Server:
    """A stand-in for DPMSF: verifies the bearer token, then echoes the request as ``{"results": ...}``."""

    def __init__(self) -> None:
        self.tenants = MemoryTenantRegistry()
        self.verifier = TokenVerifier(key_lookup(self.tenants, cache_seconds=0), MemoryReplayStore())
        self.jtis: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def _handle(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                if url.path == "/plain/rest/services/text/":
                    self._send(200, "text/plain", b"just text")
                    return
                if url.path == "/broken/rest/services/boom/":
                    self._send(502, "text/html", b"<h1>Bad Gateway</h1>")
                    return
                try:
                    claims = outer.verifier.verify(self.headers.get("Authorization", ""))
                except DPMSFError as error:
                    problem = error.problem(request_id="req-1")
                    self._send(error.status, PROBLEM_CONTENT_TYPE, json.dumps(problem).encode(), error.headers)
                    return
                outer.jtis.append(claims.jti)
                length = int(self.headers.get("Content-Length") or 0)
                results = {
                    "method": self.command,
                    "path": url.path,
                    "query": urllib.parse.parse_qs(url.query),
                    "body": json.loads(self.rfile.read(length)) if length else None,
                    "content_type": self.headers.get("Content-Type"),
                    "tenant": claims.tenant,
                }
                self._send(200, "application/json", json.dumps({"results": results}).encode())

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    server = Server()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture
def tenant(server: Server) -> Tenant:
    return server.tenants.add(name="client-test")


@pytest.fixture
def client(server: Server, tenant: Tenant) -> Client:
    return Client(server.url + "/", tenant.id, tenant.key)


def test_get_with_url_params_and_query(client: Client, tenant: Tenant) -> None:
    results = client.call("add", 1, 2, params={"x": "y", "tag": ["a", "b"]})
    assert results == {
        "method": "GET",
        "path": "/rest/services/add/1/2/",
        "query": {"x": ["y"], "tag": ["a", "b"]},
        "body": None,
        "content_type": None,
        "tenant": tenant.id,
    }


def test_post_json_to_a_module(client: Client) -> None:
    results = client.call("tasks", "7", method="post", json={"title": "ünïcode", "done": False}, module="todo_v2")
    assert (results["method"], results["path"]) == ("POST", "/rest/services/todo_v2/tasks/7/")
    assert results["body"] == {"title": "ünïcode", "done": False}
    assert results["content_type"] == "application/json"


def test_url_params_are_percent_encoded(client: Client) -> None:
    assert client.url("echo", "a/b c", "?&#") == client.base_url + "/rest/services/echo/a%2Fb%20c/%3F%26%23/"
    assert client.call("echo", "a/b c")["path"] == "/rest/services/echo/a%2Fb%20c/"


def test_every_call_uses_a_fresh_token(client: Client, server: Server) -> None:
    before = len(server.jtis)
    for method in ("GET", "PUT", "DELETE"):
        assert client.call("ping", method=method)["method"] == method
    new = server.jtis[before:]
    assert len(new) == len(set(new)) == 3


def test_wrong_key_raises_call_error_with_problem(server: Server, tenant: Tenant) -> None:
    with pytest.raises(CallError) as info:
        Client(server.url, tenant.id, generate_key()).call("ping")
    error = info.value
    assert error.status == 401
    assert error.problem == {
        "type": "https://dpmsf.dev/problems/unauthorized",
        "title": "Unauthorized",
        "status": 401,
        "detail": "invalid or expired token",
        "request_id": "req-1",
    }
    assert error.headers["WWW-Authenticate"].startswith("Bearer")
    assert str(error) == "401 Unauthorized: invalid or expired token"


def test_disabled_tenant_is_403(server: Server, client: Client, tenant: Tenant) -> None:
    server.tenants.disable(tenant.id)
    with pytest.raises(CallError) as info:
        client.call("ping")
    assert (info.value.status, info.value.detail) == (403, "tenant disabled")


def test_non_json_answers(server: Server, tenant: Tenant) -> None:
    assert Client(server.url + "/plain", tenant.id, tenant.key).call("text") == b"just text"
    with pytest.raises(CallError) as info:
        Client(server.url + "/broken", tenant.id, tenant.key).call("boom")
    assert info.value.status == 502
    assert info.value.problem == {"title": "Bad Gateway", "status": 502, "detail": "<h1>Bad Gateway</h1>"}


def test_token_for_other_http_libraries(client: Client, server: Server) -> None:
    assert server.verifier.verify("Bearer " + client.token()).tenant == client.tenant_id


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
