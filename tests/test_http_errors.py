"""Bad input over real HTTP: each gets a clear RFC 9457 answer with the right status, and nothing else breaks."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

PROBLEM = "application/problem+json"

FUNCS = """
from dpmsf_core import expose

@expose.endpoint(method="GET|POST", API="echo")
def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}

@expose.endpoint(method="GET", API="boom")
def boom():
    raise ValueError("secret internals")

@expose.endpoint(method="GET", API="unencodable")
def unencodable():
    return {"x": object()}

@expose.endpoint(method="GET", API="slow-async")
async def slow_async():
    import asyncio
    await asyncio.sleep(5)

@expose.endpoint(method="GET", API="slow-sync")
def slow_sync():
    import time
    time.sleep(2)

@expose.endpoint(method="GET", API="get-only")
def get_only():
    return 1

@expose.endpoint(method="GET", API="own-timeout")
async def own_timeout():
    raise TimeoutError("the plugin's own, not ours")

@expose.endpoint(method="GET", API="breaks-mid-stream")
def breaks_mid_stream():
    from starlette.responses import StreamingResponse
    from dpmsf_core import HTTPError

    def chunks():
        yield b"first part"
        raise HTTPError(409, "changed while streaming")

    return StreamingResponse(chunks())
"""


@pytest.fixture
def client(plugin_dir: Any, make_app: Callable[..., Any], serve: Callable[[Any], httpx.Client]) -> httpx.Client:
    plugin_dir.write("funcs.py", FUNCS)
    return serve(
        make_app(plugin_dir.path, env={"DPMSF_MAX_BODY": "1000", "NUM_URL_PARMS": "3", "DPMSF_FUNCTION_TIMEOUT": "0.3"})
    )


def assert_problem(r: httpx.Response, status: int, *fragments: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["status"] == status
    assert {"type", "title", "detail", "request_id"} <= body.keys()
    assert body["request_id"] == r.headers["x-request-id"]
    assert "Traceback" not in r.text
    for fragment in fragments:
        assert fragment in body["detail"], body["detail"]
    return body


def test_malformed_json(client: httpx.Client) -> None:
    r = client.post("/rest/services/echo/", content=b'{"a": 1', headers={"content-type": "application/json"})
    assert_problem(r, 400, "Malformed JSON")


def test_json_body_not_an_object(client: httpx.Client) -> None:
    assert_problem(client.post("/rest/services/echo/", json=[1, 2]), 400, "must be an object")


def test_wrong_content_type(client: httpx.Client) -> None:
    r = client.post("/rest/services/echo/", content=b"<x/>", headers={"content-type": "application/xml"})
    assert_problem(r, 415, "application/xml")


def test_form_body_is_accepted(client: httpx.Client) -> None:
    r = client.post("/rest/services/echo/", data={"a": "1", "b": "2"})
    assert r.json()["results"]["kwargs"] == {"a": "1", "b": "2"}


def test_body_over_limit(client: httpx.Client) -> None:
    assert_problem(client.post("/rest/services/echo/", json={"x": "y" * 2000}), 413, "1000")


def test_body_over_limit_without_content_length(client: httpx.Client) -> None:
    def chunks():
        for _ in range(5):
            yield b"x" * 400

    r = client.post("/rest/services/echo/", content=chunks(), headers={"content-type": "application/json"})
    assert_problem(r, 413)


def test_unknown_api(client: httpx.Client) -> None:
    body = assert_problem(client.get("/rest/services/nope/"), 404, "nope")
    assert body["type"].endswith("not-found")


def test_unknown_route_outside_services(client: httpx.Client) -> None:
    assert_problem(client.get("/elsewhere"), 404)


def test_did_you_mean(client: httpx.Client) -> None:
    assert_problem(client.get("/rest/services/ech/"), 404, "Did you mean 'echo'")


def test_undeclared_method_is_405_with_allow(client: httpx.Client) -> None:
    r = client.delete("/rest/services/echo/")
    body = assert_problem(r, 405)
    assert r.headers["allow"] == "GET, POST, HEAD, OPTIONS"
    assert body["allow"] == ["GET", "POST", "HEAD", "OPTIONS"]
    assert client.post("/rest/services/get-only/").status_code == 405


def test_too_many_url_params(client: httpx.Client) -> None:
    assert client.get("/rest/services/echo/1/2/3/").status_code == 200
    assert_problem(client.get("/rest/services/echo/1/2/3/4/"), 404, "at most 3")


@pytest.mark.parametrize("mapping", [["parm_1"], {"parm_1": 5}, "p", {"parm_1": "has-dash"}])
def test_bad_map(client: httpx.Client, mapping: Any) -> None:
    assert_problem(client.post("/rest/services/echo/x/", json={"__map__": mapping}), 422, "__map__")


def test_args_not_a_list(client: httpx.Client) -> None:
    assert_problem(client.post("/rest/services/echo/", json={"args": 5}), 422, '"args"')


def test_function_that_raises_hides_internals(client: httpx.Client) -> None:
    body = assert_problem(client.get("/rest/services/boom/"), 500, "API 'boom' failed; the server log has the details.")
    assert "ValueError" not in json.dumps(body) and "secret internals" not in json.dumps(body)
    assert client.get("/rest/services/echo/").status_code == 200  # the server lives on


def test_debug_shows_the_traceback(
    plugin_dir: Any, make_app: Callable[..., Any], serve: Callable[[Any], httpx.Client]
) -> None:
    plugin_dir.write("funcs.py", FUNCS)
    client = serve(make_app(plugin_dir.path, env={"DPMSF_DEBUG": "1"}))
    body = client.get("/rest/services/boom/").json()
    assert "secret internals" in body["detail"]
    assert any("ValueError" in line for line in body["traceback"])


def test_result_not_json_encodable(client: httpx.Client) -> None:
    assert_problem(client.get("/rest/services/unencodable/"), 500, "not JSON-encodable")


def test_head_and_options(client: httpx.Client) -> None:
    r = client.head("/rest/services/get-only/")
    assert r.status_code == 200 and r.content == b""
    assert int(r.headers["content-length"]) == len(b'{"results":1}')
    r = client.options("/rest/services/echo/")
    assert r.status_code == 204
    assert r.headers["allow"] == "GET, POST, HEAD, OPTIONS"


def test_cors_preflight_and_simple_request(client: httpx.Client) -> None:
    r = client.options(
        "/rest/services/echo/",
        headers={
            "origin": "https://app.example",
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization",
        },
    )
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "*"
    assert r.headers["access-control-allow-methods"] == "GET, POST, HEAD, OPTIONS"
    assert r.headers["access-control-allow-headers"] == "authorization"
    r = client.get("/rest/services/echo/", headers={"origin": "https://app.example"})
    assert r.headers["access-control-allow-origin"] == "*"
    assert "X-DPMSF-Next-Token" in r.headers["access-control-expose-headers"]


def test_request_id_is_echoed_or_made(client: httpx.Client) -> None:
    assert client.get("/rest/services/echo/", headers={"x-request-id": "abc-123"}).headers["x-request-id"] == "abc-123"
    made = client.get("/rest/services/echo/", headers={"x-request-id": "bad id\twith spaces"}).headers["x-request-id"]
    assert made != "bad id\twith spaces" and len(made) == 24


def test_repeated_query_key_becomes_a_list(client: httpx.Client) -> None:
    r = client.get("/rest/services/echo/?tag=a&tag=b,c&x=1")
    assert r.json()["results"]["kwargs"] == {"tag": ["a", "b,c"], "x": "1"}


def test_precedence_query_then_url_then_body(client: httpx.Client) -> None:
    r = client.post("/rest/services/echo/from-url/?parm_1=from-query&k=from-query", json={"k": "from-body"})
    assert r.json()["results"]["kwargs"] == {"parm_1": "from-url", "k": "from-body"}


@pytest.mark.parametrize("api", ["slow-async", "slow-sync"])
def test_function_past_its_timeout_is_504(client: httpx.Client, api: str) -> None:
    assert_problem(client.get(f"/rest/services/{api}/"), 504, "timeout of 0.3 s")
    assert client.get("/rest/services/echo/").status_code == 200


def test_a_plugins_own_timeout_error_is_its_error_not_ours(client: httpx.Client) -> None:
    r = client.get("/rest/services/own-timeout/")
    assert r.status_code == 500
    assert r.json()["detail"] == "API 'own-timeout' failed; the server log has the details."


def test_an_error_after_the_response_started_is_logged(client: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    received = b""
    with caplog.at_level("ERROR", logger="dpmsf"):
        with client.stream("GET", "/rest/services/breaks-mid-stream/", headers={"x-request-id": "mid-stream-1"}) as r:
            assert r.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):  # the body is cut short: the only honest signal left
                for chunk in r.iter_bytes():
                    received += chunk
    assert received.startswith(b"first part")
    (line,) = [rec.getMessage() for rec in caplog.records if "after the response started" in rec.getMessage()]
    assert "request mid-stream-1: 409 changed while streaming" in line


def test_bundled_examples_bound_their_inputs(bundled_client: httpx.Client) -> None:
    r = bundled_client.get("/rest/services/showcase/greet/?name=x&times=1607727041")
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["arguments", "times"]
    assert bundled_client.get("/rest/services/showcase/greet/?name=x&times=3").json() == {
        "results": "hello x hello x hello x"
    }


def test_a_module_that_failed_to_load_answers_503_saying_why(
    plugin_dir: Any, make_app: Callable[..., Any], serve: Callable[[Any], httpx.Client]
) -> None:
    plugin_dir.write("ok.py", "def fine():\n    return 1\n")
    plugin_dir.write("broken.py", "def f(:\n    pass\n")
    client = serve(make_app(plugin_dir.path))
    body = assert_problem(client.get("/rest/services/broken/f/"), 503)
    assert body["detail"] == "Module 'broken' failed to load: broken.py, line 1: syntax error: invalid syntax"
    assert str(plugin_dir.path) not in json.dumps(body)  # no server paths for an anonymous caller
    problems = client.get("/rest/services/__dir__/").json()["problems"]
    assert problems == ["broken.py, line 1: syntax error: invalid syntax"]
    assert client.get("/rest/services/fine/").json() == {"results": 1}


def test_an_answer_over_the_response_limit_is_a_problem_not_a_huge_body(
    plugin_dir: Any, make_app: Callable[..., Any], serve: Callable[[Any], httpx.Client]
) -> None:
    plugin_dir.write("big.py", "def big():\n    return 'x' * 5000\n")
    client = serve(make_app(plugin_dir.path, env={"DPMSF_MAX_RESPONSE": "1000"}))
    body = assert_problem(client.get("/rest/services/big/"), 500)
    assert body["title"] == "Response Too Large"
    assert body["detail"] == "API 'big' answered 5014 bytes, over the limit of 1000 bytes (DPMSF_MAX_RESPONSE)."


def test_a_bad_model_field_is_named_by_its_path(bundled_client: httpx.Client) -> None:
    r = bundled_client.post("/rest/services/showcase/order/", json={"item": "tea", "quantity": "many"})
    assert r.status_code == 422
    (error,) = r.json()["errors"]
    assert error["loc"] == ["arguments", "order", "quantity"]
    assert error["input"] == "many"
    assert r.json()["detail"].startswith("Invalid value for 'order.quantity': ")


def test_url_segments_bind_in_order_to_a_typed_function(
    plugin_dir: Any, make_app: Callable[..., Any], serve: Callable[[Any], httpx.Client]
) -> None:
    plugin_dir.write(
        "calc.py",
        "def divide(a: float, b: float = 1.0):\n    return a / b\n\n"
        "def tagged(name: str, *, loud: bool = False):\n    return name.upper() if loud else name\n\n"
        "def legacy(**kwargs):\n    return kwargs\n",
    )
    client = serve(make_app(plugin_dir.path))
    assert client.get("/rest/services/divide/9/3/").json() == {"results": 3.0}
    assert client.get("/rest/services/divide/9/").json() == {"results": 9.0}
    assert client.get("/rest/services/divide/3/?a=9").json() == {"results": 3.0}  # the segment fills b
    bad = assert_problem(client.get("/rest/services/divide/nine/3/"), 422)
    assert bad["errors"][0]["loc"] == ["arguments", "a"]
    assert client.get("/rest/services/tagged/ada/?loud=true").json() == {"results": "ADA"}
    assert client.get("/rest/services/legacy/x/y/").json() == {"results": {"parm_1": "x", "parm_2": "y"}}
    mapped = client.post("/rest/services/divide/8/2/", json={"__map__": {"parm_1": "a", "parm_2": "b"}})
    assert mapped.json() == {"results": 4.0}
