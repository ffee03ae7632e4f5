"""The Lambda handler on every HTTP event kind AWS sends, comparing whole response dicts (as Mangum's tests do)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from bundled import bundled
from eventdata import lambda_context, load_event

from dpmsf_core.app import create_app
from dpmsf_core.aws.lambda_adapter import build_handler
from dpmsf_core.config import Settings
from dpmsf_core.loading.manifest import content_version

RID = lambda_context().aws_request_id
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(16))
PROBLEM = "application/problem+json"
ALLOW_HELLO = "GET, PUT, POST, HEAD, OPTIONS"
PREFIX = {
    "apigw_v1": "/Prod",
    "apigw_v1_custom_domain": "/api",
    "apigw_v2_named_stage": "/dev",
}  # the URL path the client used

KINDS = [
    pytest.param("apigw_v1", id="apigw-v1"),
    pytest.param("apigw_v1_custom_domain", id="apigw-v1-custom-domain"),
    pytest.param("apigw_v2", id="apigw-v2"),
    pytest.param("apigw_v2_named_stage", id="apigw-v2-named-stage"),
    pytest.param("alb", id="alb"),
    pytest.param("alb_multi", id="alb-multi"),
    pytest.param("function_url", id="function-url"),
]

EXTRA_PLUGIN = '''
import gzip

from starlette.responses import Response

from dpmsf_core import RequestInfo, expose


@expose.endpoint(method="GET", API="cookies")
def cookies(request: RequestInfo):
    """Echo the request's cookie header; set two cookies."""
    response = Response(request.header("cookie") or "", media_type="text/plain")
    response.set_cookie("a", "1")
    response.set_cookie("b", "2")
    return response


@expose.endpoint(method="GET", API="context")
def context(request: RequestInfo):
    """What the event carries for this request only."""
    event = request.event or {}
    return {"stage_variables": event.get("stageVariables"), "authorizer": event["requestContext"].get("authorizer")}


@expose.endpoint(method="GET", API="gzipped")
def gzipped():
    body = gzip.compress(b'{"zipped": true}')
    return Response(body, media_type="application/json", headers={"Content-Encoding": "gzip"})


@expose.endpoint(method="GET", API="big")
def big(size: int):
    return Response(b"x" * size, media_type="text/plain")
'''


def make_handler(tmp_path: Path | None = None, **env: str) -> Any:
    plugins = "."
    if tmp_path is not None:
        folder = tmp_path / "extra"
        folder.mkdir(exist_ok=True)
        (folder / "lambda_extra.py").write_text(EXTRA_PLUGIN)
        plugins = f".:{folder}"
    settings = Settings.from_env({"DPMSF_PLUGINS": plugins, "DPMSF_STATE_DIR": "/tmp/dpmsf-test", **env}, dotenv=None)
    return build_handler(create_app(settings))


@contextmanager
def handler_for(tmp_path: Path | None = None, **env: str) -> Iterator[Any]:
    handler = make_handler(tmp_path, **env)
    try:
        yield handler
    finally:
        handler.close()


@pytest.fixture(scope="module")
def handler() -> Iterator[Any]:
    with handler_for() as h:
        yield h


@pytest.fixture(scope="module")
def extra_handler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with handler_for(tmp_path_factory.mktemp("lambda")) as h:
        yield h


def served_by(filename: str) -> dict[str, str]:
    """The header of every plugin's answer: the version of the bundled module that served it."""
    return {"dpmsf-plugin-version": content_version(str(bundled() / filename), False)}


def invoke(handler: Any, event: dict[str, Any]) -> dict[str, Any]:
    return handler(event, lambda_context())


def expected(
    kind: str,
    status: int,
    body: str,
    content_type: str = "application/json",
    *,
    b64: bool = False,
    headers: dict[str, str] | None = None,
    length: int | None = None,
) -> dict[str, Any]:
    """The whole response dict each event kind expects."""
    raw_len = len(base64.b64decode(body)) if b64 else len(body.encode())
    hdrs = {
        "content-type": content_type,
        "content-length": str(raw_len if length is None else length),
        "x-request-id": RID,
        **(headers or {}),
    }
    if kind.startswith("apigw_v1"):
        return {"statusCode": status, "headers": hdrs, "multiValueHeaders": {}, "body": body, "isBase64Encoded": b64}
    if kind == "alb_multi":
        multi = {k: [v] for k, v in hdrs.items()}
        return {"statusCode": status, "body": body, "isBase64Encoded": b64, "multiValueHeaders": multi}
    return {"statusCode": status, "body": body, "headers": hdrs, "isBase64Encoded": b64}


def results_body(value: Any) -> str:
    return json.dumps({"results": value}, separators=(",", ":"))


def problem(status: int, title: str, slug: str, detail: str, instance: str) -> str:
    doc = {
        "type": f"https://dpmsf.dev/problems/{slug}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
        "request_id": RID,
    }
    return json.dumps(doc, separators=(",", ":"))


def parsed(out: dict[str, Any]) -> dict[str, Any]:
    """The response with its JSON body parsed, so key order inside the body does not matter."""
    return {**out, "body": json.loads(out["body"])}


@pytest.mark.parametrize("kind", KINDS)
def test_get_with_repeated_and_comma_query(handler: Any, kind: str) -> None:
    query = {"name": "Ada", "tag": ["a", "b"], "csv": "x,y"}
    out = invoke(handler, load_event(kind, path="/rest/services/hello-world/a%2520b/", query=query))
    # ALB single-value mode keeps only the last value of a repeated key: that is what AWS sends.
    tags = "b" if kind == "alb" else ["a", "b"]
    kwargs = {"name": "Ada", "tag": tags, "csv": "x,y", "parm_1": "a%20b"}  # escapes decoded once
    want = expected(
        kind, 200, results_body({"hello": "Ada", "args": [], "kwargs": kwargs}), headers=served_by("hello.py")
    )
    assert parsed(out) == parsed(want)
    assert out["headers" if kind != "alb_multi" else "multiValueHeaders"]  # non-empty
    assert int(
        (out.get("headers") or {}).get("content-length") or out["multiValueHeaders"]["content-length"][0]
    ) == len(out["body"])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("b64", [False, True], ids=["plain-body", "base64-body"])
def test_post_readme_map_example(handler: Any, kind: str, b64: bool) -> None:
    body = {"args": [1, 2], "name1": "one", "__map__": {"parm_1": "p1", "parm_2": "p2"}}
    event = load_event(
        kind,
        method="POST",
        path="/rest/services/v1/sample-one/10/20/30/",
        query={"a": "1", "b": "2"},
        body=body,
        base64=b64,
        headers={"Content-Type": "application/json"},
    )
    out = invoke(handler, event)
    kwargs = {"a": "1", "b": "2", "p1": "10", "p2": "20", "parm_3": "30", "name1": "one"}
    want = expected(kind, 200, results_body({"args": [1, 2], "kwargs": kwargs}), headers=served_by("sample_v1.py"))
    assert parsed(out) == parsed(want)


@pytest.mark.parametrize("kind", KINDS)
def test_binary_response_goes_out_base64(handler: Any, kind: str) -> None:
    out = invoke(handler, load_event(kind, path="/rest/services/png/", query={}))
    png = base64.b64encode(PNG).decode()
    assert out == expected(kind, 200, png, "image/png", b64=True, headers=served_by("showcase.py"))


@pytest.mark.parametrize("kind", KINDS)
def test_head_has_headers_and_no_body(handler: Any, kind: str) -> None:
    out = invoke(handler, load_event(kind, method="HEAD", path="/rest/services/hello-world/", query={}))
    full = results_body({"hello": "world", "args": [], "kwargs": {}})
    assert out == expected(kind, 200, "", length=len(full), headers=served_by("hello.py"))


@pytest.mark.parametrize("kind", KINDS)
def test_errors_are_problem_json_not_base64(handler: Any, kind: str) -> None:
    nf = invoke(handler, load_event(kind, path="/rest/services/nothing-here/", query={}))
    detail = "No API or module named 'nothing-here'."
    instance = PREFIX.get(kind, "") + "/rest/services/nothing-here/"  # the path as the event carries it
    assert nf == expected(kind, 404, problem(404, "Not Found", "not-found", detail, instance), PROBLEM)

    na = invoke(handler, load_event(kind, method="DELETE", path="/rest/services/hello-world/", query={}))
    assert na["statusCode"] == 405 and na["isBase64Encoded"] is False
    headers = na.get("headers") or {k: v[0] for k, v in na["multiValueHeaders"].items()}
    assert headers["allow"] == ALLOW_HELLO
    assert headers["content-type"] == PROBLEM and json.loads(na["body"])["status"] == 405

    amb = invoke(handler, load_event(kind, path="/rest/services/api-name/", query={}))
    assert amb["statusCode"] == 409 and amb["isBase64Encoded"] is False
    assert json.loads(amb["body"])["title"] == "Conflict"


@pytest.mark.parametrize("kind", KINDS)
def test_body_over_max_body_is_413(kind: str) -> None:
    with handler_for(DPMSF_MAX_BODY="64") as small:
        out = invoke(small, load_event(kind, method="POST", path="/rest/services/hello-world/", body={"x": "y" * 100}))
    assert out["statusCode"] == 413
    assert json.loads(out["body"])["title"] == "Content Too Large"


@pytest.mark.parametrize("kind", KINDS)
def test_null_maps_do_not_crash(handler: Any, kind: str) -> None:
    event = load_event(kind, path="/rest/services/hello-world/", query={})
    for key in ("headers", "multiValueHeaders", "queryStringParameters", "multiValueQueryStringParameters"):
        if key in event:
            event[key] = None
    for key in ("body", "pathParameters", "stageVariables", "cookies"):
        event[key] = None
    if "rawQueryString" in event:
        event["rawQueryString"] = None
    out = invoke(handler, event)
    assert out["statusCode"] == 200
    assert json.loads(out["body"]) == {"results": {"hello": "world", "args": [], "kwargs": {}}}


@pytest.mark.parametrize("kind", KINDS)
def test_cookies_in_and_out(extra_handler: Any, kind: str) -> None:
    out = invoke(extra_handler, load_event(kind, path="/rest/services/cookies/", query={}))
    assert out["body"] == "session=abc123; theme=dark"
    set_cookies = ["a=1; Path=/; SameSite=lax", "b=2; Path=/; SameSite=lax"]
    if kind in ("apigw_v2", "apigw_v2_named_stage", "function_url"):
        assert out["cookies"] == set_cookies and "set-cookie" not in out["headers"]
    elif kind.startswith("apigw_v1"):
        assert out["multiValueHeaders"] == {"set-cookie": set_cookies}
    elif kind == "alb_multi":
        assert out["multiValueHeaders"]["set-cookie"] == set_cookies
    else:  # ALB single-value mode: the documented case-permutation trick keeps both
        values = sorted(v for k, v in out["headers"].items() if k.lower() == "set-cookie")
        assert values == set_cookies


@pytest.mark.parametrize("kind", KINDS)
def test_compressed_body_goes_out_base64(extra_handler: Any, kind: str) -> None:
    import gzip

    out = invoke(extra_handler, load_event(kind, path="/rest/services/gzipped/", query={}))
    assert out["isBase64Encoded"] is True
    assert gzip.decompress(base64.b64decode(out["body"])) == b'{"zipped": true}'


def test_response_over_lambda_limit_is_a_problem_not_a_crash(extra_handler: Any) -> None:
    out = invoke(extra_handler, load_event("alb", path="/rest/services/big/", query={"size": str(1024 * 1024 + 1)}))
    assert out["statusCode"] == 500 and out["headers"]["content-type"] == PROBLEM
    assert json.loads(out["body"])["title"] == "Response Too Large"
    ok = invoke(extra_handler, load_event("apigw_v1", path="/rest/services/big/", query={"size": "1048577"}))
    assert ok["statusCode"] == 200 and len(ok["body"]) == 1048577


def test_header_case_does_not_matter(handler: Any) -> None:
    event = load_event(
        "apigw_v1",
        method="POST",
        path="/rest/services/hello-world/",
        body='{"name": "Case"}',
        headers={"CONTENT-TYPE": "application/json"},
    )
    assert json.loads(invoke(handler, event)["body"])["results"]["hello"] == "Case"


def test_per_request_context_stays_per_request(extra_handler: Any) -> None:
    before = dict(os.environ)
    event = load_event("apigw_v1", path="/rest/services/context/", query={})
    event["stageVariables"] = {"DB": "prod-db", "PATH": "/evil"}
    event["requestContext"]["authorizer"] = {"principalId": "user-1"}
    out = invoke(extra_handler, event)
    want = {"stage_variables": {"DB": "prod-db", "PATH": "/evil"}, "authorizer": {"principalId": "user-1"}}
    assert json.loads(out["body"]) == {"results": want}
    assert dict(os.environ) == before
    again = invoke(extra_handler, load_event("apigw_v1", path="/rest/services/context/", query={}))
    assert json.loads(again["body"])["results"]["stage_variables"] is None


def test_rest_stage_reaches_generated_urls(handler: Any) -> None:
    out = invoke(handler, load_event("apigw_v1", path="/docs", query={}))
    assert out["statusCode"] == 200 and "/Prod/openapi.json" in out["body"]
    spec = json.loads(invoke(handler, load_event("apigw_v1", path="/openapi.json", query={}))["body"])
    assert spec["servers"] == [{"url": "/Prod"}]
    named = json.loads(invoke(handler, load_event("apigw_v2_named_stage", path="/openapi.json", query={}))["body"])
    assert named["servers"] == [{"url": "/dev"}]


def _serverless_offline(path: str) -> dict[str, Any]:
    """A REST event as serverless-offline 13 builds it (``LambdaProxyIntegrationEvent.create``) for
    ``http://localhost:3000/dev<path>``: ``path`` and ``requestContext.path`` without the stage, the stage kept only
    in the route (``resourcePath``: ``/dev/{proxy*}``), which ``resource`` drops."""
    event = load_event("apigw_v1", path=path, query={})
    rc = event["requestContext"]
    rc.update(path=path, stage="dev", resourcePath="/dev/{proxy*}", domainName="offlineContext_domainName")
    event["resource"] = "/{proxy+}"
    event["headers"] = {"Host": "localhost:3000", "Accept": "text/html"}
    event["multiValueHeaders"] = {k: [v] for k, v in event["headers"].items()}
    return event


def test_docs_behind_serverless_offline_load_their_assets_with_the_stage(handler: Any) -> None:
    """``/dev/docs`` on serverless-offline: the page's script, style and document URLs carry ``/dev``, so the browser
    fetches them from where they are served (before: ``/docs/swagger-ui.min.css``, a 404 on serverless-offline)."""
    page = invoke(handler, _serverless_offline("/docs"))
    assert page["statusCode"] == 200
    for url in ("/dev/docs/swagger-ui.min.css", "/dev/docs/swagger-ui-bundle.min.js", '"/dev/openapi.json"'):
        assert url in page["body"], url
    assert 'href="/docs/' not in page["body"] and 'src="/docs/' not in page["body"]
    asset = invoke(handler, _serverless_offline("/docs/swagger-ui.min.css"))
    assert asset["statusCode"] == 200 and "swagger" in asset["body"]
    spec = json.loads(invoke(handler, _serverless_offline("/openapi.json"))["body"])
    assert spec["servers"] == [{"url": "/dev"}]
    flat = _serverless_offline("/docs")  # --noPrependStageInUrl: the route has no stage, nor have the URLs
    flat["requestContext"]["resourcePath"] = "/{proxy*}"
    assert 'href="/docs/swagger-ui.min.css"' in invoke(handler, flat)["body"]
    with handler_for(DPMSF_BASE_PATH="/dev") as configured:  # the old workaround: the stage as the base path
        assert 'href="/dev/docs/swagger-ui.min.css"' in invoke(configured, _serverless_offline("/docs"))["body"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_generated_url_carries_the_stage_and_base_path(handler: Any, kind: str) -> None:
    """``GET /`` links, ``__dir__`` URLs and the todo ``Location`` start with the path the client used (a custom
    domain's base-path mapping is configured: ``DPMSF_BASE_PATH``; the stages are read from the event)."""
    if kind == "apigw_v1_custom_domain":
        with handler_for(DPMSF_BASE_PATH="/api") as based:
            _assert_generated_urls(based, kind)
    else:
        _assert_generated_urls(handler, kind)


def _assert_generated_urls(handler: Any, kind: str) -> None:
    root = PREFIX.get(kind, "")
    links = json.loads(invoke(handler, load_event(kind, path="/", method="GET", query={}))["body"])
    assert links == {
        "service": "dpmsf",
        "services": f"{root}/rest/services/",
        "directory": f"{root}/rest/services/__dir__/",
        "docs": f"{root}/docs",
        "openapi": f"{root}/openapi.json",
    }
    listing = json.loads(
        invoke(handler, load_event(kind, path="/rest/services/__dir__/", method="GET", query={}))["body"]
    )
    hello = next(e for e in listing["endpoints"] if e["api"] == "hello-world")
    assert (hello["url"], hello["qualified_url"]) == (
        f"{root}/rest/services/hello-world/",
        f"{root}/rest/services/hello/hello-world/",
    )
    created = invoke(handler, load_event(kind, path="/rest/services/todo/tasks/", method="POST", body={"title": "t"}))
    task = json.loads(created["body"])["results"]
    location = (created.get("headers") or {}).get("location") or created["multiValueHeaders"]["location"][0]
    assert (created["statusCode"], location) == (201, f"{root}/rest/services/todo/tasks/{task['id']}/")


def test_configured_base_path(handler: Any) -> None:
    with handler_for(DPMSF_BASE_PATH="/api") as based:
        event = load_event("apigw_v1_custom_domain", path="/rest/services/hello-world/", query={"name": "B"})
        out = invoke(based, event)
        spec = json.loads(invoke(based, load_event("apigw_v1_custom_domain", path="/openapi.json", query={}))["body"])
    assert json.loads(out["body"])["results"]["hello"] == "B"
    assert spec["servers"] == [{"url": "/api"}]


def test_survives_asyncio_run_between_invocations(handler: Any) -> None:
    asyncio.run(asyncio.sleep(0))  # e.g. an async event function run by the events dispatcher
    out = invoke(handler, load_event("apigw_v2", path="/rest/services/ping/", query={}))
    assert json.loads(out["body"]) == {"results": "pong"}


def test_powertools_metrics_and_logs_on_lambda(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dpmsf_core.aws.observability import PowertoolsObserver

    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "DPMSFTest")
    settings = Settings.from_env({"DPMSF_STATE_DIR": "/tmp/dpmsf-test"}, dotenv=None)
    app = create_app(settings)
    watcher = PowertoolsObserver(
        {"AWS_LAMBDA_FUNCTION_NAME": "dpmsf-test", "POWERTOOLS_METRICS_NAMESPACE": "DPMSFTest"}
    )
    from dpmsf_core.aws.lambda_adapter import LambdaAdapter

    adapter = LambdaAdapter(app, watcher=watcher)
    handler = watcher.wrap(adapter)
    try:
        out = handler(load_event("apigw_v1", path="/rest/services/hello-world/", query={}), lambda_context())
    finally:
        adapter.close()
    assert out["statusCode"] == 200
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    emf = [x for x in lines if "_aws" in x and "Requests" in x]
    assert emf and emf[-1]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "DPMSFTest"
    assert emf[-1]["Requests"] == [1.0] or emf[-1]["Requests"] == 1.0
    assert emf[-1]["endpoint"] == "hello.hello-world"  # module.api, by value
    assert "Errors" not in emf[-1] and emf[-1]["Latency"]
