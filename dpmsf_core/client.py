"""A tiny DPMSF client on the standard library: one fresh single-use token per call, ``results`` back.

    from dpmsf_core.client import Client
    api = Client("https://example.com", tenant_id, key)
    api.call("add", 1, 2)                                 # GET {base}/rest/services/add/1/2/
    api.call("tasks", method="POST", json={"title": "x"}, module="todo_v2")

An error answer raises ``CallError`` carrying the problem+json document.
"""

from __future__ import annotations

import json as _json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from .tenancy.tokens import decode_key, mint

__all__ = ["CallError", "Client"]


class CallError(Exception):
    """DPMSF answered with an error; ``problem`` is its RFC 9457 document."""

    def __init__(self, status: int, problem: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.problem = problem
        self.headers = dict(headers or {})
        self.title = str(problem.get("title", ""))
        self.detail = str(problem.get("detail", ""))
        super().__init__(f"{status} {self.title}: {self.detail}".rstrip(": "))


class Client:
    """Calls DPMSF endpoints as one tenant; each call mints its own token, so calls never replay one."""

    def __init__(self, base_url: str, tenant_id: str, key: str | bytes, ttl: float = 60, timeout: float = 30) -> None:
        self.base_url = base_url.rstrip("/")
        self.tenant_id = tenant_id
        self.ttl = ttl
        self.timeout = timeout
        self._key = decode_key(key)
        mint(tenant_id, self._key, ttl)  # a bad tenant id or ttl fails here, not on the first call

    def token(self) -> str:
        """A fresh token, e.g. for a request made with another HTTP library."""
        return mint(self.tenant_id, self._key, self.ttl)

    def url(self, api: str, *url_params: Any, module: str | None = None) -> str:
        """``{base}/rest/services/[{module}/]{api}/{p1}/.../`` with every segment percent-encoded."""
        parts = [module, api] if module else [api]
        segments = [urllib.parse.quote(str(p), safe="") for p in (*parts, *url_params)]
        return f"{self.base_url}/rest/services/{'/'.join(segments)}/"

    def call(
        self,
        api: str,
        *url_params: Any,
        method: str = "GET",
        params: dict[str, Any] | None = None,
        json: Any = None,
        module: str | None = None,
    ) -> Any:
        """Call ``api`` and return the answer's ``results``; CallError (with the problem+json) on an error status."""
        url = self.url(api, *url_params, module=module)
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        headers = {"Authorization": f"Bearer {self.token()}", "Accept": "application/json"}
        data = None
        if json is not None:
            data = _json.dumps(json).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=headers, method=method.upper())
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                body, content_type = answer.read(), answer.headers.get("Content-Type", "")
        except urllib.error.HTTPError as error:
            raise _call_error(error) from None
        if "json" not in content_type:
            return body
        document = _json.loads(body) if body else None
        return document["results"] if isinstance(document, dict) and "results" in document else document


def _call_error(error: urllib.error.HTTPError) -> CallError:
    """A CallError from an HTTP error answer, even when its body is not problem+json."""
    body = error.read()
    try:
        problem = _json.loads(body)
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        text = body.decode("utf-8", "replace").strip()[:500]
        problem = {"title": error.reason, "status": error.code, "detail": text or error.reason}
    return CallError(error.code, problem, dict(error.headers.items()))
