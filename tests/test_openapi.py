"""``/openapi.json`` and ``/docs`` describe every endpoint, with types from signatures and docstrings."""

from __future__ import annotations

import ast

import httpx
import pytest
from conftest import ROOT


def test_openapi_types_and_descriptions(bundled_client: httpx.Client) -> None:
    spec = bundled_client.get("/openapi.json").json()
    greet = spec["paths"]["/rest/services/greet/"]
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
    assert "Also served qualified by its module: `GET /rest/services/showcase/greet/`." in greet["get"]["description"]
    body = greet["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["name"] and "times" in body["properties"]
    assert "additionalProperties" not in body  # unknown keys are dropped by the server, not refused
    # a single pydantic model parameter takes the whole body: the body's schema is the model's
    order = spec["paths"]["/rest/services/order/"]["post"]["requestBody"]
    assert order == {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "title": "Order",
                    "type": "object",
                    "properties": {
                        "item": {"title": "Item", "type": "string", "maxLength": 100},
                        "quantity": {
                            "title": "Quantity",
                            "type": "integer",
                            "default": 1,
                            "minimum": 1,
                            "maximum": 1000,
                        },
                    },
                    "required": ["item"],
                }
            }
        },
    }


def test_one_operation_per_endpoint_and_method(bundled_client: httpx.Client) -> None:
    spec = bundled_client.get("/openapi.json").json()
    listed = bundled_client.get("/rest/services/__dir__/").json()["endpoints"]
    operations = [(method, path) for path, ops in spec["paths"].items() for method in ops]
    assert sorted(operations) == sorted((m.lower(), e["url"]) for e in listed for m in e["methods"])
    assert "/rest/services/greet/" in spec["paths"]  # the URL its author declared, as __dir__ lists it
    assert "/rest/services/showcase/greet/" not in spec["paths"]  # the qualified one is a note, not a second operation
    assert "/rest/services/showcase/greet/" in spec["paths"]["/rest/services/greet/"]["get"]["description"]
    assert "/rest/services/v1/api-name/" in spec["paths"]  # defined by several modules: only the qualified URL
    ids = [op["operationId"] for path in spec["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids))


def test_module_docstrings_are_tag_descriptions(bundled_client: httpx.Client) -> None:
    source = (ROOT / "plugins" / "todo.py").read_text(encoding="utf-8")
    tags = {t["name"]: t for t in bundled_client.get("/openapi.json").json()["tags"]}
    docstring = ast.get_docstring(ast.parse(source))
    assert docstring is not None and tags["todo"]["name"] == "todo"
    described = tags["todo"]["description"]
    assert [line.rstrip() for line in described.splitlines()] == docstring.splitlines()  # every line, as written
    # Swagger UI renders it as Markdown, which would join a paragraph's lines: each break is a hard one.
    markdown_it = pytest.importorskip("markdown_it")
    html = markdown_it.MarkdownIt("commonmark").render(described)
    breaks = sum(1 for a, b in zip(docstring.splitlines(), docstring.splitlines()[1:], strict=False) if a and b)
    assert breaks > 1 and html.count("<br />") == breaks, html
    assert tags["v1"]["description"].startswith("Version 1 of a small API, published under the alias ``v1``")


def test_path_parameters_and_real_content_types(bundled_client: httpx.Client) -> None:
    paths = bundled_client.get("/openapi.json").json()["paths"]
    one = paths["/rest/services/tasks/{task_id}/"]
    assert set(one) == {"get", "put", "delete"} and set(paths["/rest/services/tasks/"]) == {"get", "post"}
    assert one["get"]["parameters"] == [
        {
            "name": "task_id",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "maxLength": 64, "minLength": 1, "pattern": "^[^/]+$"},
        }
    ]
    # a bare Response passes through: any media type (image/png is not JSON), or none at all (204)
    png = paths["/rest/services/png/"]["get"]["responses"]
    assert png["2XX"]["content"] == {"*/*": {"schema": {}}} and png["204"] == {"description": "No content"}
    assert "200" not in png
    greet = paths["/rest/services/greet/"]["get"]["responses"]
    assert greet["200"]["content"]["application/json"]["schema"] == {
        "type": "object",
        "properties": {"results": {"type": "string"}},  # from the return annotation
        "required": ["results"],
    }
    statuses = {code: sorted(op["responses"]) for code, op in paths["/rest/services/greet/"].items()}
    errors = ["401", "403", "404", "422", "500", "503", "504", "default"]
    assert statuses == {"get": sorted(["200", *errors]), "post": sorted(["200", "400", "413", "415", *errors])}
    assert "502" in paths["/rest/services/hello-node/"]["get"]["responses"]  # a program behind it
    problem = paths["/rest/services/item/"]["get"]["responses"]["default"]  # raise HTTPError(404, ...)
    assert problem["content"] == {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


def test_request_schemas_are_what_the_server_enforces(bundled_client: httpx.Client) -> None:
    paths = bundled_client.get("/openapi.json").json()["paths"]
    free = paths["/rest/services/hello-world/"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert free["properties"]["args"]["type"] == ["array", "null"]  # {"args": null} means no positional arguments
    post = bundled_client.post
    assert post("/rest/services/hello-world/", json={"args": None}).json()["results"]["args"] == []
    assert post("/rest/services/hello-world/", json={"args": 5}).status_code == 422
    add = "/rest/services/add/"
    assert paths[add]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]["b"] == {
        "type": "integer",
        "default": 0,
    }
    # JSON values are checked as JSON: false and "1" are not integers there (a query's text is converted)
    assert post(add, json={"a": False}).status_code == 422
    assert post(add, json={"a": "1"}).json()["errors"][0]["loc"] == ["arguments", "a"]
    assert post(add, json={"a": 463.0, "b": 1}).json() == {"results": 464}  # JSON does not tell 463.0 from 463
    assert bundled_client.get(add, params={"a": "1", "b": "2"}).json() == {"results": 3}
    assert post(add, data={"a": "1", "b": "2"}).json() == {"results": 3}  # a form's values are text too


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


NESTED = '''
"""Orders with lines: a nested model."""
from pydantic import BaseModel
from dpmsf_core import expose


class Line(BaseModel):
    sku: str
    quantity: int = 1


class Basket(BaseModel):
    lines: list[Line]


@expose.endpoint(method="POST", path="baskets/{basket_id}")
def put_basket(basket_id: int, basket: Basket) -> int:
    """Store a basket."""
    return basket_id + sum(line.quantity for line in basket.lines)
'''


def test_nested_models_are_shared_components(make_app, plugin_dir, serve) -> None:
    plugin_dir.write("shop.py", NESTED)
    client = serve(make_app(plugin_dir.path))
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/rest/services/baskets/{basket_id}/"]["post"]
    assert op["parameters"] == [{"name": "basket_id", "in": "path", "required": True, "schema": {"type": "integer"}}]
    body = op["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["lines"]["items"] == {"$ref": "#/components/schemas/Line"}  # resolvable from the root
    assert spec["components"]["schemas"]["Line"]["required"] == ["sku"]
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["results"] == {
        "type": "integer"
    }
    assert spec["tags"] == [{"name": "shop", "description": "Orders with lines: a nested model."}]
    r = client.post("/rest/services/shop/baskets/10/", json={"lines": [{"sku": "a", "quantity": 2}, {"sku": "b"}]})
    assert r.json() == {"results": 13}
