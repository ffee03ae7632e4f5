"""What an operation can answer: every status the framework itself produces for it, with its real content type.

A function's own answers are read from its return annotation: a plain value is ``200 {"results": ...}``; a
returned Response passes through with its own status (``2XX``) and media type (``text/plain`` for a
``PlainTextResponse``, anything for a bare ``Response``, such as ``image/png``); ``raise HTTPError(status)`` may
choose any status, which is what ``default`` says.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

from ..loading.registry import Endpoint
from .requests import RequestShape

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details; some statuses add members (errors, allow, candidates)",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "request_id": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object"}},
        "allow": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["type", "title", "status", "detail"],
}

_WHY = {
    "400": "Malformed body: not JSON, or JSON that is not an object",
    "401": "Missing, invalid, expired or replayed bearer token (any token sent is checked)",
    "403": "Authentic token of a disabled tenant",
    "404": "No such API or URL shape (e.g. unloaded since this document was built)",
    "413": "Body larger than DPMSF_MAX_BODY",
    "415": "Body content type other than JSON or a urlencoded form",
    "422": "Missing or invalid argument; `errors` lists each with its `loc`",
    "500": "The function raised (the server log has the details), or its answer was too large",
    "502": "The program behind this endpoint failed or printed bad output",
    "503": "The module failed to load (after a reload), or the sandbox is busy",
    "504": "The function ran past its timeout",
    "default": "A status the function chose with `raise HTTPError(status, detail)`",
}


def problem(why: str) -> dict[str, Any]:
    return {"description": why, "content": {"application/problem+json": {"schema": PROBLEM_REF}}}


def responses(ep: Endpoint, shape: RequestShape, *, timeout: bool) -> dict[str, Any]:
    """Every answer of one operation: the function's own, then each framework error that can happen to it."""
    out: dict[str, Any] = dict(success(ep))
    codes = ["401", "403", "404"]
    if shape.body is not None:
        codes.append("400")
        codes.append("413")
        if "*/*" not in shape.body["content"]:
            codes.append("415")
    if shape.validates or shape.body is not None or any(p["in"] == "path" for p in shape.parameters):
        codes.append("422")
    codes += ["500", "503"]
    if getattr(ep.func, "__dpmsf_command__", None) is not None:
        codes.append("502")
    if timeout or getattr(ep.func, "__dpmsf_command__", None) is not None:
        codes.append("504")
    for code in sorted(codes):
        out[code] = problem(_WHY[code])
    out["default"] = problem(_WHY["default"])
    return out


def success(ep: Endpoint) -> dict[str, Any]:
    """The function's own answer, from its return annotation."""
    returned = _return_hint(ep)
    media = _response_media_type(returned)
    if media is not None:
        described = "The Response the function returns, passed through (its own status and headers)"
        out: dict[str, Any] = {"2XX": {"description": described, "content": {media: {"schema": {}}}}}
        if media == "*/*":  # a bare Response may be empty: 204 has no content type
            out["204"] = {"description": "No content"}
        return out
    results: dict[str, Any] = {}
    if returned in (str, int, float, bool):
        results = {"type": {str: "string", int: "integer", float: "number", bool: "boolean"}[returned]}
    schema = {"type": "object", "properties": {"results": results}, "required": ["results"]}
    return {
        "200": {
            "description": '`{"results": <return value>}`',
            "content": {"application/json": {"schema": schema}},
        }
    }


def _return_hint(ep: Endpoint) -> Any:
    if not ep.trusted:
        return None  # a sandboxed function's return annotation is not evaluated on the host
    try:
        return typing.get_type_hints(ep.func).get("return")
    except Exception:  # unresolvable annotation: say nothing about the answer's type
        annotation = getattr(ep.plan.signature, "return_annotation", inspect.Signature.empty)
        return None if isinstance(annotation, str) or annotation is inspect.Signature.empty else annotation


def _response_media_type(hint: Any) -> str | None:
    """``text/plain`` for a ``PlainTextResponse`` annotation, ``*/*`` for a bare ``Response``; None for a value."""
    if not isinstance(hint, type):
        return None
    if not any(getattr(base, "__name__", "") == "Response" for base in hint.__mro__):
        return None
    if not (hasattr(hint, "status_code") or hasattr(hint, "render")):
        return None
    return getattr(hint, "media_type", None) or "*/*"
