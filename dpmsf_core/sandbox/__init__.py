"""Run untrusted tenant functions in a pool of pre-started worker processes, with CPU, memory and wall-time limits.

What the sandbox guarantees (each worker is a separate process running ``dpmsf_core/sandbox_worker.py``):

- Tenant code never runs in the server process; the server reads tenant modules as text (``untrusted.py``) and
  sends the source to a worker, which compiles and caches it by (path, sha256).
- A worker starts as ``python -I -S -B`` (no PYTHONPATH, no site-packages, no user site) with an environment of
  ``LANG`` only (no server secrets to read), in a private temp dir as cwd, with all fds but its pipes closed.
- rlimits: RLIMIT_AS (``memory_mb``), RLIMIT_CPU (a lifetime cap; the per-call cap is an ITIMER_PROF that ends the
  process), RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE=0 and RLIMIT_NPROC=0 (no fork or threads for non-root users).
- An audit hook (``sys.addaudithook``, which Python code cannot remove) refuses by default every audited operation
  it does not know to be harmless: sockets, subprocess/os.system/exec/spawn/fork/posix_spawn, ctypes, os.putenv,
  signals, gc/frame introspection, file writes outside the temp dir, file reads outside the temp dir and the
  stdlib, imports outside the allow-list (json, math, re, datetime, decimal, fractions, statistics, random,
  string, itertools, functools, collections, dataclasses, typing, uuid, hashlib, hmac, base64, textwrap, enum,
  time, plus a ``dpmsf_core.expose`` stub), and - from tenant frames - exec/compile, ``sys._getframe`` and the
  ``object.__getattr__`` events (``__code__``, ``tb_frame``, ``gi_frame``, ``f_code``...).
- A refusal ends the worker at once (tenant code cannot catch it); the caller gets 403 naming what was refused.
  Wall-time overruns are SIGKILLed by the server (504); CPU overruns end the worker (504); memory exhaustion
  answers 500; in every case the worker is replaced and other workers and calls are untouched.
- Workers are bound to one owner (the tenant, or the module path when no tenant is given): a worker that ran one
  tenant's code never runs another's, so module-level state and monkeypatching cannot leak across tenants.
- Threads cannot be started (``_thread.start_new_thread`` is replaced by a refusal, and a call that leaves a
  thread running is reported as a violation).
- Tenant builtins lack ``open``, ``eval``, ``exec``, ``compile``, ``input``, ``breakpoint``, ``globals``, ``vars``
  and ``locals`` (calling one is a violation) and ``__import__`` only serves the allow-list.

What it does NOT guarantee:

- It is a Python-level + rlimit sandbox, not a kernel jail (no namespaces, seccomp, chroot or separate uid).
  Audit hooks are a CPython auditing feature, not a security boundary: an attacker who can corrupt memory (crafted
  bytecode, a CPython bug) runs native code that no hook sees. Hostile multi-tenant code needs an OS boundary too
  (separate uid/container, gVisor, Firecracker); run the server as an unprivileged user at least.
- Operations CPython does not audit stay possible: ``os.stat`` of any path (file existence leaks), ``os.write`` to
  fds the worker holds (a tenant can forge its own answers, nobody else's), CPU/memory use up to the limits.
- ``signal.setitimer`` is not audited: code that escapes the restricted builtins can disarm the per-call CPU
  timer; the server's wall-time SIGKILL and the worker's lifetime RLIMIT_CPU still apply.
- When the server runs as root, RLIMIT_NPROC does not apply (fork is still refused by the hook).
- Module state persists between calls of the same owner in the same worker (like a warm Lambda container).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..errors import (
    DPMSFError,
    Forbidden,
    FunctionFailed,
    GatewayTimeout,
    HTTPError,
    ServiceUnavailable,
    UnprocessableArguments,
)

log = logging.getLogger("dpmsf.sandbox")

_WORKER_FILE = os.path.realpath(os.path.join(os.path.dirname(__file__), "worker.py"))
_VIOLATION_EXIT = 77  # sandbox_worker.VIOLATION_EXIT; not imported so the worker module stays standalone
_START_TIMEOUT = 10.0
_ENVELOPE_BYTES = 64 * 1024  # room around the result for stdout and the answer's fields
_CPU_SIGNALS = {signal.SIGXCPU, signal.SIGPROF}
_AFFINITY_WAIT = 0.5  # how long another owner's worker must sit idle before a busy owner may recycle it


@dataclass(frozen=True)
class SandboxLimits:
    """Per-call limits for sandboxed functions; a worker that exceeds one is replaced."""

    cpu_seconds: float = 2
    memory_mb: int = 256
    wall_seconds: float = 5
    max_output_bytes: int = 1_000_000
    file_size_mb: int = 16  # largest file a function may write in its temp dir
    worker_cpu_seconds: float = 120  # a worker's lifetime CPU; it is retired before reaching this


class _Died(Exception):
    """The worker's pipe closed or broke: the process ended."""


class _TimedOut(Exception):
    """No answer before the wall-time deadline."""


class _Worker:
    """One worker process and what the server knows about it."""

    def __init__(self, python: str, limits: SandboxLimits) -> None:
        self.limits = limits
        self.owner: str | None = None
        self.known: set[tuple[str, str]] = set()  # (path, sha256) of modules the worker has compiled
        self.cpu_used = 0.0
        self.idle_since = 0.0
        self.tmpdir = tempfile.mkdtemp(prefix="dpmsf-sandbox-")
        config = {
            "tmpdir": self.tmpdir,
            "cpu_seconds": limits.cpu_seconds,
            "memory_mb": limits.memory_mb,
            "cpu_budget": int(limits.worker_cpu_seconds),
            "fsize_bytes": limits.file_size_mb * 1024 * 1024,
            "max_output_bytes": limits.max_output_bytes,
        }
        try:
            self.proc = subprocess.Popen(
                [python, "-I", "-S", "-B", _WORKER_FILE, json.dumps(config)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env={"LANG": "C.UTF-8"},
                cwd=self.tmpdir,
                close_fds=True,
                start_new_session=True,  # a Ctrl-C aimed at the server does not hit workers mid-call
                bufsize=0,
            )
        except OSError as exc:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            raise DPMSFError(f"sandbox worker could not start: {exc}") from None
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.in_fd = self.proc.stdin.fileno()
        self.out_fd = self.proc.stdout.fileno()
        self.poller = select.poll()
        self.poller.register(self.out_fd, select.POLLIN)
        try:
            ready = self.receive(time.monotonic() + _START_TIMEOUT, 1 << 16)
        except (_Died, _TimedOut) as exc:
            self.kill()
            raise DPMSFError(f"sandbox worker did not start: {type(exc).__name__.strip('_').lower()}") from None
        if not ready.get("ready"):
            self.kill()
            raise DPMSFError(f"sandbox worker did not start: {ready.get('error')}")
        self.cpu_used = float(ready.get("cpu", 0.0))

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def worn_out(self) -> bool:
        """Retire before the lifetime RLIMIT_CPU could end a call that stayed within its own budget."""
        return self.cpu_used + self.limits.cpu_seconds + 1 >= self.limits.worker_cpu_seconds

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.in_fd, view) :]
        except (BrokenPipeError, OSError):
            raise _Died() from None

    def receive(self, deadline: float, limit: int) -> dict[str, Any]:
        size = int.from_bytes(self._read(4, deadline), "big")
        if size > limit:
            raise _Died()  # a frame larger than any honest answer: treat the worker as broken
        return json.loads(self._read(size, deadline))

    def _read(self, n: int, deadline: float) -> bytes:
        chunks: list[bytes] = []
        while n:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.poller.poll(remaining * 1000):
                raise _TimedOut()
            chunk = os.read(self.out_fd, min(n, 1 << 20))
            if not chunk:
                raise _Died()
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def kill(self) -> int | None:
        """SIGKILL (if still running), reap, and remove the temp dir; returns the exit status."""
        try:
            self.proc.kill()
        except OSError:
            pass
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        return code

    def exit_status(self) -> int | None:
        """The status of a worker whose pipe closed by itself (it exits within moments)."""
        try:
            return self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return None


class SandboxPool:
    """Pre-started, reused worker processes; one call per worker at a time, workers bound to one owner each."""

    def __init__(self, size: int = 2, limits: SandboxLimits | None = None, python: str = sys.executable) -> None:
        if size < 1:
            raise ValueError(f"SandboxPool size={size!r}: need at least one worker")
        self.size = size
        self.limits = limits or SandboxLimits()
        self.python = python
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []  # least recently used first
        self._count = 0  # idle + busy + starting
        self._closed = False
        self._busy: dict[str, int] = {}  # owner -> workers running its calls
        self.replaced = 0  # workers killed after a violation, timeout, crash or memory exhaustion

    # -- public -------------------------------------------------------------------------------------------------

    async def call(
        self,
        *,
        source: str,
        path: str,
        function: str,
        args: list[Any],
        kwargs: dict[str, Any],
        timeout: float | None = None,
        tenant: str | None = None,
        sha256: str | None = None,
    ) -> Any:
        """``function(*args, **kwargs)`` from the module ``source`` in a worker; never blocks the event loop."""
        return await asyncio.to_thread(
            self.call_sync,
            source=source,
            path=path,
            function=function,
            args=args,
            kwargs=kwargs,
            timeout=timeout,
            tenant=tenant,
            sha256=sha256,
        )

    def call_sync(
        self,
        *,
        source: str,
        path: str,
        function: str,
        args: list[Any],
        kwargs: dict[str, Any],
        timeout: float | None = None,
        tenant: str | None = None,
        sha256: str | None = None,
    ) -> Any:
        """The blocking form of ``call``; raises the DPMSFError the caller should answer with."""
        wall = self.limits.wall_seconds if timeout is None else min(timeout, self.limits.wall_seconds)
        sha = sha256 or _sha256(source)
        owner = tenant or path
        request = {"path": path, "sha": sha, "function": function, "cpu": self.limits.cpu_seconds}
        try:
            head = json.dumps(request, separators=(",", ":"))
            call_part = json.dumps({"args": list(args), "kwargs": dict(kwargs)}, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise UnprocessableArguments(
                f"arguments for sandboxed '{function}' are not JSON-encodable: {exc}"
            ) from None
        worker = self._acquire(owner, time.monotonic() + wall)
        keep, result, error = False, None, None
        try:
            key = (path, sha)
            source_part = "" if key in worker.known else ',"source":' + json.dumps(source)
            payload = (head[:-1] + source_part + "," + call_part[1:]).encode("utf-8")
            keep, result, error = self._exchange(worker, payload, function, time.monotonic() + wall, wall)
            if keep:
                worker.known.add(key)
        finally:
            self._release(worker, keep)
        if error is not None:
            raise error
        return result

    def close(self) -> None:
        """Kill idle workers now; busy ones are killed when their call ends."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._count -= len(idle)
            self._cond.notify_all()
        for worker in idle:
            worker.kill()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def workers(self) -> list[int]:
        """Pids of the idle workers (for tests and diagnostics)."""
        with self._cond:
            return [w.pid for w in self._idle]

    # -- one call -----------------------------------------------------------------------------------------------

    def _exchange(
        self, worker: _Worker, payload: bytes, function: str, deadline: float, wall: float
    ) -> tuple[bool, Any, DPMSFError | None]:
        """Send one request and map the answer to (keep the worker, result, error to raise)."""
        limit = self.limits.max_output_bytes + _ENVELOPE_BYTES
        try:
            worker.send(len(payload).to_bytes(4, "big") + payload)
            answer = worker.receive(deadline, limit)
        except _TimedOut:
            worker.kill()
            return False, None, GatewayTimeout(f"sandboxed function '{function}' ran past its time limit of {wall:g} s")
        except _Died:
            return False, None, self._death(worker, function)
        worker.cpu_used = float(answer.get("cpu", worker.cpu_used))
        if answer.get("stdout"):
            log.info("sandbox %s output: %s", function, answer["stdout"].rstrip()[:2000])
        healthy = not worker.worn_out
        if answer.get("ok"):
            return healthy, answer.get("result"), None
        kind = answer.get("kind")
        detail = str(answer.get("detail", ""))
        if kind == "violation":
            log.warning("sandbox violation in %s (worker %d): %s", function, worker.pid, detail)
            return False, None, Forbidden(detail)
        if kind == "memory":
            mb = self.limits.memory_mb
            return False, None, FunctionFailed(f"sandboxed function '{function}' exceeded the memory limit of {mb} MB")
        if kind == "http":
            status = answer.get("status")
            if isinstance(status, int) and 400 <= status <= 599:
                return healthy, None, HTTPError(status, detail or None, headers=answer.get("headers") or None)
            error = FunctionFailed(f"sandboxed function '{function}' raised HTTPError with invalid status {status!r}")
            return healthy, None, error
        if kind == "error":
            return healthy, None, FunctionFailed(f"{answer.get('type', 'Exception')}: {detail}")
        # result not encodable, too large, module failed to load, no such function
        return healthy, None, FunctionFailed(f"sandboxed function '{function}': {detail}")

    def _death(self, worker: _Worker, function: str) -> DPMSFError:
        code = worker.exit_status()
        worker.kill()
        if code is not None and -code in _CPU_SIGNALS:
            return GatewayTimeout(
                f"sandboxed function '{function}' used more than its CPU time limit of {self.limits.cpu_seconds:g} s"
            )
        if code == _VIOLATION_EXIT:
            return Forbidden(f"sandbox refused an operation in '{function}'")
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            return FunctionFailed(
                f"sandbox worker running '{function}' died of {name} "
                f"(possibly its memory limit of {self.limits.memory_mb} MB)"
            )
        return FunctionFailed(f"sandbox worker running '{function}' exited unexpectedly (status {code})")

    # -- the pool -----------------------------------------------------------------------------------------------

    def _acquire(self, owner: str, deadline: float) -> _Worker:
        """An idle worker of ``owner``, else a fresh one, else recycle another owner's idle worker, else wait.

        An owner that already has a busy worker only recycles another owner's worker once it has sat idle for
        ``_AFFINITY_WAIT``: concurrent calls of one tenant queue for its warm workers instead of evicting the
        other tenants' (a fresh worker costs ~40 ms); an owner with no worker at all recycles at once.
        """
        victim: _Worker | None = None
        with self._cond:
            while True:
                if self._closed:
                    raise ServiceUnavailable("the sandbox pool is closed")
                worker = _pick(self._idle, owner)
                if worker is not None:
                    worker.owner = owner
                    break
                if self._count < self.size:
                    self._count += 1
                    break
                now = time.monotonic()
                wake = deadline
                if self._idle:
                    settle = _AFFINITY_WAIT if self._busy.get(owner) else 0.0
                    oldest = self._idle[0]  # least recently used, bound to another owner
                    if now - oldest.idle_since >= settle:
                        victim = self._idle.pop(0)
                        break
                    wake = min(deadline, oldest.idle_since + settle)
                if now >= deadline:
                    raise ServiceUnavailable(f"all {self.size} sandbox workers stayed busy; try again")
                self._cond.wait(wake - now)
            self._busy[owner] = self._busy.get(owner, 0) + 1
        if worker is not None:
            return worker
        if victim is not None:
            victim.kill()
        try:
            worker = _Worker(self.python, self.limits)
        except BaseException:
            with self._cond:
                self._count -= 1
                self._unbusy(owner)
                self._cond.notify_all()
            raise
        worker.owner = owner
        return worker

    def _unbusy(self, owner: str | None) -> None:
        if owner is not None and self._busy.get(owner):
            self._busy[owner] -= 1
            if not self._busy[owner]:
                del self._busy[owner]

    def _release(self, worker: _Worker, keep: bool) -> None:
        if keep and worker.proc.poll() is None:
            with self._cond:
                self._unbusy(worker.owner)
                if not self._closed:
                    worker.idle_since = time.monotonic()
                    self._idle.append(worker)
                    self._cond.notify_all()
                    return
                self._count -= 1
            worker.kill()
            return
        worker.kill()
        with self._cond:
            self._unbusy(worker.owner)
            self._count -= 1
            self.replaced += 1
            closed = self._closed
            self._cond.notify_all()
        if not closed:
            threading.Thread(target=self._spare, name="dpmsf-sandbox-spare", daemon=True).start()

    def _spare(self) -> None:
        """Start a replacement in the background so the next call finds a warm worker."""
        with self._cond:
            if self._closed or self._count >= self.size:
                return
            self._count += 1
        try:
            worker = _Worker(self.python, self.limits)
        except DPMSFError as exc:
            log.warning("sandbox spare worker failed to start: %s", exc)
            with self._cond:
                self._count -= 1
                self._cond.notify()
            return
        with self._cond:
            if not self._closed:
                worker.idle_since = time.monotonic()
                self._idle.append(worker)
                self._cond.notify_all()
                return
            self._count -= 1
        worker.kill()


def _pick(idle: list[_Worker], owner: str) -> _Worker | None:
    for candidates in ((w for w in idle if w.owner == owner), (w for w in idle if w.owner is None)):
        for worker in candidates:
            idle.remove(worker)
            return worker
    return None


def _sha256(source: str) -> str:
    import hashlib

    return hashlib.sha256(source.encode("utf-8")).hexdigest()
