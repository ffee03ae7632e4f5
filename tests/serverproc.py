"""A real server process for tests: started in its own process group, awaited until a URL answers, stopped with
SIGTERM (so its shutdown lines are logged too), SIGKILL if it lingers."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest


@contextmanager
def running(
    command: list[str],
    cwd: Path,
    env: Mapping[str, str],
    log: Path,
    url: str,
    wait: float = 40,
    status: int | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` with stdout and stderr into ``log``; fail the test (with the log) if ``url`` never answers
    (with ``status``, when given: a proxy in front of a starting app may answer before the app does)."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, cwd=cwd, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + wait
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"{command[0]} exited with {proc.returncode}: {log.read_text()[-4000:]}")
                try:
                    answer = httpx.get(url, timeout=2)
                    if status is None or answer.status_code == status:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"{command[0]} not answering at {url} after {wait:.0f} s: {log.read_text()[-4000:]}")
                time.sleep(0.2)
            yield proc
        finally:
            if proc.poll() is None:  # a test may have stopped it already
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
