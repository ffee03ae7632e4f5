"""The discovery documents: ``__dir__`` (modules, endpoints, problems) and ``/openapi.json``, by who asks."""

from __future__ import annotations

import os
import re
from typing import Any

from .config import Settings
from .loading.registry import Registry
from .resolve import visible_to


class DiscoveryDocs:
    """Builds ``__dir__`` for a caller, and the OpenAPI document (cached per snapshot, caller and root)."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self.parm_names = settings.url_parm_names
        self._openapi_cache: tuple[tuple[Any, ...], dict[str, Any]] | None = None

    def directory(self, tenant: str | None = None, root_path: str = "") -> dict[str, Any]:
        """``__dir__``: every module with its load status, and every endpoint the caller may call.

        Who asks decides what is shown: the admin sees everything; a tenant sees where its own modules live and
        why they fail; anyone else gets no server paths (file names only) and no plugin-source status.
        Endpoint URLs carry ``root_path`` (the API Gateway stage, ``--root-path``) and ``DPMSF_BASE_PATH``, so
        they resolve on the host the caller used.
        """
        from .openapi import describe_endpoint

        snapshot = self.registry.refresh()
        visible = visible_to(tenant, self.settings.admin_id)
        admin = tenant is not None and tenant == self.settings.admin_id
        modules = []
        for report in snapshot.reports:
            if not visible(report.tenant):
                continue
            shown = report.as_dict()
            if not admin and (tenant is None or report.tenant != tenant):
                shown["source"] = os.path.basename(report.source)
                shown["folder"] = None
                shown["error"] = without_paths(report.error)
            modules.append(shown)
        endpoints = []
        for ep in snapshot.endpoints():
            if not visible(ep.tenant):
                continue
            unique = len([e for e in snapshot.by_api.get(ep.api, ()) if visible(e.tenant)]) == 1
            endpoints.append(describe_endpoint(ep, unique=unique, require_tokens=self.settings.require_tokens))
        prefix = mount_prefix(root_path, self.settings.base_path)
        if prefix:
            for shown_ep in endpoints:
                shown_ep["url"] = prefix + shown_ep["url"]
                shown_ep["qualified_url"] = prefix + shown_ep["qualified_url"]
        load_errors = [r.error for r in snapshot.reports if r.error and r.error not in snapshot.problems]
        all_problems = [*snapshot.problems, *load_errors]  # every conflict, duplicate and load error
        if admin:
            problems = all_problems
        else:
            seen = [r.source for r in snapshot.reports if visible(r.tenant)]
            own = [r.source for r in snapshot.reports if tenant is not None and r.tenant == tenant]
            problems = [
                p if any(path in p for path in own) else without_paths(p) or ""
                for p in all_problems
                if any(path in p for path in seen)
            ]
        return {
            "version": snapshot.version,
            "modules": modules,
            "endpoints": endpoints,
            "problems": problems,
            "sources": self.registry.source_status() if admin else [],
            "url_params": list(self.parm_names),
        }

    def openapi(self, tenant: str | None = None, root_path: str = "") -> dict[str, Any]:
        from .openapi import build_openapi

        snapshot = self.registry.refresh()
        key = (snapshot.version, tenant, root_path)
        if self._openapi_cache is None or self._openapi_cache[0] != key:
            doc = build_openapi(snapshot, visible_to(tenant, self.settings.admin_id), self.settings, root_path)
            self._openapi_cache = (key, doc)
        return self._openapi_cache[1]


_SAFE_PREFIX = re.compile(r"^(/[A-Za-z0-9._~-]+)*$")


def mount_prefix(root_path: str, base_path: str) -> str:
    """What goes in front of ``/rest/...`` in a URL we generate: the ASGI root path, then the base path unless
    the root already ends with it (on Lambda the adapter put it there); ``""`` if it is not a plain path."""
    root = (root_path or "").rstrip("/")
    if base_path and not root.endswith(base_path):
        root += base_path
    return root if _SAFE_PREFIX.match(root) else ""


_PATH_IN_TEXT = re.compile(r"(?:/[^/\s'\",:()]+)+/")


def without_paths(text: str | None) -> str | None:
    """``/srv/app/plugins/foo.py, line 3: ...`` -> ``foo.py, line 3: ...``: no server layout for strangers."""
    return _PATH_IN_TEXT.sub("", text) if text else text
