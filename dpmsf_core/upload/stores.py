"""Where uploads are stored: ``FolderPluginStore`` (and ``S3PluginStore``, ``GCSPluginStore`` in
their own modules) keep text under ``<name>.py``, and write
only conditionally (created if still absent, replaced if still the version the caller checked).

The upload endpoint does ``store.put(name, stamp_tenant(validate_upload(...), id), expect=...)``; validation and
stamping live in ``validation.py`` (re-exported here).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..errors import BadRequest, Conflict
from .validation import TENANT_NAME, check_module_name, stamp_tenant, validate_upload

__all__ = [
    "ANY_VERSION",
    "TENANT_NAME",
    "FolderPluginStore",
    "PluginStore",
    "is_upload_name",
    "check_module_name",
    "stamp_tenant",
    "validate_upload",
]

ANY_VERSION = "*"  # put(expect=ANY_VERSION): write whatever is stored
INDEX_OBJECT = ".dpmsf-tenant-index.json"  # tenant_index.INDEX_NAME, as an object beside the modules


@runtime_checkable
class PluginStore(Protocol):
    """Where uploaded plugin modules live (a folder or an S3 prefix that is also on the plugin path)."""

    def put(self, name: str, source: str, *, expect: str | None = ANY_VERSION) -> None:
        """Store module ``name``: ``expect=None`` creates it only if absent, a version replaces only that version.

        Raises Conflict when the stored module is not the one the caller checked: ownership decided on a read
        holds at the moment of writing, also against a concurrent upload. The default writes unconditionally.
        """
        ...

    def get(self, name: str) -> str | None:
        """The module's source, or None if there is none."""
        ...

    def get_versioned(self, name: str) -> tuple[str, str] | None:
        """The module's source and a version token for ``put(expect=...)``, or None."""
        ...

    def delete(self, name: str) -> bool:
        """Remove the module; False if it did not exist."""
        ...

    def list(self) -> list[str]:
        """Names of the stored modules, sorted."""
        ...


# -- backends ------------------------------------------------------------------------------------------------


class VersionedStore:
    """What every store shares: ``get`` is ``get_versioned`` without the version."""

    def get_versioned(self, name: str) -> tuple[str, str] | None:
        raise NotImplementedError

    def get(self, name: str) -> str | None:
        """The stored source, or None when there is none."""
        found = self.get_versioned(name)
        return found[0] if found else None


class FolderPluginStore(VersionedStore):
    """Uploaded modules as ``<folder>/<name>.py``, written atomically so the reloader never reads half a file."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def _path(self, name: str) -> Path:
        return self.folder / f"{check_module_name(name)}.py"

    def put(self, name: str, source: str, *, expect: str | None = ANY_VERSION) -> None:
        """A hidden temp file beside the target, then a link (create) or a replace, under the folder's lock."""
        path = self._path(name)
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
                f.write(source)
            with self._locked():
                if expect is None:
                    try:
                        os.link(tmp, path)  # atomic create-if-absent, with the whole content in place
                    except FileExistsError:
                        raise Conflict(f"Plugin '{name}' was created by someone else meanwhile.") from None
                else:
                    current = self.get_versioned(name)
                    if expect != ANY_VERSION and (current is None or current[1] != expect):
                        raise Conflict(f"Plugin '{name}' was changed by someone else meanwhile.")
                    os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _locked(self) -> Any:
        import contextlib
        import fcntl

        @contextlib.contextmanager
        def hold() -> Any:
            fd = os.open(self.folder / ".upload.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # one check-and-write at a time, across server processes
                yield
            finally:
                os.close(fd)

        return hold()

    def get_versioned(self, name: str) -> tuple[str, str] | None:
        """The source and its SHA-256 (the version ``put(expect=...)`` compares)."""
        import hashlib

        try:
            with open(self._path(name), "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        return raw.decode("utf-8"), hashlib.sha256(raw).hexdigest()

    def delete(self, name: str) -> bool:
        """Remove ``<name>.py``; False if absent."""
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            return False
        return True

    def list(self) -> list[str]:
        """Stored module names (files only; packages and private names are not uploads)."""
        if not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.glob("*.py") if p.is_file() and is_upload_name(p.stem))


def is_upload_name(name: str) -> bool:
    try:
        check_module_name(name)
    except BadRequest:
        return False
    return True
