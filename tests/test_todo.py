"""The bundled todo plugin (one function per method and URL shape, public API only) over a real server, as
``dpmsf_core.testing.http_client`` gives it to plugin authors: CRUD, validation with field paths, paging."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from dpmsf_core.testing import http_client, plugin_folder

BASE = "/rest/services/todo/tasks/"


@pytest.fixture
def client() -> Iterator[Any]:
    with http_client(plugin_folder()) as c:  # a fresh state folder each time: an empty store
        yield c


def test_crud(client: Any) -> None:
    assert client.get(BASE).json() == {"results": [], "cursor": None}
    created = client.post(BASE, json={"title": "Write docs"})
    assert created.status_code == 201
    task = created.json()["results"]
    assert task == {"id": task["id"], "title": "Write docs", "description": "", "done": False}
    assert created.headers["location"] == f"{BASE}{task['id']}/"
    assert client.get(f"{BASE}{task['id']}/").json() == {"results": task}
    updated = client.put(f"{BASE}{task['id']}/", json={"done": True, "description": "all of it"}).json()["results"]
    assert updated == {**task, "done": True, "description": "all of it"}
    assert client.get(BASE).json()["results"] == [updated]
    assert client.delete(f"{BASE}{task['id']}/").status_code == 204
    for method in ("GET", "PUT", "DELETE"):
        r = client.request(method, f"{BASE}{task['id']}/", json={} if method == "PUT" else None)
        assert r.status_code == 404 and r.json()["detail"] == f"No task with id '{task['id']}'."


@pytest.mark.parametrize(
    ("body", "loc", "msg"),
    [
        ({}, ["arguments", "task", "title"], "Field required"),
        ({"title": ""}, ["arguments", "task", "title"], "String should have at least 1 character"),
        ({"title": 3}, ["arguments", "task", "title"], "Input should be a valid string"),
        ({"title": "x", "done": "yes"}, ["arguments", "task", "done"], "Input should be a valid boolean"),
        ({"title": "x", "colour": "red"}, ["arguments", "task", "colour"], "Extra inputs are not permitted"),
    ],
)
def test_a_bad_new_task_names_the_field(client: Any, body: dict[str, Any], loc: list[str], msg: str) -> None:
    r = client.post(BASE, json=body)
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert [(e["loc"], e["msg"]) for e in r.json()["errors"]] == [(loc, msg)]


def test_bad_changes_list_and_methods(client: Any) -> None:
    task = client.post(BASE, json={"title": "x"}).json()["results"]
    url = f"{BASE}{task['id']}/"
    for bad, field in [({"done": "true"}, "done"), ({"description": 1}, "description"), ({"title": None}, "title")]:
        r = client.put(url, json=bad)
        assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["arguments", "changes", field]
    r = client.get(BASE + "?limit=ten")
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["arguments", "limit"]
    r = client.put(BASE, json={"title": "no id"})
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST, HEAD, OPTIONS"
    r = client.post(url, json={"title": "id given"})
    assert r.status_code == 405 and r.headers["allow"] == "GET, PUT, DELETE, HEAD, OPTIONS"
    assert client.get(f"{url}extra/").status_code == 404


def test_paging(client: Any) -> None:
    for i in range(3):
        assert client.post(BASE, json={"title": f"mine {i}"}).status_code == 201
    first = client.get(BASE + "?limit=2").json()
    rest = client.get(BASE, params={"limit": 2, "cursor": first["cursor"]}).json()
    assert len(first["results"]) == 2 and len(rest["results"]) == 1 and rest["cursor"] is None


def test_todo_uses_the_public_api_only() -> None:
    import ast

    import dpmsf_core

    tree = ast.parse((plugin_folder() / "todo.py").read_text(encoding="utf-8"))
    ours = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module == "dpmsf_core"]
    deeper = [
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dpmsf_core.")
    ]
    assert deeper == [] and ours, "todo.py imports dpmsf_core internals"
    imported = {alias.name for node in ours for alias in node.names}
    assert imported <= set(dpmsf_core.__all__), imported - set(dpmsf_core.__all__)
    assert all(getattr(dpmsf_core, name) is not None for name in dpmsf_core.__all__)
