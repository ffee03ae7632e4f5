"""One supervisor process per command call, so that no program outlives its call (Linux).

Why: a process group is only a convention. A program's child can leave it with ``setsid`` (or double-fork into
a new session); ``killpg`` then misses it, and when its parent exits it is reparented to init and runs on. A
*child subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``, Linux 3.4+) changes that: every orphan in its subtree is
reparented to it instead of init, so while the subreaper lives no descendant can get out of its subtree, and
walking ``/proc/*/stat`` parent links from it finds them all. Making the *server* the subreaper would mix a
call's orphans with the server's unrelated children (uvicorn workers, sandbox workers), and concurrent calls
with each other; so each call gets its own supervisor, the subreaper of exactly one program's tree.

This file has two roles, stdlib only: it runs as ``python -I -S -B subreaper.py FD``, outside any package, so it
is one file (over 400 lines) with nothing of ours to import.

- The *launcher*, started once per server process by ``commands.py`` (a fork server): a warm, single-threaded
  Python that forks one supervisor per call, ahead of time (a spare waits for the next call). A fork costs a
  fraction of a millisecond; starting a fresh interpreter per call would cost about 7 ms. It is a subreaper
  too, as a second line: if a supervisor is killed before it has ended its tree, the tree is reparented to
  the launcher, which kills it.
- The *supervisor*, one per call: spawns the program in its own session with the call's pipes as fds 0-2, reaps
  whatever is reparented to it while the program runs (no zombie piles up), and when the program exits, or the
  server asks, or the server dies, SIGKILLs everything still below it and reaps it; then it reports the
  program's wait status and exits.

Protocol. The server sends the launcher one byte with SCM_RIGHTS fds ``[control, stdout, stderr(, stdin)]``;
no stdin fd means /dev/null. ``control`` is one end of a socketpair the server keeps the other end of: the
server writes one JSON line ``{"argv": [...], "env": {...}, "cwd": "..."}``; the supervisor answers
``S <pid> <subreaper 0|1>`` once the program runs, or ``E <errno> cwd|exec`` if it cannot start, then
``X <wait status>`` once the program and every descendant are dead and reaped (``F <reason>`` if the
supervisor itself failed). Anything the server sends after the request, or the end of its stream
(``shutdown(SHUT_WR)``, or the server died), means: kill the whole tree now.
"""

from __future__ import annotations

import array
import json
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Iterable
from typing import Any, NoReturn

PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
MAX_FDS = 4
EXIT_INTERNAL = 70  # a supervisor that fails exits with this; the launcher then sweeps what it may have left
_PROC = os.path.exists("/proc/self/stat")  # no /proc (macOS): only the program's process group can be killed
_RESET_SIGNALS = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ", "SIGXFZ") if hasattr(signal, name))
_MAX_NAP = 0.05
_libc: Any = None


def _prctl(option: int, value: int) -> bool:
    """``prctl(option, value)`` through ctypes; False where there is no prctl (not Linux) or it is refused."""
    global _libc
    try:
        if _libc is None:
            import ctypes

            _libc = ctypes.CDLL(None, use_errno=True)
        return bool(_libc.prctl(option, value, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _stat(pid: int) -> tuple[int, int, bytes] | None:
    """``(parent pid, start time, state)`` of ``pid`` from ``/proc/<pid>/stat``; None once it is gone."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    fields = data[data.rfind(b")") + 2 :].split()  # the command name, in parentheses, may contain spaces
    try:
        return int(fields[1]), int(fields[19]), fields[0]
    except (IndexError, ValueError):
        return None


def _descendants(root: int, skip: Iterable[int] = ()) -> list[tuple[int, int]]:
    """Every live process below ``root`` (parents before their children) as ``(pid, start time)``.

    One pass over ``/proc`` builds the parent -> children table; subtrees rooted at a pid in ``skip`` are left
    out (the launcher's own supervisors). Zombies are left out too: they cannot be killed, only reaped.
    """
    table: dict[int, list[tuple[int, int, bytes]]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = _stat(int(name))
            if info is not None:
                table.setdefault(info[0], []).append((int(name), info[1], info[2]))
    excluded = set(skip)
    found: list[tuple[int, int]] = []
    stack = [root]
    while stack:
        for pid, start, state in table.get(stack.pop(), ()):
            if pid in excluded:
                continue
            if state != b"Z":
                found.append((pid, start))
            stack.append(pid)
    return found


def _kill(pid: int, start: int) -> None:
    """SIGKILL ``pid`` only if it is still the process the scan saw (same start time).

    A pid can be freed and reused by a stranger between the scan and the kill. A pidfd pins one process: if the
    start time read after opening it still matches, the pidfd is that process, and the signal reaches it or
    nothing. Without pidfds (kernel < 5.3) the same check leaves a window of microseconds.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (OSError, AttributeError):
        pidfd = -1
    try:
        info = _stat(pid)
        if info is None or info[1] != start:
            return
        if pidfd >= 0:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def _killpg(pgid: int) -> None:
    """The fallback where the tree cannot be seen (no /proc) or kept (no subreaper): at least the group."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _noop(signum: int, frame: object) -> None:
    """SIGCHLD handler: its only job is that the wakeup fd gets written, so poll() returns on a child's exit."""


def _wakeup_pipe() -> tuple[int, int]:
    """A non-blocking pipe the C signal handler writes to: waiting for SIGCHLD and for a socket in one poll()."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    return r, w


def _drain(fd: int) -> None:
    """Empty the wakeup pipe, so the next poll() sleeps until the next signal."""
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _send(ctl: socket.socket, line: str) -> None:
    """Report to the server; it may have gone (timeout, cancelled call, crash): then nobody is listening."""
    try:
        ctl.sendall(line.encode())
    except OSError:
        pass


# --- the supervisor: one call ------------------------------------------------------------------------------------


def _read_request(ctl: socket.socket) -> dict[str, Any] | None:
    """The call's JSON line; None if the server gave up (closed, or already asked for the kill) before it came."""
    buf = b""
    while b"\n" not in buf:
        chunk = ctl.recv(65536)
        if not chunk:
            return None
        buf += chunk
    line, _, rest = buf.partition(b"\n")
    return None if rest else json.loads(line)


class _CwdError(OSError):
    """The working directory is the problem, not the program: the server words its 502 differently."""


def _which(program: str, env: dict[str, str]) -> str:
    """``program`` looked up in the program's own PATH (not ours), as ``subprocess`` does; a stat per directory.

    Trying ``posix_spawn`` on each candidate instead would cost a vfork per miss (about a millisecond each on a
    long PATH). An entry that exists but is not executable is returned when nothing better is found, so the
    spawn reports EACCES, not ENOENT.
    """
    if not program or os.sep in program:
        return program
    denied = ""
    for folder in os.get_exec_path(env):
        path = os.path.join(folder, program)
        if os.path.isfile(path):
            if os.access(path, os.X_OK):
                return path
            denied = denied or path
    if denied:
        return denied
    raise FileNotFoundError(2, "No such file or directory", program)


def _spawn(request: dict[str, Any], out_fd: int, err_fd: int, in_fd: int | None) -> int:
    """Start the program in its own session, with the call's pipes as fds 0-2 and its own environment.

    ``posix_spawn`` (vfork + exec) reports an exec failure as OSError, as ``subprocess`` does. The signals
    Python ignores (SIGPIPE, SIGXFSZ) are reset to their defaults, again as ``subprocess`` does.
    """
    argv = [str(a) for a in request["argv"]]
    env = {str(k): str(v) for k, v in request["env"].items()}
    if request.get("cwd"):
        try:
            os.chdir(request["cwd"])
        except OSError as exc:
            raise _CwdError(exc.errno, exc.strerror) from None
    stdin: tuple[Any, ...] = (
        (os.POSIX_SPAWN_DUP2, in_fd, 0) if in_fd is not None else (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)
    )
    actions = [stdin, (os.POSIX_SPAWN_DUP2, out_fd, 1), (os.POSIX_SPAWN_DUP2, err_fd, 2)]
    path = _which(argv[0] if argv else "", env)
    try:
        return os.posix_spawn(path, argv, env, file_actions=actions, setsid=True, setsigdef=_RESET_SIGNALS)
    except NotImplementedError:  # built without POSIX_SPAWN_SETSID: its own process group, at least
        return os.posix_spawn(path, argv, env, file_actions=actions, setpgroup=0, setsigdef=_RESET_SIGNALS)


def _reap(program: int, status: int | None) -> tuple[int | None, bool]:
    """Reap every child that has exited: ``(the program's wait status if it was among them, any child left?)``."""
    while True:
        try:
            pid, code = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return status, False
        if pid == 0:
            return status, True
        if pid == program:
            status = code


def _wait_program(program: int, ctl: socket.socket, wake: int) -> int | None:
    """Until the program exits (its wait status) or the server asks for the kill (None), reaping orphans."""
    poller = select.poll()
    poller.register(wake, select.POLLIN)
    poller.register(ctl, select.POLLIN)
    while True:
        status, _ = _reap(program, None)
        if status is not None:
            return status
        for fd, _event in poller.poll():
            if fd == wake:
                _drain(wake)
            else:  # data, end of stream or an error on the control socket: the call is over
                return None


def _end_tree(program: int, status: int | None, wake: int, subreaper: bool) -> int:
    """SIGKILL everything below this process and reap it all; returns the program's wait status.

    Rounds of scan-and-kill until no child is left: a process killed in one round may have forked a child
    after the scan, but that child is reparented to us (we are the subreaper) and dies in the next round. With
    no child left there is no descendant left either, since every descendant's chain of parents ends in one of
    our children; so the common case, a program that left nothing behind, costs no /proc scan at all.
    """
    if not (_PROC and subreaper):  # orphans go to init, out of our sight: the group kill is all there is
        _killpg(program)
    nap = 0.001
    while True:
        status, left = _reap(program, status)
        if not left:
            return status if status is not None else int(signal.SIGKILL)  # cannot happen: it is our child
        if _PROC:
            for pid, start in _descendants(os.getpid()):
                _kill(pid, start)
        elif status is None:
            _killpg(program)
        select.select([wake], [], [], nap)
        _drain(wake)
        nap = min(nap * 2, _MAX_NAP)


def _supervise(ctl: socket.socket, wake: int, subreaper: bool, out_fd: int, err_fd: int, in_fd: int | None) -> None:
    """One call: spawn, wait, end the tree, report. ``X`` is sent only after the tree is gone, because the
    server returns as soon as it reads it: a call never returns while one of its processes still runs."""
    try:
        request = _read_request(ctl)
        if request is None:
            return
        program = _spawn(request, out_fd, err_fd, in_fd)
    except OSError as exc:
        _send(ctl, f"E {exc.errno or 0} {'cwd' if isinstance(exc, _CwdError) else 'exec'}\n")
        return
    finally:  # only the program's tree holds the pipes now, so their end means the tree's end
        for fd in (out_fd, err_fd, in_fd):
            if fd is not None:
                os.close(fd)
    status: int | None = None
    try:
        _send(ctl, f"S {program} {int(subreaper)}\n")
        status = _wait_program(program, ctl, wake)
    finally:
        status = _end_tree(program, status, wake, subreaper)
    _send(ctl, f"X {status}\n")


def _supervisor_main(handoff: socket.socket, inherited: Iterable[int]) -> NoReturn:
    """A forked supervisor's whole life: get ready, wait for its call's fds on ``handoff``, supervise, exit.

    The launcher forks it *before* its call comes (a spare, while idle), so the fork and this setup, about
    half a millisecond, are off the call's path. It never returns into the launcher's loop.
    """
    code = 0
    ctl: socket.socket | None = None
    try:
        wake, _ = _wakeup_pipe()  # replaces the launcher's, before that one is closed
        for fd in inherited:  # the launcher's control socket and wakeup pipe are not ours
            os.close(fd)
        subreaper = _prctl(PR_SET_CHILD_SUBREAPER, 1)
        alive, fds = _receive(handoff)
        handoff.close()
        if alive and len(fds) in (3, 4):
            ctl = socket.socket(fileno=fds[0])
            _supervise(ctl, wake, subreaper, fds[1], fds[2], fds[3] if len(fds) > 3 else None)
        else:  # the launcher is gone: no call will come
            for fd in fds:
                os.close(fd)
    except BaseException as exc:  # noqa: B036 - report anything, then exit: never fall back into the launcher
        code = EXIT_INTERNAL
        if ctl is not None:
            _send(ctl, f"F {type(exc).__name__}: {exc}".replace("\n", " ") + "\n")
    os._exit(code)


# --- the launcher: one per server process ------------------------------------------------------------------------


def _receive(ctl: socket.socket) -> tuple[bool, list[int]]:
    """One request: ``(the server is still there, the fds that came with it)``."""
    size = array.array("i").itemsize
    try:
        msg, ancdata, _flags, _addr = ctl.recvmsg(1, socket.CMSG_SPACE(MAX_FDS * size))
    except OSError:
        return False, []
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(data[: len(data) - len(data) % size])
            fds.extend(received)
    for fd in fds:  # SCM_RIGHTS fds arrive inheritable: only the dup2s onto 0-2 may reach the program
        os.set_inheritable(fd, False)
    return bool(msg), fds


def _reap_supervisors(supervisors: set[int]) -> bool:
    """Reap exited children; True if processes may have been orphaned to us (a supervisor failed, or a stray
    process, one that is not a supervisor, was among them)."""
    suspicious = False
    while True:
        try:
            pid, code = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return suspicious
        if pid == 0:
            return suspicious
        if pid in supervisors:
            supervisors.discard(pid)
            suspicious = suspicious or code != 0
        else:
            suspicious = True


def _sweep(supervisors: set[int]) -> None:
    """Kill and reap what a dead supervisor left us: anything below us that is not a live supervisor's tree."""
    if not _PROC:
        return
    nap = 0.001
    while strays := _descendants(os.getpid(), skip=supervisors):
        for pid, start in strays:
            _kill(pid, start)
        time.sleep(nap)
        _reap_supervisors(supervisors)
        nap = min(nap * 2, _MAX_NAP)


def _hand_off(
    spare: tuple[int, socket.socket] | None, fds: list[int], inherited: tuple[int, ...], supervisors: set[int]
) -> None:
    """Pass one call's fds to the spare supervisor, which owns the call from then on.

    A spare that died while it waited (someone killed it) is replaced once; should that fail too, the server
    sees its control stream end without a report and answers 502.
    """
    message = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
    for _attempt in (1, 2):
        if spare is None:
            spare = _fork_spare(inherited)
            supervisors.add(spare[0])
        handoff = spare[1]
        spare = None
        try:
            handoff.sendmsg([b"R"], message)
            return
        except OSError:
            pass
        finally:
            handoff.close()


def _fork_spare(inherited: tuple[int, ...]) -> tuple[int, socket.socket]:
    """Fork the supervisor of the next call: ``(its pid, the socket to pass that call's fds on)``."""
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        ours.close()
        _supervisor_main(theirs, inherited)
    theirs.close()
    return pid, ours


def serve(ctl: socket.socket) -> None:
    """The launcher's loop: fork a supervisor per request, reap them, sweep strays; return when the server is gone."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_DUMPABLE, 0)  # same-uid programs cannot ptrace us (or our forks) to run code in a supervisor
    os.chdir("/")
    signal.signal(signal.SIGCHLD, _noop)
    wake_r, wake_w = _wakeup_pipe()
    inherited = (ctl.fileno(), wake_r, wake_w)
    supervisors: set[int] = set()  # every child we forked and have not reaped: spares included
    spare: tuple[int, socket.socket] | None = None
    poller = select.poll()
    poller.register(wake_r, select.POLLIN)
    poller.register(ctl, select.POLLIN)
    while True:
        events = poller.poll(0 if spare is None else None)
        if not events and spare is None:  # idle and no spare: fork one now, not when the next call waits
            spare = _fork_spare(inherited)
            supervisors.add(spare[0])
            continue
        for fd, _event in events:
            if fd == wake_r:
                _drain(wake_r)
                continue
            alive, fds = _receive(ctl)
            if alive and len(fds) in (3, 4):
                _hand_off(spare, fds, inherited, supervisors)
                spare = None
            for received in fds:
                os.close(received)
            if not alive:
                return
        if _reap_supervisors(supervisors):
            _sweep(supervisors)


def main(argv: list[str]) -> int:
    """``subreaper.py FD``: FD is the launcher's end of the socketpair ``commands.py`` keeps the other end of."""
    ctl = socket.socket(fileno=int(argv[1]))
    os.set_inheritable(ctl.fileno(), False)
    serve(ctl)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
