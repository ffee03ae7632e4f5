"""Private local state: the state directory is 0700 and the files DPMSF keeps in it are 0600.

The state directory (``DPMSF_STATE_DIR``, default ``.dpmsf``) holds the tenant registry, the replay store, the
document store and the master key file. Other local users must not read tenant keys, used token ids or tenant
data, nor plant files there, so:

- ``private_dir(path)`` creates a folder (and any missing parents) as 0700; an existing one that we own is
  tightened to 0700 when asked (the configured state directory), never a folder we merely happen to write into
  (``/tmp``, the working directory);
- ``private_file(path)`` creates a file as 0600, or tightens an existing one we own to 0600;
- ``private_sqlite(path, state_dir=...)`` does both for a SQLite database before ``sqlite3.connect`` opens it.
  SQLite gives the ``-wal``, ``-shm`` and ``-journal`` files it creates the mode of the database file, so they
  are 0600 too; siblings left by an older version with wider modes are tightened.

Modes are set with ``fchmod``/``chmod`` after creation, so the umask can neither widen nor narrow them.

An existing state directory (and ``uploads/`` in it, whose modules are imported as trusted code) is used only when
it is a real directory, not a symlink, owned by this server's uid and writable by nobody else
(``claim_state_dir``); otherwise start-up stops with a ``ConfigError`` saying why. Another local user who made it
first could have planted a module stamped with the admin's id, or swapped ``tenants.db`` or ``master.key``. No
silent fallback to a fresh folder: state must persist, so the operator has to fix the folder (or point
``DPMSF_STATE_DIR`` elsewhere). Only on Lambda, whose ``/tmp`` is the function's own and empty at each cold start,
does ``fresh_ok`` allow a fresh private folder instead.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from ..errors import ConfigError

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "claim_state_dir",
    "private_dir",
    "private_file",
    "private_sqlite",
    "write_secret_once",
]

DIR_MODE = 0o700
FILE_MODE = 0o600
_SQLITE_SIBLINGS = ("-wal", "-shm", "-journal")


def _ours(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid()


def private_dir(path: str | os.PathLike[str], *, tighten: bool = True) -> Path:
    """``path`` as a directory: missing levels are created 0700; an existing one we own is made 0700 if ``tighten``.

    ``tighten`` is for the state directory itself. A folder that is not ours (or that we were not asked to
    tighten) is left as it is: changing the mode of a shared folder such as ``/tmp`` would break other programs.
    """
    folder = Path(path)
    if tighten and (folder.is_symlink() or folder.is_dir()):  # a file is the NotADirectoryError below
        _refuse_foreign(folder, "State directory")
    missing: list[Path] = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for level in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it first; it is checked below
            level.mkdir(mode=DIR_MODE)
            os.chmod(level, DIR_MODE)
    st = folder.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(f"State directory {str(folder)!r} is not a directory.")
    if tighten and _ours(st) and stat.S_IMODE(st.st_mode) != DIR_MODE:
        os.chmod(folder, DIR_MODE)
    return folder


def _refuse_foreign(folder: Path, what: str) -> None:
    """A ConfigError unless ``folder`` is a real directory of ours that nobody else may write into."""
    from ..private_dir import refusal

    why = refusal(folder)
    if why is not None:
        raise ConfigError(
            f"{what} {str(folder)!r} cannot be used: {why}. Another local user could have planted files there "
            f"that this server would run or trust. Remove it, or make it a directory of this server's user that "
            f"nobody else may write to (chown; chmod 700), or set DPMSF_STATE_DIR to another path."
        )


def claim_state_dir(path: str | os.PathLike[str], *, what: str = "State directory", fresh_ok: bool = False) -> Path:
    """``path`` created 0700 if missing; an existing one only if ours alone (see the module docstring), else a
    ConfigError, or with ``fresh_ok`` (Lambda's /tmp default) a fresh private folder."""
    folder = Path(os.path.abspath(path))
    try:
        if os.path.lexists(folder):
            _refuse_foreign(folder, what)
        else:
            private_dir(folder, tighten=False)
            _refuse_foreign(folder, what)  # made by someone else between the two calls
    except ConfigError:
        if not fresh_ok:
            raise
        import tempfile

        return Path(tempfile.mkdtemp(prefix="dpmsf-"))
    if stat.S_IMODE(os.lstat(folder).st_mode) != DIR_MODE:
        os.chmod(folder, DIR_MODE)
    return folder


def private_file(path: str | os.PathLike[str]) -> None:
    """Create ``path`` empty as 0600 if missing; an existing file we own with a wider mode is tightened to 0600."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        st = os.fstat(fd)
        if _ours(st) and stat.S_IMODE(st.st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def _is_memory(path: str) -> bool:
    return path == ":memory:" or path == "" or path.startswith("file:")


def private_sqlite(path: str | os.PathLike[str], *, state_dir: str | os.PathLike[str] | None = None) -> None:
    """Prepare a SQLite file so that it and its ``-wal``/``-shm`` siblings are 0600 in 0700 folders.

    ``state_dir`` is the configured state directory: when the database lies inside it, it is tightened to 0700
    even if it already existed. In-memory databases and ``file:`` URIs are left to SQLite.
    """
    text = os.fspath(path)
    if _is_memory(text):
        return
    file = Path(text)
    parent = file.parent
    if state_dir is not None and _inside(parent, Path(state_dir)):
        private_dir(state_dir, tighten=True)
    private_dir(parent, tighten=False)
    private_file(file)
    for suffix in _SQLITE_SIBLINGS:
        sibling = Path(text + suffix)
        with contextlib.suppress(FileNotFoundError):
            st = sibling.stat()
            if _ours(st) and stat.S_IMODE(st.st_mode) & ~FILE_MODE:
                os.chmod(sibling, FILE_MODE)


def _inside(folder: Path, state_dir: Path) -> bool:
    """True when ``folder`` is ``state_dir`` or below it (compared as absolute paths, symlinks not resolved)."""
    a, b = Path(os.path.abspath(folder)), Path(os.path.abspath(state_dir))
    return a == b or b in a.parents


def write_secret_once(path: str | os.PathLike[str], content: bytes) -> bytes:
    """Create ``path`` (0600) holding ``content`` unless it exists; return what the file holds either way.

    Several worker processes may start at once: each writes a private temporary file and hard-links it into
    place, which fails for all but the first, so every process ends up reading the same secret and nobody ever
    reads a half-written file.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, target)
    except FileExistsError:
        pass
    except OSError:  # a filesystem without hard links: an exclusive create is the next best thing
        with contextlib.suppress(FileExistsError):
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
            try:
                os.write(fd, content)
            finally:
                os.close(fd)
    finally:
        tmp.unlink()
    private_file(target)  # an existing file we own is tightened to 0600
    return target.read_bytes()
