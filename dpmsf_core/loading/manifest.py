"""The routing manifest ``dpmsf package`` writes beside the bundled plugins, so a cold start imports only the
module its first request calls.

At package time every trusted plugin is really imported and what the registry found is written down: per
module its file, a content signature, its names and every endpoint's and event's routing data (``describe``).
At run time a module whose file still has that signature is served from the manifest until it is called
(``Registry.materialize``); an edited one is imported as usual. The manifest is an optimisation only: anything
wrong with it (missing, unreadable, too big, wrong types, a path that is not a plugin of its folder) makes
``read_manifest`` answer None after one warning, and every module loads as it would without one.

Reading it costs json, zlib and a few reads: no ``ast``, no hashing library, no ``inspect``. It never decides
trust: the registry still reads ``__alias__``/``__tenant__`` from the source and defers only untagged modules.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..expose import ALLOWED_METHODS, EVENT_SOURCES, EndpointSpec, EventSpec

if TYPE_CHECKING:
    from .snapshot import Snapshot

MANIFEST_NAME = ".dpmsf-manifest.json"
FORMAT = 1
MAX_BYTES = 4 << 20
MAX_MODULES = 5000
MAX_ROUTES = 1000  # per module, endpoints and events each
MAX_TEXT = 4096

log = logging.getLogger("dpmsf.registry")


class ManifestEntry:
    """What one module served when it was packaged; ``file`` is ``name.py`` or ``name/__init__.py``.

    A plain class, not a dataclass: this module is read on every cold start, and a dataclass costs a millisecond.
    """

    __slots__ = ("alias", "crc32", "endpoints", "events", "file", "name", "size")

    def __init__(
        self,
        file: str,
        size: int,
        crc32: int,
        name: str,
        alias: str | None,
        endpoints: tuple[EndpointSpec, ...],
        events: tuple[EventSpec, ...],
    ) -> None:
        self.file, self.size, self.crc32, self.name, self.alias = file, size, crc32, name, alias
        self.endpoints, self.events = endpoints, events


class _Invalid(ValueError):
    """Why a manifest is not used (said once, in the warning)."""


def content_signature(path: str, is_package: bool) -> tuple[int, int]:
    """(size, crc32) of a module's bytes; for a package, of every ``.py`` file under it in sorted order, each
    with its relative path. Survives zip and unzip, unlike mtimes and inodes."""
    if not is_package:
        with open(path, "rb") as fh:
            data = fh.read()
        return len(data), zlib.crc32(data)
    root = os.path.dirname(path)
    size, crc = 0, 0
    for rel in _package_files(root):
        with open(os.path.join(root, rel), "rb") as fh:
            data = fh.read()
        size += len(data)
        crc = zlib.crc32(data, zlib.crc32(rel.encode() + b"\0", crc))
    return size, crc


def content_version(path: str, is_package: bool) -> str:
    """The module's version as answers name it (``DPMSF-Plugin-Version``): 12 hex digits of the SHA-256 of its bytes
    (for a package, of every ``.py`` file with its relative path), the same on every replica serving that code."""
    import hashlib

    digest = hashlib.sha256()
    if not is_package:
        with open(path, "rb") as fh:
            digest.update(fh.read())
        return digest.hexdigest()[:12]
    root = os.path.dirname(path)
    for rel in _package_files(root):
        with open(os.path.join(root, rel), "rb") as fh:
            digest.update(rel.encode() + b"\0" + fh.read() + b"\0")
    return digest.hexdigest()[:12]


def _package_files(root: str) -> list[str]:
    found: list[str] = []
    for current, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        base = os.path.relpath(current, root)
        for name in sorted(files):
            if name.endswith(".py"):
                found.append(name if base == "." else f"{base}/{name}".replace(os.sep, "/"))
    return found


def relative_file(path: str, folder: str) -> str:
    """The manifest's key of a candidate: its path relative to the plugin folder, with ``/``."""
    return os.path.relpath(path, folder).replace(os.sep, "/")


def read_manifest(folder: str) -> dict[str, ManifestEntry] | None:
    """The folder's manifest by file, or None: absent (silently) or unusable (with one warning)."""
    path = os.path.join(folder, MANIFEST_NAME)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("plugin manifest %s is not used (%s): every plugin is imported at start-up", path, exc)
        return None
    try:
        if len(raw) > MAX_BYTES:
            raise _Invalid(f"over {MAX_BYTES} bytes")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise _Invalid(f"not JSON: {exc}") from None
        return _parse(data)
    except _Invalid as exc:
        log.warning("plugin manifest %s is not used (%s): every plugin is imported at start-up", path, exc)
        return None


def _parse(data: Any) -> dict[str, ManifestEntry]:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _Invalid(f"not a format-{FORMAT} manifest")
    modules = data.get("modules")
    if not isinstance(modules, list) or len(modules) > MAX_MODULES:
        raise _Invalid(f"'modules' is not a list (of at most {MAX_MODULES})")
    entries: dict[str, ManifestEntry] = {}
    for index, item in enumerate(modules):
        try:
            entry = _entry(item)
        except (_Invalid, TypeError, ValueError) as exc:
            raise _Invalid(f"module {index}: {exc}") from None
        if entry.file in entries:
            raise _Invalid(f"module {index}: {entry.file} is listed twice")
        entries[entry.file] = entry
    return entries


def _entry(item: Any) -> ManifestEntry:
    if not isinstance(item, dict):
        raise _Invalid("not an object")
    file = _text(item, "file")
    name = _text(item, "name")
    if not (name.isidentifier() and not name.startswith("_")) or file not in (f"{name}.py", f"{name}/__init__.py"):
        raise _Invalid(f"file {file!r} is not a plugin module of its folder (name.py or name/__init__.py)")
    alias = _text(item, "alias", optional=True)
    size, crc = item.get("size"), item.get("crc32")
    if not (isinstance(size, int) and isinstance(crc, int) and _is_int(size, 1 << 40) and _is_int(crc, 1 << 32)):
        raise _Invalid("size and crc32 must be non-negative integers")
    if item.get("tenant") is not None:
        raise _Invalid("a tenant's module is never listed (it loads in the sandbox)")
    endpoints = tuple(_endpoint(e) for e in _list(item, "endpoints"))
    events = tuple(_event(e) for e in _list(item, "events"))
    return ManifestEntry(file, size, crc, name, alias, endpoints, events)


def _endpoint(item: Any) -> EndpointSpec:
    if not isinstance(item, dict):
        raise _Invalid("an endpoint is not an object")
    api = _segment(_text(item, "api"))
    methods = tuple(_strings(item, "methods"))
    if not methods or any(m not in ALLOWED_METHODS for m in methods):
        raise _Invalid(f"endpoint {api!r}: methods must be some of {', '.join(ALLOWED_METHODS)}")
    auth = item.get("auth")
    if auth is not None and not isinstance(auth, bool):
        raise _Invalid(f"endpoint {api!r}: auth must be true, false or null")
    template = None if item.get("template") is None else tuple(_segment(s) for s in _strings(item, "template"))
    spec = EndpointSpec(api, methods, auth, _text(item, "summary", optional=True), template)
    if tuple(_strings(item, "path_params")) != spec.path_params:
        raise _Invalid(f"endpoint {api!r}: path_params do not match its template")
    return spec


def _event(item: Any) -> EventSpec:
    if not isinstance(item, dict):
        raise _Invalid("an event is not an object")
    source = _text(item, "source")
    if source not in EVENT_SOURCES:
        raise _Invalid(f"event source {source!r} is not one of {', '.join(EVENT_SOURCES)}")
    return EventSpec(source, _text(item, "match", optional=True), _text(item, "name"))


def _is_int(value: Any, limit: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < limit


def _text(item: dict[str, Any], key: str, optional: bool = False) -> Any:
    value = item.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise _Invalid(f"{key!r} must be a string (of at most {MAX_TEXT} characters)")
    return value


def _segment(value: str) -> str:
    if not value or "/" in value or value.strip() != value or len(value) > 256:
        raise _Invalid(f"{value!r} is not one URL segment")
    return value


def _list(item: dict[str, Any], key: str) -> list[Any]:
    value = item.get(key)
    if not isinstance(value, list) or len(value) > MAX_ROUTES:
        raise _Invalid(f"{key!r} must be a list (of at most {MAX_ROUTES})")
    return value


def _strings(item: dict[str, Any], key: str) -> Iterable[str]:
    values = _list(item, key)
    if not all(isinstance(v, str) and len(v) <= MAX_TEXT for v in values):
        raise _Invalid(f"{key!r} must be a list of strings")
    return values


def describe(snapshot: Snapshot, folder: str) -> dict[str, Any]:
    """The manifest of one plugin folder, from a registry that imported it (package time): every trusted
    module of that folder that loaded; one that failed, a tenant's, or a conflict's loser is left out."""
    real_folder = os.path.realpath(folder)
    modules: list[dict[str, Any]] = []
    for entry in snapshot.modules.values():
        if entry.tenant is not None or not entry.trusted or os.path.realpath(entry.folder) != real_folder:
            continue
        if any(r.source == entry.path and r.status != "loaded" for r in snapshot.reports):
            continue  # stale: the entry is an older version than the file
        is_package = os.path.basename(entry.path) == "__init__.py"
        size, crc = content_signature(entry.path, is_package)
        modules.append(
            {
                "file": relative_file(entry.path, folder),
                "size": size,
                "crc32": crc,
                "name": entry.real_name,
                "public": entry.name,
                "alias": entry.alias,
                "tenant": None,
                "endpoints": [
                    {
                        "api": ep.api,
                        "methods": list(ep.methods),
                        "auth": ep.auth,
                        "summary": ep.summary,
                        "template": None if ep.template is None else list(ep.template),
                        "path_params": list(ep.path_params),
                    }
                    for routes in entry.routes.values()
                    for ep in routes
                ],
                "events": [{"source": ev.source, "match": ev.match, "name": ev.name} for ev, _ in entry.events],
            }
        )
    modules.sort(key=lambda m: m["file"])
    return {"format": FORMAT, "modules": modules}
