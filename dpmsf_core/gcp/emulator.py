"""Google's Firestore emulator for a local run: found (``FIRESTORE_EMULATOR_HOST``) or started on a free loopback
port with ``gcloud emulators firestore start``, and stopped with the server it served.

The emulator is a Java program behind a shell script: it runs in its own session, so that stopping it stops the
whole group, and so that a Ctrl-C meant for the server does not reach it before the server has finished.
Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

INSTALL = (
    "install the Google Cloud CLI with its emulator (apt-get install google-cloud-cli-firestore-emulator, or gcloud"
    " components install cloud-firestore-emulator), or start one and set FIRESTORE_EMULATOR_HOST"
    " (gcloud emulators firestore start --host-port=127.0.0.1:8086, then FIRESTORE_EMULATOR_HOST=127.0.0.1:8086)"
)


class EmulatorError(RuntimeError):
    """The emulator is missing, or did not start: the message says what to install or run."""


def answers(host: str, timeout: float = 0.5) -> bool:
    """True when ``host:port`` answers its root as the emulator does (200 ``Ok``)."""
    try:
        with urllib.request.urlopen(f"http://{host}/", timeout=timeout) as answer:
            return bool(answer.status == 200)
    except (OSError, ValueError):
        return False


def warm_up(host: str, project: str, timeout: float = 60.0) -> None:
    """One read, before any server asks: the emulator's first call takes seconds (its JVM warming up), which two
    workers meeting it at once could outlast their 10 s deadline with. A missing document is the expected answer."""
    url = f"http://{host}/v1/projects/{project}/databases/(default)/documents/dpmsf-warm-up/none"
    request = urllib.request.Request(url, headers={"Authorization": "Bearer owner"})
    with contextlib.suppress(OSError, ValueError):
        with urllib.request.urlopen(request, timeout=timeout):
            pass  # (urllib raises on the 404 itself: an HTTPError is an OSError)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """gcloud runs a shell script that runs java: the whole process group goes (it was started in its own)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def started(gcloud: str, *, timeout: float = 90.0) -> Iterator[tuple[str, Path]]:
    """``gcloud emulators firestore start`` on a free loopback port; yields (``host:port``, its log file) once it
    answers, and stops it (its whole process group) afterwards."""
    found = shutil.which(gcloud)
    if found is None:
        raise EmulatorError(f"'{gcloud}' is not on PATH: {INSTALL}")
    host = f"127.0.0.1:{_free_port()}"
    fd, name = tempfile.mkstemp(prefix="dpmsf-firestore-emulator-", suffix=".log")  # kept: its path is printed
    os.close(fd)
    log = Path(name)
    env = {**os.environ, "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}
    env.pop("FIRESTORE_EMULATOR_HOST", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [found, "emulators", "firestore", "start", f"--host-port={host}", "--quiet"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while not answers(host):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace").strip()[-1500:]
                why = (
                    f"exited with code {proc.returncode}"
                    if proc.poll() is not None
                    else f"gave no answer in {timeout:g} s"
                )
                raise EmulatorError(f"the Firestore emulator {why}; {INSTALL}. Its log ({log}):\n{tail}")
            time.sleep(0.2)
        yield host, log
    finally:
        stop_group(proc)
