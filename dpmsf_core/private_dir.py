"""Cache folders only this server can write: what is kept in one (compiled code) runs, so nobody else may plant it.

A cache under a shared temp folder (``/tmp/dpmsf-java``, ``/tmp/dpmsf-sandbox-<uid>``) can be created first by
another local user, as a symlink to a folder of theirs, or left writable by all; whatever they put there would
run as the server. ``PrivateDir(path).get()`` therefore returns ``path`` only while it is a real directory
(``lstat``: not a symlink), owned by our effective uid and writable by nobody else; a missing one is created
0700. Anything else is logged with the reason, and a fresh private folder (``tempfile.mkdtemp``) is used
instead, for as long as this object lives: the refused path is never looked at again.

``traversable=True`` makes the folder 0711 instead of 0700: the sandbox workers may run as ``nobody`` and must
open the compiled interpreter by its name (a 0644 file), but may neither list the folder nor write into it.
An existing folder that passes the checks but has another mode (an older version made them 0755) is set to the
mode asked for: only we could have written into it.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
import threading
from pathlib import Path

__all__ = ["PrivateDir", "refusal"]

log = logging.getLogger("dpmsf")


def refusal(path: Path) -> str | None:
    """Why ``path`` may not hold code we will run (None: it may): checked with ``lstat``, symlinks not followed."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "it does not exist"
    except OSError as exc:
        return f"it cannot be checked ({exc.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    if st.st_uid != os.geteuid():
        return f"it is owned by uid {st.st_uid}, not by this server's uid {os.geteuid()}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"others may write into it (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


class PrivateDir:
    """One cache folder, checked on every ``get()``; falls back to a fresh ``mkdtemp`` folder when refused."""

    def __init__(self, path: str | os.PathLike[str], *, purpose: str, traversable: bool = False) -> None:
        self.path = Path(path)
        self.purpose = purpose
        self.mode = 0o711 if traversable else 0o700
        self._fallback: Path | None = None
        self._lock = threading.Lock()

    def get(self) -> Path:
        """The folder to use now: ``path`` if it passes (created when missing), else this object's own fallback."""
        with self._lock:
            if self._fallback is None:
                why = self._claim(self.path)
                if why is None:
                    return self.path
                self._fallback = self._fresh()
                log.warning(
                    "%s: not using %s: %s; using a fresh private folder %s instead",
                    self.purpose,
                    self.path,
                    why,
                    self._fallback,
                )
                return self._fallback
            why = self._claim(self._fallback)
            if why is not None:  # someone (or a cleaner of /tmp) took our own fallback: start over elsewhere
                previous, self._fallback = self._fallback, self._fresh()
                log.warning("%s: not using %s: %s; using %s", self.purpose, previous, why, self._fallback)
            return self._fallback

    def _claim(self, path: Path) -> str | None:
        """Create ``path`` if missing; refuse it unless it is ours alone; give it the mode asked for."""
        if not os.path.lexists(path):
            try:
                path.parent.mkdir(mode=0o755 if self.mode & 0o011 else 0o700, parents=True, exist_ok=True)
                os.mkdir(path, self.mode)  # not followed if another process made it meanwhile: checked below
            except FileExistsError:
                pass
            except OSError as exc:
                return f"it cannot be created ({exc.strerror})"
        why = refusal(path)
        if why is None:
            why = self._set_mode(path)
        return why

    def _set_mode(self, path: Path) -> str | None:
        """The mode asked for, set through a descriptor of the folder just checked (never through a symlink)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            return f"it cannot be opened ({exc.strerror})"
        try:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                return "it changed while it was checked"
            if stat.S_IMODE(st.st_mode) != self.mode:
                os.fchmod(fd, self.mode)
        finally:
            os.close(fd)
        return None

    def _fresh(self) -> Path:
        folder = Path(tempfile.mkdtemp(prefix=f"{self.path.name}-"))
        os.chmod(folder, self.mode)
        return folder
