"""The two HTTP event kinds most requests arrive as, read and answered here: REST API (payload 1.0) and HTTP API /
Function URL (payload 2.0).

These are Mangum's handlers for them, field for field (the conformance tests hold them to it), with the fixes of
``lambda_adapter``; they live outside Mangum because importing Mangum imports ``asyncio`` (``mangum.adapter``
does, at the top), about a third of a cold start's budget for a request that never waits. The rarer kinds (ALB,
payload 1.0 on an HTTP API, Lambda@Edge) keep Mangum's handlers (``mangum_handlers``), loaded when one arrives.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any, TypeVar

from .scope import LazyScope

if TYPE_CHECKING:
    from collections.abc import MutableMapping

    from mangum.types import LambdaConfig

    from ..context import LambdaContext

_Scope = TypeVar("_Scope", bound="MutableMapping[str, Any]")

# Mangum's DEFAULT_TEXT_MIME_TYPES, and what DPMSF answers as text too
TEXT_MIME_TYPES = [
    "text/",
    "application/json",
    "application/javascript",
    "application/xml",
    "application/vnd.api+json",
    "application/vnd.oai.openapi",
    "+json",
    "+xml",
    "application/x-www-form-urlencoded",
    "application/yaml",
]


class _Handler:
    """What Mangum's handlers share: the event, the Lambda context, the adapter's config, the request body."""

    _scope: Any = None

    def __init__(self, event: dict[str, Any], context: LambdaContext, config: LambdaConfig) -> None:
        self.event = event
        self.context = context
        self.config = config

    @property
    def scope(self) -> Any:
        """Built once (``functools.cached_property`` would take a lock on every first read, on 3.11)."""
        if self._scope is None:
            self._scope = self._build_scope()
        return self._scope

    def _build_scope(self) -> Any:
        raise NotImplementedError

    @property
    def body(self) -> bytes:
        return request_body(self.event.get("body", b""), is_base64=self.event.get("isBase64Encoded", False))


def without_nulls(event: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """A shallow copy with ``{}`` (``""`` for a query string) where AWS sent ``null``; the event itself if none."""
    nulls = [k for k in keys if k in event and event[k] is None]
    if not nulls:
        return event
    return {**event, **{k: "" if k == "rawQueryString" else {} for k in nulls}}


def identity_fixed(event: dict[str, Any]) -> dict[str, Any]:
    rc = event.get("requestContext")
    if isinstance(rc, dict) and "identity" in rc and rc["identity"] is None:
        return {**event, "requestContext": {**rc, "identity": {}}}
    return event


def request_body(body: str | bytes | None, *, is_base64: bool) -> bytes:
    """Mangum's ``maybe_encode_body``: the event's body as bytes."""
    body = body or b""
    if is_base64:
        return base64.b64decode(body)
    return body if isinstance(body, bytes) else body.encode()


def strip_api_gateway_path(path: str, *, api_gateway_base_path: str) -> str:
    """Mangum's: the base path off the front (matched as a prefix), then the path decoded."""
    if not path:
        return "/"
    base = api_gateway_base_path
    if base and base != "/":
        if not base.startswith("/"):
            base = f"/{base}"
        if path.startswith(base):
            path = path[len(base) :]
    if "%" not in path:  # nothing to decode (and urllib.parse, with ipaddress, stays out of a cold start)
        return path
    from urllib.parse import unquote

    return unquote(path)


def multi_value_headers(pairs: list[Any]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Mangum's ``handle_multi_value_headers``: a name sent once is in the first dict, a repeated one the second."""
    headers: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for key, value in pairs:
        name = key.decode().lower()
        if name in multi:
            multi[name].append(value.decode())
        elif name in headers:
            multi[name] = [headers.pop(name), value.decode()]
        else:
            headers[name] = value.decode()
    return headers, multi


def combine_headers_v2(pairs: list[Any]) -> tuple[dict[str, str], list[str]]:
    """Mangum's payload 2.0 headers: ``Set-Cookie`` values to ``cookies``, other repeats joined with a comma."""
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for key, value in pairs:
        name, text = key.decode().lower(), value.decode()
        if name == "set-cookie":
            cookies.append(text)
        else:
            headers[name] = f"{headers[name]},{text}" if name in headers else text
    return headers, cookies


def text_or_base64(body: bytes, headers: dict[str, str], text_mime_types: list[str]) -> tuple[str, bool]:
    """Mangum's ``handle_base64_response_body``: text for a text type that decodes as UTF-8, else base64."""
    if body == b"":
        return "", False
    content_type = headers.get("content-type", "")
    for text_type in text_mime_types:
        if text_type in content_type:
            try:
                return body.decode(), False
            except UnicodeDecodeError:
                return base64.b64encode(body).decode(), True
    return base64.b64encode(body).decode(), True


def _without(headers: dict[str, Any], excluded: list[str]) -> dict[str, Any]:
    return {k: v for k, v in headers.items() if k not in excluded}


class RestAPI(_Handler):
    """REST API (payload 1.0): null-safe; the stage missing from ``path`` becomes ``root_path``.

    The scope is Mangum's, field for field, built in one pass: the merged headers are also handed to the app as
    ``dpmsf.headers`` and the query as ``dpmsf.query`` (what it would otherwise decode and parse back out of the
    bytes built here), and ``multiValueHeaders``, a superset of ``headers``, is read alone when it holds them all.
    """

    def __init__(self, event: dict[str, Any], context: LambdaContext, config: LambdaConfig) -> None:
        super().__init__(identity_fixed(without_nulls(event, ("headers", "multiValueHeaders"))), context, config)

    @classmethod
    def infer(cls, event: dict[str, Any], context: LambdaContext, config: LambdaConfig) -> bool:
        return "resource" in event and "requestContext" in event and "version" not in event

    def __call__(self, response: dict[str, Any]) -> dict[str, Any]:
        """Mangum's REST answer: a repeated header goes to ``multiValueHeaders``, a binary body base64."""
        headers, multi = multi_value_headers(response["headers"])
        body, is_base64 = text_or_base64(response["body"], headers, self.config["text_mime_types"])
        excluded = self.config["exclude_headers"]
        if excluded:
            headers, multi = _without(headers, excluded), _without(multi, excluded)
        return {
            "statusCode": response["status"],
            "headers": headers,
            "multiValueHeaders": multi,
            "body": body,
            "isBase64Encoded": is_base64,
        }

    def _build_scope(self) -> dict[str, Any]:
        event = self.event
        base = self.config["api_gateway_base_path"]
        headers = _rest_headers(event)
        query, params = _rest_query(event)
        return LazyScope(
            {
                "type": "http",
                "http_version": "1.1",
                "method": event["httpMethod"],
                "path": strip_api_gateway_path(event["path"], api_gateway_base_path=base),
                "raw_path": None,
                "root_path": _stage_root(event, base),
                "scheme": headers.get("x-forwarded-proto", "https"),
                "server": _server(headers),
                "client": ((event["requestContext"].get("identity") or {}).get("sourceIp"), 0),
                "asgi": {"version": "3.0", "spec_version": "2.0"},
                "aws.event": event,
                "aws.context": self.context,
                "dpmsf.headers": headers,
                "dpmsf.query": query,
                "dpmsf.params": params,  # query_string, if read, is encoded from these
            }
        )


def _server(headers: dict[str, str]) -> tuple[str, int]:
    """Mangum's ``get_server_and_port``: the ``Host`` header, its port or ``X-Forwarded-Port``."""
    server = headers.get("host", "mangum")
    port: Any = headers.get("x-forwarded-port", 80)
    if ":" in server:
        server, port = server.split(":", 1)
    return server, int(port)


def _rest_headers(event: dict[str, Any]) -> dict[str, str]:
    """Mangum's merge: ``headers`` lower-cased, then every ``multiValueHeaders`` entry joined with ", "."""
    single = event.get("headers") or {}
    multi = event.get("multiValueHeaders") or {}
    joined = {k.lower(): (v[0] if len(v) == 1 else ", ".join(v)) if type(v) is list else "" for k, v in multi.items()}
    if multi.keys() >= single.keys():  # API Gateway sends both, multiValueHeaders a superset
        return joined
    merged = {k.lower(): v for k, v in single.items()}
    merged.update(joined)
    return merged


def _rest_query(event: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The query as the app parses it (a repeated key is a list), and the parameters Mangum encodes."""
    params = event.get("multiValueQueryStringParameters") or event.get("queryStringParameters") or {}
    parsed: dict[str, Any] = {}
    for key, value in params.items():
        if type(value) is list:
            parsed[key] = value[0] if len(value) == 1 else list(value)
        else:
            parsed[key] = value
    return parsed, params


class HTTPAPI(_Handler):
    """HTTP API and Function URL, payload 2.0: null-safe, path decoded once (1.0 on an HTTP API: ``HTTPAPIv1``)."""

    def __init__(self, event: dict[str, Any], context: LambdaContext, config: LambdaConfig) -> None:
        event = without_nulls(event, ("headers", "multiValueHeaders", "rawQueryString"))
        super().__init__(identity_fixed(event), context, config)

    @classmethod
    def infer(cls, event: dict[str, Any], context: LambdaContext, config: LambdaConfig) -> bool:
        return "version" in event and "requestContext" in event and event["version"] == "2.0"

    def _build_scope(self) -> dict[str, Any]:
        return http_api_paths(self._scope_v2(), self.event, self.config)

    def __call__(self, response: dict[str, Any]) -> dict[str, Any]:
        """Mangum's payload 2.0 answer: ``Set-Cookie`` to ``cookies``, repeated headers joined, JSON by default."""
        headers, cookies = combine_headers_v2(response["headers"])
        if "content-type" not in headers and response["body"] is not None:
            headers["content-type"] = "application/json"
        body, is_base64 = text_or_base64(response["body"], headers, self.config["text_mime_types"])
        out = {
            "statusCode": response["status"],
            "body": body,
            "headers": headers or None,
            "cookies": cookies or None,
            "isBase64Encoded": is_base64,
        }
        return {key: value for key, value in out.items() if value is not None}

    def _scope_v2(self) -> dict[str, Any]:
        """Mangum's payload 2.0 scope, field for field, with the headers also handed over decoded."""
        event = self.event
        http = event["requestContext"]["http"]
        given = event["headers"]
        names = "".join(given)
        # payload 2.0 names arrive lower-cased (API Gateway and Function URLs lower them): copied as they are then
        headers = dict(given) if names == names.lower() else {k.lower(): v for k, v in given.items()}
        cookies = event.get("cookies")
        if cookies:
            headers["cookie"] = "; ".join(cookies)
        return LazyScope(
            {
                "type": "http",
                "method": http["method"],
                "http_version": "1.1",
                "path": strip_api_gateway_path(
                    http["path"], api_gateway_base_path=self.config["api_gateway_base_path"]
                ),
                "raw_path": None,
                "root_path": "",
                "scheme": headers.get("x-forwarded-proto", "https"),
                "query_string": (event.get("rawQueryString") or "").encode(),
                "server": _server(headers),
                "client": (http["sourceIp"], 0),
                "asgi": {"version": "3.0", "spec_version": "2.0"},
                "aws.event": event,
                "aws.context": self.context,
                "dpmsf.headers": headers,
            }
        )


def http_api_paths(scope: _Scope, event: dict[str, Any], config: LambdaConfig) -> _Scope:
    """An HTTP API's path fixed in ``scope``: decoded once (not twice), its stage and base path in ``root_path``."""
    rc = event["requestContext"]
    if ".lambda-url." not in (rc.get("domainName") or ""):
        # API Gateway HTTP APIs decode the path before invoking us; Mangum decoded it a second time.
        raw = rc["http"]["path"] if event["version"] == "2.0" else event["path"]
        base = config["api_gateway_base_path"]
        scope["path"] = _strip_base(raw or "/", base)
    scope["root_path"] = _stage_root(event, config["api_gateway_base_path"])
    stage = rc.get("stage")
    if event.get("version") == "2.0" and isinstance(stage, str) and stage and stage != "$default":
        # a named HTTP API stage is in the path itself: it moves to root_path, where generated URLs find it
        prefix = "/" + stage
        if scope["path"] == prefix or scope["path"].startswith(prefix + "/"):
            scope["path"] = scope["path"][len(prefix) :] or "/"
            scope["root_path"] = prefix + scope["root_path"]
    return scope


def _strip_base(path: str, base: str) -> str:
    if base and base != "/" and (path == base or path.startswith(base + "/")):
        return path[len(base) :] or "/"
    return path


def _stage_root(event: dict[str, Any], base: str) -> str:
    """What sits in front of the scope path in the URL the client used: REST stage, and/or the stripped base."""
    prefix = base if base and base != "/" else ""
    rc = event.get("requestContext") or {}
    full, path = rc.get("path"), event.get("path")
    if full and path and full != path and full.endswith(path):
        prefix = full[: len(full) - len(path)] + prefix  # execute-api host: "/Prod" + "/rest/..."
    elif _stage_only_in_route(event, rc) and not f"{prefix}/".startswith(f"/{rc['stage']}/"):
        prefix = f"/{rc['stage']}" + prefix  # (a base path configured as the stage, the old workaround, stays one)
    return prefix


def _stage_only_in_route(event: dict[str, Any], rc: dict[str, Any]) -> bool:
    """serverless-offline (REST, stage in the URL, as by default): ``path`` and ``requestContext.path`` both lack
    the stage the client's URL had (``/dev/docs``); only its route, ``resourcePath`` (``/dev/{proxy*}``), keeps it,
    while ``resource`` drops it. API Gateway's ``resourcePath`` is the ``resource``, without any stage."""
    stage, route, resource = rc.get("stage"), rc.get("resourcePath"), event.get("resource")
    if not (isinstance(stage, str) and stage and isinstance(route, str) and isinstance(resource, str)):
        return False
    staged = f"/{stage}"
    return (route == staged or route.startswith(staged + "/")) and not (
        resource == staged or resource.startswith(staged + "/")
    )
