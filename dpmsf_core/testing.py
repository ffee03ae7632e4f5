"""Test plugins the way ``fastapi.testclient`` and ``chalice.test`` let you: an app from a plugins folder, called
in-process over HTTP, or through the Lambda handler with real API Gateway, SQS and schedule event shapes.

    from dpmsf_core.testing import http_client, lambda_invoker

    def test_hello() -> None:
        with http_client("plugins") as client:
            assert client.get("/rest/services/hello-world/?name=Ada").json()["results"]["hello"] == "Ada"

    def test_hello_on_lambda() -> None:
        with lambda_invoker("plugins") as invoke:
            assert invoke.rest("GET", "/rest/services/hello-world/", query={"name": "Ada"})["statusCode"] == 200

``http_client`` needs ``httpx`` (``pip install httpx``).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Settings
from .sources import is_remote, split_plugin_path

__all__ = ["LambdaContext", "LambdaInvoker", "http_client", "lambda_invoker"]


def _settings(plugins: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], env: Mapping[str, str]) -> Settings:
    folders = [plugins] if isinstance(plugins, str | os.PathLike) else list(plugins)
    for folder in folders:  # a typo in a test's folder would otherwise serve nothing, silently
        name = os.fspath(folder)
        if not isinstance(name, str):
            raise TypeError(f"plugins={folder!r}: expected a folder path (str or os.PathLike), or a list of them")
        for entry in split_plugin_path(name):  # s3:// and gs:// entries stay whole
            if entry != "." and not is_remote(entry) and not os.path.isdir(entry):
                raise FileNotFoundError(f"plugins={entry!r}: no such folder (relative to {os.getcwd()})")
    environ = {"DPMSF_PLUGINS": ":".join(os.fspath(f) for f in folders), **env}
    environ.setdefault("DPMSF_STATE_DIR", tempfile.mkdtemp(prefix="dpmsf-test-"))  # never your real state
    return Settings.from_env(environ, dotenv=None)


@contextmanager
def http_client(
    plugins: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] = "plugins", **env: str
) -> Iterator[Any]:
    """An ``httpx.Client`` on a real server (uvicorn, a free 127.0.0.1 port) of an app built from ``plugins``
    (a folder or a list) and settings ``env``: what your tests see is what curl would."""
    import httpx
    import uvicorn

    from .app import create_app

    app = create_app(_settings(plugins, env))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="dpmsf-test-server", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(10)
        app.close()


@dataclass
class LambdaContext:
    """The attributes of the Lambda context that handlers, Mangum and Powertools read."""

    function_name: str = "dpmsf-test"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:dpmsf-test"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = "/aws/lambda/dpmsf-test"
    log_stream_name: str = "local"
    remaining_ms: int = 29_000
    identity: Any = None
    client_context: Any = None
    tenant_id: str | None = None

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def _json_body(value: Any, older: Any) -> str | None:
    """The body of ``json=`` (the name httpx uses) or ``json_body=`` (kept for existing tests); not both."""
    if value is not None and older is not None:
        raise TypeError("pass the body as json= or as json_body=, not both")
    chosen = value if value is not None else older
    return None if chosen is None else json.dumps(chosen)


class LambdaInvoker:
    """Calls the Lambda handler of an app with events in the shapes AWS sends (REST v1 with a stage, HTTP API
    payload 2.0, SQS, a schedule), so tests see exactly what API Gateway and Lambda would get back."""

    def __init__(self, handler: Callable[[dict[str, Any], LambdaContext], Mapping[str, Any]]) -> None:
        self.handler = handler

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]:
        return dict(self.handler(event, LambdaContext()))

    def rest(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | Sequence[str]] | None = None,
        json: Any = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        stage: str = "Prod",
    ) -> dict[str, Any]:
        """A REST API (payload 1.0) request through ``ANY /{proxy+}`` on ``stage``; ``json=`` is the body, sent as
        httpx's ``json=`` sends it (``json_body=`` is its older name)."""
        multi = {k: [v] if isinstance(v, str) else list(v) for k, v in (query or {}).items()}
        head = {"Host": "abc123.execute-api.us-east-1.amazonaws.com", **(headers or {})}
        body = _json_body(json, json_body)
        if body is not None:
            head.setdefault("Content-Type", "application/json")
        return self(
            {
                "resource": "/{proxy+}",
                "path": path,
                "httpMethod": method,
                "headers": head,
                "multiValueHeaders": {k: [v] for k, v in head.items()},
                "queryStringParameters": {k: v[-1] for k, v in multi.items()} or None,
                "multiValueQueryStringParameters": multi or None,
                "pathParameters": {"proxy": path.lstrip("/")},
                "stageVariables": None,
                "requestContext": {
                    "resourcePath": "/{proxy+}",
                    "httpMethod": method,
                    "path": f"/{stage}{path}",
                    "stage": stage,
                    "requestId": str(uuid.uuid4()),
                    "identity": {"sourceIp": "127.0.0.1", "userAgent": "dpmsf-testing"},
                    "accountId": "123456789012",
                    "apiId": "abc123",
                },
                "body": body,
                "isBase64Encoded": False,
            }
        )

    def http(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        json: Any = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """An HTTP API (payload 2.0) request on the ``$default`` stage; ``query`` is the raw query string, ``json=``
        (or ``json_body=``) the body."""
        head = {
            "host": "abc123.execute-api.us-east-1.amazonaws.com",
            **{k.lower(): v for k, v in (headers or {}).items()},
        }
        body = _json_body(json, json_body)
        if body is not None:
            head.setdefault("content-type", "application/json")
        return self(
            {
                "version": "2.0",
                "routeKey": "$default",
                "rawPath": path,
                "rawQueryString": query,
                "headers": head,
                "requestContext": {
                    "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1",
                             "userAgent": "dpmsf-testing"},
                    "domainName": head["host"],
                    "stage": "$default",
                    "requestId": str(uuid.uuid4()),
                    "apiId": "abc123",
                    "accountId": "123456789012",
                },
                "body": body,
                "isBase64Encoded": False,
            }
        )  # fmt: skip

    def sqs(self, *bodies: Any, queue: str = "dpmsf-test-queue") -> dict[str, Any]:
        """An SQS batch, one record per body (dicts are sent as JSON); the answer holds ``batchItemFailures``."""
        arn = f"arn:aws:sqs:us-east-1:123456789012:{queue}"
        records = [
            {
                "messageId": str(uuid.uuid4()),
                "receiptHandle": base64.b64encode(os.urandom(12)).decode(),
                "body": body if isinstance(body, str) else json.dumps(body),
                "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1700000000000"},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": arn,
                "awsRegion": "us-east-1",
            }
            for body in bodies
        ]
        return self({"Records": records})

    def schedule(self, rule: str = "dpmsf-test-schedule") -> dict[str, Any]:
        """An EventBridge scheduled event, as a ``rate(...)`` or ``cron(...)`` rule sends it."""
        return self(
            {
                "version": "0",
                "id": str(uuid.uuid4()),
                "detail-type": "Scheduled Event",
                "source": "aws.events",
                "account": "123456789012",
                "time": "2026-01-01T00:00:00Z",
                "region": "us-east-1",
                "resources": [f"arn:aws:events:us-east-1:123456789012:rule/{rule}"],
                "detail": {},
            }
        )


@contextmanager
def lambda_invoker(
    plugins: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] = "plugins", **env: str
) -> Iterator[LambdaInvoker]:
    """The Lambda handler of an app built from ``plugins``, ready to take events (see ``LambdaInvoker``)."""
    from .app import create_app
    from .aws.lambda_adapter import build_handler

    handler = build_handler(create_app(_settings(plugins, env)))
    try:
        yield LambdaInvoker(handler)
    finally:
        handler.close()


def plugin_folder() -> Path:
    """The bundled example plugins, for trying the helpers above without a folder of one's own."""
    from .config import BUNDLED_PLUGINS

    return Path(BUNDLED_PLUGINS)
