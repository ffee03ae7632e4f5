"""When the registry must rebuild: the cheap check of its plugin folders that every request makes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

from .discovery import Candidate, package_signature

RECENT_CHANGE_WINDOW = 2.0  # seconds: file-system mtimes are coarse, so a just-changed folder is re-checked


def _listing(folder: str) -> set[str]:
    return {n for n in os.listdir(folder) if n.endswith(".py") or "." not in n}


class FolderWatch:
    """What the folders looked like at the last rebuild, and whether they still do: a stat per folder each time,
    a full sweep (every module's signature, every listing) at most every ``sweep_interval`` seconds, or at once
    while a folder changed within its mtime's granularity (a second change would not move the mtime)."""

    def __init__(self, folders: list[str], sweep_interval: float, clock: Callable[[], float]) -> None:
        self.folders = folders
        self.sweep_interval = sweep_interval
        self._clock = clock
        self._mtimes: dict[str, int] = {}
        self._names: dict[str, set[str]] = {}
        self._last_sweep = 0.0

    def seen(self) -> None:
        """Record the folders as a rebuild is about to scan them."""
        for folder in self.folders:
            try:
                self._mtimes[folder] = os.stat(folder).st_mtime_ns
                self._names[folder] = _listing(folder)
            except OSError:
                self._mtimes[folder] = -1
                self._names[folder] = set()
        self._last_sweep = self._clock()

    def changed(self, candidates: Iterable[Candidate]) -> bool:
        """Whether a folder or one of ``candidates`` (the modules of the last rebuild) changed since ``seen``."""
        wall = time.time()
        suspicious = False
        for folder in self.folders:
            try:
                mtime = os.stat(folder).st_mtime_ns
            except OSError:
                mtime = -1
            if mtime != self._mtimes.get(folder):
                return True
            if wall - mtime / 1e9 < RECENT_CHANGE_WINDOW:
                suspicious = True
        now = self._clock()
        if suspicious or now - self._last_sweep >= self.sweep_interval:
            self._last_sweep = now
            return self._files_changed(candidates) or self._listing_changed()
        return False

    def _files_changed(self, candidates: Iterable[Candidate]) -> bool:
        for cand in candidates:
            try:
                if cand.is_package:
                    sig = package_signature(os.path.dirname(cand.path))
                else:
                    st = os.stat(cand.path)
                    sig = (st.st_mtime_ns, st.st_size, st.st_ino)
            except OSError:
                return True
            if sig != cand.signature:
                return True
        return False

    def _listing_changed(self) -> bool:
        for folder in self.folders:
            try:
                names = _listing(folder)
            except OSError:
                names = set()
            if names != self._names.get(folder, set()):
                return True
        return False
