"""Google's Firestore emulator on 127.0.0.1 for tests, started once per session, so the client talks gRPC as it
does against Firestore; a pytest plugin (``pytest_plugins = ["firestore_emulator"]``) with two fixtures:

- ``firestore_emulator``: ``host:port`` of the running emulator (session-wide; skipped, saying why, when the Google
  Cloud CLI or its ``cloud-firestore-emulator`` component is missing),
- ``firestore_env``: sets ``FIRESTORE_EMULATOR_HOST`` and ``GOOGLE_CLOUD_PROJECT`` for the test and empties the
  emulator first (its ``DELETE .../documents`` endpoint), so tests sharing one emulator start clean.

The component ships with the CLI's Debian package ``google-cloud-cli-firestore-emulator``;
``gcloud components install cloud-firestore-emulator`` works only on a CLI installed from Google's archive (the
component manager is off in the Debian package).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from ports import free_port

from dpmsf_core.gcp.emulator import stop_group

PROJECT = "demo-dpmsf-test"  # "demo-" projects never reach Google even if the emulator variable were lost


class EmulatorMissing(RuntimeError):
    """The CLI or its emulator component is not installed here: tests skip with this message."""


def _answers(host: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}/", timeout=0.5) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def firestore_emulator_process(timeout: float = 90.0) -> Iterator[str]:
    """``gcloud emulators firestore start`` on a free loopback port; yields ``host:port``, stops it after."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        raise EmulatorMissing("the Google Cloud CLI (gcloud) is not on PATH: the Firestore emulator cannot start")
    host = f"127.0.0.1:{free_port()}"
    log = tempfile.NamedTemporaryFile(prefix="firestore-emulator-", suffix=".log", delete=False)
    env = {**os.environ, "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}
    env.pop("FIRESTORE_EMULATOR_HOST", None)
    proc = subprocess.Popen(
        [gcloud, "emulators", "firestore", "start", f"--host-port={host}", "--quiet"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while not _answers(host):
            if proc.poll() is not None:
                output = Path(log.name).read_text(errors="replace").strip()
                if "component" in output.lower() or "not installed" in output.lower():
                    raise EmulatorMissing(f"the Firestore emulator component is missing: {output[-400:]}")
                raise RuntimeError(f"the Firestore emulator exited with code {proc.returncode}: {output[-1000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Firestore emulator did not answer on {host} within {timeout} s")
            time.sleep(0.1)
        yield host
    finally:
        stop_group(proc)
        log.close()
        Path(log.name).unlink(missing_ok=True)


def reset(host: str, project: str = PROJECT) -> None:
    """Delete every document of ``project`` in the emulator (its own endpoint; not part of Firestore's API)."""
    url = f"http://{host}/emulator/v1/projects/{project}/databases/(default)/documents"
    with urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=60):  # slow on a busy machine
        pass


@pytest.fixture(scope="session")
def firestore_emulator() -> Iterator[str]:
    """One emulator for the whole run (it takes ~7 s to start); ``host:port``."""
    try:
        with firestore_emulator_process() as host:
            yield host
    except EmulatorMissing as exc:
        if os.environ.get("DPMSF_REQUIRE_FIRESTORE") == "1":
            pytest.fail(f"{exc} (DPMSF_REQUIRE_FIRESTORE=1: this test must run)")
        pytest.skip(str(exc))


@pytest.fixture
def firestore_env(firestore_emulator: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The emulator for clients made in this test (environment variables), emptied first; ``host:port``."""
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
    reset(firestore_emulator)
    return firestore_emulator
