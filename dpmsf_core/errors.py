"""One exception hierarchy for every error a caller can see, rendered in one place as RFC 9457."""

from __future__ import annotations

from typing import Any

PROBLEM_CONTENT_TYPE = "application/problem+json"
_TYPE_BASE = "https://dpmsf.dev/problems/"


class DPMSFError(Exception):
    """An error that becomes an RFC 9457 problem+json answer with ``status``."""

    status: int = 500
    title: str = "Internal Server Error"
    slug: str = "internal"

    def __init__(
        self,
        detail: str | None = None,
        *,
        status: int | None = None,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        if status is not None:
            self.status = status
        if title is not None:
            self.title = title
        self.detail = detail or self.title
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})
        super().__init__(self.detail)

    def problem(self, request_id: str | None = None, instance: str | None = None) -> dict[str, Any]:
        """The problem+json document; ``extra`` members come after the standard ones."""
        body: dict[str, Any] = {
            "type": _TYPE_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        if request_id:
            body["request_id"] = request_id
        body.update(self.extra)
        return body

    def problem_json(self, request_id: str | None = None, instance: str | None = None) -> bytes:
        """The problem document as every answer carries it (ASGI, Lambda, the slow-client guard): compact UTF-8."""
        import json  # here: a plugin importing HTTPError should not pay for it

        return json.dumps(self.problem(request_id, instance), ensure_ascii=False, separators=(",", ":")).encode()


class BadRequest(DPMSFError):
    status, title, slug = 400, "Bad Request", "bad-request"


class Unauthorized(DPMSFError):
    status, title, slug = 401, "Unauthorized", "unauthorized"

    def __init__(self, detail: str | None = None, **kw: Any) -> None:
        kw.setdefault("headers", {"WWW-Authenticate": 'Bearer realm="dpmsf"'})
        super().__init__(detail, **kw)


class Forbidden(DPMSFError):
    status, title, slug = 403, "Forbidden", "forbidden"


class NotFound(DPMSFError):
    status, title, slug = 404, "Not Found", "not-found"


class MethodNotAllowed(DPMSFError):
    status, title, slug = 405, "Method Not Allowed", "method-not-allowed"

    def __init__(self, detail: str, allow: list[str], **kw: Any) -> None:
        self.allow = list(allow)
        kw.setdefault("headers", {"Allow": ", ".join(self.allow)})
        kw.setdefault("extra", {"allow": self.allow})
        super().__init__(detail, **kw)


class Conflict(DPMSFError):
    status, title, slug = 409, "Conflict", "ambiguous-api"

    def __init__(self, detail: str, candidates: list[str] | None = None, **kw: Any) -> None:
        self.candidates = list(candidates or [])
        if self.candidates:
            kw.setdefault("extra", {"candidates": self.candidates})
        super().__init__(detail, **kw)


class RequestTimeout(DPMSFError):
    status, title, slug = 408, "Request Timeout", "request-timeout"


class PayloadTooLarge(DPMSFError):
    status, title, slug = 413, "Content Too Large", "payload-too-large"


class UnsupportedMediaType(DPMSFError):
    status, title, slug = 415, "Unsupported Media Type", "unsupported-media-type"


class HeadersTooLarge(DPMSFError):
    status, title, slug = 431, "Request Header Fields Too Large", "headers-too-large"


class UnprocessableArguments(DPMSFError):
    status, title, slug = 422, "Unprocessable Content", "invalid-arguments"

    def __init__(self, detail: str, errors: list[dict[str, Any]] | None = None, **kw: Any) -> None:
        # one shape for every 422, whoever raised it: {"loc": [where, ...], "msg": why, "input": what (if known)}
        self.errors = [error_entry(e) for e in errors or ()] or [{"loc": [], "msg": detail}]
        kw.setdefault("extra", {"errors": self.errors})
        super().__init__(detail, **kw)


def error_entry(found: dict[str, Any]) -> dict[str, Any]:
    """``{"param": "limit", "reason": ...}`` or ``{"line": 3, "column": 1, "msg": ...}`` -> the ``loc``/``msg``
    shape; an entry already in it is kept as it is."""
    if "loc" in found and "msg" in found and set(found) <= {"loc", "msg", "input"}:
        return found
    loc = list(found.get("loc") or ())
    if not loc and "param" in found:
        loc = [found["param"]]
    if not loc and "line" in found:
        loc = ["body", found["line"], *([found["column"]] if found.get("column") is not None else [])]
    entry: dict[str, Any] = {"loc": loc, "msg": str(found.get("msg") or found.get("reason") or "invalid")}
    for key in ("input", "value"):
        if key in found:
            entry["input"] = found[key]
            break
    return entry


class FunctionFailed(DPMSFError):
    status, title, slug = 500, "Function Failed", "function-failed"


class BadGateway(DPMSFError):
    status, title, slug = 502, "Bad Gateway", "command-failed"


class ServiceUnavailable(DPMSFError):
    status, title, slug = 503, "Service Unavailable", "unavailable"


class GatewayTimeout(DPMSFError):
    status, title, slug = 504, "Gateway Timeout", "timeout"


class HTTPError(DPMSFError):
    """Raised by plugin functions to answer with a chosen status: ``raise HTTPError(404, "no such task")``."""

    slug = "http-error"

    def __init__(self, status: int, detail: str | None = None, headers: dict[str, str] | None = None) -> None:
        from http import HTTPStatus

        try:
            title = HTTPStatus(status).phrase
        except ValueError:
            title = "Error"
        super().__init__(detail, status=status, title=title, headers=headers)


class ConfigError(Exception):
    """A bad setting; start-up stops with this one line."""


class PluginError(Exception):
    """A plugin that cannot be loaded or declares something invalid: the reason, and where (file and line).

    Rendered one way everywhere (``__dir__``, logs, upload answers): ``<path>, line <n>: <reason>``.
    """

    def __init__(self, reason: str, path: str | None = None, line: int | None = None) -> None:
        self.reason, self.path, self.line = reason, path, line
        where = f"{path}, line {line}" if path and line else (path or "")
        super().__init__(f"{where}: {reason}" if where else reason)

    @classmethod
    def syntax(cls, path: str, exc: SyntaxError) -> PluginError:
        """A module that does not parse (or compile): the parser's message and line."""
        return cls(f"syntax error: {exc.msg}", path, exc.lineno)


class TenantFunctionError(FunctionFailed):
    """A sandboxed tenant function raised: its type and message are the tenant's, shown only where debug allows."""
