"""Mirror plugin modules from an object store (S3, Cloud Storage) into a local folder, refreshed by version.

One copy of the refresh logic for every remote plugin source: a subclass says how to list the prefix
(relative key -> version: S3's ETag, Cloud Storage's generation) and how to fetch one object; this module
decides what to download, stages every download in a hidden folder, moves it into place with
``os.replace`` only once the whole listing is fetched, removes local files whose objects are gone, and on any
error keeps the last good copy serving, with the reason in ``status()`` (``sources`` in ``__dir__``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import ConfigError

_SKIPPED_PARTS = {"__pycache__"}


@dataclass
class SyncResult:
    """What one sync changed in the local mirror (relative keys), or why it could not run."""

    changed: bool = False
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    error: str | None = None


def parse_bucket_url(url: str, scheme: str, what: str) -> tuple[str, str]:
    """``<scheme>://bucket/some/prefix`` -> ``("bucket", "some/prefix/")``; the prefix is empty or ends with '/'."""
    start = f"{scheme}://"
    if not isinstance(url, str) or not url.startswith(start):
        raise ConfigError(f"{what} plugin source {url!r} is not valid. Expected '{start}bucket/prefix'.")
    bucket, _, prefix = url[len(start) :].partition("/")
    if not bucket or "\\" in bucket:
        raise ConfigError(f"{what} plugin source {url!r} has no bucket. Expected '{start}bucket/prefix'.")
    prefix = prefix.strip("/")
    return bucket, (prefix + "/") if prefix else ""


def safe_relative(rel: str) -> PurePosixPath | None:
    """The key's path below the prefix if it stays inside the cache; None for traversal or hidden names."""
    if not rel or rel.endswith("/") or rel.startswith("/") or "\\" in rel or "\x00" in rel:
        return None
    parts = rel.split("/")
    for part in parts:
        if part in ("", ".", "..") or part.startswith(".") or part in _SKIPPED_PARTS or ":" in part:
            return None
    return PurePosixPath(*parts)


def select_plugin_keys(rel_keys: list[str]) -> list[str]:
    """Keep top-level ``name.py`` modules and every file of ``pkg/`` folders that hold ``pkg/__init__.py``."""
    safe = {rel: p for rel in rel_keys if (p := safe_relative(rel)) is not None}
    packages = {p.parts[0] for p in safe.values() if len(p.parts) == 2 and p.parts[1] == "__init__.py"}
    chosen: list[str] = []
    for rel, p in safe.items():
        if len(p.parts) == 1:
            if p.suffix == ".py" and p.stem:
                chosen.append(rel)
        elif p.parts[0] in packages and not p.parts[0].endswith(".py") and not p.suffix == ".pyc":
            chosen.append(rel)
    # A key that is also a folder of other keys ("pkg/a" and "pkg/a/b.py") cannot exist on disk twice.
    folders = {str(parent) for rel in chosen for parent in PurePosixPath(rel).parents}
    return sorted(rel for rel in chosen if rel not in folders)


class MirroredSource:
    """One remote prefix of the plugin path, mirrored into ``cache_dir``; subclasses list and fetch objects.

    Subclasses set ``manifest_name``/``staging_name`` and implement ``_list``, ``_fetch`` and ``_describe``.
    """

    manifest_name = ".mirror-manifest.json"
    staging_name = ".mirror-staging"
    kind = "remote"  # named in error messages ("S3 refresh interval ...")

    def __init__(
        self,
        url: str,
        cache_dir: str | Path,
        refresh_seconds: float = 30.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.cache_dir = Path(cache_dir)
        if refresh_seconds < 0:
            raise ConfigError(f"{self.kind} refresh interval has value {refresh_seconds!r}. Expected a number >= 0.")
        self.refresh_seconds = float(refresh_seconds)
        self._clock = clock
        self._lock = threading.Lock()
        self._last_attempt: float | None = None
        self.last_sync: datetime | None = None
        self.last_error: str | None = None
        self._manifest: dict[str, str] | None = None

    # -- what a subclass provides ------------------------------------------------------------------------------

    def _list(self) -> dict[str, str]:
        """Every object under the prefix as relative key -> version."""
        raise NotImplementedError

    def _fetch(self, rel: str, version: str) -> tuple[bytes, str | None]:
        """One object's bytes (``version``: what the listing said) and the version served (None: that one)."""
        raise NotImplementedError

    def _describe(self, exc: BaseException) -> str:
        """One line for ``last_error``: the source and the store's own reason."""
        return f"{self.url}: {type(exc).__name__} ({exc})"

    # -- public -------------------------------------------------------------------------------------------

    def due(self) -> bool:
        """True when ``refresh_seconds`` have passed since the last attempt (cheap: no I/O, no lock)."""
        last = self._last_attempt
        return last is None or self._clock() - last >= self.refresh_seconds

    def sync(self, force: bool = False) -> SyncResult:
        """Bring the local mirror up to date if due (or forced); on any store error keep the last good copy."""
        if not force and not self.due():
            return SyncResult()
        with self._lock:
            if not force and not self.due():  # another thread synced while we waited
                return SyncResult()
            self._last_attempt = self._clock()
            try:
                result = self._sync_locked()
            except Exception as exc:  # any failure (the store, its client library, disk) leaves the last good copy
                self.last_error = self._describe(exc)
                return SyncResult(error=self.last_error)
            self.last_error = None
            self.last_sync = datetime.now(UTC)
            return result

    def status(self) -> dict[str, Any]:
        """The source's health for the ``__dir__`` report."""
        manifest = self._manifest if self._manifest is not None else self._load_manifest()
        return {
            "url": self.url,
            "cache_dir": str(self.cache_dir),
            "refresh_seconds": self.refresh_seconds,
            "last_sync": self.last_sync.isoformat() if self.last_sync else None,
            "last_error": self.last_error,
            "objects": len(manifest),
        }

    # -- internals -----------------------------------------------------------------------------------------

    def _target(self, rel: str) -> Path:
        """Local path of a relative key; refuses anything that resolves outside ``cache_dir``."""
        root = self.cache_dir.resolve()
        path = (root / rel).resolve()
        if not path.is_relative_to(root) or path == root:
            raise ValueError(f"key {rel!r} escapes the cache folder {str(root)!r}")
        return path

    def _sync_locked(self) -> SyncResult:
        """List, stage changed objects, then apply: replace, delete, write the manifest."""
        listed = self._list()
        wanted = {rel: listed[rel] for rel in select_plugin_keys(list(listed))}
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        old = self._load_manifest()
        to_fetch = [rel for rel, ver in wanted.items() if old.get(rel) != ver or not (self.cache_dir / rel).is_file()]
        gone = [rel for rel in old if rel not in wanted]
        for rel in [*to_fetch, *gone]:
            self._target(rel)  # validate every path before touching anything

        new_manifest = {rel: old[rel] for rel in wanted if rel in old}
        staging = Path(tempfile.mkdtemp(prefix=self.staging_name + "-", dir=self.cache_dir))
        try:
            staged: dict[str, Path] = {}
            for i, rel in enumerate(to_fetch):
                body, version = self._fetch(rel, wanted[rel])
                path = staging / str(i)
                path.write_bytes(body)
                staged[rel] = path
                new_manifest[rel] = version or wanted[rel]
            added = [rel for rel in to_fetch if rel not in old]
            updated = [rel for rel in to_fetch if rel in old]
            # Submodules first, ``__init__.py`` last: a package appears only once its parts are there.
            for rel in sorted(staged, key=lambda r: (r.endswith("__init__.py"), r)):
                target = self._target(rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged[rel], target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

        # Removal in the opposite order: ``__init__.py`` first, so a vanishing package disappears at once.
        for rel in sorted(gone, key=lambda r: (not r.endswith("__init__.py"), r)):
            target = self._target(rel)
            target.unlink(missing_ok=True)
            self._prune(target.parent)
        self._save_manifest(new_manifest)
        changed = bool(added or updated or gone)
        return SyncResult(changed=changed, added=added, updated=updated, removed=sorted(gone))

    def _prune(self, folder: Path) -> None:
        """Remove folders left empty (or holding only ``__pycache__``) by deleted packages."""
        root = self.cache_dir.resolve()
        while folder != root and folder.is_relative_to(root) and folder.is_dir():
            entries = list(folder.iterdir())
            if any(e.name not in _SKIPPED_PARTS for e in entries):
                return
            shutil.rmtree(folder, ignore_errors=True)
            folder = folder.parent

    def _load_manifest(self) -> dict[str, str]:
        """Relative key -> version of what the cache holds; empty (download all) if missing or unreadable."""
        try:
            data = json.loads((self.cache_dir / self.manifest_name).read_text(encoding="utf-8"))
            same_source = data.get("url") == self.url
            # Another source's manifest: its files are still ours to replace or remove, its versions are not.
            manifest = {
                str(k): str(v) if same_source else ""
                for k, v in data["objects"].items()
                if safe_relative(str(k)) is not None  # a tampered manifest must not steer deletions
            }
        except (OSError, ValueError, KeyError, AttributeError, TypeError):
            manifest = {}
        self._manifest = manifest
        return manifest

    def _save_manifest(self, objects: dict[str, str]) -> None:
        """Write the manifest atomically (temp file + ``os.replace``)."""
        fd, tmp = tempfile.mkstemp(prefix=self.manifest_name + ".", suffix=".tmp", dir=self.cache_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"url": self.url, "objects": objects}, f, indent=1, sort_keys=True)
            os.replace(tmp, self.cache_dir / self.manifest_name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._manifest = dict(objects)
