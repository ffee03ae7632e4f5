"""Each app owns its document store: two apps in one process, served at once or mounted side by side in one
FastAPI app, each see only their own data, and so do their Lambda event functions. Nothing is installed
module-wide, so these tests need no reset of any global."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from eventdata import lambda_context, load_event

from dpmsf_core.app import create_app
from dpmsf_core.aws.lambda_adapter import build_handler
from dpmsf_core.config import Settings
from dpmsf_core.store import SQLiteStore

NOTES = """
from dpmsf_core import expose, store

_notes = store.collection("notes")  # made at import, once for every app that loads this file


@expose.endpoint(method="POST")
def remember(key: str, value: str):
    return _notes.put(key, {"value": value})


@expose.endpoint
def recall(key: str):
    return _notes.get(key)


@expose.endpoint
def keys():
    page, _ = _notes.list()
    return [doc["id"] for doc in page]


@expose.event(source="sqs")
def on_message(record):
    _notes.put(record["messageId"], {"value": record["body"]})
"""


def app_with_store(plugins: Path, db: Path, state: Path) -> Any:
    env = {"DPMSF_PLUGINS": str(plugins), "DPMSF_STATE_DIR": str(state), "DPMSF_STORE": f"sqlite:///{db}"}
    return create_app(Settings.from_env(env, dotenv=None))


def stored(db: Path) -> dict[str, Any]:
    """What the SQLite file itself holds for anonymous callers, read without any app."""
    backend = SQLiteStore(db)
    try:
        page, _ = backend.list("_", "notes")
        return {doc["id"]: doc["value"] for doc in page}
    finally:
        backend.close()


def remember(client: httpx.Client, prefix: str, key: str, value: str) -> None:
    answer = client.post(f"{prefix}/rest/services/notes/remember/", params={"key": key, "value": value})
    assert answer.status_code == 200, answer.text


def keys(client: httpx.Client, prefix: str = "") -> list[str]:
    answer = client.get(f"{prefix}/rest/services/notes/keys/")
    assert answer.status_code == 200, answer.text
    return list(answer.json()["results"])


def test_two_apps_served_at_once_keep_their_own_data(
    tmp_path: Path, plugin_dir: Any, serve: Callable[[Any], httpx.Client]
) -> None:
    plugin_dir.write("notes.py", NOTES)
    first = app_with_store(plugin_dir.path, tmp_path / "first.db", tmp_path / "state1")
    second = app_with_store(plugin_dir.path, tmp_path / "second.db", tmp_path / "state2")
    try:
        a, b = serve(first), serve(second)
        remember(a, "", "colour", "blue")
        remember(b, "", "colour", "green")
        remember(b, "", "size", "xl")
        assert keys(a) == ["colour"]
        assert keys(b) == ["colour", "size"]
        assert a.get("/rest/services/notes/recall/", params={"key": "colour"}).json()["results"]["value"] == "blue"
        assert b.get("/rest/services/notes/recall/", params={"key": "colour"}).json()["results"]["value"] == "green"
        assert a.get("/rest/services/notes/recall/", params={"key": "size"}).json()["results"] is None
        assert first.store is not second.store
    finally:
        first.close()
        second.close()
    assert stored(tmp_path / "first.db") == {"colour": "blue"}  # each file holds only what its own app wrote
    assert stored(tmp_path / "second.db") == {"colour": "green", "size": "xl"}


def test_two_apps_mounted_in_one_fastapi_app_keep_their_own_data(
    tmp_path: Path, plugin_dir: Any, serve: Callable[[Any], httpx.Client]
) -> None:
    from fastapi import FastAPI

    plugin_dir.write("notes.py", NOTES)
    first = app_with_store(plugin_dir.path, tmp_path / "first.db", tmp_path / "state1")
    second = app_with_store(plugin_dir.path, tmp_path / "second.db", tmp_path / "state2")
    outer = FastAPI()
    outer.mount("/one", first)
    outer.mount("/two", second)
    try:
        client = serve(outer)
        remember(client, "/one", "k", "from one")
        remember(client, "/two", "other", "from two")
        assert keys(client, "/one") == ["k"]
        assert keys(client, "/two") == ["other"]
    finally:
        first.close()
        second.close()
    assert stored(tmp_path / "first.db") == {"k": "from one"}
    assert stored(tmp_path / "second.db") == {"other": "from two"}


def test_event_functions_store_in_their_own_apps_store(tmp_path: Path, plugin_dir: Any) -> None:
    plugin_dir.write("notes.py", NOTES)
    handlers = [
        build_handler(app_with_store(plugin_dir.path, tmp_path / f"{name}.db", tmp_path / f"state-{name}"))
        for name in ("first", "second")
    ]
    event = load_event("sqs")
    try:
        out = handlers[0](event, lambda_context())
        assert out == {"batchItemFailures": []}
    finally:
        for handler in handlers:
            handler.close()
    expected = {record["messageId"]: record["body"] for record in event["Records"]}
    assert expected and stored(tmp_path / "first.db") == expected
    assert not (tmp_path / "second.db").exists()  # the other app never opened its store
