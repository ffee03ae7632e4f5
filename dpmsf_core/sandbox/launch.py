"""How a sandbox worker process is started: what it is told (``worker_config``), its command line (``spawn``), and
the uid it runs as when the server runs as root (``unprivileged_python``)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from typing import Any

from ..errors import DPMSFError
from . import runtime
from .budget import SandboxLimits

log = logging.getLogger("dpmsf.sandbox")

_HERE = os.path.dirname(os.path.realpath(__file__))
WORKER_FILE = os.path.join(_HERE, "worker.py")
GUEST_FILE = os.path.join(_HERE, "guest_main.py")
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(_HERE))  # the folder that holds dpmsf_core


def _worker_sys_path() -> list[str]:
    """Where the worker finds wasmtime and dpmsf_core (it runs with -I -S: no site-packages of its own)."""
    import wasmtime

    paths = [_PACKAGE_ROOT, os.path.dirname(os.path.dirname(os.path.realpath(wasmtime.__file__)))]
    return list(dict.fromkeys(paths))


def worker_config(limits: SandboxLimits, compiled: str) -> dict[str, Any]:
    """What a worker process is told at its start (``worker.py``), as JSON on its command line."""
    return {
        "compiled": compiled,
        "guest_file": GUEST_FILE,
        "sys_path": _worker_sys_path(),
        "cpu_seconds": limits.cpu_seconds,
        "start_cpu_seconds": limits.start_cpu_seconds,
        "memory_mb": limits.memory_mb,
        "data_limit_mb": limits.memory_mb + limits.worker_overhead_mb if limits.worker_overhead_mb else 0,
        "max_output_bytes": limits.max_output_bytes,
        "max_answer_bytes": limits.max_answer_bytes,
        "max_store_frame_bytes": limits.max_store_frame_bytes,
        "max_call_frames": limits.max_call_frames,
        "max_call_bytes": limits.max_call_bytes,
        "lifetime_cpu_seconds": int(limits.worker_cpu_seconds),
    }


def spawn(
    python: str, config: dict[str, Any], run_as: int | None, stdin: int = subprocess.PIPE
) -> subprocess.Popen[bytes]:
    """A fresh worker process (``worker.py``) with an empty environment, in its own session."""
    extra: dict[str, Any] = {}
    if run_as is not None:
        extra = {"user": run_as, "group": run_as, "extra_groups": []}
    try:
        return subprocess.Popen(
            [python, "-I", "-S", "-B", WORKER_FILE, json.dumps(config)],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={},
            cwd="/",
            close_fds=True,
            start_new_session=True,  # a Ctrl-C aimed at the server does not hit workers mid-call
            bufsize=0,
            **extra,
        )
    except OSError as exc:
        raise DPMSFError(f"sandbox worker could not start: {exc}") from None


def usable_by_others(path: str, *, execute: bool = False) -> bool:
    """Whether a uid that is neither owner nor group can read (or run) ``path``: every folder above needs o+x."""
    real = os.path.realpath(path)
    try:
        mode = os.stat(real).st_mode
        folder = os.path.dirname(real)
        while True:
            if not os.stat(folder).st_mode & 0o001:
                return False
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent
    except OSError:
        return False
    return bool(mode & 0o004) and (not execute or bool(mode & 0o001))


_warned: set[str] = set()


def unprivileged_python(python: str, uid: int, compiled: str) -> tuple[str, int | None]:
    """An interpreter, and the uid to run workers as, such that the unprivileged uid can run everything needed.

    A root server's workers run as ``uid`` (nobody) when the interpreter, wasmtime, dpmsf_core and the compiled
    module are all readable by others; the configured interpreter is tried first, then the system's python3.
    Otherwise they keep the server's uid, with one warning: the WebAssembly boundary holds either way.
    """
    import shutil

    import wasmtime

    needed = [compiled, wasmtime.__file__, GUEST_FILE, WORKER_FILE, runtime.__file__]
    if all(usable_by_others(p) for p in needed):
        for candidate in (python, shutil.which("python3") or "", "/usr/bin/python3"):
            if candidate and usable_by_others(candidate, execute=True):
                return candidate, uid
    reason = "no interpreter, wasmtime or dpmsf_core that an unprivileged uid can read"
    if reason not in _warned:
        _warned.add(reason)
        log.warning("sandbox: workers keep the server's uid (%s); the WebAssembly boundary still holds", reason)
    return python, None


FDS_PER_GUEST = 4  # its three pipes and, when forked from a template, its pidfd


def guests_within_fds(size: int) -> int:
    """``size``, or fewer if this process may not open the fds that many guests need beside the server's own (its
    soft limit is raised to the hard one first: 1024 is a common default, and 256 guests take about as many)."""
    import resource

    reserve = server_fds()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FDS_PER_GUEST * size + reserve
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return size
    fitting = max(1, (soft - reserve) // FDS_PER_GUEST)
    log.warning("sandbox: %d open files allowed: at most %d guests, not %d", soft, fitting, size)
    return fitting


def server_fds() -> int:
    """The fds the server keeps for itself: one for every connection it may accept (``DPMSF_MAX_CONNECTIONS``, 500;
    ``slow_clients.py``), and 256 for listeners, files and stores. Guests get what is left, so that connections
    let in never find the server out of files."""
    try:
        connections = int(os.environ.get("DPMSF_MAX_CONNECTIONS") or 500)
    except ValueError:
        connections = 500
    return max(connections, 0) + 256
