"""Endpoints for tests/test_client.py: echo back what the real app handed the function, or answer plain text."""

import json

from starlette.responses import PlainTextResponse

from dpmsf_core import RequestInfo, expose


@expose.endpoint(method="GET|POST|PUT|DELETE", API="echo")
def echo(request: RequestInfo, **kwargs):
    """What arrived: method, path, arguments, JSON body, headers of interest and the verified tenant."""
    return {
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "kwargs": kwargs,
        "body": json.loads(request.body) if request.body else None,
        "content_type": request.header("content-type"),
        "accept": request.header("accept"),
        "authorization": request.header("authorization"),
        "tenant": request.tenant,
    }


@expose.endpoint(method="GET", API="text")
def text():
    """A framework response that is not JSON."""
    return PlainTextResponse("just text")
