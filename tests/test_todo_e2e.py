"""The classic todo tutorial's curl sequence against a real server, across a restart, and through the Lambda handler."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from bundled import bundled
from conftest import ROOT
from eventdata import lambda_context, load_event
from ports import free_port

BASE = "/rest/services/todo/tasks/"


class Server:
    """``dpmsf serve`` as a user runs it, on a given state directory."""

    def __init__(self, state: Path) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DPMSF_")}
        env.update({"DPMSF_STATE_DIR": str(state), "DPMSF_PLUGINS": str(bundled())})
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dpmsf_core",
                "serve",
                "--port",
                str(self.port),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)
        deadline = time.time() + 30
        while True:
            try:
                self.client.get("/")
                return
            except httpx.HTTPError:
                assert time.time() < deadline and self.proc.poll() is None, "server did not start"
                time.sleep(0.1)

    def stop(self) -> None:
        self.client.close()
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(15)


@pytest.mark.slow
def test_tutorial_sequence_survives_a_restart(tmp_path: Path) -> None:
    server = Server(tmp_path)
    c = server.client
    try:
        assert c.get(BASE).json()["results"] == []
        created = []
        for title, description in [
            ("Buy groceries", "Milk, Cheese, Pizza, Fruit, Tylenol"),
            ("Learn Python", "Need to find a good Python tutorial on the web"),
        ]:
            r = c.post(BASE, json={"title": title, "description": description})
            assert r.status_code == 201
            created.append(r.json()["results"])
        assert created[0]["done"] is False and created[0]["title"] == "Buy groceries"
        r = c.post(BASE, json={"title": "Read a book"})
        assert r.status_code == 201
        book = r.json()["results"]
        assert book["description"] == ""
        r = c.post(BASE, json={"description": "no title"})
        assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
        assert "title" in r.json()["detail"]
    finally:
        server.stop()

    server = Server(tmp_path)  # a new process: the tasks are still there
    c = server.client
    try:
        listed = c.get(BASE).json()["results"]
        assert sorted(t["title"] for t in listed) == ["Buy groceries", "Learn Python", "Read a book"]
        second = created[1]["id"]
        assert c.get(f"{BASE}{second}/").json()["results"]["title"] == "Learn Python"
        r = c.put(f"{BASE}{second}/", json={"done": True})
        assert r.status_code == 200 and r.json()["results"]["done"] is True
        assert c.put(f"{BASE}{second}/", json={"done": "yes"}).status_code == 422
        assert c.delete(f"{BASE}{second}/").status_code == 204
        assert c.get(f"{BASE}{second}/").status_code == 404
        assert c.delete(f"{BASE}{second}/").status_code == 404
        assert len(c.get(BASE).json()["results"]) == 2
    finally:
        server.stop()


def test_todo_through_the_lambda_handler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dpmsf_core.app import create_app
    from dpmsf_core.aws.lambda_adapter import build_handler
    from dpmsf_core.config import Settings

    settings = Settings.from_env({"DPMSF_STATE_DIR": str(tmp_path), "AWS_LAMBDA_FUNCTION_NAME": "todo"}, dotenv=None)
    app = create_app(settings)
    handler = build_handler(app)
    ctx = lambda_context()

    def call(kind: str, method: str, path: str, body: dict | None = None) -> dict:
        event = load_event(kind, path=path, method=method, body=body, query={})
        return handler(event, ctx)

    try:
        r = call("apigw_v1", "POST", BASE, {"title": "Read a book"})
        assert r["statusCode"] == 201
        task = json.loads(r["body"])["results"]
        r = call("apigw_v2", "PUT", f"{BASE}{task['id']}/", {"done": True})
        assert json.loads(r["body"])["results"]["done"] is True
        r = call("apigw_v1", "GET", BASE)
        assert [t["title"] for t in json.loads(r["body"])["results"]] == ["Read a book"]
        assert call("alb", "DELETE", f"{BASE}{task['id']}/")["statusCode"] == 204
        assert call("function_url", "GET", f"{BASE}{task['id']}/")["statusCode"] == 404
    finally:
        handler.close()  # its event loop, then the app


def test_polyglot_endpoints_over_http(bundled_client: httpx.Client) -> None:
    r = bundled_client.post("/rest/services/hello-node/", json={"args": [1, 2], "name": "Ada"})
    assert r.status_code == 200, r.text
    assert r.json()["results"]["lang"] == "node" and r.json()["results"]["hello"] == "Ada"
    r = bundled_client.get("/rest/services/hello-shell/?name=Bob")
    assert r.status_code == 200 and "Bob" in json.dumps(r.json()["results"])
