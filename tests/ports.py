"""The one way tests pick a port: one that nobody listens on right now, on 127.0.0.1 (also what a test that needs a
closed port uses)."""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
