"""Where the app is mounted: the path our routes see once a stage, a base-path mapping or ``DPMSF_BASE_PATH`` is
taken off (``route_path``), and the prefix links must carry to resolve on the host the client used (``mount_root``).
Pure functions of the path and the configuration, so that they are tested without an app."""

from __future__ import annotations

import re

from .exchange import Scope

__all__ = ["DOCS_ASSETS", "mount_root", "route_path", "strip_unknown_prefix"]

DOCS_ASSETS = "/docs/"  # Swagger UI's script and style, served by us: /docs works without internet


def route_path(path: str, base: str) -> str:
    """The path our routes see: without ``DPMSF_BASE_PATH`` and without a stage or mapping prefix in front of them,
    so the one route table serves behind API Gateway, a custom domain's mapping and ``uvicorn`` alike."""
    if base and path.startswith(base):
        path = path[len(base) :] or "/"
    if not path.startswith(("/rest/", DOCS_ASSETS)) and path not in ("/", "/docs", "/docs/", "/openapi.json"):
        path = strip_unknown_prefix(path)
    return path


def strip_unknown_prefix(path: str) -> str:
    """A stage (``/Prod``) or base-path mapping in front of our routes is dropped, whatever it is called."""
    idx = path.find("/rest/")
    if idx > 0:
        return path[idx:]
    for suffix in ("/openapi.json", "/docs", "/docs/"):
        if path.endswith(suffix):
            return suffix
    idx = path.find(DOCS_ASSETS)
    return path[idx:] if idx > 0 else path


SAFE_ROOT = re.compile(r"^(/[A-Za-z0-9._~-]+)*$")


def mount_root(scope: Scope, base: str) -> str:
    """Where the app is mounted, from configuration only: ``DPMSF_BASE_PATH``, or the ASGI ``root_path`` that the
    Lambda adapter sets from API Gateway's stage (or ``uvicorn --root-path``). Never from the request's own path,
    which a caller controls and which would otherwise be reflected into ``/docs``.
    """
    root = (scope.get("root_path") or "").rstrip("/")
    if base and not root.endswith(base):  # behind uvicorn the base is stripped by us; on Lambda by the adapter
        root += base
    return root if SAFE_ROOT.match(root) else ""
