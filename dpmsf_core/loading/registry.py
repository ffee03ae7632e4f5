"""The Registry owns every loaded plugin and swaps whole immutable snapshots, so a request never sees half a reload.

It is over 400 lines because a rebuild is one transaction under the registry's lock: its steps (scan, decide per
module, admit, publish) read and replace the same records, and stay beside them; the version each answer names
(``DPMSF-Plugin-Version``) is read there too, where a module loads.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeGuard

from ..errors import PluginError
from .deferred import Deferrals, same_routes
from .discovery import (
    Candidate,
    LoadedModule,
    Metadata,
    collect,
    import_module,
    module_name_for,
    read_metadata,
    scan_folder,
    stamped_owner,
)
from .manifest import content_version
from .report import log_reload, module_report
from .reserved import reserved_names, withhold
from .snapshot import EMPTY, Endpoint, ModuleEntry, ModuleReport, Snapshot, endpoints_by_api
from .tenant_index import PENDING, ReadStored, TenantIndexes
from .watch import FolderWatch

__all__ = [
    "EMPTY",
    "Endpoint",
    "ModuleEntry",
    "ModuleReport",
    "PluginSource",
    "Registry",
    "Snapshot",
    "UntrustedLoader",
]

log = logging.getLogger("dpmsf.registry")


def _every(name: str) -> bool:
    return True


class UntrustedLoader(Protocol):
    """Turns a tenant module's source into endpoints that run in the sandbox (never imported here)."""

    def __call__(self, candidate: Candidate, meta: Metadata) -> LoadedModule: ...


class PluginSource(Protocol):
    """A source that mirrors plugins into a local folder (S3); ``sync`` is cheap until its refresh is due."""

    def sync(self, force: bool = False) -> object: ...  # the registry reads its ``changed`` if it has one

    def status(self) -> dict[str, Any]: ...


@dataclass
class _Record:
    candidate: Candidate
    meta: Metadata
    entry: ModuleEntry | None
    error: str | None
    stale: bool = False
    duplicates: list[str] = field(default_factory=list)


@dataclass
class _Rebuild:
    """What one rebuild collects, module by module, before it publishes (or, if nothing changed, does not)."""

    records: dict[str, _Record] = field(default_factory=dict)
    modules: dict[str, ModuleEntry] = field(default_factory=dict)
    reports: list[ModuleReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    changed: bool = False


class Registry:
    """Scans plugin folders, imports what changed, and publishes a new Snapshot atomically."""

    def __init__(
        self,
        folders: Iterable[str],
        *,
        admin_id: str | None = None,
        untrusted_loader: UntrustedLoader | None = None,
        sources: Iterable[PluginSource] = (),
        reload: bool = True,
        sweep_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        owned_folders: Iterable[str] = (),
        read_stored: ReadStored | None = None,
    ) -> None:
        self.folders = [str(f) for f in folders]
        self.owned_folders = {os.path.realpath(str(f)) for f in owned_folders}  # uploads: a module needs an owner
        self.admin_id = admin_id
        self.untrusted_loader = untrusted_loader
        self.sources = list(sources)
        self.reload = reload
        self._watch = FolderWatch(self.folders, sweep_interval, clock)
        self._lock = threading.RLock()
        self._records: dict[str, _Record] = {}
        self._deferrals = Deferrals(self.owned_folders)  # modules the packaged manifest describes
        self.indexes = TenantIndexes(self.owned_folders, read_stored)  # uploads' tenant modules, without a parse
        self._manifest_differs = False
        self.snapshot: Snapshot = EMPTY

    def load(self) -> Snapshot:
        """Full scan and import; called once at start-up and whenever a change is seen."""
        with self._lock:
            for source in self.sources:
                self._sync_source(source, force=True)
            for folder in self.folders:
                if not os.path.isdir(folder):  # served once it appears; said now, since it may be a typo
                    log.warning("plugin folder %s does not exist: nothing is served from it yet", folder)
            return self._rebuild()

    def refresh(self) -> Snapshot:
        """``refresh_routing``, with every module imported: what ``__dir__``, OpenAPI, metrics and events see."""
        snapshot = self.refresh_routing()
        if not snapshot.deferred:
            return snapshot
        with self._lock:
            return self._rebuild(materialize=_every)

    def materialize(self, public: str) -> Snapshot:
        """Import module ``public`` if it is still served from the manifest, publish and return the snapshot.

        A failed import leaves it an error report, as at start-up without a manifest; its real routes replace
        the manifest's (with a warning if they differ). The caller resolves its URL again against the result.
        """
        with self._lock:
            if public not in self.snapshot.deferred:
                return self.snapshot
            self._manifest_differs = False
            snapshot = self._rebuild(materialize=lambda name: name == public)
            if self._manifest_differs:  # it describes another environment than this one: none of it is trusted
                snapshot = self._rebuild(materialize=_every)
            return snapshot

    def refresh_routing(self) -> Snapshot:
        """The per-request check: a stat per folder, a full sweep at most every ``sweep_interval`` seconds.

        Modules the packaged manifest describes may still be deferred (``Endpoint.deferred``): enough to resolve
        a URL; the dispatcher materializes the one it calls.
        """
        if not self.reload:
            return self.snapshot
        changed = False
        for source in self.sources:
            if self._sync_source(source):
                changed = True
        if changed or self._watch.changed(r.candidate for r in self._records.values()):
            if not self._lock.acquire(blocking=False):
                # another thread rebuilds (an upload's, off the event loop): serve what is published, never wait
                return self.snapshot
            try:
                return self._rebuild()
            finally:
                self._lock.release()
        return self.snapshot

    def reports(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.snapshot.reports]

    def source_status(self) -> list[dict[str, Any]]:
        return [s.status() for s in self.sources]

    # -- internals ----------------------------------------------------------------------------------------------

    def _sync_source(self, source: PluginSource, force: bool = False) -> bool:
        try:
            result = source.sync(force=force)
        except Exception as exc:  # a broken source must never take the others down
            log.warning("plugin source %r failed: %s", source, exc)
            return False
        return bool(getattr(result, "changed", False))

    def _is_trusted(self, meta: Metadata) -> bool:
        return meta.tenant is None or (self.admin_id is not None and meta.tenant == self.admin_id)

    def _rebuild(self, materialize: Callable[[str], bool] | None = None) -> Snapshot:
        """Scan, import what changed (and the deferred modules ``materialize`` names), publish if anything did:
        scan -> decide per module -> publish, so each step can be read (and changed) alone."""
        self._watch.seen()
        candidates: list[Candidate] = []
        for index, folder in enumerate(self.folders):
            candidates.extend(scan_folder(folder, index))
        metas = {cand.path: self._metadata(cand) for cand in candidates}
        rebuild = _Rebuild()
        for cand in self._by_claim(candidates, metas):
            record = self._decide(cand, metas[cand.path], rebuild, materialize)
            self._admit(cand, record, rebuild)
        if self._forget_gone(rebuild.records):
            rebuild.changed = True
        self._records = rebuild.records
        if not rebuild.changed and self.snapshot is not EMPTY:
            return self.snapshot
        return self._publish(rebuild, materialize)

    def _decide(
        self,
        cand: Candidate,
        read: tuple[Metadata, str | None],
        rebuild: _Rebuild,
        materialize: Callable[[str], bool] | None,
    ) -> _Record:
        """What this file serves now: its record as it was (imported now if it was deferred and is asked for),
        or, for a new or changed file, what reading and importing it gives."""
        previous = self._records.get(cand.path)
        if _unchanged(previous, cand):
            if materialize is not None and _is_deferred(previous) and materialize(previous.meta.alias or cand.name):
                rebuild.changed = True
                return self._materialized(previous)
            return previous
        if _is_deferred(previous):
            previous = None  # edited before its first call: imported as new, nothing to keep serving
        meta, meta_error = read
        public = meta.alias or cand.name
        record = self._fresh(cand, previous, meta, meta_error, taken=public in rebuild.modules)
        rebuild.changed = True
        if self.snapshot is not EMPTY and public not in rebuild.modules:  # start-up has its own summary line
            log_reload(cand, previous, record)
        return record

    def _fresh(
        self, cand: Candidate, previous: _Record | None, meta: Metadata, meta_error: str | None, *, taken: bool
    ) -> _Record:
        """A new or changed file's record: never imported if its name is taken (the conflict is reported when it
        is admitted), its previous version kept serving if it cannot be read, deferred to its first call if the
        packaged manifest describes it, else imported now."""
        if taken:
            return _Record(cand, meta, None, None)
        if meta_error is not None:
            log.error("plugin %s failed to load: %s", cand.path, meta_error)
            keep = previous.entry if previous else None
            return _Record(cand, meta, keep, meta_error, stale=keep is not None)
        deferred = self._deferrals.entry(cand, meta) if previous is None else None
        if deferred is not None:
            return _Record(cand, Metadata(meta.alias, None), deferred, None)
        return self._load(cand, previous, meta)

    def _admit(self, cand: Candidate, record: _Record, rebuild: _Rebuild) -> None:
        """Whether the record serves under its public name: the first claimant (``_by_claim`` orders them) does,
        a later one is a reported conflict, not kept, so the next rebuild looks at it again."""
        public = record.meta.alias or cand.name
        trusted = self._is_trusted(record.meta)
        owner = rebuild.modules.get(public)
        if owner is not None:
            msg = f"module name {public!r} of {cand.path} is already taken by {owner.path}; this one is not loaded"
            rebuild.problems.append(msg)
            log.warning("conflict: %s", msg)
            rebuild.reports.append(module_report(public, record, trusted, "conflict", msg, None))
            if record.entry is not None:
                self._forget_module(cand)
            rebuild.changed = True  # not kept: re-evaluated on the next rebuild, when the owner may be gone
            return
        rebuild.records[cand.path] = record
        rebuild.problems.extend(f"{cand.path}: {dup}" for dup in record.duplicates)
        status = "loaded" if record.error is None else ("stale" if record.entry is not None else "error")
        entry = record.entry
        error = "; ".join([*filter(None, [record.error]), *record.duplicates]) or None
        rebuild.reports.append(module_report(public, record, trusted, status, error, entry))
        if entry is not None:
            rebuild.modules[public] = entry

    def _forget_gone(self, records: dict[str, _Record]) -> bool:
        """Unload the modules whose files this scan no longer kept (deleted, or lost their name); whether any was."""
        changed = False
        for path, old in self._records.items():
            if path not in records:
                changed = True
                self._forget_module(old.candidate)
                if not os.path.exists(path):
                    served = ", ".join(sorted(old.entry.endpoints)) if old.entry else ""
                    log.info("reload: %s removed%s", path, f"; no longer served: {served}" if served else "")
        return changed

    def _publish(self, rebuild: _Rebuild, materialize: Callable[[str], bool] | None) -> Snapshot:
        """One new immutable Snapshot from what the rebuild kept, swapped in whole: a request sees the old one or
        this one, never half of each."""
        modules = rebuild.modules
        reserved = reserved_names(rebuild.reports, self.owned_folders)  # the admin's, while its module fails to load
        reports = withhold(modules, rebuild.reports, reserved) if reserved else rebuild.reports
        imported_later = frozenset(name for name, entry in modules.items() if entry.deferred)
        self.snapshot = Snapshot(
            modules=modules,
            by_api=endpoints_by_api(modules, reserved),
            reports=tuple(reports),
            version=self.snapshot.version + 1,
            problems=tuple(rebuild.problems),
            stale={r.name: r.error or "" for r in reports if r.status == "stale"},
            deferred=imported_later,
        )
        log.log(
            logging.INFO if materialize is None else logging.DEBUG,
            "plugins: %d modules serving, %d endpoints (version %d)%s",
            len(modules),
            sum(len(eps) for entry in modules.values() for eps in entry.routes.values()),
            self.snapshot.version,
            f"; {len(imported_later)} imported on first call (manifest)" if imported_later else "",
        )
        return self.snapshot

    def _materialized(self, record: _Record) -> _Record:
        """Import a deferred module now: its real entry, or the error an import at start-up would have left."""
        assert record.entry is not None
        loaded = self._load(record.candidate, None, record.meta)
        if loaded.entry is not None and not same_routes(loaded.entry, record.entry):
            self._manifest_differs = True
        return loaded

    def _metadata(self, cand: Candidate) -> tuple[Metadata, str | None]:
        """``__alias__``/``__tenant__`` (unchanged files reuse what was read), and why they are unusable if so."""
        previous = self._records.get(cand.path)
        if _unchanged(previous, cand):
            return previous.meta, previous.error
        owned = os.path.realpath(cand.folder) in self.owned_folders
        index = self.indexes.for_folder(cand.folder) if owned and not cand.is_package else None
        hit = index.lookup(cand.name, cand.path, self.admin_id) if index is not None else None
        if hit is not None:
            return Metadata(hit.alias, hit.tenant, hit.source, hit), None
        waiting = (
            self.indexes.fill(index, cand.name, cand.path, cand.signature, self.admin_id)
            if index and (self.snapshot.version or (self.reload and self.indexes.over_start_budget(cand.path)))
            else None
        )
        if waiting is not None:  # serving: a module without an entry is read in the background, not here
            return Metadata(tenant=stamped_owner(cand.path), indexed=PENDING if waiting[1] else None), waiting[0]
        try:
            meta = read_metadata(cand.path)
        except PluginError as exc:
            if previous is not None:
                return previous.meta, str(exc)
            # an upload that no longer parses still belongs to whoever it was stamped for (and to nobody else)
            return Metadata(tenant=stamped_owner(cand.path) if owned else None), str(exc)
        if meta.tenant is None and owned:
            # an upload always carries its owner's id; one without is not ours to trust (nor to run at all)
            return meta, f"{cand.path}: an uploaded module without an owner (__tenant__) is not loaded"
        return meta, None

    def _by_claim(self, candidates: list[Candidate], metas: dict[str, tuple[Metadata, str | None]]) -> list[Candidate]:
        """Who keeps a contested public name: the admin's (trusted) module, then the one serving it now, then
        the oldest file; folder and file order only break ties, so a new file cannot take a name by sorting first.
        """

        def claim(item: tuple[int, Candidate]) -> tuple[int, int, int, int]:
            index, cand = item
            meta = metas[cand.path][0]
            holder = self.snapshot.modules.get(meta.alias or cand.name)
            try:
                age = os.stat(cand.path).st_mtime_ns
            except OSError:
                age = 0
            serving = holder is not None and holder.path == cand.path
            return (0 if self._is_trusted(meta) else 1, 0 if serving else 1, age, index)

        return [cand for _, cand in sorted(enumerate(candidates), key=claim)]

    def _load(self, cand: Candidate, previous: _Record | None, meta: Metadata) -> _Record:
        """Import one module; on failure keep the previous version's entry serving and record the error."""
        trusted = self._is_trusted(meta)
        try:
            version = content_version(cand.path, cand.is_package)  # what its answers name (DPMSF-Plugin-Version)
            if trusted:
                loaded = collect(import_module(cand))
            elif self.untrusted_loader is None:
                raise PluginError(f"{cand.path}: belongs to tenant {meta.tenant}, and the sandbox is not enabled")
            else:
                loaded = self._untrusted(cand, meta)
                index = self.indexes.for_folder(cand.folder)
                if (
                    loaded.index_entry is not None and index is not None and meta.tenant is not None
                ):  # read now, not again at the next start
                    index.remember(cand.name, meta.tenant, meta.alias, loaded.index_entry)
        except (PluginError, OSError) as exc:  # OSError: the file went away while it was read
            log.error("plugin %s failed to load: %s", cand.path, exc)
            if previous is not None and previous.entry is not None:  # the last good version keeps serving
                return _Record(cand, previous.meta, previous.entry, str(exc), stale=True)
            return _Record(cand, meta, None, str(exc))
        public = meta.alias or cand.name
        routes: dict[str, list[Endpoint]] = {}
        for spec, func in loaded.endpoints:
            ep = Endpoint(spec, func, public, meta.tenant, trusted=trusted, doc=getattr(func, "__dpmsf_doc__", None))
            routes.setdefault(spec.api, []).append(ep)
        endpoints = {api: eps[0] for api, eps in routes.items()}
        entry = ModuleEntry(
            public,
            cand.name,
            meta.alias,
            cand.path,
            cand.folder,
            meta.tenant,
            trusted,
            endpoints,
            loaded.events,
            time.time(),
            {api: tuple(eps) for api, eps in routes.items()},
            version=version,
        )
        for dup in loaded.duplicates:
            log.warning("plugin %s: %s", cand.path, dup)
        return _Record(cand, Metadata(meta.alias, meta.tenant), entry, None, duplicates=loaded.duplicates)

    def _untrusted(self, cand: Candidate, meta: Metadata) -> LoadedModule:
        """A tenant's module through the sandbox loader: whatever its source makes the reader raise, it is that
        module's load error; it never reaches the rebuild (one hostile upload must not stop every other)."""
        assert self.untrusted_loader is not None
        try:
            return self.untrusted_loader(cand, meta)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"{cand.path}: cannot be read: {type(exc).__name__}: {exc}") from None

    def _forget_module(self, cand: Candidate) -> None:
        qualname = module_name_for(cand)
        for key in [k for k in sys.modules if k == qualname or k.startswith(qualname + ".")]:
            del sys.modules[key]


def _unchanged(record: _Record | None, cand: Candidate) -> TypeGuard[_Record]:
    """The record of this very file (same signature), unless its module was still being read then."""
    return record is not None and record.candidate.signature == cand.signature and record.meta.indexed is not PENDING


def _is_deferred(record: _Record | None) -> bool:
    return record is not None and record.entry is not None and record.entry.deferred
