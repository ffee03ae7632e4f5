"""The browser module ``dpmsf-token.js`` in a real headless Chromium against a running DPMSF server.

The page (``tests/browser/token.html``) comes from a tiny static server on another loopback port, so the
fetch with ``Authorization: Bearer`` is cross-origin and needs the CORS preflight. It mints a token with Web
Crypto, calls the endpoint, replays the same token, then uses the ``X-DPMSF-Next-Token`` of the first answer;
the test reads the outcome back from the DOM with ``chromium --headless --dump-dom``.

Needs Debian's ``chromium`` (``apt-get update && apt-get install -y chromium``); skipped when it is missing.
Set ``DPMSF_CHROMIUM`` to use another Chromium/Chrome binary.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from conftest import LiveServer

import dpmsf_core

pytestmark = pytest.mark.slow

ADMIN = "00000000-0000-4000-8000-0000000000ad"
TENANT = "c0ffee00-1234-4abc-8def-0123456789ab"
PAGE = Path(__file__).parent / "browser" / "token.html"
MODULE = Path(dpmsf_core.__file__).parent / "static" / "dpmsf-token.js"
INSTALL = "apt-get update && apt-get install -y chromium"

PLUGIN = """
from dpmsf_core import RequestInfo, expose

@expose.endpoint(method="GET|POST", API="whoami")
def whoami(request: RequestInfo):
    return {"tenant": request.tenant, "hello": "browser"}
"""


def chromium() -> str:
    for candidate in (os.environ.get("DPMSF_CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and (found := shutil.which(candidate)):
            return found
    pytest.skip(f"headless Chromium not installed; to run this test: {INSTALL} (or set DPMSF_CHROMIUM)")


class StaticSite:
    """Serves the test page and the bytes of dpmsf-token.js on 127.0.0.1 (a secure context for Web Crypto)."""

    def __init__(self) -> None:
        files = {
            "/token.html": (PAGE.read_bytes(), "text/html; charset=utf-8"),
            "/dpmsf-token.js": (MODULE.read_bytes(), "text/javascript; charset=utf-8"),
        }
        self.requests: list[str] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.requests.append(self.path)
                body, ctype = files.get(self.path.split("?")[0], (b"not found", "text/plain"))
                self.send_response(200 if self.path.split("?")[0] in files else 404)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(body)))
                self.send_header("cache-control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Recorder:
    """ASGI wrapper that notes each HTTP request's method, path and Origin, to prove the preflight happened."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[tuple[str, str, str | None]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            origin = headers.get(b"origin")
            self.seen.append((scope["method"], scope["path"], origin.decode() if origin else None))
        await self.app(scope, receive, send)


@pytest.fixture
def site() -> Iterator[StaticSite]:
    s = StaticSite()
    yield s
    s.close()


@pytest.fixture
def server(plugin_dir: Any, make_app: Callable[..., Any]) -> Iterator[tuple[LiveServer, Recorder, str]]:
    plugin_dir.write("browser_api.py", PLUGIN)
    app = make_app(plugin_dir.path, env={"ADMIN_ID": ADMIN, "DPMSF_REQUIRE_TOKENS": "1"})
    key = app.get_security().tenants.add(name="browser", tenant_id=TENANT).key
    recorder = Recorder(app)
    with LiveServer(recorder) as live:
        yield live, recorder, key


def dump_dom(browser: str, url: str, profile: Path) -> str:
    args = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        url,
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, f"chromium exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


def page_result(dom: str) -> dict[str, Any]:
    match = re.search(r'<pre id="result">(.*?)</pre>', dom, re.S)
    assert match, f"no result element in the dumped DOM:\n{dom[:3000]}"
    text = html.unescape(match.group(1))
    assert text != "pending", "the page's script did not finish before the DOM was dumped"
    return json.loads(text)


def test_browser_mints_token_and_calls_endpoint(
    site: StaticSite, server: tuple[LiveServer, Recorder, str], tmp_path: Path
) -> None:
    browser = chromium()
    live, recorder, key = server
    api = f"{live.url}/rest/services/whoami/"
    url = f"{site.url}/token.html#" + urlencode({"tenant": TENANT, "key": key, "api": api})

    result = page_result(dump_dom(browser, url, tmp_path / "profile"))

    assert "error" not in result, result["error"]
    assert result["secureContext"] is True
    assert result["distinct"] is True  # a random nonce and id: every token differs
    assert 140 <= result["tokenLength"] <= 200
    expected = {"results": {"tenant": TENANT, "hello": "browser"}}
    assert result["first"]["status"] == 200 and result["first"]["body"] == expected
    assert result["first"]["next"], "X-DPMSF-Next-Token not readable from the page (Access-Control-Expose-Headers)"
    assert result["replay"]["status"] == 401  # single use
    assert result["replay"]["body"]["detail"] == "invalid or expired token"
    assert result["following"]["status"] == 200 and result["following"]["body"] == expected
    assert result["viaBearer"] == 200
    # Authorization is not a CORS-safelisted header: the browser asked first, from the page's origin.
    preflights = [s for s in recorder.seen if s[0] == "OPTIONS" and s[1] == "/rest/services/whoami/"]
    assert preflights and all(origin == site.url for _, _, origin in preflights)
    gets = [s for s in recorder.seen if s[0] == "GET" and s[1] == "/rest/services/whoami/"]
    assert len(gets) == 4 and all(origin == site.url for _, _, origin in gets)
    assert "/dpmsf-token.js" in site.requests


def test_python_accepts_nothing_the_browser_did_not_mint(server: tuple[LiveServer, Recorder, str]) -> None:
    """Control for the browser test: without a token the same endpoint answers 401 (tokens really are required)."""
    live, _, _ = server
    r = httpx.get(f"{live.url}/rest/services/whoami/", headers={"origin": "http://127.0.0.1:1"})
    assert r.status_code == 401
    assert r.headers["access-control-allow-origin"] == "*"
