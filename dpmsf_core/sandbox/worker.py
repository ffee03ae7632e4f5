"""A sandbox worker process: hosts one WebAssembly guest (CPython for WASI) for one tenant, then exits with it.

Started by ``pool.py`` as ``python -I -S -B worker.py <config JSON>`` with an empty environment. The process is
a second wall around the guest, not the boundary: it makes itself non-dumpable, sets ``no_new_privs``, closes
every fd but its pipes, drops to an unprivileged uid when the server runs as root (``pool.py`` decides), caps
its CPU time, file sizes, open files and core dumps with rlimits, and installs a seccomp filter (``seccomp.py``).

The guest's stdin and stdout are this process's own fds 0 and 1, the server's pipes, so requests go from the
server straight into the guest with no copy in between. Its stderr is kept (a few KB) and logged by nobody: it
only says why an interpreter crashed.

Preemption: the engine's epoch advances every ``TICK`` seconds, and each time the guest reads fd 0 (a new
request, or a store reply) its deadline is set to the call's CPU budget from now; a guest that computes past it
traps, and this process exits with ``EXIT_CPU``. The server also kills this process once a call's wall time is
over, whatever the guest is doing.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

TICK = 0.05
SPIN = 0.0002  # seconds a guest's host spins for the next request before it sleeps
EXIT_CPU = 124
EXIT_TRAP = 125
EXIT_START = 126
ERRNO_BADF = 8  # WASI errno values
ERRNO_IO = 29
ERRNO_FAULT = 21


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
    import resource

    cpu = int(config["lifetime_cpu_seconds"])
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
    budget = max(1, round(float(config["cpu_seconds"]) / TICK)) + 1
    store.set_epoch_deadline(budget)  # start-up (~0.2 s) runs under the same budget as a call

    import ctypes
    import select

    u32_pair = ctypes.c_uint32 * 2
    ready = select.poll()
    ready.register(0, select.POLLIN)

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
        """WASI ``fd_read``: only fd 0 (the server's pipe) can be read; its data also restarts the CPU budget."""
        if fd != 0:
            return ERRNO_BADF
        try:
            base, spans = spans_of(caller, iovs, count, nread)
        except _Fault:
            return ERRNO_FAULT
        try:
            if not ready.poll(0):  # spin a little before sleeping: the next request of a burst comes soon,
                until = time.perf_counter() + SPIN  # and waking a sleeping process costs more than this
                while not ready.poll(0) and time.perf_counter() < until:
                    pass
            data = os.read(0, min(sum(n for _, n in spans), 1 << 20))
        except OSError:
            return ERRNO_IO
        # Deadlines only ever move forward (now + budget), so the copy that compiled code caches is never later
        # than the real one: lowering a deadline from inside a running function would not take effect.
        store.set_epoch_deadline(budget)
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
        """WASI ``fd_write``: fd 1 is the server's pipe, fd 2 is kept (a few KB) for a crash report."""
        if fd not in (1, 2):
            return ERRNO_BADF
        try:
            base, spans = spans_of(caller, iovs, count, written)
        except _Fault:
            return ERRNO_FAULT
        data = b"".join(ctypes.string_at(base + ptr, size) for ptr, size in spans)
        if fd == 2:
            errors.extend(data[: max(0, 4096 - len(errors))])
        else:
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(1, view) :]
            except OSError:
                return ERRNO_IO
        ctypes.c_uint32.from_address(base + written).value = len(data)
        return 0

    i32 = wasmtime.ValType.i32()
    linker.allow_shadowing = True
    for name, func in (("fd_read", fd_read), ("fd_write", fd_write)):
        linker.define_func(
            "wasi_snapshot_preview1", name, wasmtime.FuncType([i32] * 4, [i32]), func, access_caller=True
        )

    def tick() -> None:
        while True:
            time.sleep(TICK)
            engine.increment_epoch()

    threading.Thread(target=tick, name="dpmsf-epoch", daemon=True).start()
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
