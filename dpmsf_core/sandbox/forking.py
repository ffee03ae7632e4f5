"""The template's side of its channel (in the worker process, standard library only): orders in, guests forked.

A template is a worker whose guest has started (CPython up, the guest program and its modules imported) and
waits in its first ``fd_read`` (``worker.py``). There, instead of a call, it reads *orders* from its fd 0, a Unix
socket whose other end the server holds (``template.py``). Each order is a frame (``channel.py``): 4-byte
length + payload.

- ``fork`` with three fds attached (SCM_RIGHTS): the new guest's stdin, stdout and stderr. The template forks;
  the child puts the fds on 0, 1 and 2, closes everything of the template's, applies its own limits and seccomp
  filter, starts its watchdog and says ready on its new stdout, then returns from ``fd_read`` into the guest,
  which reads its first call from there. The template answers ``P <pid>`` on the socket.
- a frame with ``CALL_FLAG`` is a call for the template's own guest: it is handed over like any call, and this
  process is a template no more, for good: it confines itself like a guest (its seccomp filter denies ``fork``)
  and never reads an order again, so a later ``fork`` reaches its guest as garbage, which ends it, and the server
  gets no ``P``: it ran tenant code, so what it would copy into a guest is no longer what every guest may share.

The template is the parent of its guests, not the server, so it reaps them and reports each one's exit status
(as ``subprocess`` gives it: negative for a signal) and CPU time with ``X <pid> <status> <seconds>``. When the
server's end closes, the template exits; its guests end when the server closes their pipes.
"""

from __future__ import annotations

import gc
import os
import select
import signal
import socket
from typing import Any

_PR_SET_NAME = 15


def set_name(name: bytes) -> None:
    """This process's name in ``/proc/<pid>/comm`` (what ``ps`` and the density bench tell processes apart by)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(_PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)
    except (OSError, AttributeError):
        pass


class Template:
    """Orders from the server, served from inside the guest's first ``fd_read``."""

    def __init__(self, worker: Any) -> None:
        import resource

        self.worker = worker
        self.sock = socket.socket(fileno=os.dup(0))  # fd 0 stays the guest's stdin should it take a call itself
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the poll below (through the wakeup fd)
        signal.set_wakeup_fd(self.wake_w)
        import warnings

        from dpmsf_core.sandbox import seccomp  # noqa: F401 - imported once here, not in every guest

        # wasmtime's runtime threads make Python 3.12+ warn at each fork, on a stderr nobody reads while it runs
        warnings.filterwarnings("ignore", category=DeprecationWarning)

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a few fds per guest being forked
        self.frozen = False
        set_name(b"dpmsf-template")

    def serve_orders(self) -> None:
        """Returns in a forked guest, or in this process once its own guest is handed a call; else loops."""
        if not self.frozen:  # what the guests share stays out of every collection: no copy-on-write for the gc
            gc.collect()
            gc.freeze()
            self.frozen = True
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        while True:
            for fd, _ in poller.poll():
                if fd == self.wake_r:
                    self._drain_wake()
                    self._reap()
                elif self._order():
                    return

    def _order(self) -> bool:
        """One order; True when this process is now a guest (a forked child, or the template given a call)."""
        data, fds, _flags, _addr = socket.recv_fds(self.sock, 4, 3)
        if not data:
            os._exit(0)  # the server closed its end
        data += self._exactly(4 - len(data))
        word = int.from_bytes(data, "big")
        channel = self.worker.channel
        if word & channel.CALL_FLAG:
            for fd in fds:
                os.close(fd)
            self._become_guest()
            self.worker.inbox.take_header(word)
            return True
        payload = self._exactly(word & channel.SIZE_MASK)
        if payload != b"fork" or len(fds) != 3:
            for fd in fds:
                os.close(fd)
            self._say(b"R bad order\n")
            return False
        return self._fork(fds)

    def _become_guest(self) -> None:
        """The template's own guest takes a call: it is tainted for good, and confined like any guest."""
        import threading

        self._forget()
        self.worker.template = None  # fd_read never comes back here: no order is read, nothing forked, ever
        self.worker.confine()
        threading.Thread(target=self.worker.watchdog.run, name="dpmsf-cpu", daemon=True).start()

    def _fork(self, fds: list[int]) -> bool:
        pid = os.fork()
        if pid == 0:
            self._child(fds)
            return True
        for fd in fds:
            os.close(fd)
        self._say(f"P {pid}\n".encode())
        return False

    def _child(self, fds: list[int]) -> None:
        """In the forked guest: its own fds on 0-2, nothing of the template's left open, then its own limits."""
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        self._forget()
        set_name(b"dpmsf-guest")
        self.worker.became_guest()

    def _forget(self) -> None:
        """Close the template's own channel and wakeup pipe, and stop reaping: this process is a guest now."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self.sock.close()
        os.close(self.wake_r)
        os.close(self.wake_w)

    def _exactly(self, n: int) -> bytes:
        chunks = []
        while n > 0:
            chunk = self.sock.recv(min(n, 1 << 16))
            if not chunk:
                os._exit(0)
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def _drain_wake(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _reap(self) -> None:
        """Every guest that ended: its status to the server."""
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            cpu = usage.ru_utime + usage.ru_stime  # gone from /proc once reaped: the server meters it from here
            self._say(f"X {pid} {os.waitstatus_to_exitcode(status)} {cpu:.6f}\n".encode())

    def _say(self, line: bytes) -> None:
        try:
            self.sock.sendall(line)
        except OSError:
            os._exit(0)
