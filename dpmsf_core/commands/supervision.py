"""The server's side of command supervision: the launcher process, and one supervised program per call.

``subreaper.py`` is the other side (the launcher and supervisor processes and their protocol). This module
starts the launcher once per server process (again after a fork, or when it died), hands it the pipes of each
call, and reads the supervisor's reports: ``commands.run_program`` only sees ``Supervised``.
"""

from __future__ import annotations

import array
import asyncio
import atexit
import contextlib
import functools
import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("dpmsf.commands")

SUPERVISOR = Path(__file__).with_name("subreaper.py")


class Launcher:
    """This process's fork server of supervisors (``subreaper.py``): started on first use, restarted if it died.

    One warm launcher forks a supervisor per call in well under a millisecond, where starting an interpreter
    per call would cost several. It is per process: after a fork (gunicorn, multiprocessing) the child starts
    its own, and the server's end of the socket is non-blocking, so a launcher that stopped reading (stopped,
    hung) is replaced instead of blocking the event loop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._owner = 0
        self._inherited: list[object] = []  # a fork child's copy of its parent's launcher: neither waited nor warned
        self._atexit = False

    def after_fork_in_child(self) -> None:
        """A forked child must not talk to (or wait for) its parent's launcher, nor inherit a held lock."""
        self._lock = threading.Lock()
        if self._proc is not None or self._sock is not None:
            if self._sock is not None:
                self._sock.close()
            self._inherited.append(self._proc)
            self._proc = self._sock = None

    def send(self, fds: Sequence[int]) -> None:
        """Hand one call's fds to the launcher, which forks its supervisor; OSError if no launcher can run."""
        message = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        with self._lock:
            for attempt in (1, 2):
                sock = self._ensure()
                try:
                    sock.sendmsg([b"R"], message)
                    return
                except OSError:  # it died, or stopped reading: a fresh one gets the retry
                    self._discard()
                    if attempt == 2:
                        raise

    def _ensure(self) -> socket.socket:
        if self._sock is not None and self._proc is not None and self._owner == os.getpid():
            if self._proc.poll() is None:
                return self._sock
            log.warning(
                "the command launcher (pid %s) died with status %s; starting another",
                self._proc.pid,
                self._proc.returncode,
            )
            self._discard()
        ours, theirs = socket.socketpair()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", str(SUPERVISOR), str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                env={},  # no server secrets; each program's environment comes with its request
                cwd="/",
                start_new_session=True,  # a Ctrl-C in the server's terminal is not for it
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock, self._owner = ours, os.getpid()
        if not self._atexit:
            atexit.register(self.close)
            self._atexit = True
        return ours

    def _discard(self) -> None:
        """Forget the launcher: supervisors it forked live on (each watches its own call), so killing it is safe."""
        sock, proc, self._sock, self._proc = self._sock, self._proc, None, None
        if sock is not None:
            sock.close()
        if proc is not None:
            with contextlib.suppress(OSError):
                proc.kill()
            proc.wait()

    def close(self) -> None:
        """At exit: the launcher ends when its socket does (running calls' supervisors end with their sockets)."""
        if self._owner != os.getpid():
            return
        sock, proc, self._sock, self._proc = self._sock, self._proc, None, None
        if sock is not None:
            sock.close()
        if proc is not None:
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


LAUNCHER = Launcher()
os.register_at_fork(after_in_child=LAUNCHER.after_fork_in_child)


class OutputTooLarge(Exception):
    pass


class Supervised:
    """One program under its supervisor, as the server sees it: the pipes, and the control socket.

    The control socket carries the supervisor's reports (``S``/``E``/``X`` lines, see ``subreaper.py``) and is
    the call's lifeline: ending our side of it (``kill``), or our process dying, makes the supervisor SIGKILL
    the whole tree. The program is not our child, so nothing here waits for a pid.
    """

    def __init__(self, ctl: socket.socket) -> None:
        self.ctl = ctl
        self.stdin: asyncio.StreamWriter | None = None
        self.stdout = asyncio.StreamReader()
        self.stderr = asyncio.StreamReader()
        self._transports: list[asyncio.BaseTransport] = []
        self._killed = False

    @classmethod
    async def start(cls, argv: list[str], env: dict[str, str], cwd: str, data: bytes | None) -> Supervised:
        """Have the launcher fork a supervisor for ``argv`` and connect its pipes to this event loop."""
        loop = asyncio.get_running_loop()
        ctl, peer = socket.socketpair()
        ctl.setblocking(False)
        self = cls(ctl)
        request = json.dumps({"argv": argv, "env": env, "cwd": cwd}).encode() + b"\n"
        unattached: list[io.FileIO] = []  # our pipe ends not yet owned by a transport
        theirs = [peer.fileno()]
        try:
            try:
                sent = ctl.send(request)  # queued before the fork, so the supervisor need not wait for it
                for _ in (self.stdout, self.stderr):
                    r, w = os.pipe()
                    unattached.append(io.FileIO(r, "rb"))
                    theirs.append(w)
                if data is not None:
                    r, w = os.pipe()
                    unattached.append(io.FileIO(w, "wb"))
                    theirs.append(r)
                LAUNCHER.send(theirs)
            finally:  # the supervisor has its copies now, or never will
                for fd in theirs[1:]:
                    os.close(fd)
                peer.close()
            for reader in (self.stdout, self.stderr):
                read_transport, _ = await loop.connect_read_pipe(
                    functools.partial(asyncio.StreamReaderProtocol, reader), unattached[0]
                )
                self._transports.append(read_transport)
                unattached.pop(0)
            if unattached:
                write_transport, protocol = await loop.connect_write_pipe(
                    lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), unattached[0]
                )
                self._transports.append(write_transport)
                unattached.pop(0)
                self.stdin = asyncio.StreamWriter(write_transport, protocol, None, loop)
            if sent < len(request):  # larger than the socket buffer: the rest once the supervisor reads
                await loop.sock_sendall(ctl, request[sent:])
        except BaseException:
            for pipe in unattached:
                pipe.close()
            self.close()  # the supervisor, if it was forked, sees the end of the control stream and stops
            raise
        return self

    def kill(self) -> None:
        """Ask the supervisor to SIGKILL the program and everything below it (idempotent, never blocks)."""
        if not self._killed:
            self._killed = True
            with contextlib.suppress(OSError):
                self.ctl.shutdown(socket.SHUT_WR)

    async def report(self) -> dict[str, str]:
        """The supervisor's reports up to its last (``X``, ``E`` or ``F``), or up to its end: ``{"S": "9 1", ...}``.

        ``X`` comes once the tree is dead and reaped; the supervisor's own exit after it is not waited for.
        """
        loop = asyncio.get_running_loop()
        reports: dict[str, str] = {}
        pending = b""
        while True:
            try:
                chunk = await loop.sock_recv(self.ctl, 4096)
            except ConnectionError:  # a supervisor that died with data unread: same as the end of the stream
                break
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                text = line.decode(errors="replace")
                reports[text[:1]] = text[2:]
            if reports.keys() & {"X", "E", "F"}:
                break
        return reports

    def close(self) -> None:
        """Release the pipes and the control socket (closing it also tells a live supervisor to kill the tree)."""
        for transport in self._transports:
            transport.close()
        self.ctl.close()
