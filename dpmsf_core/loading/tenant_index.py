"""The index of an upload folder's tenant modules, so that a start-up or a rebuild never parses them again.

Reading a tenant module (``ast`` over up to 256 kB, on the server's own CPU) costs about a second for a hostile
one; the upload endpoint reads each module once, in a budgeted child process, and writes here what it learnt:
per module name its size, SHA-256, owner, alias and the reader's description of its endpoints. The registry
uses an entry only when the file's bytes still hash to it, the owner is a tenant (never the admin: the index
never decides that a module is trusted) and the file carries that owner's stamp line; anything else, or a
missing or unreadable index, and the module is read as before (and its entry written again).

The index sits beside the modules, in a hidden file no upload name can take, with the same permissions: who
can change it could as well change the modules themselves.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Protocol, runtime_checkable

INDEX_NAME = ".dpmsf-tenant-index.json"
FORMAT = 1
MAX_BYTES = 16 << 20  # the whole file: a write never passes it (an entry that would is kept without description)
ENTRY_BYTES = 256 << 10  # one entry's description, encoded: a larger one is not indexed (only that module is read)
TENANT_SHARE = (10 << 20) // 8  # one tenant's entries when its quota is not known: the default quota's share
START_INLINE = 3  # at a start, at most this many modules without a usable entry are read before serving
INLINE_BYTES = 4096  # a module this small is read on the spot while serving: it costs a millisecond or two

log = logging.getLogger("dpmsf.registry")


class Indexed(NamedTuple):
    """A verified entry: the module's owner and alias, its source (already read to hash it) and description."""

    tenant: str
    alias: str | None
    source: str
    sha256: str
    description: dict[str, Any]


@runtime_checkable
class RemoteIndex(Protocol):
    """An object store's copy of the index, beside the modules (the S3 and Cloud Storage upload stores)."""

    def get_index(self) -> bytes | None: ...

    def put_index(self, data: bytes) -> None: ...


class TenantIndex:
    """The index file of one folder, re-read when it changes on disk (another server process wrote it)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.path = os.path.join(folder, INDEX_NAME)
        self._entries: dict[str, dict[str, Any]] = {}
        # descriptions this process read but the file does not keep (over a bound): name -> (sha256, description)
        self._unwritten: dict[str, tuple[str, dict[str, Any]]] = {}
        self._seen: tuple[int, int, int] | None = None
        # an object store holding the modules (S3): its copy of the index is fetched when there is no local one
        # (a fresh Lambda's mirror) and written with every change; ``get_index()`` and ``put_index(bytes)``
        self.remote: RemoteIndex | None = None
        self._fetched = False

    def entries(self) -> dict[str, dict[str, Any]]:
        """Every entry by module name, as last written (unverified: for sizes and owners that quotas add up)."""
        try:
            st = os.stat(self.path)
        except OSError:
            if self.remote is not None and not self._fetched and self._fetch(self.remote):
                return self.entries()
            self._entries, self._seen = {}, None
            return self._entries
        seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        if seen != self._seen:
            self._entries = self._read(st.st_size)
            self._seen = seen
        return self._entries

    def _fetch(self, remote: RemoteIndex) -> bool:
        """Copy the object store's index here, once; False if there is none or it cannot be read."""
        self._fetched = True
        try:
            data = remote.get_index()
            if data is None or len(data) > MAX_BYTES:
                return False
            self._write(data)
        except Exception as exc:  # any backend's failure: modules are read instead, as without an index
            log.warning("tenant module index of %s cannot be fetched (%s): its modules are read", self.folder, exc)
            return False
        return True

    def _write(self, data: bytes) -> None:
        os.makedirs(self.folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".dpmsf-tenant-index.", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _read(self, size: int) -> dict[str, dict[str, Any]]:
        try:
            if size > MAX_BYTES:
                raise ValueError(f"over {MAX_BYTES} bytes")
            with open(self.path, "rb") as fh:
                data = json.loads(fh.read(MAX_BYTES + 1))
            if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("modules"), dict):
                raise ValueError(f"not a format-{FORMAT} index")
            return {k: v for k, v in data["modules"].items() if isinstance(k, str) and isinstance(v, dict)}
        except (OSError, ValueError, RecursionError) as exc:
            log.warning("tenant module index %s is not used (%s): its modules are read again", self.path, exc)
            return {}

    def lookup(self, name: str, path: str, admin_id: str | None) -> Indexed | None:
        """The entry of module ``name`` if the file at ``path`` is still what it describes, else None."""
        entry = self.entries().get(name)
        if entry is None:
            return None
        tenant, alias, size, digest = (entry.get(k) for k in ("tenant", "alias", "size", "sha256"))
        if not isinstance(tenant, str) or not tenant or tenant == admin_id or not isinstance(size, int):
            return None
        description = entry.get("module")
        if description is None and self._unwritten.get(name, ("",))[0] == digest:
            description = self._unwritten[name][1]  # read here earlier, too large for the file
        if not (alias is None or isinstance(alias, str)) or not isinstance(description, dict):
            return None
        try:
            if os.stat(path).st_size != size:
                return None
            with open(path, "rb") as fh:
                raw = fh.read(size + 1)
        except OSError:
            return None
        if len(raw) != size or hashlib.sha256(raw).hexdigest() != digest:
            return None
        stamp = f'__tenant__ = "{tenant}"'.encode()
        if not (raw.startswith(stamp + b"\n") or b"\n" + stamp + b"\n" in raw):
            return None  # the owner's stamp line is not in the file: the entry is not this module's
        try:
            source = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return Indexed(tenant, alias, source, digest, description)

    def put(
        self,
        name: str,
        source: str,
        tenant: str,
        alias: str | None,
        description: dict[str, Any] | None,
        share: int | None = None,
    ) -> None:
        """Write the entry of module ``name`` (before the module itself is stored: a reader finds it ready).

        The admin's uploads get an entry without a description: it says their owner to the upload endpoint
        (``lookup`` never uses it: the admin's modules are imported, and their trust is read from the source).
        Blocks on a file lock and rewrites the file: call it from a thread, never the event loop.
        """
        self.put_raw(name, source.encode("utf-8"), tenant, alias, description, share)

    def put_raw(
        self,
        name: str,
        raw: bytes,
        tenant: str,
        alias: str | None,
        description: dict[str, Any] | None,
        share: int | None = None,
    ) -> None:
        """``put`` for the bytes as stored.

        One tenant never costs another its entries: the description is kept only while this entry is within
        ``ENTRY_BYTES``, the owner's entries within ``share`` bytes (in proportion to its upload quota;
        ``TENANT_SHARE`` when not known) and the file within ``MAX_BYTES``. Else the entry says only owner, size
        and hash (quotas and listings still need those): this one module is read at a start, nothing else is
        dropped. The description stays in this process's memory for ``lookup``."""
        digest = hashlib.sha256(raw).hexdigest()
        entry: dict[str, Any] = {"tenant": tenant, "alias": alias, "size": len(raw), "sha256": digest}
        own = len(_encode(description)) if description is not None else 0
        with self._update() as modules:
            modules.pop(name, None)
            mine = sum(_size(e) for e in modules.values() if e.get("tenant") == tenant)
            total = sum(_size(e) for e in modules.values())
            bare = _size({**entry, "module": None})
            kept = (
                description is not None
                and own <= ENTRY_BYTES
                and mine + bare + own <= (TENANT_SHARE if share is None else share)
                and total + bare + own <= MAX_BYTES * 3 // 4  # the last quarter: room for bare entries
            )
            if description is not None and not kept:
                log.warning(
                    "tenant module index %s: the description of %s (%d bytes) is over its bound; the module "
                    "is read at each start",
                    self.path,
                    name,
                    own,
                )
            if kept or total + bare + 1024 <= MAX_BYTES:
                modules[name] = {**entry, "module": description if kept else None}
        if description is not None and not kept:
            self._unwritten[name] = (digest, description)
        else:
            self._unwritten.pop(name, None)

    def remember(self, name: str, tenant: str, alias: str | None, read: tuple[str, dict[str, Any]]) -> None:
        """``put`` after a module was read without an entry; a folder that cannot be written only costs time."""
        try:
            self.put(name, read[0], tenant, alias, read[1])
        except OSError as exc:
            log.warning(
                "tenant module index %s cannot be written (%s): %s is read at every start", self.path, exc, name
            )

    def drop(self, name: str) -> None:
        with self._update() as modules:
            modules.pop(name, None)

    @contextlib.contextmanager
    def _update(self) -> Iterator[dict[str, dict[str, Any]]]:
        """Read, change and replace the file atomically, one writer at a time across server processes."""
        import fcntl

        os.makedirs(self.folder, exist_ok=True)
        lock = os.open(os.path.join(self.folder, ".dpmsf-tenant-index.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._seen = None
            modules = dict(self.entries())
            yield modules
            data = _encode({"format": FORMAT, "modules": modules})
            self._write(data)
            self._entries, self._seen = modules, None
            if self.remote is not None:
                try:
                    self.remote.put_index(data)
                except Exception as exc:  # the local copy serves this instance; others read their modules
                    log.warning("tenant module index of %s cannot be stored remotely: %s", self.folder, exc)
        finally:
            os.close(lock)


def _encode(value: Any) -> bytes:
    """Compact JSON: non-ASCII text as UTF-8, not six-byte escapes."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _size(entry: dict[str, Any]) -> int:
    """What an entry takes in the file (about: its encoding plus its name)."""
    return len(_encode(entry)) + 64


PENDING = object()  # ``Metadata.indexed`` of a module whose reading runs in the background: look again next time


class StoredReading(Protocol):
    """What reading a stored tenant module tells the index (``upload.reading.ReadUpload``)."""

    @property
    def tenant(self) -> str | None: ...

    @property
    def alias(self) -> str | None: ...

    @property
    def description(self) -> Any: ...


# (name, path, its bytes) -> what it serves; raises DPMSFError naming the budget it broke
ReadStored = Callable[[str, str, bytes], StoredReading]


class TenantIndexes:
    """One ``TenantIndex`` per upload folder of a registry (the folders where every module needs an owner), and
    the background reading of modules a server meets without an entry while it serves (``fill``)."""

    def __init__(self, owned_folders: set[str], read_stored: ReadStored | None = None) -> None:
        self._owned = owned_folders
        self._read_stored = read_stored  # the app's budgeted reading in a child process (``upload.reading``)
        self._indexes: dict[str, TenantIndex] = {}
        self._lock = threading.Lock()
        self._reading: set[str] = set()
        self._done: dict[str, tuple[tuple[int, ...], str | None]] = {}  # path -> (signature, error or None)
        self._pool: Any = None
        self._start_reads = 0

    def over_start_budget(self, path: str) -> bool:
        """At a start: True once ``START_INLINE`` modules (larger than ``INLINE_BYTES``, without a usable entry)
        were read before serving; the rest are read in the background (``fill``), as while serving. A missing or
        failing index then costs a start a few readings, never one per stored module (tens of seconds)."""
        try:
            if os.stat(path).st_size <= INLINE_BYTES:
                return False
        except OSError:
            return False
        self._start_reads += 1
        return self._start_reads > START_INLINE

    def fill(
        self, index: TenantIndex, name: str, path: str, signature: tuple[int, ...], admin_id: str | None
    ) -> tuple[str, bool] | None:
        """While serving, a module without a verified entry is read in the background (a budgeted child
        process, as uploads are), never on the request path. Returns why it is not served yet, or None when
        it may be read in line: it is small (a millisecond or two), it names no owner (nothing to parse), it was
        read already and still has no
        usable entry (its bytes changed meanwhile, or a byte-order mark made the hashes differ), or it is the
        admin's upload (its entry says so for these very bytes: it is imported, as trusted code). The flag says
        whether the reading still runs (then the next rebuild looks again)."""
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except OSError:
            return None
        if len(raw) <= INLINE_BYTES or (b"__tenant__" not in raw and b"__alias__" not in raw):
            return None
        entry = index.entries().get(name) or {}
        if admin_id and entry.get("tenant") == admin_id and entry.get("sha256") == hashlib.sha256(raw).hexdigest():
            return None
        with self._lock:
            done = self._done.get(path)
            if done is not None and done[0] == signature:
                return None if done[1] is None else (done[1], False)
            if path not in self._reading:
                self._reading.add(path)
                if self._pool is None:
                    from concurrent.futures import ThreadPoolExecutor

                    self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dpmsf-index")
                self._pool.submit(self._read, index, name, path, signature, raw)
        return f"{path}: being read (it has no entry in the tenant index); it is served in a moment", True

    def _read(self, index: TenantIndex, name: str, path: str, signature: tuple[int, ...], raw: bytes) -> None:
        from ..errors import DPMSFError

        error: str | None = None
        try:
            if self._read_stored is None:
                raise ValueError("this registry reads no stored tenant modules")
            read = self._read_stored(name, path, raw)
            if read.tenant is None or read.description is None:
                raise ValueError("no owner")
            index.put_raw(name, raw, read.tenant, read.alias, read.description)
        except DPMSFError as exc:
            error = exc.detail
        except Exception as exc:  # a failed reading is that module's error, never the server's
            error = f"{path}: cannot be read: {type(exc).__name__}: {exc}"
        with self._lock:
            self._reading.discard(path)
            self._done[path] = (signature, error)
        if error is not None:  # nothing was written: make the next request's rebuild look again
            with contextlib.suppress(OSError):
                os.utime(index.folder)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def for_folder(self, folder: str) -> TenantIndex | None:
        real = os.path.realpath(folder)
        if real not in self._owned:
            return None
        if real not in self._indexes:
            self._indexes[real] = TenantIndex(real)
        return self._indexes[real]
