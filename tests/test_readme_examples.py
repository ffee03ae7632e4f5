"""Every example of the original framework's README, called exactly as written, on the bundled plugins."""

from __future__ import annotations

import httpx
import pytest

MAP = {f"parm_{i}": f"p{i}" for i in range(1, 11)}


def test_get_with_query_string(bundled_client: httpx.Client) -> None:
    r = bundled_client.get("/rest/services/hello-world/?a=1&b=2&c=3&d=4")
    assert r.status_code == 200
    assert r.json() == {"results": {"hello": "world", "args": [], "kwargs": {"a": "1", "b": "2", "c": "3", "d": "4"}}}


def test_get_with_slug(bundled_client: httpx.Client) -> None:
    r = bundled_client.get("/rest/services/hello-world/slug-or-numbers/")
    assert r.json()["results"]["kwargs"] == {"parm_1": "slug-or-numbers"}


def test_trailing_slash_is_optional(bundled_client: httpx.Client) -> None:
    assert bundled_client.get("/rest/services/hello-world?name=x").json()["results"]["hello"] == "x"


def test_post_sample_one_with_map(bundled_client: httpx.Client) -> None:
    body = {
        "args": [1, 2, 3, 4, 5, 6],
        "name1": "one",
        "name2": "two",
        "name3": "three",
        "name4": "four",
        "__map__": MAP,
    }
    r = bundled_client.post("/rest/services/v1/sample-one/1/2/3/4/5/6/7/8/9/10/?a=1&b=2&c=3&d=4", json=body)
    assert r.status_code == 200
    results = r.json()["results"]
    assert results["args"] == [1, 2, 3, 4, 5, 6]
    expected = {
        "a": "1",
        "b": "2",
        "c": "3",
        "d": "4",
        "name1": "one",
        "name2": "two",
        "name3": "three",
        "name4": "four",
        **{f"p{i}": str(i) for i in range(1, 11)},
    }
    assert results["kwargs"] == expected
    assert "__map__" not in r.text and "parm_1" not in r.text


def test_post_unqualified_sample_one(bundled_client: httpx.Client) -> None:
    body = {"args": [1, 2, 3, 4, 5, 6], "name1": "one", "name2": "two", "name3": "three", "name4": "four"}
    r = bundled_client.post("/rest/services/sample-one/", json=body)
    assert r.json()["results"] == {
        "args": [1, 2, 3, 4, 5, 6],
        "kwargs": {"name1": "one", "name2": "two", "name3": "three", "name4": "four"},
    }


@pytest.mark.parametrize(
    ("module", "marker"),
    [
        ("v1", {"version": 1}),
        ("v2", {"version": 2, "action": "update"}),
        ("product_v1", {"product": "v1"}),
        ("product_v2", {"product": "v2"}),
    ],
)
def test_api_versioning(bundled_client: httpx.Client, module: str, marker: dict) -> None:
    r = bundled_client.get(f"/rest/services/{module}/api-name/update/123456789/?a=1&b=2&c=3&d=4")
    assert r.status_code == 200
    results = r.json()["results"]
    for key, value in marker.items():
        assert results[key] == value
    assert results["kwargs"] == {"a": "1", "b": "2", "c": "3", "d": "4", "parm_1": "update", "parm_2": "123456789"}


def test_module_real_name_is_hidden_behind_alias(bundled_client: httpx.Client) -> None:
    r = bundled_client.get("/rest/services/sample_v1/api-name/")
    assert r.status_code in (404, 409)  # 'sample_v1' is not a module name: falls back to an API name


def test_ambiguous_api_name_lists_qualified_urls(bundled_client: httpx.Client) -> None:
    r = bundled_client.get("/rest/services/api-name/")
    assert r.status_code == 409
    assert r.headers["content-type"] == "application/problem+json"
    assert sorted(r.json()["candidates"]) == [
        f"/rest/services/{m}/api-name/" for m in ("product_v1", "product_v2", "v1", "v2")
    ]


@pytest.mark.parametrize("method", ["GET", "PUT", "POST"])
def test_method_forms_string_split_and_list(bundled_client: httpx.Client, method: str) -> None:
    for url in ("/rest/services/hello-world/", "/rest/services/v1/api-name/", "/rest/services/v2/api-name/"):
        assert bundled_client.request(method, url).status_code == 200, url


def test_directory_lists_modules_and_endpoints(bundled_client: httpx.Client) -> None:
    d = bundled_client.get("/rest/services/__dir__/").json()
    names = {m["name"] for m in d["modules"]}
    assert {"hello", "v1", "v2", "product_v1", "product_v2", "introspected", "showcase"} <= names
    by_api = {(e["module"], e["api"]): e for e in d["endpoints"]}
    hello = by_api[("hello", "hello-world")]
    assert hello["methods"] == ["GET", "PUT", "POST"]
    assert hello["url"] == "/rest/services/hello-world/"
    assert hello["doc"].startswith("Say hello")
    assert by_api[("v1", "api-name")]["url"] == "/rest/services/v1/api-name/"
    add = by_api[("introspected", "add")]
    assert [p["name"] for p in add["parameters"]] == ["a", "b"]
    assert add["parameters"][0] == {"name": "a", "kind": "named", "type": "int", "required": True}
    assert ("introspected", "join") not in by_api and ("introspected", "_shout") not in by_api
    assert ("introspected", "NotAnEndpoint") not in by_api
