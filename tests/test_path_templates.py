"""``@expose.endpoint(path="items/{item_id}")``: URL segments bound by name, converted and validated like query
parameters, one function per method and URL shape, checked when the plugin loads; over a real server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dpmsf_core.errors import PluginError
from dpmsf_core.expose import endpoint_spec, expose, exposure, parse_path
from dpmsf_core.testing import http_client

SHOP = '''
from typing import Annotated
from pydantic import Field
from dpmsf_core import expose

@expose.endpoint(method="GET", path="items")
def list_items(limit: int = 10):
    """All items."""
    return {"limit": limit}

@expose.endpoint(method="POST", path="items")
def add_item(name: str):
    return {"added": name}

@expose.endpoint(method="GET|PUT", path="items/{item_id}")
def item(item_id: Annotated[int, Field(ge=1)], verbose: bool = False):
    """One item by its number."""
    return {"item_id": item_id, "verbose": verbose}

@expose.endpoint(method="GET", path="items/{item_id}/reviews/{n}")
def review(item_id: int, n: int):
    return [item_id, n]

@expose.endpoint(method="GET", API="legacy")
def legacy(*args, **kwargs):
    return kwargs
'''


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("plugins")
    (folder / "shop.py").write_text(SHOP, encoding="utf-8")
    with http_client(str(folder)) as client:
        yield client


def test_segments_bind_by_name_converted_by_annotation(shop: Any) -> None:
    assert shop.get("/rest/services/shop/items/7/?verbose=1").json() == {"results": {"item_id": 7, "verbose": True}}
    assert shop.get("/rest/services/items/7/").json() == {"results": {"item_id": 7, "verbose": False}}
    assert shop.get("/rest/services/items/7/reviews/2/").json() == {"results": [7, 2]}
    # the template's value is the URL's: a query or body of the same name does not override it
    assert shop.put("/rest/services/items/7/?item_id=9", json={"item_id": 8}).json()["results"]["item_id"] == 7


def test_one_function_per_method_and_shape(shop: Any) -> None:
    assert shop.get("/rest/services/items/?limit=3").json() == {"results": {"limit": 3}}
    assert shop.post("/rest/services/items/", json={"name": "pen"}).json() == {"results": {"added": "pen"}}


def test_a_bad_segment_is_a_422_naming_it(shop: Any) -> None:
    r = shop.get("/rest/services/items/abc/")
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"] == [
        {
            "loc": ["arguments", "item_id"],
            "msg": "Input should be a valid integer, unable to parse string as an integer",
            "input": "abc",
        }
    ]
    assert shop.get("/rest/services/items/0/").json()["errors"][0]["loc"] == ["arguments", "item_id"]


def test_wrong_shape_is_404_listing_the_shapes_and_wrong_method_405(shop: Any) -> None:
    r = shop.get("/rest/services/items/7/colour/")
    assert r.status_code == 404
    assert r.json()["detail"] == (
        "API 'items' answers /rest/services/shop/items/, /rest/services/shop/items/{item_id}/, "
        "/rest/services/shop/items/{item_id}/reviews/{n}/; not .../items/7/colour/."
    )
    r = shop.delete("/rest/services/items/7/")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, PUT, HEAD, OPTIONS" and r.json()["allow"] == ["GET", "PUT", "HEAD", "OPTIONS"]
    r = shop.request("OPTIONS", "/rest/services/items/")
    assert r.status_code in (200, 204) and r.headers["allow"] == "GET, POST, HEAD, OPTIONS"
    assert shop.head("/rest/services/items/7/").status_code == 200


def test_kwargs_functions_keep_parm_n(shop: Any) -> None:
    assert shop.get("/rest/services/legacy/a/b/").json() == {"results": {"parm_1": "a", "parm_2": "b"}}


def test_dir_and_openapi_show_the_template(shop: Any) -> None:
    listed = {e["qualified_url"]: e for e in shop.get("/rest/services/__dir__/").json()["endpoints"]}
    assert listed["/rest/services/shop/items/{item_id}/"]["path_params"] == ["item_id"]
    assert listed["/rest/services/shop/items/{item_id}/"]["url"] == "/rest/services/items/{item_id}/"
    assert "path_params" not in listed["/rest/services/shop/legacy/"]
    doc = shop.get("/openapi.json").json()
    op = doc["paths"]["/rest/services/items/{item_id}/"]["get"]
    assert [p for p in op["parameters"] if p["in"] == "path"] == [
        {"name": "item_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
    ]
    assert [p["name"] for p in op["parameters"] if p["in"] == "query"] == ["verbose"]
    assert set(doc["paths"]["/rest/services/items/"]) == {"get", "post"}


def test_parse_path_rules() -> None:
    assert parse_path("tasks/{task_id}", None) == ("tasks", ("{task_id}",))
    assert parse_path("/tasks/", "tasks") == ("tasks", ())
    for bad, says in [
        ("{id}", "must start with the API name"),
        ("tasks/{a}/{a}", "names {a} twice"),
        ("tasks/x{id}", "neither a literal nor"),
        ("tasks//{id}", "no empty segments"),
    ]:
        with pytest.raises(PluginError, match=says):
            parse_path(bad, None)
    with pytest.raises(PluginError, match="starts with 'tasks' but API='todo'"):
        parse_path("tasks/{id}", "todo")


def test_a_placeholder_the_function_does_not_take_fails_at_load() -> None:
    def g(id: str) -> str:
        return id

    with pytest.raises(PluginError, match=r"names \{task_id\}, which g\(\) does not take"):
        expose.endpoint(path="tasks/{task_id}")(g)

    def f(**kwargs: Any) -> Any:
        return kwargs

    assert endpoint_spec(expose.endpoint(path="tasks/{task_id}")(f)).path_params == ("task_id",)


def test_same_shape_and_method_twice_is_a_duplicate(tmp_path: Path) -> None:
    from dpmsf_core.expose import Definition

    def spec(path: str, method: str) -> Any:
        return endpoint_spec(expose.endpoint(method=method, path=path)(lambda **kw: kw))

    found = exposure(
        [
            Definition("a", spec("t/{x}", "GET")),
            Definition("b", spec("t/{y}", "GET|PUT")),
            Definition("c", spec("t/{y}", "DELETE")),
            Definition("d", spec("t", "GET")),
        ]
    )
    assert [name for name, _ in found.endpoints] == ["a", "c", "d"]
    assert found.duplicates == ("API 't/{y}' (GET|PUT) is declared by both a() and b(); a() is kept",)


def test_a_bad_template_is_a_load_error_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text(
        'from dpmsf_core import expose\n\n\n@expose.endpoint(path="t/{nope}")\ndef f(x):\n    return x\n',
        encoding="utf-8",
    )
    with http_client(str(tmp_path)) as client:
        (module,) = client.get("/rest/services/__dir__/").json()["modules"]
        assert module["status"] == "error"
        assert module["error"] == "bad.py, line 4: path='t/{nope}' names {nope}, which f() does not take as a parameter"
