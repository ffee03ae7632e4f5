"""Response headers a tenant's sandboxed code sets: an allow-list, at most 32 and 8 kB; the admin's are untouched.

The attack, over real HTTP: a tenant module answers with ``X-Accel-Redirect: /etc/shadow`` (nginx in front would
serve that file), ``X-Sendfile``, ``WWW-Authenticate``, ``Set-Cookie``, ``Cache-Control: public`` (a shared
cache would hand one caller's answer to the next), a forged ``X-Request-Id`` and 1,000 more headers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpmsf_core.sandbox.headers import MAX_HEADER_BYTES, MAX_HEADERS, tenant_headers
from dpmsf_core.tenancy.tokens import generate_key, mint

pytestmark = pytest.mark.slow

ADMIN = "00000000-0000-4000-8000-00000000000a"
MALLORY = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
ADMIN_KEY = generate_key()

HOSTILE = {
    "X-Accel-Redirect": "/protected/etc/shadow",
    "X-Sendfile": "/etc/shadow",
    "WWW-Authenticate": 'Basic realm="your admin"',
    "Set-Cookie": "session=stolen; Domain=.example.com",
    "Access-Control-Allow-Origin": "*",
    "Content-Type": "text/html",
    "X-Request-Id": "forged",
    "X-DPMSF-Next-Token": "forged",
    "Strict-Transport-Security": "max-age=0",
}
FINE = {"Retry-After": "30", "Cache-Control": "private, max-age=60", "ETag": '"v1"', "Content-Language": "fr"}

MODULE = """
from dpmsf_core import HTTPError

HEADERS = {headers!r}

def answer(extra: int = 0):
    headers = dict(HEADERS)
    for i in range(extra):
        headers[f"Link" if i == 0 else f"X-Flood-{{i}}"] = "<https://example.com/x>; rel=next"
    raise HTTPError(429, "slow down", headers=headers)

def public():
    raise HTTPError(404, "gone", headers={{"Cache-Control": "public, max-age=31536000", "Vary": "Accept"}})

def revalidate():
    raise HTTPError(404, "gone", headers={{"Cache-Control": "max-age=86400, must-revalidate"}})
"""


@pytest.fixture
def client(
    plugin_dir: Any, make_app: Callable[..., Any], serve: Callable[[Any], httpx.Client], tmp_path: Path
) -> tuple[httpx.Client, Any]:
    pytest.importorskip("wasmtime")
    plugin_dir.write("admin_headers.py", MODULE.format(headers={**HOSTILE, **FINE}))
    app = make_app(
        plugin_dir.path,
        env={"ADMIN_ID": ADMIN, "DPMSF_ADMIN_KEY": ADMIN_KEY, "DPMSF_STORE": f"sqlite:///{tmp_path / 'store.db'}"},
    )
    app.get_security().tenants.add(name="mallory", tenant_id=MALLORY)
    http = serve(app)
    key = app.get_security().tenants.get(MALLORY).key
    put = http.put(
        "/rest/admin/plugins/mallory_headers",
        content=MODULE.format(headers={**HOSTILE, **FINE}),
        headers={"authorization": f"Bearer {mint(MALLORY, key)}"},
    )
    assert put.status_code in (200, 201), put.text
    return http, app


def as_mallory(client: tuple[httpx.Client, Any], url: str, **kw: Any) -> httpx.Response:
    """A tenant's modules are visible to that tenant only: each call with a fresh single-use token."""
    http, app = client
    key = app.get_security().tenants.get(MALLORY).key
    return http.get(url, headers={"authorization": f"Bearer {mint(MALLORY, key)}"}, **kw)


def test_a_tenant_sets_only_allowed_headers(client: tuple[httpx.Client, Any]) -> None:
    answer = as_mallory(client, "/rest/services/mallory_headers/answer/")
    assert answer.status_code == 429 and answer.json()["detail"] == "slow down"
    got = {k.lower(): v for k, v in answer.headers.items()}
    for name in HOSTILE:
        if name.lower() in ("x-request-id", "x-dpmsf-next-token"):  # ours, once, not the tenant's
            assert answer.headers.get_list(name) == [got[name.lower()]] and got[name.lower()] != "forged"
        elif name.lower() == "content-type":
            assert answer.headers.get_list("content-type") == ["application/problem+json"]
        else:
            assert name.lower() not in got, name
    for name, value in FINE.items():
        assert got[name.lower()] == value


def test_cache_control_public_is_dropped(client: tuple[httpx.Client, Any]) -> None:
    answer = as_mallory(client, "/rest/services/mallory_headers/public/")
    assert answer.status_code == 404
    assert "cache-control" not in answer.headers and answer.headers["vary"] == "Accept"


def test_must_revalidate_goes_out_private(client: tuple[httpx.Client, Any]) -> None:
    answer = as_mallory(client, "/rest/services/mallory_headers/revalidate/")
    assert answer.status_code == 404
    assert answer.headers.get_list("cache-control") == ["private, max-age=86400, must-revalidate"]


def test_a_thousand_headers_are_bounded(client: tuple[httpx.Client, Any]) -> None:
    answer = as_mallory(client, "/rest/services/mallory_headers/answer/", params={"extra": 1000})
    assert answer.status_code == 429
    assert not any(k.lower().startswith("x-flood") for k in answer.headers)
    assert answer.headers["link"] == "<https://example.com/x>; rel=next"
    assert len(answer.headers) < 20


def test_the_admin_keeps_full_control(client: tuple[httpx.Client, Any]) -> None:
    answer = client[0].get("/rest/services/admin_headers/answer/")
    assert answer.status_code == 429
    assert answer.headers["x-accel-redirect"] == "/protected/etc/shadow"
    assert answer.headers["www-authenticate"] == 'Basic realm="your admin"'


def test_the_filter_bounds_count_and_size() -> None:
    many = {"Link": "x"}
    many.update({f"ETag{i}": "y" for i in range(100)})  # not allowed names: dropped
    assert tenant_headers(many) == {"Link": "x"}
    allowed = ["Link", "ETag", "Vary", "Location", "Expires", "Allow", "Content-Language", "Retry-After"]
    big = {name: "v" * 5000 for name in allowed}
    kept = tenant_headers(big)
    assert sum(len(k) + len(v) for k, v in kept.items()) <= MAX_HEADER_BYTES and len(kept) == 1
    assert len(tenant_headers({name: "v" for name in allowed})) <= MAX_HEADERS
    assert tenant_headers({"Location": "/a\r\nSet-Cookie: x=1"}) == {}
    assert tenant_headers({"Cache-Control": "no-store"}) == {"Cache-Control": "no-store"}


def test_a_shared_cache_may_never_store_a_tenant_answer() -> None:
    """``must-revalidate`` (like ``public``) lets a shared cache store an answer to an authenticated request
    (RFC 9111 3.5): a tenant's Cache-Control always carries ``private`` or ``no-store``."""
    kept = tenant_headers({"Cache-Control": "max-age=86400, must-revalidate"})
    assert kept == {"Cache-Control": "private, max-age=86400, must-revalidate"}
    assert tenant_headers({"Cache-Control": "no-cache"}) == {"Cache-Control": "private, no-cache"}
    assert tenant_headers({"Cache-Control": "no-store, max-age=0"}) == {"Cache-Control": "no-store, max-age=0"}
    assert tenant_headers({"Cache-Control": "s-maxage=60, private"}) == {}
    assert tenant_headers({"Cache-Control": "private, s-maxage=99"}) == {}
    assert tenant_headers(["not", "a", "dict"]) == {}
