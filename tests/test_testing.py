"""dpmsf_core.testing: what a user's own tests get, tried on the bundled plugins and one written here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dpmsf_core.testing import http_client, lambda_invoker, plugin_folder

EVENTS = """
import json
from dpmsf_core import expose

seen = []

@expose.event(source="sqs")
def on_message(record):
    if json.loads(record["body"]).get("fail"):
        raise ValueError("asked to fail")
    seen.append(record["body"])

@expose.event(source="schedule")
def tick(event):
    seen.append("tick")
"""


def test_http_client_on_a_folder_given_as_a_string() -> None:
    with http_client(str(plugin_folder())) as client:
        r = client.get("/rest/services/hello-world/?name=Ada")
        assert r.status_code == 200 and r.json()["results"]["hello"] == "Ada"
        assert client.get("/rest/services/showcase/greet/?name=x&times=999").status_code == 422


def test_lambda_invoker_rest_and_http_events() -> None:
    with lambda_invoker(plugin_folder()) as invoke:
        out = invoke.rest("GET", "/rest/services/hello-world/", query={"name": "Ada", "tag": ["a", "b"]})
        assert out["statusCode"] == 200
        assert '"hello":"Ada"' in out["body"].replace(" ", "")
        assert invoke.http("POST", "/rest/services/showcase/order/", json_body={"item": "tea"})["statusCode"] == 200
        root = invoke.rest("GET", "/")
        assert '"/Prod/docs"' in root["body"]  # links carry the stage


def test_lambda_invoker_sqs_and_schedule(tmp_path: Path) -> None:
    (tmp_path / "events_mod.py").write_text(EVENTS)
    with lambda_invoker([tmp_path]) as invoke:
        out: dict[str, Any] = invoke.sqs({"n": 1}, {"fail": True})
        assert len(out["batchItemFailures"]) == 1
        assert invoke.schedule()["handled"] == 1


def test_lambda_invoker_takes_json_like_the_http_client() -> None:
    """``json=`` as httpx takes it, on both event kinds; ``json_body=`` still works; both at once is refused."""
    body = {"item": "tea", "quantity": 3}
    with http_client(str(plugin_folder())) as client:
        over_http = client.post("/rest/services/showcase/order/", json=body).json()
    with lambda_invoker(plugin_folder()) as invoke:
        for call in (invoke.rest, invoke.http):
            for given in ({"json": body}, {"json_body": body}):
                out = call("POST", "/rest/services/showcase/order/", **given)
                assert out["statusCode"] == 200, out
                assert json.loads(out["body"]) == over_http, (call.__name__, given)
        try:
            invoke.rest("POST", "/rest/services/showcase/order/", json=body, json_body=body)
        except TypeError as exc:
            assert "json=" in str(exc)
        else:
            raise AssertionError("json= and json_body= together were accepted")
