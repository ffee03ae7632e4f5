"""The conformance suite's one plugin of its own: cookies in (the ``Cookie`` header, or payload 2.0's ``cookies``
array) and two ``Set-Cookie`` out (v1 needs ``multiValueHeaders`` for that, v2 the response ``cookies`` list)."""

from __future__ import annotations

from starlette.responses import JSONResponse, Response

from dpmsf_core import RequestInfo, expose


@expose.endpoint(method="GET", API="cookie-jar")
def cookie_jar(request: RequestInfo) -> Response:
    """Echo the request's cookies, sorted; set ``flavour`` and ``session``."""
    sent = request.header("cookie") or ""
    answer = JSONResponse({"results": {"seen": sorted(c.strip() for c in sent.split(";") if c.strip())}})
    answer.set_cookie("flavour", "oat", path="/")
    answer.set_cookie("session", "s3cr3t", httponly=True, path="/")
    return answer
