"""The AWS Lambda entry: HTTP events through Mangum, every other event to ``@expose.event`` functions.

Mangum 0.22 infers the event kind and builds the ASGI scope; the few places where it gets an AWS
event shape wrong are fixed here, in small subclasses of its handlers, rather than by re-parsing events:

- null ``headers`` / ``multiValueHeaders`` / ``rawQueryString`` / ``identity`` crash it (AWS sends ``null``);
- HTTP API (payload 2.0 and 1.0 on an HTTP API) delivers the path already decoded, Mangum decodes it again
  (``%2520`` became a space); REST APIs, ALB and Function URLs send it encoded and are decoded once;
- ``application/problem+json`` (and every ``+json``/``+xml`` type) went out base64 as if binary;
  compressed bodies (``Content-Encoding``) now always go out base64;
- the REST API stage (``/Prod``) is missing from ``path`` on the ``execute-api`` host: it becomes the
  ASGI ``root_path`` so URLs the app generates (``/docs``) carry it;
- the scope was built twice per request (once more when rendering the response);
- a response over Lambda's payload limit is answered with a problem+json 500 instead of a failed invocation;
- an event Mangum cannot read (a field missing or of the wrong type, ``isBase64Encoded`` with a body that is not
  base64, a CloudFront record without its request) is answered 400 problem+json and logged with the reason;
- the event loop is the adapter's own, so an ``asyncio.run`` elsewhere in the process can't unset it; and the
  app is stepped eagerly (``eager.py``): a request that never waits (most do not) costs no loop cycle.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol, cast

from mangum import Mangum
from mangum.adapter import DEFAULT_TEXT_MIME_TYPES
from mangum.handlers import ALB, APIGateway, HTTPGateway
from mangum.handlers.utils import strip_api_gateway_path
from mangum.types import Response, Scope

from .cycle import BufferedCycle
from .events import dispatch_event, event_source
from .observability import Observer, observer
from .scope import LazyScope

if TYPE_CHECKING:
    from ..app import DPMSFApp


class LambdaHandler(Protocol):
    """What ``build_handler`` returns: Lambda calls it; tests and ``dpmsf invoke`` also use ``app`` and ``close``."""

    app: DPMSFApp

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]: ...

    def close(self) -> None: ...


TEXT_MIME_TYPES = [*DEFAULT_TEXT_MIME_TYPES, "+json", "+xml", "application/x-www-form-urlencoded", "application/yaml"]
RESPONSE_LIMIT = 6 * 1024 * 1024  # Lambda's buffered response payload
ALB_RESPONSE_LIMIT = 1024 * 1024

log = logging.getLogger("dpmsf.lambda")


def _without_nulls(event: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """A shallow copy with ``{}`` (``""`` for a query string) where AWS sent ``null``; the event itself if none."""
    nulls = [k for k in keys if k in event and event[k] is None]
    if not nulls:
        return event
    return {**event, **{k: "" if k == "rawQueryString" else {} for k in nulls}}


def _identity_fixed(event: dict[str, Any]) -> dict[str, Any]:
    rc = event.get("requestContext")
    if isinstance(rc, dict) and "identity" in rc and rc["identity"] is None:
        return {**event, "requestContext": {**rc, "identity": {}}}
    return event


class RestAPI(APIGateway):
    """REST API (payload 1.0): null-safe; the stage missing from ``path`` becomes ``root_path``.

    The scope is Mangum's, field for field, built in one pass: the merged headers are also handed to the app as
    ``dpmsf.headers`` and the query as ``dpmsf.query`` (what it would otherwise decode and parse back out of the
    bytes built here), and ``multiValueHeaders``, a superset of ``headers``, is read alone when it holds them all.
    """

    def __init__(self, event: dict[str, Any], context: Any, config: Any) -> None:
        super().__init__(_identity_fixed(_without_nulls(event, ("headers", "multiValueHeaders"))), context, config)

    @cached_property
    def scope(self) -> Scope:
        event = self.event
        base = self.config["api_gateway_base_path"]
        headers = _rest_headers(event)
        query, params = _rest_query(event)
        server = headers.get("host", "mangum")
        port = headers.get("x-forwarded-port", 80)
        if ":" in server:
            server, port = server.split(":", 1)
        return LazyScope(
            {
                "type": "http",
                "http_version": "1.1",
                "method": event["httpMethod"],
                "path": strip_api_gateway_path(event["path"], api_gateway_base_path=base),
                "raw_path": None,
                "root_path": _root_path(event, base),
                "scheme": headers.get("x-forwarded-proto", "https"),
                "server": (server, int(port)),
                "client": ((event["requestContext"].get("identity") or {}).get("sourceIp"), 0),
                "asgi": {"version": "3.0", "spec_version": "2.0"},
                "aws.event": event,
                "aws.context": self.context,
                "dpmsf.headers": headers,
                "dpmsf.query": query,
                "dpmsf.params": params,  # query_string, if read, is encoded from these
            }
        )


def _rest_headers(event: dict[str, Any]) -> dict[str, str]:
    """Mangum's merge: ``headers`` lower-cased, then every ``multiValueHeaders`` entry joined with ", "."""
    single = event.get("headers") or {}
    multi = event.get("multiValueHeaders") or {}
    joined = {k.lower(): ", ".join(v) if type(v) is list else "" for k, v in multi.items()}
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


class HTTPAPI(HTTPGateway):
    """HTTP API and Function URL (payload 2.0; 1.0 on an HTTP API): null-safe, path decoded once."""

    def __init__(self, event: dict[str, Any], context: Any, config: Any) -> None:
        event = _without_nulls(event, ("headers", "multiValueHeaders", "rawQueryString"))
        super().__init__(_identity_fixed(event), context, config)

    @cached_property
    def scope(self) -> Scope:
        event = self.event
        scope = self._scope_v2() if event.get("version") == "2.0" else super().scope
        rc = event["requestContext"]
        if ".lambda-url." not in (rc.get("domainName") or ""):
            # API Gateway HTTP APIs decode the path before invoking us; Mangum decoded it a second time.
            raw = rc["http"]["path"] if event["version"] == "2.0" else event["path"]
            base = self.config["api_gateway_base_path"]
            scope["path"] = _strip_base(raw or "/", base)
        scope["root_path"] = _root_path(event, self.config["api_gateway_base_path"])
        stage = rc.get("stage")
        if event.get("version") == "2.0" and isinstance(stage, str) and stage and stage != "$default":
            # a named HTTP API stage is in the path itself: it moves to root_path, where generated URLs find it
            prefix = "/" + stage
            if scope["path"] == prefix or scope["path"].startswith(prefix + "/"):
                scope["path"] = scope["path"][len(prefix) :] or "/"
                scope["root_path"] = prefix + scope["root_path"]
        return scope

    def _scope_v2(self) -> Scope:
        """Mangum's payload 2.0 scope, field for field, with the headers also handed over decoded."""
        event = self.event
        http = event["requestContext"]["http"]
        headers = {k.lower(): v for k, v in event["headers"].items()}
        cookies = event.get("cookies")
        if cookies:
            headers["cookie"] = "; ".join(cookies)
        server = headers.get("host", "mangum")
        port = headers.get("x-forwarded-port", 80)
        if ":" in server:
            server, port = server.split(":", 1)
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
                "server": (server, int(port)),
                "client": (http["sourceIp"], 0),
                "asgi": {"version": "3.0", "spec_version": "2.0"},
                "aws.event": event,
                "aws.context": self.context,
                "dpmsf.headers": headers,
            }
        )


class LoadBalancer(ALB):
    """ALB target group (single- or multi-value mode): null-safe, scope built once."""

    def __init__(self, event: dict[str, Any], context: Any, config: Any) -> None:
        super().__init__(_without_nulls(event, ("headers", "multiValueHeaders")), context, config)

    @cached_property
    def scope(self) -> Scope:
        return super().scope


def _strip_base(path: str, base: str) -> str:
    if base and base != "/" and (path == base or path.startswith(base + "/")):
        return path[len(base) :] or "/"
    return path


def _root_path(event: dict[str, Any], base: str) -> str:
    """What sits in front of the scope path in the URL the client used: REST stage, and/or the stripped base."""
    prefix = base if base and base != "/" else ""
    rc = event.get("requestContext") or {}
    full, path = rc.get("path"), event.get("path")
    if full and path and full != path and full.endswith(path):
        prefix = full[: len(full) - len(path)] + prefix  # execute-api host: "/Prod" + "/rest/..."
    return prefix


class LambdaAdapter(Mangum):
    """Mangum with lifespan off (plugins load once per container, in ``create_app``) and the fixes above."""

    def __init__(self, app: Any, *, base_path: str = "", watcher: Observer | None = None) -> None:
        super().__init__(
            app,
            lifespan="off",
            api_gateway_base_path=base_path or "/",
            custom_handlers=[LoadBalancer, HTTPAPI, RestAPI],
            text_mime_types=TEXT_MIME_TYPES,
        )
        self.loop = asyncio.new_event_loop()
        self.watcher = watcher
        # asyncio.timeout needs a task: with a function timeout set, every request runs as one
        self.eager = not getattr(getattr(app, "settings", None), "function_timeout", 0)

    def close(self) -> None:
        """Close the event loop and the app (tests, ``dpmsf invoke``); Lambda simply freezes the container."""
        self.loop.close()
        close = getattr(self.app, "close", None)
        if close is not None:
            close()

    def _setup_event_loop(self) -> None:
        """Mangum would adopt the thread's current loop; ours is created in ``__init__`` and set per call."""

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            handler = self.infer(event, context)
            scope = handler.scope
            body = handler.body
        except Exception as exc:  # a malformed event (a field missing or of the wrong type, bad base64): a 400
            return malformed_answer(event, exc, context)
        asyncio.set_event_loop(self.loop)
        response = cast(Response, BufferedCycle(scope, body, eager=self.eager)(self.app, self.loop))
        try:
            out = handler(response)
        except Exception as exc:  # the event's own fields (cookies, multi-value mode) could not carry the answer
            return malformed_answer(event, exc, context)
        if response["body"] and not out.get("isBase64Encoded") and _compressed(response["headers"]):
            out["body"] = base64.b64encode(response["body"]).decode("ascii")
            out["isBase64Encoded"] = True
        limit = ALB_RESPONSE_LIMIT if isinstance(handler, ALB) else RESPONSE_LIMIT
        if len(out.get("body") or "") > limit:
            out = handler(_too_large(len(out["body"]), limit, scope))
            response["status"] = 500
        if self.watcher is not None:
            self.watcher.request(scope, response["status"], time.perf_counter() - start)
        return out


def malformed_answer(event: Any, exc: BaseException, context: Any = None) -> dict[str, Any]:
    """A 400 problem+json for an HTTP event Mangum cannot read, in the answer shape its source expects; logged."""
    from ..errors import PROBLEM_CONTENT_TYPE, BadRequest

    reason = f"{type(exc).__name__}: {exc}"
    log.warning("Answered 400 to a malformed HTTP event (%s)", reason)
    err = BadRequest(f"The Lambda event could not be read as an HTTP request ({reason[:200]}).", title="Bad Event")
    body = json.dumps(err.problem(getattr(context, "aws_request_id", None)))
    records = event.get("Records") if isinstance(event, dict) else None
    if isinstance(records, list) and records and isinstance(records[0], dict) and "cf" in records[0]:
        header = [{"key": "Content-Type", "value": PROBLEM_CONTENT_TYPE}]  # Lambda@Edge's answer shape
        return {"status": "400", "statusDescription": "Bad Request", "headers": {"content-type": header}, "body": body}
    out: dict[str, Any] = {"statusCode": 400, "body": body, "isBase64Encoded": False}
    rc = event.get("requestContext") if isinstance(event, dict) else None
    if isinstance(rc, dict) and "elb" in rc:
        out["statusDescription"] = "400 Bad Request"
        if "multiValueHeaders" in event:  # a target group in multi-value mode reads only multiValueHeaders
            out["multiValueHeaders"] = {"content-type": [PROBLEM_CONTENT_TYPE]}
            return out
    out["headers"] = {"content-type": PROBLEM_CONTENT_TYPE}
    return out


def _compressed(headers: list[Any]) -> bool:
    for name, value in headers:
        if name.lower() == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
            return True
    return False


def _too_large(size: int, limit: int, scope: Scope) -> Response:
    from ..errors import PROBLEM_CONTENT_TYPE, FunctionFailed

    err = FunctionFailed(
        f"The response of {size} bytes is over Lambda's limit of {limit} bytes.", title="Response Too Large"
    )
    ctx = scope.get("aws.context")
    body = json.dumps(err.problem(getattr(ctx, "aws_request_id", None), scope.get("path"))).encode()
    log.error("%s %s: response of %d bytes is over the limit of %d", scope["method"], scope["path"], size, limit)
    return {"status": 500, "headers": [[b"content-type", PROBLEM_CONTENT_TYPE.encode()]], "body": body}


def build_handler(app: DPMSFApp | None = None) -> LambdaHandler:
    """The Lambda handler for ``app`` (default: ``create_app()`` from the environment), built once per container."""
    if app is None:
        from ..app import create_app

        app = create_app()
    watcher = observer(app.settings)
    adapter = LambdaAdapter(app, base_path=app.settings.base_path, watcher=watcher)
    logging.getLogger("mangum.http").setLevel(logging.WARNING)  # our access log already has a line per request
    registry = app.registry

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        source = event_source(event)
        if source is None:
            return adapter(event, context)
        if not isinstance(event, dict):  # events.py's fallback expects a dict (see the report on events.py:127)
            log.warning("Ignored a %s event: no function takes it", type(event).__name__)
            return {"handled": 0, "source": "unknown", "records": 0}
        result = dispatch_event(event, context, registry.refresh().events())
        if watcher is not None:
            watcher.event(source, result)
        return result

    handler.app = app  # type: ignore[attr-defined]  # for tests and `dpmsf invoke`
    handler.adapter = adapter  # type: ignore[attr-defined]  # the same: attributes of the handler function
    handler.close = adapter.close  # type: ignore[attr-defined]  # the same
    return cast(LambdaHandler, watcher.wrap(handler) if watcher is not None else handler)
