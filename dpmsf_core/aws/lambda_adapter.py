"""The AWS Lambda entry: HTTP events as Mangum 0.22 serves them, every other event to ``@expose.event`` functions.

The event kind is inferred and the ASGI scope built as Mangum does (REST and payload 2.0 by ``gateway``, which does
not import Mangum and so not ``asyncio``; ALB, payload 1.0 on an HTTP API and Lambda@Edge by Mangum's handlers, in
``mangum_handlers``); the few places where Mangum gets an AWS event shape wrong are fixed:

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
- the event loop is the adapter's own, so an ``asyncio.run`` elsewhere in the process can't unset it, and it is
  made only when a request first needs one (``lazyloop``); the app is stepped eagerly (``eager.py``): a request
  that never waits (most do not) costs no loop cycle.
"""

from __future__ import annotations

import base64
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol, cast

from ..lazyloop import LazyLoop
from .cycle import App, BufferedCycle
from .events import dispatch_event, event_source
from .gateway import HTTPAPI, TEXT_MIME_TYPES, RestAPI
from .observability import Observer, observer

if TYPE_CHECKING:
    from collections.abc import MutableMapping

    from mangum.types import LambdaConfig

    from ..app import DPMSFApp
    from ..context import LambdaContext


class LambdaHandler(Protocol):
    """What ``build_handler`` returns: Lambda calls it; tests and ``dpmsf invoke`` also use ``app`` and ``close``."""

    app: DPMSFApp

    def __call__(self, event: dict[str, Any], context: LambdaContext) -> dict[str, Any]: ...

    def close(self) -> None: ...


class HttpEventReader(Protocol):
    """One HTTP event kind's reader (``gateway``'s or Mangum's): the event's ASGI scope and body, and the app's
    answer in that kind's shape."""

    @property
    def scope(self) -> MutableMapping[str, Any]: ...
    @property
    def body(self) -> bytes: ...
    def __call__(self, response: Response) -> dict[str, Any]: ...


RESPONSE_LIMIT = 6 * 1024 * 1024  # Lambda's buffered response payload
Response = dict[str, Any]

log = logging.getLogger("dpmsf.lambda")


class LambdaAdapter:
    """Mangum's adapter (lifespan off: plugins load once per container, in ``create_app``) with the fixes above;
    REST and payload 2.0 events are read by ``gateway``, the rarer kinds by Mangum's handlers (``mangum_handlers``,
    imported when the first such event arrives)."""

    def __init__(self, app: App, *, base_path: str = "", watcher: Observer | None = None) -> None:
        self.app = app
        self.config: LambdaConfig = {
            "api_gateway_base_path": base_path or "/",
            "text_mime_types": TEXT_MIME_TYPES,
            "exclude_headers": [],
        }
        self.lazy_loop = LazyLoop()  # made when a request first needs it: a plain function's never does
        self.watcher = watcher
        # asyncio.timeout needs a task: with a function timeout set, every request runs as one
        self.eager = not getattr(getattr(app, "settings", None), "function_timeout", 0)

    def infer(self, event: dict[str, Any], context: LambdaContext) -> HttpEventReader:
        """The handler for this event's kind, tried in Mangum's order (ALB, HTTP API, REST API, Lambda@Edge)."""
        if not ("requestContext" in event and "elb" in event["requestContext"]):
            for fast in (HTTPAPI, RestAPI):
                if fast.infer(event, context, self.config):
                    return fast(event, context, self.config)
        from .mangum_handlers import HANDLERS_IN_ORDER

        for handler_cls in HANDLERS_IN_ORDER:
            if handler_cls.infer(event, context, self.config):
                reader: HttpEventReader = handler_cls(event, context, self.config)
                return reader
        raise RuntimeError("The event is not one of the HTTP kinds Lambda delivers (API Gateway, ALB, Lambda@Edge).")

    def close(self) -> None:
        """Close the event loop and the app (tests, ``dpmsf invoke``); Lambda simply freezes the container."""
        self.lazy_loop.close()
        close = getattr(self.app, "close", None)
        if close is not None:
            close()

    def __call__(self, event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            handler = self.infer(event, context)
            scope = handler.scope
            body = handler.body
        except Exception as exc:  # a malformed event (a field missing or of the wrong type, bad base64): a 400
            return malformed_answer(event, exc, context)
        response = BufferedCycle(scope, body, eager=self.eager)(self.app, self.lazy_loop)
        try:
            out = handler(response)
        except Exception as exc:  # the event's own fields (cookies, multi-value mode) could not carry the answer
            return malformed_answer(event, exc, context)
        if response["body"] and not out.get("isBase64Encoded") and _compressed(response["headers"]):
            out["body"] = base64.b64encode(response["body"]).decode("ascii")
            out["isBase64Encoded"] = True
        limit = getattr(handler, "response_limit", RESPONSE_LIMIT)
        if len(out.get("body") or "") > limit:
            out = handler(_too_large(len(out["body"]), limit, scope))
            response["status"] = 500
        if self.watcher is not None:
            self.watcher.request(scope, response["status"], time.perf_counter() - start)
        return out


def malformed_answer(event: Any, exc: BaseException, context: LambdaContext | None = None) -> dict[str, Any]:
    """A 400 problem+json for an HTTP event Mangum cannot read, in the answer shape its source expects; logged."""
    from ..errors import PROBLEM_CONTENT_TYPE, BadRequest

    reason = f"{type(exc).__name__}: {exc}"
    log.warning("Answered 400 to a malformed HTTP event (%s)", reason)
    err = BadRequest(f"The Lambda event could not be read as an HTTP request ({reason[:200]}).", title="Bad Event")
    body = err.problem_json(getattr(context, "aws_request_id", None)).decode()
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


def _too_large(size: int, limit: int, scope: MutableMapping[str, Any]) -> Response:
    from ..errors import PROBLEM_CONTENT_TYPE, FunctionFailed

    err = FunctionFailed(
        f"The response of {size} bytes is over Lambda's limit of {limit} bytes.", title="Response Too Large"
    )
    ctx = scope.get("aws.context")
    body = err.problem_json(getattr(ctx, "aws_request_id", None), scope.get("path"))
    log.error("%s %s: response of %d bytes is over the limit of %d", scope["method"], scope["path"], size, limit)
    return {"status": 500, "headers": [[b"content-type", PROBLEM_CONTENT_TYPE.encode()]], "body": body}


def build_handler(app: DPMSFApp | None = None) -> LambdaHandler:
    """The Lambda handler for ``app`` (default: ``create_app()`` from the environment), built once per container."""
    if app is None:
        from ..app import create_app

        app = create_app()
    watcher = observer(app.settings, meter=lambda: getattr(app, "meter", None))  # per-tenant EMF (metering/)
    adapter = LambdaAdapter(app, base_path=app.settings.base_path, watcher=watcher)
    logging.getLogger("mangum.http").setLevel(logging.WARNING)  # our access log already has a line per request
    registry = app.registry

    def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        source = event_source(event)
        if source is None:
            return adapter(event, context)
        if not isinstance(event, dict):  # events.py's fallback expects a dict (see the report on events.py:127)
            log.warning("Ignored a %s event: no function takes it", type(event).__name__)
            return {"handled": 0, "source": "unknown", "records": 0}
        with app.serving():  # event functions store in the app's store, as its HTTP requests do
            result = dispatch_event(event, context, registry.refresh().events())
        if watcher is not None:
            watcher.event(source, result)
        return result

    handler.app = app  # type: ignore[attr-defined]  # for tests and `dpmsf invoke`
    handler.adapter = adapter  # type: ignore[attr-defined]  # the same: attributes of the handler function
    handler.close = adapter.close  # type: ignore[attr-defined]  # the same
    return cast(LambdaHandler, watcher.wrap(handler) if watcher is not None else handler)
