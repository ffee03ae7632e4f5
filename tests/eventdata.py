"""Load the AWS event fixtures in ``tests/events/`` and rewrite them the way each event kind carries a request."""

from __future__ import annotations

import base64 as _b64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode

from dpmsf_core.testing import LambdaContext

EVENTS_DIR = Path(__file__).parent / "events"

HTTP_EVENTS = (
    "apigw_v1",
    "apigw_v1_custom_domain",
    "apigw_v2",
    "apigw_v2_named_stage",
    "alb",
    "alb_multi",
    "function_url",
)

QueryArg = dict[str, "str | list[str]"] | str


def event_path(name: str) -> Path:
    return EVENTS_DIR / (name if name.endswith(".json") else f"{name}.json")


def event_kind(event: dict[str, Any]) -> str:
    """``apigw_v1`` | ``apigw_v2`` | ``function_url`` | ``alb`` | ``alb_multi`` | ``other``, judged from the content."""
    rc = event.get("requestContext") or {}
    if "elb" in rc:
        return "alb_multi" if "multiValueHeaders" in event or "multiValueQueryStringParameters" in event else "alb"
    if event.get("version") == "2.0" and "http" in rc:
        return "function_url" if ".lambda-url." in rc.get("domainName", "") else "apigw_v2"
    if "httpMethod" in event and "resource" in event:
        return "apigw_v1"
    return "other"


def load_event(
    name: str,
    *,
    path: str | None = None,
    method: str | None = None,
    body: str | bytes | dict[str, Any] | list[Any] | None = None,
    query: QueryArg | None = None,
    headers: dict[str, str | None] | None = None,
    base64: bool = False,
) -> dict[str, Any]:
    """A fresh copy of fixture ``name`` with the request rewritten consistently for its event kind.

    - ``path`` is the application path (``/rest/services/hello/``, may hold percent-escapes); the
      loader adds what AWS adds: the stage in a v1 ``requestContext.path``, the base-path mapping
      of a custom domain, the stage of a v2 named stage.
    - ``query``: a dict (a list value repeats the key) or a raw query string; ``{}`` clears it.
    - ``headers`` are merged case-insensitively over the fixture's (``None`` removes one). On v2
      and Function URLs a ``cookie`` header goes to the ``cookies`` array, as AWS sends it.
    - ``body``: a dict/list is sent as JSON (with ``content-type: application/json`` unless given);
      ``base64=True`` encodes the body and sets ``isBase64Encoded``.
    Arguments left as ``None`` keep the fixture's values.
    """
    event = json.loads(event_path(name).read_text())
    kind = event_kind(event)
    if kind == "other":
        if any(v is not None for v in (path, method, body, query, headers)) or base64:
            raise ValueError(f"{name!r} is not an HTTP event; only HTTP events take path/method/body/query/headers")
        return event
    body_text, extra_headers = _encode_body(body, base64)
    if body_text is not None or base64:
        event["body"] = body_text
        event["isBase64Encoded"] = base64
    if headers is not None or extra_headers:
        merged = dict(extra_headers)
        merged.update(headers or {})
        _set_headers(event, kind, merged)
    if method is not None:
        _set_method(event, kind, method.upper())
    if path is not None:
        _set_path(event, kind, path)
    if query is not None:
        _set_query(event, kind, _query_pairs(query))
    return event


def all_http_events(**kwargs: Any) -> dict[str, dict[str, Any]]:
    """Every HTTP fixture with the same request, keyed by fixture name (for parametrized tests)."""
    return {name: load_event(name, **kwargs) for name in HTTP_EVENTS}


# -- body ------------------------------------------------------------------------------------------


def _encode_body(body: Any, b64: bool) -> tuple[str | None, dict[str, str]]:
    extra: dict[str, str] = {}
    if body is None:
        return None, extra
    if isinstance(body, dict | list):
        raw = json.dumps(body).encode()
        extra["content-type"] = "application/json"
    elif isinstance(body, str):
        raw = body.encode()
    elif isinstance(body, bytes):
        raw = body
    else:
        raise TypeError(f"body={body!r}: expected str, bytes, dict, list or None")
    if b64:
        return _b64.b64encode(raw).decode("ascii"), extra
    return raw.decode("utf-8"), extra


# -- headers ---------------------------------------------------------------------------------------


def _merge_ci(current: dict[str, Any] | None, updates: dict[str, Any], *, lower: bool) -> dict[str, Any]:
    out = dict(current or {})
    for key, value in updates.items():
        for existing in [k for k in out if k.lower() == key.lower()]:
            del out[existing]
        if value is not None:
            out[key.lower() if lower else key] = value
    return out


def _set_headers(event: dict[str, Any], kind: str, updates: dict[str, str | None]) -> None:
    if kind in ("apigw_v2", "function_url"):
        updates = dict(updates)
        for key in [k for k in updates if k.lower() == "cookie"]:
            cookie = updates.pop(key)
            event["cookies"] = [c.strip() for c in cookie.split(";") if c.strip()] if cookie else []
            if not event["cookies"]:
                event.pop("cookies")
        event["headers"] = _merge_ci(event.get("headers"), updates, lower=True)
        if "content-length" in event["headers"]:
            event["headers"]["content-length"] = str(len(_raw_body(event)))
    elif kind == "alb":
        event["headers"] = _merge_ci(event.get("headers"), updates, lower=True)
    elif kind == "alb_multi":
        multi = {k: [v] if isinstance(v, str) else v for k, v in updates.items()}
        event["multiValueHeaders"] = _merge_ci(event.get("multiValueHeaders"), multi, lower=True)
    else:  # apigw_v1 keeps the client's casing, in both maps
        event["headers"] = _merge_ci(event.get("headers"), updates, lower=False)
        multi = {k: None if v is None else [v] for k, v in updates.items()}
        event["multiValueHeaders"] = _merge_ci(event.get("multiValueHeaders"), multi, lower=False)


def _raw_body(event: dict[str, Any]) -> bytes:
    body = event.get("body") or ""
    return _b64.b64decode(body) if event.get("isBase64Encoded") else body.encode()


# -- method and path -------------------------------------------------------------------------------


def _set_method(event: dict[str, Any], kind: str, method: str) -> None:
    rc = event["requestContext"]
    if kind in ("apigw_v2", "function_url"):
        rc["http"]["method"] = method
    else:
        event["httpMethod"] = method
        if kind == "apigw_v1":
            rc["httpMethod"] = method


def _prefix(event: dict[str, Any], kind: str) -> str:
    """What AWS puts in front of the application path: a base-path mapping or a named stage."""
    rc = event["requestContext"]
    if kind == "apigw_v1":
        proxy = (event.get("pathParameters") or {}).get("proxy") or ""
        return event["path"][: len(event["path"]) - len(proxy) - 1] if proxy else ""
    if kind == "apigw_v2" and rc.get("stage") not in (None, "$default"):
        return "/" + rc["stage"]
    return ""


def _set_path(event: dict[str, Any], kind: str, path: str) -> None:
    if not path.startswith("/"):
        path = "/" + path
    prefix = _prefix(event, kind)
    rc = event["requestContext"]
    if kind == "apigw_v1":
        event["path"] = prefix + path
        custom_domain = ".execute-api." not in rc.get("domainName", ".execute-api.")
        rc["path"] = prefix + path if custom_domain else f"/{rc['stage']}{path}"
        event["resource"] = rc["resourcePath"] = "/{proxy+}"
        proxy = unquote(path[1:])
        event["pathParameters"] = {"proxy": proxy} if proxy else None
    elif kind == "apigw_v2":
        event["rawPath"] = rc["http"]["path"] = prefix + unquote(path)
        if event.get("routeKey", "$default") != "$default":
            event["pathParameters"] = {"proxy": unquote(path[1:])}
    elif kind == "function_url":
        event["rawPath"] = rc["http"]["path"] = path
    else:  # ALB: the path as the client sent it
        event["path"] = path


# -- query -----------------------------------------------------------------------------------------


def _query_pairs(query: QueryArg) -> list[tuple[str, str]]:
    """Decoded (key, value) pairs in order."""
    if isinstance(query, str):
        from urllib.parse import parse_qsl

        return parse_qsl(query.lstrip("?"), keep_blank_values=True)
    pairs: list[tuple[str, str]] = []
    for key, value in query.items():
        for v in value if isinstance(value, list | tuple) else [value]:
            pairs.append((key, str(v)))
    return pairs


def _set_query(event: dict[str, Any], kind: str, pairs: list[tuple[str, str]]) -> None:
    multi: dict[str, list[str]] = {}
    for key, value in pairs:
        multi.setdefault(key, []).append(value)
    if kind in ("apigw_v2", "function_url"):
        event["rawQueryString"] = urlencode(pairs, quote_via=quote)
        if multi:
            event["queryStringParameters"] = {k: ",".join(v) for k, v in multi.items()}
        else:
            event.pop("queryStringParameters", None)
    elif kind == "apigw_v1":
        event["queryStringParameters"] = {k: v[-1] for k, v in multi.items()} or None
        event["multiValueQueryStringParameters"] = multi or None
    else:  # ALB passes keys and values exactly as sent: still percent-encoded
        enc = {quote(k, safe=""): [quote(x, safe="") for x in v] for k, v in multi.items()}
        if kind == "alb_multi":
            event["multiValueQueryStringParameters"] = enc
        else:  # single-value mode keeps the last of repeated keys
            event["queryStringParameters"] = {k: v[-1] for k, v in enc.items()}


# -- context ---------------------------------------------------------------------------------------


@dataclass
class FakeLambdaContext(LambdaContext):
    """The Lambda context of the tests: a fixed request id, so whole answers can be compared."""

    aws_request_id: str = "52fdfc07-2182-154f-163f-5f0f9a621d72"
    log_stream_name: str = "2024/01/01/[$LATEST]abcdef0123456789"


def lambda_context(**overrides: Any) -> FakeLambdaContext:
    """A small stand-in for the Lambda context object (``lambda_context(remaining_ms=100)``)."""
    return FakeLambdaContext(**overrides)
