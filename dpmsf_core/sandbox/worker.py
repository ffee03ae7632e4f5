"""A sandbox worker process: hosts one WebAssembly guest (CPython for WASI) for one tenant, then exits with it.

Started by ``pool.py`` as ``python -I -S -B worker.py <config JSON>`` with an empty environment. The process is
a second wall around the guest, not the boundary: it makes itself non-dumpable, sets ``no_new_privs``, closes
every fd but its pipes, drops to an unprivileged uid when the server runs as root (``pool.py`` decides), caps
its CPU time, data segment, file sizes, open files and core dumps with rlimits, and installs a seccomp filter
(``seccomp.py``).

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

TYPE_CHECKING = False  # for mypy only: the worker imports no more than it must before its hardening
if TYPE_CHECKING:
    from typing import Any

ERRNO_BADF = 8  # WASI errno values
ERRNO_IO = 29
ERRNO_FAULT = 21
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


def main() -> None:
    config = json.loads(sys.argv[1])
    _harden()
    sys.path[:0] = config["sys_path"]
    from dpmsf_core.sandbox import channel

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
        os._exit(channel.EXIT_START)

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
    watchdog = channel.Watchdog(engine, store, float(config["cpu_seconds"]), float(config["start_cpu_seconds"]))
    outbox = channel.Outbox(config)

    def begin_call() -> None:
        watchdog.begin_call()
        outbox.begin_call()

    inbox = channel.Inbox(begin_call, watchdog)

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
        """WASI ``fd_read``: only fd 0 (the server's pipe) can be read, frame by frame (``channel.Inbox``)."""
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
        """WASI ``fd_write``: fd 1 goes to the server frame by frame (``channel.Outbox``), straight from the guest's
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
        os._exit(channel.EXIT_CPU if interrupted else channel.EXIT_TRAP)
    except wasmtime.WasmtimeError as exc:
        os.write(2, errors + f"\ndpmsf sandbox guest failed: {str(exc)[:300]}\n".encode())
        os._exit(channel.EXIT_TRAP)
    os._exit(0)


if __name__ == "__main__":
    main()
