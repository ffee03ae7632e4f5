"""Every answer obeys DPMSF_MAX_RESPONSE: a plain result, a returned Response, a declared length, a stream.

Attacks: a function returning a huge JSONResponse (the todo demo's ``GET tasks/?limit=1000`` built 340 MB), a
FileResponse of a large file, an endless StreamingResponse; and the memory the server spends finding out.
"""

from __future__ import annotations

import socket
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpmsf_core.errors import FunctionFailed
from dpmsf_core.responses import encode_results

PROBLEM = "application/problem+json"
LIMIT = 100_000

PLUGIN = """
import os
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse

PROGRESS = {progress!r}
BIG = {big!r}

def big_json():
    return JSONResponse({{"results": ["x" * 1000] * 500}})

def small_json():
    return JSONResponse({{"results": "fine"}}, headers={{"X-Own": "kept"}})

def big_file():
    return FileResponse(BIG)

def endless():
    def chunks():
        n = 0
        while True:
            n += 1
            with open(PROGRESS, "w") as fh:
                fh.write(str(n))
            yield b"y" * 10_000
    return StreamingResponse(chunks(), media_type="text/plain")

def short_stream():
    return StreamingResponse(iter([b"a" * 1000] * 5), media_type="text/plain")

def many_docs():
    doc = {{"title": "z" * 10_000}}
    return [doc] * 1000
"""


@pytest.fixture
def client(
    plugin_dir: Any, make_app: Callable[..., Any], serve: Callable[[Any], httpx.Client], tmp_path: Path
) -> httpx.Client:
    big = tmp_path / "big.bin"
    big.write_bytes(b"b" * (LIMIT * 3))
    plugin_dir.write("answers.py", PLUGIN.format(progress=str(tmp_path / "progress"), big=str(big)))
    return serve(make_app(plugin_dir.path, env={"DPMSF_MAX_RESPONSE": str(LIMIT)}))


def _problem(answer: httpx.Response, *fragments: str) -> dict[str, Any]:
    assert answer.status_code == 500, answer.text[:500]
    assert answer.headers["content-type"] == PROBLEM
    body = answer.json()
    assert body["title"] == "Response Too Large"
    assert len(answer.content) < 2000  # the problem, not the huge body
    for fragment in fragments:
        assert fragment in body["detail"], body["detail"]
    return body


def test_a_returned_response_over_the_limit_is_a_problem(client: httpx.Client) -> None:
    _problem(client.get("/rest/services/big_json/"), "API 'big_json' answered 501513 bytes", "DPMSF_MAX_RESPONSE")


def test_a_declared_length_over_the_limit_is_a_problem_before_anything_is_sent(client: httpx.Client) -> None:
    _problem(client.get("/rest/services/big_file/"), f"answered {3 * LIMIT} bytes")


def test_answers_under_the_limit_pass_as_built(client: httpx.Client) -> None:
    small = client.get("/rest/services/small_json/")
    assert small.json() == {"results": "fine"} and small.headers["x-own"] == "kept" and small.headers["x-request-id"]
    short = client.get("/rest/services/short_stream/")
    assert short.status_code == 200 and short.content == b"a" * 5000


def test_a_stream_is_cut_off_once_past_the_limit(client: httpx.Client, tmp_path: Path) -> None:
    received = 0
    with pytest.raises(httpx.HTTPError), client.stream("GET", "/rest/services/endless/") as answer:
        assert answer.status_code == 200  # already sent when the stream began
        for chunk in answer.iter_raw():
            received += len(chunk)
    assert received <= LIMIT + 10_000  # the connection was aborted, not ended as if complete
    pulled = int((tmp_path / "progress").read_text())
    assert pulled <= LIMIT // 10_000 + 2  # the generator was not read further
    assert client.get("/rest/services/small_json/").status_code == 200  # and the server serves on


def test_a_stream_cut_off_is_seen_by_a_raw_client(client: httpx.Client) -> None:
    """Over a raw socket: the chunked body never gets its terminating chunk, and the socket is closed."""
    host, port = client.base_url.host, client.base_url.port
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"GET /rest/services/endless/ HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200")
    assert not data.endswith(b"0\r\n\r\n")  # not a complete chunked body
    assert len(data) < LIMIT + 20_000


def test_a_plain_result_over_the_limit_is_a_problem(client: httpx.Client) -> None:
    _problem(client.get("/rest/services/many_docs/"), f"answered more than {LIMIT} bytes")


def test_finding_a_result_too_large_does_not_encode_all_of_it() -> None:
    """1,000 references to one 100 kB document: 100 MB once encoded; the check stops after about the limit."""
    docs = [{"title": "z" * 100_000}] * 1000
    tracemalloc.start()
    try:
        with pytest.raises(FunctionFailed, match="more than 1000000 bytes"):
            encode_results(docs, "many", 1_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000, peak  # was over 200 MB: the whole body, then its bytes


def test_the_bounded_encoding_is_the_plain_one() -> None:
    import json

    value = {"a": [1, 2.5, None, True, "é\n"], "b": {"c": [], "d": {}}, "e": [[1, [2, [3]]], {"f": "g"}], "h": ()}
    for result in (value, [value, value], "s", 3, [], {}, {1: "int key"}):
        body = encode_results(result, "x", 10_000)
        assert body == encode_results(result, "x")
        assert json.loads(body) == json.loads(json.dumps({"results": result}))


def test_on_lambda_a_stream_over_the_limit_is_the_problem(tmp_path: Path) -> None:
    """Lambda returns one payload: a stream past the limit answers 500 problem+json, not a cut-off 200."""
    import json

    from eventdata import lambda_context, load_event

    from dpmsf_core.app import create_app
    from dpmsf_core.aws.lambda_adapter import build_handler
    from dpmsf_core.config import Settings

    folder = tmp_path / "plugins"
    folder.mkdir()
    big = tmp_path / "big.bin"
    big.write_bytes(b"b")
    (folder / "answers.py").write_text(PLUGIN.format(progress=str(tmp_path / "progress"), big=str(big)))
    env = {"DPMSF_PLUGINS": str(folder), "DPMSF_STATE_DIR": str(tmp_path / "state"), "DPMSF_MAX_RESPONSE": str(LIMIT)}
    handler = build_handler(create_app(Settings.from_env(env, dotenv=None)))
    try:
        out = handler(load_event("apigw_v2", path="/rest/services/endless/"), lambda_context())
        assert out["statusCode"] == 500, out
        assert json.loads(out["body"])["title"] == "Response Too Large"
        assert int((tmp_path / "progress").read_text()) <= LIMIT // 10_000 + 2
        short = handler(load_event("apigw_v2", path="/rest/services/short_stream/"), lambda_context())
        assert short["statusCode"] == 200 and short["body"] == "a" * 5000
    finally:
        handler.close()


def test_a_refused_response_is_freed_at_once(plugin_dir: Any, make_app: Callable[..., Any]) -> None:
    """The refused body is not kept alive by whatever still holds the response (the call's future)."""
    import asyncio

    plugin_dir.write(
        "huge.py", "from starlette.responses import Response\n\ndef huge():\n    return Response(b'h' * 20_000_000)\n"
    )
    app = make_app(plugin_dir.path, env={"DPMSF_MAX_RESPONSE": str(LIMIT)})

    async def call() -> tuple[int, int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as client:
            tracemalloc.start()
            try:
                answer = await client.get("/rest/services/huge/")
                status = answer.status_code
                del answer
                return status, tracemalloc.get_traced_memory()[0]
            finally:
                tracemalloc.stop()

    status, alive = asyncio.run(call())
    assert status == 500
    assert alive < 5_000_000, alive  # was the whole 20 MB body, held until the request's task ended
