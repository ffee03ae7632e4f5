"""A sandbox worker process: hosts one WebAssembly guest (CPython for WASI) for one tenant, then exits with it.

Started by ``process.py`` as ``python -I -S -B worker.py <config JSON>`` with an empty environment. The process is
a second wall around the guest, not the boundary: it makes itself non-dumpable, sets ``no_new_privs``, closes
every fd but its pipes, drops to an unprivileged uid when the server runs as root (``pool.py`` decides), caps
its CPU time, data segment, file sizes, open files and core dumps with rlimits, and installs a seccomp filter
(``seccomp.py``).

A *template* (``"template": true`` in its config, ``template.py`` on the server's side) goes as far as a guest
goes before its first call: wasmtime loaded, the interpreter deserialized and instantiated, CPython started, the
guest program and its standard-library modules imported. It then waits inside the guest's first ``fd_read`` for
orders (``forking.py``): each one forks a guest, which takes its own pipes, limits, seccomp filter and watchdog
and reads its first call from there. The template itself never hands a call to its guest; one that did is
refused as a template for good.

The guest's stdin and stdout are this process's own fds 0 and 1, the server's pipes, so requests go from the
server through this process's ``fd_read`` and ``fd_write``. Its stderr is kept (4 KB, the rest is dropped without
a copy) and logged by nobody: it only says why an interpreter crashed.

Frames (``channel.py``): both directions are 4-byte big-endian length + payload, and this process follows
their boundaries. The server sets the top bit of a header when the frame starts a call (``CALL_FLAG``, cleared
before the guest sees it); the guest sets it on its last frame of a call (``ANSWER_FLAG``). Each frame the guest
writes is checked here before it leaves (size by kind, frames and bytes per call; past a limit this process exits
with ``EXIT_FRAME`` or ``EXIT_OUTPUT``) and forwarded with an 8-byte stamp after its header: this process's CPU
time so far, in microseconds, which the server meters calls by.

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
from typing import Any

TYPE_CHECKING = False  # for mypy only: the worker imports no more than it must before its hardening
if TYPE_CHECKING:
    from typing import Any

ERRNO_BADF = 8  # WASI errno values
ERRNO_IO = 29
ERRNO_FAULT = 21
ERRNO_INVAL = 28
ERRNO_NOTSUP = 58
_SUBSCRIPTION, _EVENT = 48, 32  # sizes of WASI's poll_oneoff records
_CLOCKS = {0: 0, 1: 1, 2: 2, 3: 3}  # WASI clock id -> the host's: realtime, monotonic, process and thread CPU time
_STDERR_KEPT = 4096
_MAX_WRITE = 1 << 30  # bytes one fd_write takes at most


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


def _limit(config: dict[str, Any]) -> None:
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


def _fail(code: int, why: str) -> None:
    """Report why to the server, in the exit status and on stderr."""
    os.write(2, f"dpmsf sandbox worker: {why}\n".encode())
    os._exit(code)


class Worker:
    """One worker's steps, in order: ``load`` the interpreter, ``confine`` the process (a guest only), ``link`` the
    guest's host functions, ``run`` the guest; a template forks guests from inside its first ``fd_read``."""

    def __init__(self, config: dict[str, Any]) -> None:
        import ctypes

        from dpmsf_core.sandbox import channel

        self.config, self.channel, self.ctypes = config, channel, ctypes
        self.u32_pair = ctypes.c_uint32 * 2
        self.errors = bytearray()
        self.template: Any = None  # forking.Template while this process is one
        self.outbox = channel.Outbox(config)

    def load(self) -> None:
        """wasmtime, the engine and the compiled interpreter: what fails here is no guest's fault (EXIT_START)."""
        import wasmtime

        from dpmsf_core.sandbox.runtime import engine_config

        self.wasmtime = wasmtime
        self.engine = wasmtime.Engine(engine_config())
        self.module = wasmtime.Module.deserialize_file(self.engine, self.config["compiled"])
        with open(self.config["guest_file"], encoding="utf-8") as fh:
            self.guest_source = fh.read()

    def confine(self) -> None:
        """rlimits, then the seccomp filter: no exec, sockets, signals, ptrace or identity changes from here on."""
        from dpmsf_core.sandbox import seccomp

        _limit(self.config)
        seccomp.install()

    def link(self) -> None:
        """The store (memory limit, epoch deadline), WASI with our own ``fd_read``/``fd_write``, the watchdog."""
        wasmtime, config = self.wasmtime, self.config
        self.linker = wasmtime.Linker(self.engine)
        self.linker.define_wasi()
        self.store = wasmtime.Store(self.engine)
        wasi = wasmtime.WasiConfig()
        guest_config = json.dumps({"max_output_bytes": config["max_output_bytes"]})
        wasi.argv = ["python", "-I", "-S", "-B", "-c", self.guest_source, guest_config]
        self.store.set_wasi(wasi)
        self.store.set_limits(memory_size=int(config["memory_mb"]) * 1024 * 1024)
        self.store.set_epoch_deadline(1)  # the epoch only moves when the watchdog trips: then the guest traps
        self.watchdog = self.channel.Watchdog(
            self.engine, self.store, float(config["cpu_seconds"]), float(config["start_cpu_seconds"])
        )
        self.inbox = self.channel.Inbox(self.begin_call, self.watchdog)
        i32 = wasmtime.ValType.i32()
        self.linker.allow_shadowing = True
        for name, func, params in (
            ("fd_read", self.fd_read, 4),
            ("fd_write", self.fd_write, 4),
            ("poll_oneoff", self.poll_oneoff, 4),
            ("random_get", self.random_get, 2),
        ):
            self.linker.define_func(
                "wasi_snapshot_preview1", name, wasmtime.FuncType([i32] * params, [i32]), func, access_caller=True
            )
        clock_type = wasmtime.FuncType([i32, wasmtime.ValType.i64(), i32], [i32])
        self.linker.define_func("wasi_snapshot_preview1", "clock_time_get", clock_type, self.clock_time_get, True)

    def begin_call(self) -> None:
        self.watchdog.begin_call()
        self.outbox.begin_call()

    def run(self) -> None:
        """Start the guest and end this process with it: its exit code, or why it trapped."""
        wasmtime, channel = self.wasmtime, self.channel
        if self.template is None:
            threading.Thread(target=self.watchdog.run, name="dpmsf-cpu", daemon=True).start()
        instance = self.linker.instantiate(self.store, self.module)
        start = instance.exports(self.store)["_start"]
        assert isinstance(start, wasmtime.Func)
        try:
            start(self.store)
        except wasmtime.ExitTrap as exit_:
            os._exit(exit_.code)
        except wasmtime.Trap as trap:
            interrupted = trap.trap_code == wasmtime.TrapCode.INTERRUPT
            os.write(2, self.errors + f"\ndpmsf sandbox guest trapped: {trap.message[:300]}\n".encode())
            os._exit(channel.EXIT_CPU if interrupted else channel.EXIT_TRAP)
        except wasmtime.WasmtimeError as exc:
            os.write(2, self.errors + f"\ndpmsf sandbox guest failed: {str(exc)[:300]}\n".encode())
            os._exit(channel.EXIT_TRAP)
        os._exit(0)

    def became_guest(self) -> None:
        """In a guest forked from the template: its own limits and filter, a fresh channel, its watchdog, then its
        ready frame (its guest said ready once, in the template)."""
        self.template = None
        self.confine()
        self.inbox.reset()
        self.outbox.begin_call()
        self.watchdog.restart()
        threading.Thread(target=self.watchdog.run, name="dpmsf-cpu", daemon=True).start()
        self.outbox.say(b'{"op":"ready"}')

    # -- the guest's host functions ---------------------------------------------------------------------------------

    def spans_of(self, caller: Any, iovs: int, count: int, out: int) -> tuple[int, list[tuple[int, int]]]:
        """The guest's iovec array as (pointer, size) pairs inside its memory, and the memory's base address.

        Every address comes from the guest: each one is checked against the memory's size (-> EFAULT)."""
        memory = caller["memory"]
        assert isinstance(memory, self.wasmtime.Memory)
        base = self.ctypes.addressof(memory.data_ptr(caller).contents)
        end = memory.data_len(caller)
        if iovs < 0 or out < 0 or count < 0:  # i32 arrive signed: a negative address is outside the guest
            raise _Fault()
        spans = []
        for i in range(min(count, 16)):
            if iovs + 8 * i + 8 > end:
                raise _Fault()
            ptr, size = self.u32_pair.from_address(base + iovs + 8 * i)
            if ptr + size > end:
                raise _Fault()
            spans.append((ptr, size))
        if out + 4 > end:
            raise _Fault()
        return base, spans

    def _memory(self, caller: Any, *spans: tuple[int, int]) -> int:
        """The base address of the guest's memory, once every (address, size) given is inside it."""
        memory = caller["memory"]
        assert isinstance(memory, self.wasmtime.Memory)
        end = memory.data_len(caller)
        for address, size in spans:
            if address < 0 or size < 0 or address + size > end:
                raise _Fault()
        return int(self.ctypes.addressof(memory.data_ptr(caller).contents))

    def random_get(self, caller: Any, buf: int, size: int) -> int:
        """WASI ``random_get`` from the kernel, in this process: WASI's own generator lives in the store, and a guest
        forked from a template would share its state with every other (the same ``uuid4`` in every tenant)."""
        try:
            base = self._memory(caller, (buf, size))
        except _Fault:
            return ERRNO_FAULT
        self.ctypes.memmove(base + buf, os.urandom(size), size)
        return 0

    def clock_time_get(self, caller: Any, clock: int, _precision: int, out: int) -> int:
        """WASI ``clock_time_get`` from the host's clocks, so that ``poll_oneoff`` can wait until a time it gives."""
        import time

        if clock not in _CLOCKS:
            return ERRNO_INVAL
        try:
            base = self._memory(caller, (out, 8))
        except _Fault:
            return ERRNO_FAULT
        self.ctypes.c_uint64.from_address(base + out).value = time.clock_gettime_ns(_CLOCKS[clock])
        return 0

    def poll_oneoff(self, caller: Any, subs: int, events: int, count: int, nevents: int) -> int:
        """WASI ``poll_oneoff`` for clocks only (``time.sleep``): wasmtime's own waits on runtime threads that a
        guest forked from a template does not have. The earliest clock fires; an fd subscription is answered
        ENOTSUP (the guest's only fds are the channel, which ``fd_read`` serves)."""
        import struct
        import time

        if count <= 0 or count > 64:
            return ERRNO_INVAL
        try:
            base = self._memory(caller, (subs, _SUBSCRIPTION * count), (events, _EVENT * count), (nevents, 4))
        except _Fault:
            return ERRNO_FAULT
        records = self.ctypes.string_at(base + subs, _SUBSCRIPTION * count)
        wait, first, out = 3600.0, 0, []
        for i in range(count):
            userdata, tag, clock, timeout, _precision, flags = struct.unpack_from("<QB7xIxxxxQQH", records, 48 * i)
            if tag != 0:
                out.append(struct.pack("<QHBxxxxxQH6x", userdata, ERRNO_NOTSUP, tag, 0, 0))
                continue
            seconds = timeout / 1e9
            if flags & 1:  # an absolute time, on one of the clocks ``clock_time_get`` tells
                if clock not in _CLOCKS:
                    return ERRNO_INVAL
                seconds -= time.clock_gettime(_CLOCKS[clock])
            if max(0.0, seconds) < wait or not i:
                wait, first = max(0.0, seconds), i
        if not out:
            self.watchdog.waiting(True)
            try:
                time.sleep(wait)
            finally:
                self.watchdog.waiting(False)
            out = [struct.pack("<QHBxxxxxQH6x", struct.unpack_from("<Q", records, 48 * first)[0], 0, 0, 0, 0)]
        data = b"".join(out)
        self.ctypes.memmove(base + events, data, len(data))
        self.ctypes.c_uint32.from_address(base + nevents).value = len(out)
        return 0

    def fd_read(self, caller: Any, fd: int, iovs: int, count: int, nread: int) -> int:
        """WASI ``fd_read``: only fd 0 (the server's pipe) can be read, frame by frame (``channel.Inbox``). A
        template waits here for its orders; only the guests it forks return."""
        if fd != 0:
            return ERRNO_BADF
        try:
            base, spans = self.spans_of(caller, iovs, count, nread)
        except _Fault:
            return ERRNO_FAULT
        if self.template is not None:
            self.template.serve_orders()  # returns in a forked guest, or once the template took a call itself
        try:
            data = self.inbox.read(min(sum(n for _, n in spans), 1 << 20))
        except OSError:
            return ERRNO_IO
        offset = 0
        for ptr, size in spans:
            if offset >= len(data):
                break
            piece = data[offset : offset + size]
            self.ctypes.memmove(base + ptr, piece, len(piece))
            offset += len(piece)
        self.ctypes.c_uint32.from_address(base + nread).value = len(data)
        return 0

    def fd_write(self, caller: Any, fd: int, iovs: int, count: int, written: int) -> int:
        """WASI ``fd_write``: fd 1 goes to the server frame by frame (``channel.Outbox``), straight from the guest's
        memory; of fd 2 the first few KB are kept for a crash report. Nothing is copied whole: a guest that
        writes 16 views of its whole memory costs this process no memory."""
        if fd not in (1, 2):
            return ERRNO_BADF
        try:
            base, spans = self.spans_of(caller, iovs, count, written)
        except _Fault:
            return ERRNO_FAULT
        done = 0
        ctypes = self.ctypes
        for ptr, whole in spans:
            size = min(whole, _MAX_WRITE - done)  # a short write beyond: the count must fit the guest's u32
            if fd == 2:
                keep = min(size, max(0, _STDERR_KEPT - len(self.errors)))
                self.errors.extend(ctypes.string_at(base + ptr, keep))
            else:
                try:
                    self.outbox.write(memoryview((ctypes.c_char * size).from_address(base + ptr)).cast("B"))
                except OSError:
                    return ERRNO_IO
            done += size
        ctypes.c_uint32.from_address(base + written).value = done
        return 0


def main() -> None:
    config = json.loads(sys.argv[1])
    _harden()
    sys.path[:0] = config["sys_path"]
    from dpmsf_core.sandbox import channel

    worker = Worker(config)
    try:
        worker.load()
        if config.get("template"):
            from dpmsf_core.sandbox.forking import Template

            worker.template = Template(worker)
        else:
            worker.confine()
    except Exception as exc:
        _fail(channel.EXIT_START, f"{type(exc).__name__}: {exc}")
    worker.link()
    worker.run()


if __name__ == "__main__":
    main()
