"""Run uvicorn for ``dpmsf serve`` and print the banner only once the port is bound, so that what it says is true
(a port in use fails before any banner), with one or several workers. Imported by ``dpmsf serve`` only."""

from __future__ import annotations

import inspect
import os
import shutil
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import uvicorn

if TYPE_CHECKING:
    from types import FrameType

    from uvicorn.supervisors import Multiprocess


def banner_lines(host: str, port: int, endpoints: int | None, folders: list[str]) -> list[str]:
    """What ``dpmsf serve`` prints when it is ready; says how to reach ``dpmsf`` when it is not on PATH."""
    base = f"http://{host}:{port}"
    lines = []
    if endpoints is not None:
        lines.append(f"DPMSF: {endpoints} endpoints from {', '.join(folders)}")
    lines.append(f"DPMSF: {base}/rest/services/__dir__/  docs: {base}/docs")
    hint = path_hint()
    if hint:
        lines.append(f"DPMSF: {hint}")
    return lines


def path_hint() -> str | None:
    """None when ``dpmsf`` on PATH is this one; else the exact way to run it (``.venv/bin/dpmsf``, ``activate``)."""
    here = os.path.join(os.path.dirname(sys.executable), "dpmsf")
    found = shutil.which("dpmsf")
    if found and os.path.realpath(found) == os.path.realpath(here):
        return None
    if not os.path.exists(here):
        return None  # run as ``python -m dpmsf_core``: nothing installed to point at
    shown = os.path.relpath(here) if not os.path.relpath(here).startswith("..") else here
    activate = os.path.join(os.path.dirname(shown), "activate")
    return f"'dpmsf' is not on your PATH: run {shown}, or 'source {activate}' first"


def _config(app: Any, options: dict[str, Any], **extra: Any) -> uvicorn.Config:
    """uvicorn's config with our HTTP protocol: header and body deadlines, a connection limit (``slow_clients``)."""
    from ..slow_clients import Limits, guarded_protocol

    limits = Limits.from_env()
    config = uvicorn.Config(app, **{"http": guarded_protocol(limits), **options, **extra})
    config.dpmsf_limits = limits  # type: ignore[attr-defined]  # read by the protocol, in every worker process
    return config


def run(app: Any, options: dict[str, Any], workers: int, banner: Callable[[], list[str]]) -> None:
    """``uvicorn.run(app, **options)``, plus the banner after the listening socket exists."""

    def show() -> None:
        for line in banner():
            print(line, file=sys.stderr, flush=True)

    if workers > 1:
        from uvicorn.supervisors import Multiprocess

        _Supervisor = _draining_supervisor()

        config = _config(app, options, workers=workers, factory=True)
        sock = config.bind_socket()  # the supervisor binds once; every worker serves that socket
        show()
        kwargs: dict[str, Any] = {"sockets": [sock]}
        if "target" in inspect.signature(Multiprocess).parameters:  # uvicorn before 0.30 wanted the target too
            kwargs["target"] = uvicorn.Server(config).run
        try:
            _Supervisor(config, **kwargs).run()
        except KeyboardInterrupt:
            pass
        return
    server = _BannerServer(_config(app, options), show)
    # uvicorn drains on SIGTERM, then raises the signal again once its own handler is gone, so the process would
    # die of it (exit -15). A drain that finished is a clean stop for an orchestrator: exit 0, so this handler is
    # what uvicorn restores and re-raises into.
    signal.signal(signal.SIGTERM, _drained)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    if not server.started:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE: the port was taken, or the app's startup failed
    _leave_stuck_threads()


def _leave_stuck_threads(wait: float = 1.0) -> None:
    """Exit now when a sync function still runs after the grace period: Python would wait for its thread at exit,
    however long it takes, and the orchestrator would end us with SIGKILL instead of a clean exit."""
    import threading
    import time

    deadline = time.monotonic() + wait
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon and t.is_alive()]
    if stuck:
        import logging

        logging.getLogger("dpmsf").warning(
            "%d request(s) still running after the grace period (DPMSF_GRACE_SECONDS): exiting without them", len(stuck)
        )
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _draining_supervisor() -> type[Multiprocess]:
    """uvicorn's supervisor, closing its copy of the listening socket on SIGTERM: while the workers drain, a new
    connection is refused at once (and sent elsewhere by a load balancer) instead of waiting in the backlog."""
    from uvicorn.supervisors import Multiprocess

    class Supervisor(Multiprocess):
        def handle_term(self) -> None:
            for sock in self.sockets:
                sock.close()
            super().handle_term()

    return Supervisor


def _drained(signum: int, frame: FrameType | None) -> None:
    """SIGTERM outside uvicorn's own handling: the server has stopped and drained already; nothing left to do."""


class _BannerServer(uvicorn.Server):
    """A uvicorn server that announces itself after ``startup`` bound the port (and not if it could not)."""

    def __init__(self, config: uvicorn.Config, show: Callable[[], None]) -> None:
        super().__init__(config)
        self._show = show

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit:
            self._show()
