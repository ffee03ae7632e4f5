"""The registry's report of one module (a line of ``__dir__``) and its reload log line."""

from __future__ import annotations

import logging
from typing import Protocol

from .discovery import Candidate, Metadata, change_reason
from .snapshot import ModuleEntry, ModuleReport

log = logging.getLogger("dpmsf.registry")


class LoadRecord(Protocol):
    """A module as the registry last read it (``registry._Record``): what its report and its log line say."""

    @property
    def candidate(self) -> Candidate: ...
    @property
    def meta(self) -> Metadata: ...
    @property
    def entry(self) -> ModuleEntry | None: ...
    @property
    def error(self) -> str | None: ...
    @property
    def stale(self) -> bool: ...


def module_report(
    public: str, record: LoadRecord, trusted: bool, status: str, error: str | None, entry: ModuleEntry | None
) -> ModuleReport:
    cand = record.candidate
    return ModuleReport(
        public,
        cand.name,
        record.meta.alias,
        cand.path,
        cand.folder,
        record.meta.tenant,
        trusted,
        status,
        error,
        sorted(entry.endpoints) if entry else [],
        [ev.name for ev, _ in entry.events] if entry else [],
    )


def log_reload(cand: Candidate, previous: LoadRecord | None, record: LoadRecord) -> None:
    """One line per module a reload touched: what happened to its file, and what serves now."""
    why = change_reason(previous.candidate if previous else None, cand)
    if record.error is None:
        apis = ", ".join(sorted(record.entry.endpoints)) if record.entry else ""
        log.info("reload: %s %s: loaded%s", cand.path, why, f"; serving {apis}" if apis else "")
    else:
        keeps = "the previous version keeps serving" if record.stale else "not served"
        log.warning("reload: %s %s: failed to load, %s", cand.path, why, keeps)
