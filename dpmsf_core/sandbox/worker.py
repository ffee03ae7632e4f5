"""A sandbox worker process: hosts one WebAssembly guest (CPython for WASI) for one tenant, then exits with it.

Started by ``pool.py`` as ``python -I -S -B worker.py <config JSON>`` with an empty environment. The process is
a second wall around the guest, not the boundary: it makes itself non-dumpable, sets ``no_new_privs``, closes
every fd but its pipes, drops to an unprivileged uid when the server runs as root (``pool.py`` decides), caps
its CPU time, data segment, file sizes, open files and core dumps with rlimits, and installs a seccomp filter
(``seccomp.py``).

The guest's stdin and stdout are this process's own fds 0 and 1, the server's pipes, so requests go from the
server through this process's ``fd_read`` and ``fd_write``. Its stderr is kept (4 KB, the rest is dropped without
a copy) and logged by nobody: it only says why an interpreter crashed.

Frames: both directions are 4-byte big-endian length + payload, and this process follows their boundaries.
The server sets the top bit of a header when the frame starts a call (``CALL_FLAG``, cleared before the guest
sees it); the guest sets it on its last frame of a call (``ANSWER_FLAG``). Each frame the guest writes is checked
here before it leaves (size by kind, frames and bytes per call; past a limit this process exits with
``EXIT_OUTPUT``) and forwarded with an 8-byte stamp after its header: this process's CPU time so far, in
microseconds, which the server meters calls by.

CPU: a call's budget is this process's CPU time (``CLOCK_PROCESS_CPUTIME_ID``) from the moment its call frame
arrives, whatever the guest does meanwhile (store requests, reads, writes); only the next call frame starts a
new budget. Start-up has its own. A watchdog thread checks the clock and, past the budget, bumps the engine's
epoch, which is the guest's deadline: it traps, and this process exits with ``EXIT_CPU``. A busy host does not
count against a call: only CPU this process used does. The server also kills this process once a call's wall
time is over, whatever the guest is doing.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

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
ERRNO_BADF = 8  # WASI errno values
ERRNO_IO = 29
ERRNO_FAULT = 21
_STDERR_KEPT = 4096
_MAX_WRITE = 1 << 30  # bytes one fd_write takes at most


def cpu_time() -> float:
    """This process's CPU time (user + system, every thread): what ``/proc/<pid>/stat`` counts, finer."""
    return time.clock_gettime(time.CLOCK_PROCESS_CPUTIME_ID)


class _Fault(Exception):
    """A guest address outside the guest's memory."""


def _harden() -> None:
    """Best effort on Linux: no privilege gain through exec, no ptrace or /proc/<pid>/mem from same-uid peers."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_dumpable, pr_set_no_new_privs = 4, 38
        libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0)
        libc.prctl(pr_set_dumpable, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _limit(config: dict) -> None:
    """Lifetime CPU, no core or files, few fds, and the data segment: the worker's memory as a whole, not only the
    guest's (RLIMIT_AS would count the address space wasmtime reserves around a linear memory; RLIMIT_DATA counts
    what becomes writable)."""
    import resource

    cpu = int(config["lifetime_cpu_seconds"])
    data = int(config["data_limit_mb"]) * 1024 * 1024
    if data > 0:
        resource.setrlimit(resource.RLIMIT_DATA, (data, data))
    for which, value in (
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_CORE, (0, 0)),
        (resource.RLIMIT_FSIZE, (0, 0)),  # this process writes no files, only its pipes
        (resource.RLIMIT_NOFILE, (64, 64)),
    ):
        resource.setrlimit(which, value)


class _Watchdog:
    """The running call's CPU budget, in this process's CPU time, checked by its own thread.

    The store's epoch deadline stays one tick ahead of the engine's epoch, which only this watchdog moves: once a
    call (or the start-up) has used its budget, one tick makes the guest trap at its next check. Nothing the guest
    does moves the deadline; a new call frame does (``begin_call``), also clearing a trip that raced with the
    end of the previous call while the guest was waiting for this one.
    """

    def __init__(self, engine: Any, store: Any, call_budget: float, start_budget: float) -> None:
        self.engine, self.store, self.call_budget = engine, store, call_budget
        self.cond = threading.Condition()
        self.start, self.budget = 0.0, start_budget  # start-up counts from the process's start
        self.tripped = self.idle = False

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


class _Inbox:
    """fd 0 as the guest reads it, never past the end of a frame: a header with ``CALL_FLAG`` begins a call."""

    def __init__(self, on_call: Callable[[], object], watchdog: _Watchdog) -> None:
        import select

        self.on_call, self.watchdog = on_call, watchdog
        self.left = 0  # payload bytes of the current frame not yet read
        self.pending = b""  # header bytes not yet handed to the guest (it may read fewer than 4)
        self.ready = select.poll()
        self.ready.register(0, select.POLLIN)

    def read(self, n: int) -> bytes:
        if n <= 0:
            return b""
        if not self.pending and not self.left:
            head = self._head()
            if len(head) < 4:
                return b""  # the server closed the channel
            word = int.from_bytes(head, "big")
            if word & CALL_FLAG:
                self.on_call()
            self.left = word & SIZE_MASK
            self.pending = self.left.to_bytes(4, "big")
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


class _Outbox:
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


def main() -> None:
    config = json.loads(sys.argv[1])
    _harden()
    sys.path[:0] = config["sys_path"]
    try:
        import wasmtime

        from dpmsf_core.sandbox.runtime import engine_config

        engine = wasmtime.Engine(engine_config())
        module = wasmtime.Module.deserialize_file(engine, config["compiled"])
        with open(config["guest_file"], encoding="utf-8") as fh:
            guest_source = fh.read()
        _limit(config)
        from dpmsf_core.sandbox import seccomp

        seccomp.install()  # no exec, sockets, signals, ptrace or identity changes from here on
    except Exception as exc:  # report why to the server, in the exit status and on stderr
        os.write(2, f"dpmsf sandbox worker: {type(exc).__name__}: {exc}\n".encode())
        os._exit(EXIT_START)

    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    wasi = wasmtime.WasiConfig()
    guest_config = json.dumps({"max_output_bytes": config["max_output_bytes"]})
    wasi.argv = ["python", "-I", "-S", "-B", "-c", guest_source, guest_config]
    errors = bytearray()
    store.set_wasi(wasi)
    store.set_limits(memory_size=int(config["memory_mb"]) * 1024 * 1024)
    store.set_epoch_deadline(1)  # the epoch only moves when the watchdog trips: then the guest traps

    import ctypes

    u32_pair = ctypes.c_uint32 * 2
    watchdog = _Watchdog(engine, store, float(config["cpu_seconds"]), float(config["start_cpu_seconds"]))
    outbox = _Outbox(config)

    def begin_call() -> None:
        watchdog.begin_call()
        outbox.begin_call()

    inbox = _Inbox(begin_call, watchdog)

    def spans_of(caller: wasmtime.Caller, iovs: int, count: int, out: int) -> tuple[int, list[tuple[int, int]]]:
        """The guest's iovec array as (pointer, size) pairs inside its memory, and the memory's base address.

        Every address comes from the guest: each one is checked against the memory's size (-> EFAULT)."""
        memory = caller["memory"]
        assert isinstance(memory, wasmtime.Memory)
        base = ctypes.addressof(memory.data_ptr(caller).contents)
        end = memory.data_len(caller)
        if iovs < 0 or out < 0 or count < 0:  # i32 arrive signed: a negative address is outside the guest
            raise _Fault()
        spans = []
        for i in range(min(count, 16)):
            if iovs + 8 * i + 8 > end:
                raise _Fault()
            ptr, size = u32_pair.from_address(base + iovs + 8 * i)
            if ptr + size > end:
                raise _Fault()
            spans.append((ptr, size))
        if out + 4 > end:
            raise _Fault()
        return base, spans

    def fd_read(caller: wasmtime.Caller, fd: int, iovs: int, count: int, nread: int) -> int:
        """WASI ``fd_read``: only fd 0 (the server's pipe) can be read, frame by frame (``_Inbox``)."""
        if fd != 0:
            return ERRNO_BADF
        try:
            base, spans = spans_of(caller, iovs, count, nread)
        except _Fault:
            return ERRNO_FAULT
        try:
            data = inbox.read(min(sum(n for _, n in spans), 1 << 20))
        except OSError:
            return ERRNO_IO
        offset = 0
        for ptr, size in spans:
            if offset >= len(data):
                break
            piece = data[offset : offset + size]
            ctypes.memmove(base + ptr, piece, len(piece))
            offset += len(piece)
        ctypes.c_uint32.from_address(base + nread).value = len(data)
        return 0

    def fd_write(caller: wasmtime.Caller, fd: int, iovs: int, count: int, written: int) -> int:
        """WASI ``fd_write``: fd 1 goes to the server frame by frame (``_Outbox``), straight from the guest's
        memory; of fd 2 the first few KB are kept for a crash report. Nothing is copied whole: a guest that
        writes 16 views of its whole memory costs this process no memory."""
        if fd not in (1, 2):
            return ERRNO_BADF
        try:
            base, spans = spans_of(caller, iovs, count, written)
        except _Fault:
            return ERRNO_FAULT
        done = 0
        for ptr, whole in spans:
            size = min(whole, _MAX_WRITE - done)  # a short write beyond: the count must fit the guest's u32
            if fd == 2:
                keep = min(size, max(0, _STDERR_KEPT - len(errors)))
                errors.extend(ctypes.string_at(base + ptr, keep))
            else:
                try:
                    outbox.write(memoryview((ctypes.c_char * size).from_address(base + ptr)).cast("B"))
                except OSError:
                    return ERRNO_IO
            done += size
        ctypes.c_uint32.from_address(base + written).value = done
        return 0

    i32 = wasmtime.ValType.i32()
    linker.allow_shadowing = True
    for name, func in (("fd_read", fd_read), ("fd_write", fd_write)):
        linker.define_func(
            "wasi_snapshot_preview1", name, wasmtime.FuncType([i32] * 4, [i32]), func, access_caller=True
        )

    threading.Thread(target=watchdog.run, name="dpmsf-cpu", daemon=True).start()
    instance = linker.instantiate(store, module)
    start = instance.exports(store)["_start"]
    assert isinstance(start, wasmtime.Func)
    try:
        start(store)
    except wasmtime.ExitTrap as exit_:
        os._exit(exit_.code)
    except wasmtime.Trap as trap:
        interrupted = trap.trap_code == wasmtime.TrapCode.INTERRUPT
        os.write(2, errors + f"\ndpmsf sandbox guest trapped: {trap.message[:300]}\n".encode())
        os._exit(EXIT_CPU if interrupted else EXIT_TRAP)
    except wasmtime.WasmtimeError as exc:
        os.write(2, errors + f"\ndpmsf sandbox guest failed: {str(exc)[:300]}\n".encode())
        os._exit(EXIT_TRAP)
    os._exit(0)


if __name__ == "__main__":
    main()
