"""``/docs`` in a real headless Chromium with the network off (every host name but 127.0.0.1 resolves to
nothing): Swagger UI comes from files we ship, and "Try it out" on a path-parameter endpoint reaches the server.

Driven over the DevTools protocol (``tests/browser/cdp.py``) as a person would: expand the todo operation, click
"Try it out", type the task id into the ``task_id`` field, Execute, and read the answer the page shows.
Skipped, saying how to install it, when Chromium is missing (see test_browser_token.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from browser.cdp import Chromium
from bundled import bundled
from test_browser_token import chromium

from dpmsf_core.testing import http_client

pytestmark = pytest.mark.slow

ONE_TASK = "/rest/services/tasks/{task_id}/"  # as the author declared it: path="tasks/{task_id}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    state = tmp_path_factory.mktemp("state")
    with http_client(str(bundled()), DPMSF_STATE_DIR=str(state)) as client:
        yield client


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Chromium]:
    with Chromium(chromium(), tmp_path / "profile") as browser:
        browser.call("Page.bringToFront")  # the focused page gets typed text
        yield browser


def base(client: httpx.Client) -> str:
    return str(client.base_url).rstrip("/")


def left_loopback(requests: list[str]) -> list[str]:
    """The requests that went anywhere but 127.0.0.1 (``data:`` images are drawn in the page, not fetched)."""
    return [
        url
        for url in requests
        if urlsplit(url).scheme not in ("data", "blob", "about") and urlsplit(url).hostname != "127.0.0.1"
    ]


def operation(method: str, path: str) -> str:
    """A script that finds one operation of the rendered page by method and path."""
    return (
        f"[...document.querySelectorAll('.opblock-{method.lower()}')]"
        f".find(o => o.querySelector('.opblock-summary-path').getAttribute('data-path') === {json.dumps(path)})"
    )


def try_it_out(page: Chromium, method: str, path: str, task_id: str, body: dict[str, Any] | None = None) -> Any:
    """Expand the operation, Try it out, type the path field (and the body), Execute: (status, shown answer)."""
    op = operation(method, path)
    page.wait_for(f"!!{op}", f"{method} {path} on the page")
    page.evaluate(f"{op}.querySelector('.opblock-summary-control').click()")
    page.wait_for(f"!!{op}.querySelector('.try-out__btn')", "the Try it out button")
    page.evaluate(f"{op}.querySelector('.try-out__btn').click()")
    field = f"{op}.querySelector('input[placeholder=\"task_id\"]')"
    page.wait_for(f"!!{field}", "the task_id field")
    page.evaluate(f"{field}.focus()")
    page.type_text(task_id)
    if body is not None:
        page.evaluate(f"{op}.querySelector('textarea.body-param__text').focus(); document.activeElement.select()")
        page.type_text(json.dumps(body))  # replaces the example body Swagger UI filled in
    page.evaluate("document.activeElement.blur()")  # Swagger UI takes a field's value when it loses focus
    page.evaluate(f"{op}.querySelector('button.execute').click()")
    cell = f"{op}.querySelector('.live-responses-table tbody .response-col_status')"
    status = page.wait_for(f"{cell} && {cell}.innerText.trim()", "the server's answer in the page")
    shown = page.evaluate(f"{op}.querySelector('.live-responses-table .response-col_description pre').innerText")
    url = page.evaluate(f"{op}.querySelector('.request-url pre').innerText")
    return int(status), json.loads(shown), url


def test_docs_render_every_operation_offline(server: httpx.Client, page: Chromium) -> None:
    html = server.get("/docs").text
    assert "cdn" not in html.lower() and "http" not in html  # nothing is fetched from elsewhere
    page.open(base(server) + "/docs")
    count = page.wait_for("document.querySelectorAll('.opblock').length", "rendered operations")
    spec = server.get("/openapi.json").json()
    assert count == sum(len(ops) for ops in spec["paths"].values())  # one block per endpoint and method
    tag = page.evaluate("[...document.querySelectorAll('.opblock-tag')].find(t => t.dataset.tag === 'todo').innerText")
    assert "The classic tasks API, persisted in the per-tenant document store" in tag  # the module docstring
    hello = page.evaluate(
        "[...document.querySelectorAll('.opblock-tag')].find(t => t.dataset.tag === 'hello').innerText"
    )
    lines = [line.strip() for line in hello.splitlines()]  # the docstring's lines as its author wrapped them
    assert (
        "GET /rest/services/hello-world/?name=Ada" in lines
        and "GET /rest/services/hello-world/slug-or-numbers/" in lines
    )
    page.evaluate("1")  # collect the last network events
    assert f"{base(server)}/docs/swagger-ui-bundle.min.js" in page.requests
    assert f"{base(server)}/openapi.json" in page.requests
    assert left_loopback(page.requests) == []


def test_try_it_out_on_a_path_parameter(server: httpx.Client, page: Chromium) -> None:
    task = server.post("/rest/services/todo/tasks/", json={"title": "from the browser test"}).json()["results"]
    page.open(base(server) + "/docs")

    status, shown, url = try_it_out(page, "GET", ONE_TASK, task["id"])
    assert (status, shown) == (200, {"results": task})  # the server's answer, as the page shows it
    assert url == f"{base(server)}/rest/services/tasks/{task['id']}/"

    status, shown, _ = try_it_out(page, "PUT", ONE_TASK, task["id"], body={"done": True})
    assert (status, shown) == (200, {"results": {**task, "done": True}})
    assert server.get(f"/rest/services/todo/tasks/{task['id']}/").json()["results"]["done"] is True

    page.evaluate("1")
    assert f"{base(server)}/rest/services/tasks/{task['id']}/" in page.requests
    assert left_loopback(page.requests) == []
