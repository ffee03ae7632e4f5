"""``/openapi.json`` and ``/docs`` describe every endpoint, with types from signatures and docstrings."""

from __future__ import annotations

import httpx


def test_openapi_types_and_descriptions(bundled_client: httpx.Client) -> None:
    spec = bundled_client.get("/openapi.json").json()
    greet = spec["paths"]["/rest/services/showcase/greet/"]
    params = {p["name"]: p for p in greet["get"]["parameters"]}
    assert params["name"] == {
        "name": "name",
        "in": "query",
        "required": True,
        "schema": {"type": "string", "maxLength": 100},  # the bounds of Annotated[str, Field(...)] are documented
    }
    assert params["times"]["schema"] == {"type": "integer", "default": 1, "minimum": 1, "maximum": 100}
    assert params["shout"]["schema"]["type"] == "boolean"
    assert greet["get"]["summary"].startswith("Typed parameters")
    body = greet["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["name"] and "times" in body["properties"]
    order = spec["paths"]["/rest/services/showcase/order/"]["post"]["requestBody"]["content"]["application/json"]
    assert order["schema"]["properties"]["order"]["properties"]["item"] == {
        "title": "Item",
        "type": "string",
        "maxLength": 100,
    }
    assert "/rest/services/greet/" in spec["paths"]  # unique: the short URL too
    assert "/rest/services/api-name/" not in spec["paths"]  # ambiguous: only qualified
    ids = [op["operationId"] for path in spec["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids))


def test_docs_page(bundled_client: httpx.Client) -> None:
    r = bundled_client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "swagger-ui" in r.text and "/openapi.json" in r.text


def test_root_index(bundled_client: httpx.Client) -> None:
    assert bundled_client.get("/").json()["directory"] == "/rest/services/__dir__/"


def test_stage_prefix_is_stripped(bundled_client: httpx.Client) -> None:
    assert bundled_client.get("/Prod/rest/services/hello-world/?name=s").json()["results"]["hello"] == "s"
    # routed, but never reflected: the root of generated URLs comes from DPMSF_BASE_PATH or the stage only
    assert bundled_client.get("/Prod/openapi.json").json()["servers"] == [{"url": "/"}]


def test_mounts_into_a_fastapi_app(make_app, plugin_dir, serve) -> None:
    from fastapi import FastAPI

    plugin_dir.write("m.py", "def plugged(x: int):\n    return x * 2\n")
    outer = FastAPI()

    @outer.get("/health")
    def health() -> dict:
        return {"ok": True}

    outer.mount("/", make_app(plugin_dir.path))
    client = serve(outer)
    assert client.get("/health").json() == {"ok": True}
    assert client.get("/rest/services/plugged/?x=21").json() == {"results": 42}
