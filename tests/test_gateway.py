"""aws/gateway.py answers REST and payload 2.0 events as Mangum does: Mangum's own functions are the oracle.

gateway re-implements them only so that a cold start need not import Mangum (whose package imports asyncio);
any difference from Mangum here would be a behaviour change nobody asked for.
"""

from __future__ import annotations

import copy
from typing import Any

from eventdata import lambda_context, load_event
from hypothesis import given
from hypothesis import strategies as st
from mangum.handlers.api_gateway import APIGateway, HTTPGateway, _combine_headers_v2
from mangum.handlers.utils import (
    handle_base64_response_body,
    handle_multi_value_headers,
    maybe_encode_body,
    strip_api_gateway_path,
)

from dpmsf_core.aws import gateway

NAMES = st.sampled_from([b"Content-Type", b"content-type", b"Set-Cookie", b"set-cookie", b"X-A", b"x-a", b"Vary"])
VALUES = st.text(alphabet="ab ;=,é", max_size=6).map(str.encode)
PAIRS = st.lists(st.tuples(NAMES, VALUES), max_size=8)
TYPES = st.sampled_from(
    ["", "text/plain", "application/json", "application/problem+json", "image/png", "application/octet-stream"]
)
CONFIG = {"api_gateway_base_path": "/", "text_mime_types": gateway.TEXT_MIME_TYPES, "exclude_headers": []}


@given(PAIRS)
def test_repeated_response_headers_split_as_mangum_splits_them(pairs: list[tuple[bytes, bytes]]) -> None:
    assert gateway.multi_value_headers(pairs) == handle_multi_value_headers(pairs)


@given(PAIRS)
def test_payload_2_headers_and_cookies_as_mangum(pairs: list[tuple[bytes, bytes]]) -> None:
    assert gateway.combine_headers_v2(pairs) == _combine_headers_v2(pairs)


@given(st.binary(max_size=16) | st.text(max_size=8).map(str.encode), TYPES)
def test_a_body_is_text_or_base64_as_mangum_decides(body: bytes, content_type: str) -> None:
    headers = {"content-type": content_type} if content_type else {}
    assert gateway.text_or_base64(body, headers, gateway.TEXT_MIME_TYPES) == handle_base64_response_body(
        body, headers, gateway.TEXT_MIME_TYPES
    )


@given(st.text(alphabet="/ab%20+é", max_size=12), st.sampled_from(["", "/", "/api", "api", "/a"]))
def test_a_path_is_stripped_and_decoded_as_mangum_does(path: str, base: str) -> None:
    ours = gateway.strip_api_gateway_path(path, api_gateway_base_path=base)
    assert ours == strip_api_gateway_path(path, api_gateway_base_path=base)


@given(st.one_of(st.none(), st.just(""), st.text(max_size=8)), st.booleans())
def test_a_request_body_is_read_as_mangum_reads_it(body: str | None, is_base64: bool) -> None:
    import base64

    raw = base64.b64encode((body or "").encode()).decode() if is_base64 and body else body
    assert gateway.request_body(raw, is_base64=is_base64) == maybe_encode_body(raw, is_base64=is_base64)


RESPONSES: list[dict[str, Any]] = [
    {"status": 200, "headers": [[b"content-type", b"application/json"]], "body": b'{"a":1}'},
    {"status": 201, "headers": [[b"set-cookie", b"a=1"], [b"Set-Cookie", b"b=2"], [b"x-a", b"1"]], "body": b""},
    {"status": 404, "headers": [[b"content-type", b"application/problem+json"]], "body": b'{"title":"x"}'},
    {"status": 200, "headers": [[b"content-type", b"image/png"]], "body": b"\x89PNG\x00\xff"},
    {"status": 204, "headers": [], "body": b""},
    {"status": 200, "headers": [[b"vary", b"a"], [b"Vary", b"b"], [b"vary", b"c"]], "body": b"text"},
]


def test_rest_answers_are_mangums() -> None:
    event = load_event("apigw_v1", path="/rest/services/hello-world/", query={"name": "Ada"})
    for response in RESPONSES:
        ours = gateway.RestAPI(copy.deepcopy(event), lambda_context(), CONFIG)(response)
        assert ours == APIGateway(copy.deepcopy(event), lambda_context(), CONFIG)(response), response


def test_payload_2_answers_are_mangums() -> None:
    event = load_event("apigw_v2", path="/rest/services/hello-world/", query={"name": "Ada"})
    for response in RESPONSES:
        ours = gateway.HTTPAPI(copy.deepcopy(event), lambda_context(), CONFIG)(response)
        assert ours == HTTPGateway(copy.deepcopy(event), lambda_context(), CONFIG)(response), response


def test_the_kinds_are_told_apart_as_mangum_orders_them() -> None:
    rest, v2 = load_event("apigw_v1", path="/x/", query={}), load_event("apigw_v2", path="/x/", query={})
    v1_on_http_api = {**rest, "version": "1.0"}  # Mangum's HTTPGateway (ours: mangum_handlers.HTTPAPIv1) takes it
    assert gateway.RestAPI.infer(rest, None, CONFIG) and not gateway.HTTPAPI.infer(rest, None, CONFIG)
    assert gateway.HTTPAPI.infer(v2, None, CONFIG) and not gateway.RestAPI.infer(v2, None, CONFIG)
    assert not gateway.RestAPI.infer(v1_on_http_api, None, CONFIG)
    assert not gateway.HTTPAPI.infer(v1_on_http_api, None, CONFIG)
