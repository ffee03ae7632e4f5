"""Where plugin modules come from: a local folder, or an object store mirrored into one (S3, Cloud Storage).

``SCHEMES`` is the one table of remote plugin sources: a new object store is one row here plus its two classes
(the source that lists and fetches, the upload store that writes). Every caller goes through the functions below
(``split_plugin_path`` for the settings and test helpers, ``open_plugin_path`` for the app, ``upload_store`` for
the upload endpoint), so no other module switches on a URL's scheme. The classes are named, not imported: an
object store's client library loads only when a plugin path names it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .mirror import MirroredSource

__all__ = [
    "SCHEMES",
    "PluginPathSettings",
    "Scheme",
    "is_remote",
    "open_plugin_path",
    "platform_of",
    "split_plugin_path",
    "upload_store",
]


@dataclass(frozen=True)
class Scheme:
    """One kind of remote plugin source: the classes (``module:Class``), its cache folder and refresh setting."""

    source: str  # a MirroredSource: (url, cache_dir, refresh_seconds=...)
    upload_store: str  # a VersionedStore writing into the same prefix: (url)
    cache_kind: str  # <state dir>/<cache_kind>/<url>: its local mirror
    refresh_setting: str  # the Settings field with its refresh period in seconds
    platform: str = ""  # whose cloud serves it ("aws", "gcp"): what the platform's runtime may patch for it


SCHEMES: dict[str, Scheme] = {
    "s3": Scheme(
        "dpmsf_core.sources.s3:S3PluginSource",
        "dpmsf_core.upload.s3_store:S3PluginStore",
        "s3-cache",
        "s3_refresh",
        "aws",
    ),
    "gs": Scheme(
        "dpmsf_core.sources.gcs:GCSPluginSource",
        "dpmsf_core.upload.gcs_store:GCSPluginStore",
        "gcs-cache",
        "gcs_refresh",
        "gcp",
    ),
}


class PluginPathSettings(Protocol):
    """What opening a plugin path reads of ``config.Settings`` (which imports this module for ``split_plugin_path``)."""

    @property
    def plugins(self) -> tuple[str, ...]: ...

    @property
    def state_dir(self) -> str: ...


def _scheme_of(entry: str) -> Scheme | None:
    name, sep, _ = entry.partition("://")
    return SCHEMES.get(name) if sep else None


def is_remote(entry: str) -> bool:
    """Whether a plugin path entry names an object store (``s3://bucket/prefix``) rather than a folder."""
    return _scheme_of(entry) is not None


def platform_of(entry: str) -> str | None:
    """The cloud (``"aws"``, ``"gcp"``) whose object store a plugin path entry names; None for a folder."""
    scheme = _scheme_of(entry)
    return scheme.platform if scheme is not None else None


def split_plugin_path(raw: str) -> list[str]:
    """Split on ':' like PYTHONPATH, but keep ``s3://bucket/prefix`` and ``gs://bucket/prefix`` entries whole."""
    out: list[str] = []
    parts = raw.split(":")
    i = 0
    while i < len(parts):
        part = parts[i].strip()
        if part in SCHEMES and i + 1 < len(parts) and parts[i + 1].startswith("//"):
            out.append(part + ":" + parts[i + 1].strip())
            i += 2
            continue
        if part:
            out.append(part)
        i += 1
    return out


def _load(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(import_module(module), name)


def open_plugin_path(
    settings: PluginPathSettings, resolve_folder: Callable[[str], str]
) -> tuple[list[str], list[MirroredSource]]:
    """The folders to scan for ``settings.plugins`` and the remote sources mirrored into some of them, in order;
    a folder entry becomes ``resolve_folder(entry)``."""
    folders: list[str] = []
    sources: list[MirroredSource] = []
    for entry in settings.plugins:
        scheme = _scheme_of(entry)
        if scheme is None:
            folders.append(resolve_folder(entry))
            continue
        cache = _mirror_dir(settings.state_dir, scheme.cache_kind, entry)
        source = _load(scheme.source)(entry, cache, refresh_seconds=getattr(settings, scheme.refresh_setting))
        sources.append(source)
        folders.append(str(source.cache_dir))
    return folders, sources


def upload_store(source: MirroredSource) -> Any:
    """The upload store that writes into ``source``'s prefix (what the mirror then serves)."""
    scheme = _scheme_of(source.url)
    if scheme is None:
        raise ValueError(f"{source.url!r} is not a remote plugin source")
    return _load(scheme.upload_store)(source.url)


def _mirror_dir(state_dir: str, kind: str, url: str) -> str:
    """The local copy of a remote plugin source: its modules are imported, so the folder must be ours alone (a
    state folder under /tmp that another user made first is refused for a fresh one; see ``private_dir``)."""
    from ..private_dir import PrivateDir

    folder = os.path.join(state_dir, kind, re.sub(r"[^A-Za-z0-9_.-]", "_", url.partition("://")[2]))
    return str(PrivateDir(folder, purpose=f"plugin mirror of {url}").get())
