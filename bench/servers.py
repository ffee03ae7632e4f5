"""The one way every bench starts a server: uvicorn, one worker, access log off, on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``Server("dpmsf_core.asgi:create", env, factory=True)``; ``url(path)`` for requests, ``close()`` to stop."""

    def __init__(
        self, target: str = "dpmsf_core.asgi:create", env: dict[str, str] | None = None, factory: bool = False
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        args = [
            sys.executable,
            "-m",
            "uvicorn",
            target,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--no-access-log",
            "--log-level",
            "warning",
            "--workers",
            "1",
        ]
        if factory:
            args.append("--factory")
        self.proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, **(env or {})})
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"{target} did not start") from None
                time.sleep(0.05)

    def url(self, path: str) -> str:
        return self.base + path

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
