"""A Cloud Storage emulator (PyPI ``gcp-storage-emulator``) on 127.0.0.1, started and stopped by the tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from ports import free_port


def _command() -> list[str] | None:
    """The emulator's console script beside this interpreter (the project's virtualenv), else on PATH."""
    beside = Path(sys.executable).with_name("gcp-storage-emulator")
    found = str(beside) if beside.exists() else shutil.which("gcp-storage-emulator")
    return [found] if found else None


@contextmanager
def gcs_emulator(port: int | None = None) -> Iterator[str]:
    """Yield ``http://127.0.0.1:<port>`` of a fresh in-memory emulator; skip (saying why) if it is not installed."""
    command = _command()
    if command is None:
        pytest.skip("gcp-storage-emulator is not installed (pip install -e '.[dev]')")
    port = port or free_port()
    proc = subprocess.Popen(
        [*command, "start", "--host=127.0.0.1", f"--port={port}", "--in-memory"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gcp-storage-emulator exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("gcp-storage-emulator did not listen within 20 s") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
