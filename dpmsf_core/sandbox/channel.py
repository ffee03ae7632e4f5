"""The sandbox worker's side of its channel: frames in from the server, frames out from the guest, and the CPU
watchdog that starts a call's budget when its frame comes in.

Used by ``worker.py`` in the worker process (standard library only); its constants are the protocol, shared with
``process.py`` and ``answers.py`` on the server's side.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import wasmtime

TICK = 0.01  # seconds between two looks of the watchdog at a running call's CPU time
SPIN = 0.0002  # seconds a guest's host spins for the next request before it sleeps
CALL_FLAG = ANSWER_FLAG = 0x8000_0000  # top bit of a frame header: a call begins (in) / a call's last frame (out)
SIZE_MASK = 0x7FFF_FFFF
STAMP_BYTES = 8  # the worker's CPU stamp after each header it forwards to the server
EXIT_FRAME = 122
EXIT_OUTPUT = 123
EXIT_CPU = 124
EXIT_TRAP = 125
EXIT_START = 126


def cpu_time() -> float:
    """This process's CPU time (user + system, every thread): what ``/proc/<pid>/stat`` counts, finer."""
    return time.clock_gettime(time.CLOCK_PROCESS_CPUTIME_ID)


class Watchdog:
    """The running call's CPU budget, in this process's CPU time, checked by its own thread.

    The store's epoch deadline stays one tick ahead of the engine's epoch, which only this watchdog moves: once a
    call (or the start-up) has used its budget, one tick makes the guest trap at its next check. Nothing the guest
    does moves the deadline; a new call frame does (``begin_call``), also clearing a trip that raced with the
    end of the previous call while the guest was waiting for this one.
    """

    def __init__(self, engine: wasmtime.Engine, store: wasmtime.Store, call_budget: float, start_budget: float) -> None:
        self.engine, self.store, self.call_budget = engine, store, call_budget
        self.cond = threading.Condition()
        self.start, self.budget = 0.0, start_budget  # start-up counts from the process's start
        self.tripped = self.idle = False

    def restart(self) -> None:
        """In a guest forked from a template: the start-up budget again, counted in this process's own CPU time."""
        self.start, self.tripped, self.idle = cpu_time(), False, False

    def begin_call(self) -> None:
        with self.cond:
            self.start, self.budget, self.tripped = cpu_time(), self.call_budget, False
            self.store.set_epoch_deadline(1)  # only ever later: the epoch never moves back
            self.cond.notify()

    def waiting(self, idle: bool) -> None:
        """The guest blocks on the server (or stops doing so): it spends no CPU meanwhile, so nobody looks."""
        with self.cond:
            self.idle = idle
            if not idle:
                self.cond.notify()

    def run(self) -> None:
        while True:
            with self.cond:
                while self.idle or self.tripped:
                    self.cond.wait()
                left = self.budget - (cpu_time() - self.start)
                if left <= 0:
                    self.tripped = True
                    self.engine.increment_epoch()
                    continue
            time.sleep(min(TICK, left + 0.001))


class Inbox:
    """fd 0 as the guest reads it, never past the end of a frame: a header with ``CALL_FLAG`` begins a call."""

    def __init__(self, on_call: Callable[[], object], watchdog: Watchdog) -> None:
        import select

        self.on_call, self.watchdog = on_call, watchdog
        self.left = 0  # payload bytes of the current frame not yet read
        self.pending = b""  # header bytes not yet handed to the guest (it may read fewer than 4)
        self.ready = select.poll()
        self.ready.register(0, select.POLLIN)

    def reset(self) -> None:
        """A new channel on fd 0 (a guest forked from a template): nothing of a frame is pending."""
        self.left, self.pending = 0, b""

    def take_header(self, word: int) -> None:
        """A frame header read by someone else (a template's order loop): the frame goes on as if read here."""
        if word & CALL_FLAG:
            self.on_call()
        self.left = word & SIZE_MASK
        self.pending = self.left.to_bytes(4, "big")

    def read(self, n: int) -> bytes:
        if n <= 0:
            return b""
        if not self.pending and not self.left:
            head = self._head()
            if len(head) < 4:
                return b""  # the server closed the channel
            self.take_header(int.from_bytes(head, "big"))
        if self.pending:
            out, self.pending = self.pending[:n], self.pending[n:]
            if n > len(out) and self.left and self.ready.poll(0):
                out += self._payload(n - len(out))
            return out
        return self._payload(n)

    def _payload(self, n: int) -> bytes:
        self._wait()
        data = os.read(0, min(n, self.left, 1 << 20))
        self.left -= len(data)
        return data

    def _head(self) -> bytes:
        head = b""
        while len(head) < 4:
            self._wait()
            chunk = os.read(0, 4 - len(head))
            if not chunk:
                break
            head += chunk
        return head

    def _wait(self) -> None:
        """Until fd 0 has data: spin a little first (the next request of a burst comes soon, and waking a sleeping
        process costs more than this), then sleep, telling the watchdog that the guest spends nothing."""
        if self.ready.poll(0):
            return
        until = time.perf_counter() + SPIN
        while time.perf_counter() < until:
            if self.ready.poll(0):
                return
        self.watchdog.waiting(True)
        try:
            self.ready.poll()
        finally:
            self.watchdog.waiting(False)


class Outbox:
    """fd 1 as the guest writes it: each frame is checked before it leaves, and forwarded with a CPU stamp.

    A store request may be at most ``max_store_frame_bytes``, an answer ``max_answer_bytes``; one call may send
    at most ``max_call_frames`` frames and ``max_call_bytes`` bytes. Past any of these the process ends here
    (``EXIT_FRAME``, ``EXIT_OUTPUT``): the server never reads, let alone decodes, what a guest floods it with."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.max_answer = int(config["max_answer_bytes"])
        self.max_store = int(config["max_store_frame_bytes"])
        self.max_frames = int(config["max_call_frames"])
        self.max_bytes = int(config["max_call_bytes"])
        self.head = bytearray()  # the guest's next header, while incomplete
        self.left = 0  # payload bytes of the current frame still to forward
        self.frames = self.sent = 0

    def begin_call(self) -> None:
        self.frames = self.sent = 0

    def say(self, payload: bytes) -> None:
        """A last frame of this process's own (a forked guest's ready frame), stamped like the guest's."""
        head = (len(payload) | ANSWER_FLAG).to_bytes(4, "big") + round(cpu_time() * 1e6).to_bytes(STAMP_BYTES, "big")
        _write_all(head + payload)

    def write(self, view: memoryview) -> None:
        while view:
            if self.left:
                piece = view[: self.left]
                _write_all(piece)
                self.left -= len(piece)
                view = view[len(piece) :]
                continue
            take = view[: 4 - len(self.head)]
            self.head += take
            view = view[len(take) :]
            if len(self.head) == 4:
                header = self._checked(int.from_bytes(self.head, "big"))
                self.head.clear()
                piece = view[: self.left]
                if len(piece) < 65536:  # one write for a whole small frame
                    _write_all(header + piece)
                else:
                    _write_all(header, piece)
                self.left -= len(piece)
                view = view[len(piece) :]

    def _checked(self, word: int) -> bytes:
        size, answer = word & SIZE_MASK, bool(word & ANSWER_FLAG)
        self.frames += 1
        self.sent += size
        if size > (self.max_answer if answer else self.max_store):  # larger than any honest frame of its kind
            os.write(2, f"dpmsf sandbox guest broke the protocol: a frame of {size} bytes\n".encode())
            os._exit(EXIT_FRAME)
        if self.frames > self.max_frames:
            _exit_output(f"more than {self.max_frames} frames in one call")
        if self.sent > self.max_bytes:
            _exit_output(f"more than {self.max_bytes} bytes in one call")
        self.left = size
        return bytes(self.head) + round(cpu_time() * 1e6).to_bytes(STAMP_BYTES, "big")


def _write_all(*parts: memoryview | bytes) -> None:
    for part in parts:
        view = memoryview(part)
        while view:
            view = view[os.write(1, view) :]


def _exit_output(why: str) -> None:
    os.write(2, f"dpmsf sandbox guest output over its limit: {why}\n".encode())
    os._exit(EXIT_OUTPUT)
