"""The bundled todo demo, served to anonymous callers by default, bounds what they can make it store and answer:
the issue's 340 kB tasks (stored at 40 MB/s) and its 340 MB ``GET tasks/?limit=1000`` answer, tried again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dpmsf_core.store import SQLiteStore
from dpmsf_core.testing import http_client, plugin_folder

BASE = "/rest/services/todo/tasks/"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def client(state: Path) -> Iterator[Any]:
    with http_client(plugin_folder(), DPMSF_STATE_DIR=str(state)) as c:
        yield c


def stored(state: Path) -> list[dict[str, Any]]:
    backend = SQLiteStore(state / "store.db")
    try:
        return backend.list("_", "tasks", limit=1000)[0]
    finally:
        backend.close()


def test_oversized_tasks_are_refused_and_nothing_is_stored(client: Any, state: Path) -> None:
    for body, field in [
        ({"title": "x" * 340_000}, "title"),
        ({"title": "t", "description": "x" * 340_000}, "description"),
        ({"title": "x" * 201}, "title"),
        ({"title": "t", "description": "x" * 2_001}, "description"),
    ]:
        answer = client.post(BASE, json=body)
        assert answer.status_code == 422 and answer.json()["errors"][0]["loc"] == ["arguments", "task", field]
    assert client.get(BASE).json() == {"results": [], "cursor": None}
    kept = client.post(BASE, json={"title": "x" * 200, "description": "é" * 2_000}).json()["results"]
    grown = client.put(f"{BASE}{kept['id']}/", json={"description": "x" * 2_001})
    assert grown.status_code == 422
    assert stored(state) == [kept]


def test_a_page_is_at_most_100_tasks_20_by_default(client: Any) -> None:
    for i in range(25):
        assert client.post(BASE, json={"title": f"task {i}"}).status_code == 201
    first = client.get(BASE).json()
    assert len(first["results"]) == 20 and first["cursor"] is not None
    assert len(client.get(BASE, params={"cursor": first["cursor"]}).json()["results"]) == 5
    assert len(client.get(BASE, params={"limit": 100}).json()["results"]) == 25
    refused = client.get(BASE, params={"limit": 1000})
    assert refused.status_code == 422 and refused.json()["errors"][0]["loc"] == ["arguments", "limit"]
    assert client.get(f"{BASE}{'x' * 65}/").status_code == 422  # an id no task has, refused before any read


def test_a_listing_of_big_stored_tasks_answers_about_one_mb(client: Any, state: Path) -> None:
    """Tasks stored before the bounds (or by other code on the same collection) still list in bounded pages."""
    backend = SQLiteStore(state / "store.db")
    for i in range(30):
        backend.put("_", "tasks", f"t{i:02d}", {"id": f"t{i:02d}", "title": "x" * 340_000, "done": False})
    backend.close()
    answer = client.get(BASE, params={"limit": 100})
    assert answer.status_code == 200 and len(answer.content) < 1_100_000  # 10 MB before: every task at once
    page = answer.json()
    assert len(page["results"]) == 2 and page["cursor"] is not None
