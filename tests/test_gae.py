"""App Engine: ./gcprunner.sh runs app.yaml's entrypoint (gunicorn + uvicorn workers on handler.gae:app) locally."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def gae_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    missing = [m for m in ("gunicorn", "uvicorn_worker") if importlib.util.find_spec(m) is None]
    if missing:
        reason = f"{', '.join(missing)} not installed (pip install -e '.[gae]')"
        print(f"skipping App Engine test: {reason}")
        pytest.skip(reason)
    port = free_port()
    state = tmp_path_factory.mktemp("gae")
    env = {**os.environ, "DPMSF_STATE_DIR": str(state), "DPMSF_REPLAY_STORE": "memory"}
    env.pop("AWS_LAMBDA_FUNCTION_NAME", None)
    log = (state / "server.log").open("w")
    proc = subprocess.Popen(
        ["./gcprunner.sh", str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"gcprunner.sh exited with {proc.returncode}: {(state / 'server.log').read_text()}")
            try:
                if httpx.get(base + "/", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"gcprunner.sh not answering on {port}: {(state / 'server.log').read_text()}")
            time.sleep(0.2)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.mark.slow
def test_directory_and_plugin(gae_server: str) -> None:
    directory = httpx.get(gae_server + "/rest/services/__dir__/", timeout=10)
    assert directory.status_code == 200
    apis = {e["api"] for e in directory.json()["endpoints"]}
    assert {"hello-world", "sample-one"} <= apis

    hello = httpx.get(gae_server + "/rest/services/hello-world/", params={"name": "x"}, timeout=10)
    assert hello.status_code == 200
    assert hello.json()["results"]["hello"] == "x"
    assert hello.headers["x-request-id"]


@pytest.mark.slow
def test_errors_are_problem_json(gae_server: str) -> None:
    missing = httpx.get(gae_server + "/rest/services/no-such-api/", timeout=10)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
