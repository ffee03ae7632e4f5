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

from dpmsf_core.tenancy.tokens import generate_key, mint

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "00000000-0000-4000-8000-0000000000ae"
ADMIN_KEY = generate_key()


@pytest.fixture(scope="module")
def gae_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    missing = [m for m in ("gunicorn", "uvicorn_worker") if importlib.util.find_spec(m) is None]
    if missing:
        reason = f"{', '.join(missing)} not installed (pip install -e '.[gae]')"
        print(f"skipping App Engine test: {reason}")
        pytest.skip(reason)
    port = free_port()
    state = tmp_path_factory.mktemp("gae")
    # app.yaml's env_variables apply; ours win where set. Its Firestore stores become SQLite files here, each one
    # shared by both workers (the Firestore defaults run against the emulator in test_app_yaml_firestore_defaults).
    env = {
        **os.environ,
        "DPMSF_STATE_DIR": str(state),
        "ADMIN_ID": ADMIN,
        "DPMSF_ADMIN_KEY": ADMIN_KEY,
        "DPMSF_TENANTS": f"sqlite:///{state}/tenants.db",
        "DPMSF_STORE": f"sqlite:///{state}/store.db",
        "DPMSF_REPLAY_STORE": f"sqlite:///{state}/replay.db",
    }
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


@pytest.mark.slow
def test_a_token_is_single_use_across_both_workers(gae_server: str) -> None:
    """app.yaml runs two gunicorn workers: one replay store (Firestore there, one SQLite file here) for both."""
    token = mint(ADMIN, ADMIN_KEY)
    codes = [
        httpx.get(gae_server + "/rest/services/hello-world/", headers={"authorization": f"Bearer {token}"}, timeout=10)
        for _ in range(6)
    ]
    assert sorted(r.status_code for r in codes) == [200, 401, 401, 401, 401, 401]


def test_gcprunner_applies_app_yaml_and_binds_loopback() -> None:
    script = (ROOT / "gcprunner.sh").read_text()
    out = subprocess.run(
        ["bash", "-c", script.replace('exec bash -c "exec $entrypoint"', 'env | sort; echo "$entrypoint"')],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], "DPMSF_REQUIRE_TOKENS": "1"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "DPMSF_STATE_DIR=/tmp/dpmsf\n" in out and "DPMSF_REPLAY_STORE=firestore://dpmsf-replay\n" in out
    assert "DPMSF_TENANTS=firestore://dpmsf-tenants\n" in out and "DPMSF_STORE=firestore://dpmsf-store\n" in out
    assert "DPMSF_REQUIRE_TOKENS=1\n" in out  # the caller's environment wins over app.yaml
    assert "-b 127.0.0.1:$PORT" in out and "PORT=8080\n" in out
