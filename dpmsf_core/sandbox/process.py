"""One sandbox worker process, seen from the server: start it, talk to it in frames, end it.

Every frame from a worker is hostile: bounded in size and in time, and it must be a JSON object. A worker that
breaks the protocol is killed. When the server runs as root, workers run as ``nobody`` if everything they must
read is readable by others (``unprivileged_python``).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import marshal
import os
import select
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import DPMSFError
from . import channel
from .budget import BadFrame, CallOutput, CpuOverBudget, SandboxLimits
from .launch import GUEST_FILE, WORKER_FILE, spawn, unprivileged_python, usable_by_others, worker_config

if TYPE_CHECKING:
    from .template import ForkedProc, Template

__all__ = [
    "GUEST_FILE",
    "WORKER_FILE",
    "BadFrame",
    "CallOutput",
    "CpuOverBudget",
    "SandboxLimits",
    "WorkerProcess",
    "spawn",
    "unprivileged_python",
    "usable_by_others",
    "worker_config",
]  # what the pool takes here

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

log = logging.getLogger("dpmsf.sandbox")

_START_TIMEOUT = 15.0
_SPIN = 0.0002  # seconds a waiting call spins before it sleeps (not on the event loop: it must stay free)
UNPRIVILEGED = 65534  # nobody/nogroup: the uid a root server's workers run as
FRAME_HEADER = 4 + channel.STAMP_BYTES  # what the worker puts before each frame of the guest


class WorkerDied(Exception):
    """The worker's pipe closed or broke: the process ended."""


class WorkerTimedOut(Exception):
    """No answer before the wall-time deadline."""


class StartOutOfTime(DPMSFError):
    """The guest ran out of its start-up CPU budget before it was ready."""


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_OFF_LOOP_BYTES = 32 * 1024  # frames larger than this are decoded in a thread, not on the event loop


def _parsed(data: bytes, last: bool) -> dict[str, Any]:
    """A frame of the guest: a JSON object whose kind agrees with its header (an answer is its call's last frame)."""
    try:
        frame = json.loads(data)
    except (ValueError, RecursionError):
        raise BadFrame() from None
    if not isinstance(frame, dict) or last != (frame.get("op") != "store"):
        raise BadFrame()
    return frame


def _timed_parse(data: bytes, last: bool) -> tuple[dict[str, Any] | None, float]:
    """``_parsed`` and the CPU time this thread spent on it (the frame is None if it was no frame of the protocol):
    decoding is the call's cost, charged to it even when it fails."""
    began = time.thread_time()
    collecting = gc.isenabled()
    if collecting:  # the frame's containers live until it is decoded: each would count toward a full collection
        gc.disable()
    try:
        frame: dict[str, Any] | None = _parsed(data, last)
    except BadFrame:
        frame = None
    finally:
        if collecting:
            gc.enable()
    return frame, time.thread_time() - began


class WorkerProcess:
    """One worker process hosting one guest, and what the server knows about it."""

    def __init__(
        self, python: str, limits: SandboxLimits, compiled: str, run_as: int | None, template: Template | None = None
    ) -> None:
        self.limits = limits
        self.owner: str | None = None
        self.known: dict[tuple[str, str], None] = {}  # (path, sha256) of modules the guest holds, oldest first
        self.cpu_stamp = 0.0  # the worker's CPU time as its last frame said
        self.started = time.monotonic()
        self.idle_since = 0.0
        self.calls = 0
        self._waited = 0.0
        self.start_cpu = 0.0  # what starting it cost (CPU seconds), billed once: to its first call or its debtor
        self.start_wall = 0.0
        self.start_billed = False
        self.tenant: str | None = None  # the tenant of its owner's latest call (who pays for its replacement)
        self.memory_mb = 0.0  # its proportional set size when last measured (``Guests`` bounds their sum)
        self.proc: subprocess.Popen[bytes] | ForkedProc
        if template is not None:
            self.proc = template.fork()  # a copy of a started guest: its own limits, applied by the child
        else:
            self.proc = spawn(python, worker_config(limits, compiled), run_as)
        assert self.proc.stdin is not None and self.proc.stdout is not None and self.proc.stderr is not None
        self.in_fd = self.proc.stdin.fileno()
        self.out_fd = self.proc.stdout.fileno()
        self.err_fd = self.proc.stderr.fileno()
        os.set_blocking(self.err_fd, False)
        os.set_blocking(self.in_fd, False)  # a guest that stops reading must never block the server's writes
        self.poller = select.poll()
        self.poller.register(self.out_fd, select.POLLIN)
        self.write_poller = select.poll()
        self.write_poller.register(self.in_fd, select.POLLOUT)
        try:
            start = CallOutput(limits, budget=limits.start_cpu_seconds + 1)  # the worker's own watchdog ends it first
            ready = self.receive(time.monotonic() + _START_TIMEOUT, start)
        except (WorkerDied, WorkerTimedOut, BadFrame, CpuOverBudget) as exc:
            code = self.exit_status() if isinstance(exc, WorkerDied) else None
            why = self.stderr_tail()
            self.kill()
            error = StartOutOfTime if code == channel.EXIT_CPU else DPMSFError
            raise error(
                f"sandbox worker did not start ({type(exc).__name__.strip('_').lower()}, status {code}): {why}"
            ) from None
        if ready.get("op") != "ready":
            self.kill()
            raise DPMSFError("sandbox worker did not start: no ready frame")
        self.start_cpu = start.cpu_seconds  # the worker's CPU to start its guest, and ours to read its ready frame
        self.start_wall = time.monotonic() - self.started

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float | None:
        """CPU time the worker process has used so far (user + system), from ``/proc``; None if unreadable."""
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
        except (OSError, ValueError, IndexError):
            return self._final_cpu()

    def _final_cpu(self) -> float | None:
        """A guest forked from a template is reaped by the template, which tells its CPU time with its status."""
        if not hasattr(self.proc, "final_cpu"):
            return None
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return None
        return getattr(self.proc, "final_cpu", None)

    def send(self, obj: dict[str, Any], deadline: float) -> None:
        self.send_bytes(marshal.dumps(obj), deadline)

    @staticmethod
    def _framed(data: bytes, call: bool) -> memoryview:
        """Length + payload; a call's frame is flagged so that the worker starts the call's CPU budget on it."""
        return memoryview((len(data) | (channel.CALL_FLAG if call else 0)).to_bytes(4, "big") + data)

    def send_bytes(self, data: bytes, deadline: float, *, call: bool = False) -> None:
        """Write one frame, waiting at most until ``deadline`` for a guest that reads slowly (or not at all)."""
        view = self._framed(data, call)
        try:
            while view:
                try:
                    view = view[os.write(self.in_fd, view) :]
                except BlockingIOError:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not self.write_poller.poll(remaining * 1000):
                        raise WorkerTimedOut() from None
        except (BrokenPipeError, ConnectionError):
            raise WorkerDied() from None

    async def send_bytes_async(self, data: bytes, deadline: float, *, call: bool = False) -> None:
        """``send_bytes`` on the event loop: the loop waits for the pipe to drain, bounded by ``deadline``."""
        loop = asyncio.get_running_loop()
        view = self._framed(data, call)
        try:
            while view:
                try:
                    view = view[os.write(self.in_fd, view) :]
                    continue
                except BlockingIOError:
                    pass
                await self._until(deadline, loop.add_writer, loop.remove_writer, self.in_fd)
        except (BrokenPipeError, ConnectionError):
            raise WorkerDied() from None

    def quiet(self) -> bool:
        """Nothing more to read: a guest says nothing between calls, so anything left is an answer forged ahead."""
        return not self.poller.poll(0)

    def receive(self, deadline: float, output: CallOutput) -> dict[str, Any]:
        """One frame from the guest, which is hostile: bounded in size and time, counted against the call's output
        before it is read, and it must be a JSON object."""
        size, last = self._header(self._read(FRAME_HEADER, deadline), output)
        return self._decoded(_timed_parse(self._read(size, deadline), last), output)

    async def receive_async(self, deadline: float, output: CallOutput) -> dict[str, Any]:
        """``receive`` on the event loop; a large frame is decoded in a thread, so the loop stays free meanwhile."""
        size, last = self._header(await self._read_async(FRAME_HEADER, deadline), output)
        began = time.thread_time()
        data = await self._read_async(size, deadline)
        output.charge(time.thread_time() - began - self._waited)  # reading it, on the loop: the call's too
        if size > _OFF_LOOP_BYTES:
            return self._decoded(await asyncio.to_thread(_timed_parse, data, last), output)
        return self._decoded(_timed_parse(data, last), output)

    @staticmethod
    def _decoded(parsed: tuple[dict[str, Any] | None, float], output: CallOutput) -> dict[str, Any]:
        """The decoded frame, its decoding charged to the call first."""
        frame, seconds = parsed
        output.charge(seconds)
        if frame is None:
            raise BadFrame()
        return frame

    def _header(self, header: bytes, output: CallOutput) -> tuple[int, bool]:
        """The frame's size and whether it is the call's last, admitted by ``output``; the worker's CPU stamp."""
        word = int.from_bytes(header[:4], "big")
        size, last = word & channel.SIZE_MASK, bool(word & channel.ANSWER_FLAG)
        self.cpu_stamp = int.from_bytes(header[4:], "big") / 1e6
        output.stamped(self.cpu_stamp)
        output.admit(size, last)
        return size, last

    @staticmethod
    async def _until(deadline: float, watch: Callable[..., None], unwatch: Callable[[int], object], fd: int) -> None:
        """Wait on the event loop until ``fd`` is ready (``watch`` is add_reader or add_writer) or ``deadline``."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WorkerTimedOut()
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        watch(fd, _wake, ready)
        timer = loop.call_later(remaining, _wake, ready)
        try:
            await ready
        finally:
            unwatch(fd)
            timer.cancel()

    async def _read_async(self, n: int, deadline: float) -> bytes:
        """``n`` bytes; ``_waited``: the loop's CPU spent on other work while this waited for them."""
        loop = asyncio.get_running_loop()
        chunks: list[bytes] = []
        self._waited = 0.0
        while n:
            if not self.poller.poll(0):
                paused = time.thread_time()
                await self._until(deadline, loop.add_reader, loop.remove_reader, self.out_fd)
                self._waited += time.thread_time() - paused
                if not self.poller.poll(0):
                    raise WorkerTimedOut()
            chunk = os.read(self.out_fd, min(n, 1 << 20))
            if not chunk:
                raise WorkerDied()
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def _read(self, n: int, deadline: float) -> bytes:
        chunks: list[bytes] = []
        while n:
            if not self._spin():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.poller.poll(remaining * 1000):
                    raise WorkerTimedOut()
            chunk = os.read(self.out_fd, min(n, 1 << 20))
            if not chunk:
                raise WorkerDied()
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def _spin(self) -> bool:
        """Wait a short moment awake for a quick answer: waking a sleeping thread costs more than most answers."""
        if self.poller.poll(0):
            return True
        until = time.perf_counter() + _SPIN
        while time.perf_counter() < until:
            if self.poller.poll(0):
                return True
        return False

    def stderr_tail(self) -> str:
        try:
            data = os.read(self.err_fd, 8192)
        except OSError:
            return ""
        return data.decode("utf-8", "replace").strip()[-1000:]

    def kill(self) -> int | None:
        """SIGKILL (if still running) and reap; returns the exit status."""
        try:
            self.proc.kill()
        except OSError:
            pass
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return code

    def exit_status(self) -> int | None:
        """The status of a worker whose pipe closed by itself (it exits within moments)."""
        try:
            return self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return None
