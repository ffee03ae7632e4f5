"""A real moto S3/DynamoDB server on 127.0.0.1 for tests, so boto3 talks HTTP as it does against AWS."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ports import free_port

_FAKE_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
REGION = "us-east-1"


def _moto_executable() -> str:
    """The venv's moto_server, next to the running interpreter."""
    candidate = Path(sys.executable).parent / "moto_server"
    return str(candidate) if candidate.exists() else "moto_server"


def _wait_until_up(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll the moto API until it answers, so the first test call never races the server start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with code {proc.returncode} before answering on {url}")
        try:
            with urllib.request.urlopen(url + "/moto-api/", timeout=0.5):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    raise RuntimeError(f"moto_server did not answer on {url} within {timeout} s")


@contextlib.contextmanager
def moto_server(timeout: float = 15.0) -> Iterator[str]:
    """Start ``moto_server`` on a free port as a subprocess, yield its endpoint URL, stop it after."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    proc = subprocess.Popen(
        [_moto_executable(), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        _wait_until_up(url, proc, timeout)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def reset(endpoint_url: str) -> None:
    """Drop every bucket and table in the server, so tests sharing one server start clean."""
    req = urllib.request.Request(endpoint_url + "/moto-api/reset", method="POST")
    with urllib.request.urlopen(req, timeout=5):
        pass


def client(service: str, endpoint_url: str, **kwargs: Any) -> Any:
    """A boto3 client for the moto server with fake credentials (no environment variables needed)."""
    import boto3

    made = boto3.client(service, endpoint_url=endpoint_url, region_name=REGION, **_FAKE_CREDENTIALS, **kwargs)
    _OPEN_CLIENTS.append(made)
    return made


# Clients made by tests, closed after each test (``close_clients``, from conftest): a client left to the garbage
# collector closes its sockets whenever it is collected, and the ResourceWarning then fails an unrelated test.
_OPEN_CLIENTS: list[Any] = []


def close_clients() -> None:
    """Close the connections of every client made so far. They are kept (a few dozen per run) because a module's
    client closed after one test reconnects in the next, and must be closed again."""
    for made in _OPEN_CLIENTS:
        made.close()
