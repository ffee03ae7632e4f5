"""A template worker, seen from the server: one per pool, started once, forked for every new guest.

Starting a guest from nothing costs ~250 ms of CPU (a Python process, wasmtime, deserializing the interpreter,
CPython's start-up inside the guest, the guest program's imports). A template does all of that once and never
takes a call; each guest is a ``fork`` of it (``forking.py``), copy-on-write: a new guest costs ~1-2 ms, and the
pages it never writes (the interpreter's code, CPython's heap after start-up, the imported modules) are shared by
every guest of the template. What a guest writes is its own copy; what a guest's tenant leaves behind in a module
global dies with that guest, never reaching the template or a guest forked after it.

The template is the guests' parent (not the server, which keeps its own children to itself), so it reaps them
and reports their exit statuses here; ``ForkedProc`` gives ``WorkerProcess`` what ``subprocess.Popen`` gives it.
Signals go through a pidfd, which names the process itself, not a pid that could be reused.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import threading
import time
from typing import Any

from ..errors import DPMSFError
from . import channel

_START_TIMEOUT = 15.0
_FORK_TIMEOUT = 5.0
_RETRY_FOREVER = 1e9

log = logging.getLogger("dpmsf.sandbox")


class TemplateFailed(DPMSFError):
    """The template did not start, or did not fork (it died, or it took a call and is no template any more)."""


class Template:
    """The server's end of a template worker: ``fork()`` a guest, learn how each one ended."""

    def __init__(self, python: str, config: dict[str, Any], run_as: int | None) -> None:
        from .launch import spawn

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = spawn(python, {**config, "template": True}, run_as, stdin=theirs.fileno())
        finally:
            theirs.close()
        self.sock = ours
        self.sock.settimeout(_FORK_TIMEOUT)
        self._lock = threading.Lock()
        self._lines = b""
        self._statuses: dict[int, tuple[int, float]] = {}  # pid -> (exit status, CPU seconds), until asked
        self.forks = 0
        self.dead = False
        self.started = time.monotonic()
        try:
            self._await_ready()
        except TemplateFailed:
            self.close()
            raise
        self.start_wall = time.monotonic() - self.started

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _await_ready(self) -> None:
        """The template's guest says ready once, like any fresh guest: the template is then waiting for orders."""
        assert self.proc.stdout is not None and self.proc.stderr is not None
        out = self.proc.stdout.fileno()
        deadline = time.monotonic() + _START_TIMEOUT
        data = b""
        poller = select.poll()
        poller.register(out, select.POLLIN)
        while len(data) < 4 + channel.STAMP_BYTES or len(data) < 4 + channel.STAMP_BYTES + _size(data):
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                raise TemplateFailed(f"the sandbox template did not start in {_START_TIMEOUT:g} s")
            chunk = os.read(out, 4096)
            if not chunk:
                why = self.proc.stderr.read(4096).decode("utf-8", "replace").strip()[-500:]
                raise TemplateFailed(f"the sandbox template did not start (status {self.proc.wait()}): {why}")
            data += chunk
        try:
            ready = json.loads(data[4 + channel.STAMP_BYTES :])
        except ValueError:
            ready = None
        if not isinstance(ready, dict) or ready.get("op") != "ready":
            raise TemplateFailed("the sandbox template did not start: no ready frame")

    def fork(self) -> ForkedProc:
        """A new guest, forked from the template, with its own pipes; TemplateFailed if the template cannot."""
        pipes = [os.pipe() for _ in range(3)]  # stdin, stdout, stderr
        theirs = [pipes[0][0], pipes[1][1], pipes[2][1]]
        ours = [pipes[0][1], pipes[1][0], pipes[2][0]]
        try:
            with self._lock:
                if self.dead:
                    raise TemplateFailed("the sandbox template has ended")
                try:
                    socket.send_fds(self.sock, [len(b"fork").to_bytes(4, "big") + b"fork"], theirs)
                    pid = self._await_pid()
                except OSError as exc:
                    self.dead = True
                    raise TemplateFailed(f"the sandbox template did not fork: {exc}") from None
                self.forks += 1
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        return ForkedProc(self, pid, ours)

    def _await_pid(self) -> int:
        """Under the lock: the ``P <pid>`` answering the order just sent (statuses that come first are kept)."""
        while True:
            line = self._line(block=True)
            if line is None:
                self.dead = True
                raise TemplateFailed("the sandbox template ended instead of forking (it may have taken a call)")
            kind, _, rest = line.partition(b" ")
            if kind == b"P":
                return int(rest)
            if kind != b"X":
                self.dead = True
                raise TemplateFailed(f"the sandbox template refused to fork: {line[:200]!r}")
            self._keep_status(rest)

    def _keep_status(self, rest: bytes) -> None:
        pid, code, cpu = rest.split(b" ")
        self._statuses[int(pid)] = (int(code), float(cpu))

    def _line(self, block: bool) -> bytes | None:
        """Under the lock: the template's next line; None when it closed (or, not blocking, none is there yet)."""
        while b"\n" not in self._lines:
            try:
                chunk = self.sock.recv(4096) if block else self.sock.recv(4096, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return None
            except (TimeoutError, OSError):
                chunk = b""
            if not chunk:
                self.dead = True
                return None
            self._lines += chunk
        line, _, self._lines = self._lines.partition(b"\n")
        return line

    def status(self, pid: int) -> tuple[int, float] | None:
        """How guest ``pid`` ended and the CPU time it used, if the template has said so."""
        with self._lock:
            while pid not in self._statuses and not self.dead:
                line = self._line(block=False)
                if line is None:
                    break
                kind, _, rest = line.partition(b" ")
                if kind == b"X":
                    self._keep_status(rest)
            return self._statuses.pop(pid, None)

    def close(self) -> None:
        """End the template (guests it forked live on until their pipes close)."""
        self.dead = True
        try:
            self.sock.close()
        except OSError:
            pass
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def _size(data: bytes) -> int:
    return int.from_bytes(data[:4], "big") & channel.SIZE_MASK


class ForkedProc:
    """What ``WorkerProcess`` uses of ``subprocess.Popen``, for a guest whose parent is the template."""

    def __init__(self, template: Template, pid: int, fds: list[int]) -> None:
        self.template, self.pid = template, pid
        self.returncode: int | None = None
        self.final_cpu: float | None = None  # its CPU time, told with its status (reaped, it is gone from /proc)
        self.stdin = os.fdopen(fds[0], "wb", buffering=0)
        self.stdout = os.fdopen(fds[1], "rb", buffering=0)
        self.stderr = os.fdopen(fds[2], "rb", buffering=0)
        try:
            self.pidfd: int | None = os.pidfd_open(pid)
        except OSError:  # it ended already (and was reaped): its status is on its way
            self.pidfd = None

    def _exited(self, timeout: float) -> bool:
        """Whether the process has ended, waiting up to ``timeout`` seconds (its pidfd becomes readable)."""
        if self.pidfd is None:
            return True
        poller = select.poll()  # not select(): a server with hundreds of guests has fds past 1024
        poller.register(self.pidfd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))

    def poll(self) -> int | None:
        if self.returncode is None and self._exited(0):
            ended = self.template.status(self.pid)
            if ended is not None:
                self.returncode, self.final_cpu = ended
            elif self.template.dead:
                self.returncode = -signal.SIGKILL  # nobody can tell any more: counted as killed
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = time.monotonic() + (timeout if timeout is not None else 1e9)
        while self.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
            if not self._exited(min(left, 0.05)):
                continue
            time.sleep(min(left, 0.001))  # it ended: the template reaps it and says how, in a moment
        assert self.returncode is not None
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None and self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass


class Templates:
    """A pool's template, started on first need and replaced when it ends; None while none can be had (the pool
    then starts guests from nothing, as before)."""

    _RETRY = 30.0  # seconds before a template that failed to start is tried again

    def __init__(self, python: str, run_as: int | None) -> None:
        self.python, self.run_as = python, run_as
        self._lock = threading.Lock()
        self._current: Template | None = None
        self._compiled = ""
        self._failed_at = -_RETRY_FOREVER
        self._closed = False

    def get(self, limits: Any, compiled: str) -> Template | None:
        """The current template, started if there is none (None when none can be had now)."""
        from .launch import worker_config

        with self._lock:
            current = self._current
            if self._closed:
                return None
            if current is not None and not current.dead and self._compiled == compiled:
                return current
            if current is not None:
                current.close()
                self._current = None
            if time.monotonic() - self._failed_at < self._RETRY:
                return None
            try:
                self._current = Template(self.python, worker_config(limits, compiled), self.run_as)
            except DPMSFError as exc:
                log.warning("sandbox: no template (%s); guests start from nothing", str(exc)[:300])
                self._failed_at = time.monotonic()
                return None
            self._compiled = compiled
            return self._current

    def drop(self, template: Template) -> None:
        with self._lock:
            template.close()
            if self._current is template:
                self._current = None

    @property
    def pid(self) -> int | None:
        """The current template's pid (for tests and diagnostics)."""
        current = self._current
        return None if current is None or current.dead else current.pid

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._current is not None:
                self._current.close()
                self._current = None
