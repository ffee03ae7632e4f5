"""Modules served from the packaged manifest (``manifest``) until their first call: the registry's side of it.

A candidate is deferred only when its file is byte for byte what was packaged and its source names no tenant
(``read_metadata``, as without a manifest), so a manifest never changes a module's trust or names; when the
import finally runs, ``same_routes`` says whether the manifest told the truth.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from typing import Any

from .discovery import Candidate, Metadata
from .manifest import ManifestEntry, content_signature, content_version, read_manifest, relative_file
from .snapshot import Endpoint, ModuleEntry

log = logging.getLogger("dpmsf.registry")


def _not_imported(*args: Any, **kwargs: Any) -> Any:
    """The function of a deferred module's event: never called (``Registry.refresh`` imports every module)."""
    raise RuntimeError("this plugin module is not imported yet")


class Deferrals:
    """The manifests of a registry's folders, each read once; upload folders never have one (tenants write there)."""

    def __init__(self, owned_folders: Iterable[str]) -> None:
        self._owned = set(owned_folders)
        self._manifests: dict[str, dict[str, ManifestEntry] | None] = {}

    def _manifest(self, folder: str) -> dict[str, ManifestEntry] | None:
        if folder not in self._manifests:
            owned = os.path.realpath(folder) in self._owned
            self._manifests[folder] = None if owned else read_manifest(folder)
        return self._manifests[folder]

    def entry(self, cand: Candidate, meta: Metadata) -> ModuleEntry | None:
        """The module's routing-only entry, when the manifest describes exactly this file; else None (import it)."""
        if meta.tenant is not None:
            return None
        manifest = self._manifest(cand.folder)
        found = manifest.get(relative_file(cand.path, cand.folder)) if manifest else None
        if found is None or found.name != cand.name or found.alias != meta.alias:
            return None
        try:
            signature = content_signature(cand.path, cand.is_package)
        except OSError:
            return None
        if signature != (found.size, found.crc32):
            log.info("plugin %s changed since it was packaged: imported now", cand.path)
            return None
        try:
            version = content_version(cand.path, cand.is_package)  # what its answers name, as once imported
        except OSError:
            return None
        public = meta.alias or cand.name
        routes: dict[str, list[Endpoint]] = {}
        for spec in found.endpoints:
            routes.setdefault(spec.api, []).append(Endpoint.routing_only(spec, public, None))
        return ModuleEntry(
            public,
            cand.name,
            meta.alias,
            cand.path,
            cand.folder,
            None,
            True,
            {api: eps[0] for api, eps in routes.items()},
            [(ev, _not_imported) for ev in found.events],
            time.time(),
            {api: tuple(eps) for api, eps in routes.items()},
            deferred=True,
            version=version,
        )


def same_routes(real: ModuleEntry, deferred: ModuleEntry) -> bool:
    """Whether the imported module serves what its manifest entry said; if not, a warning says what differs."""
    if _routing(real) == _routing(deferred):
        return True
    log.warning(
        "plugin %s serves other routes than the manifest of dpmsf package says (%s, not %s): serving the "
        "module's own and importing every plugin now; package again",
        real.path,
        _routing_text(real),
        _routing_text(deferred),
    )
    return False


def _routing(entry: ModuleEntry) -> list[tuple[str, tuple[str, ...], tuple[str, ...] | None]]:
    return [(ep.api, ep.methods, ep.template) for routes in entry.routes.values() for ep in routes]


def _routing_text(entry: ModuleEntry) -> str:
    return ", ".join(f"{'|'.join(ep.methods)} {ep.route()}" for routes in entry.routes.values() for ep in routes)
