"""What an orchestrator asks of ``dpmsf serve``, over real HTTP: ``/healthz``, ``/readyz`` (and why not ready, with
nothing secret in the answer), a drain on SIGTERM that lets a slow request finish and exits 0, JSON log lines."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ROOT
from ports import free_port
from serverproc import running

DPMSF = str(Path(sys.executable).parent / "dpmsf")
SLOW = '''
import time


def nap(seconds: float) -> str:
    """Sleeps, then answers: a request still running when the server is told to stop."""
    time.sleep(seconds)
    return "rested"
'''


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    plugins = tmp / "plugins"
    plugins.mkdir(exist_ok=True)
    (plugins / "slow.py").write_text(SLOW)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DPMSF_", "AWS_"))}
    env.update({"DPMSF_PLUGINS": str(plugins), "DPMSF_STATE_DIR": str(tmp / "state"), **extra})
    env.pop("ADMIN_ID", None)
    return env


@contextmanager
def serve(tmp: Path, **extra: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [DPMSF, "serve", "--port", str(port)]
    with running(command, ROOT, _env(tmp, **extra), tmp / "server.log", f"{base}/healthz") as proc:
        yield base, proc


def test_healthz_and_readyz_answer_when_everything_is_there(tmp_path: Path) -> None:
    with serve(tmp_path, DPMSF_REPLAY_STORE=f"sqlite:///{tmp_path}/replay.db") as (base, _):
        health = httpx.get(f"{base}/healthz")
        ready = httpx.get(f"{base}/readyz")
        head = httpx.head(f"{base}/readyz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert ready.status_code == 200, ready.text
    assert ready.json() == {
        "status": "ready",
        "checks": {"plugins": "ok", "store": "ok", "tenants": "ok", "replay": "ok"},
    }
    assert head.status_code == 200
    assert not (tmp_path / "state" / "store.db").exists()  # the probe creates nothing


def test_readyz_says_which_store_is_not_writable_and_not_where_it_is(tmp_path: Path) -> None:
    blocker = tmp_path / "secret-place-not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    with serve(tmp_path, DPMSF_STORE=f"sqlite:///{blocker}/store.db") as (base, _):
        health = httpx.get(f"{base}/healthz")
        ready = httpx.get(f"{base}/readyz")
    assert health.status_code == 200  # alive: no reason to restart it, only to send it no traffic
    assert ready.status_code == 503
    assert ready.headers["content-type"].startswith("application/problem+json")
    body = ready.json()
    assert body["checks"] == {"plugins": "ok", "store": "unreachable", "tenants": "ok"}
    assert body["detail"] == "Not ready: store."
    assert "secret-place" not in ready.text and str(tmp_path) not in ready.text
    assert "Traceback" not in ready.text
    log = (tmp_path / "server.log").read_text()
    assert "readiness: store is unreachable" in log  # the reason is for the operator, in the log


def test_readyz_answers_503_at_once_when_dynamodb_is_refused(tmp_path: Path) -> None:
    closed = free_port()  # nothing listens there
    with serve(
        tmp_path,
        DPMSF_REPLAY_STORE="dynamodb://tokens",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{closed}",
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test-secret-key",
        AWS_DEFAULT_REGION="us-east-1",
    ) as (base, _):
        started = time.monotonic()
        first = httpx.get(f"{base}/readyz", timeout=10)
        took = time.monotonic() - started
        time.sleep(1.2)  # past the cache; the first check may have spent its second importing boto3
        ready = httpx.get(f"{base}/readyz", timeout=10)
    assert first.status_code == 503
    assert ready.status_code == 503
    assert ready.json()["checks"]["replay"] == "unreachable"
    assert str(closed) not in ready.text and "test-secret-key" not in ready.text
    assert took < 5  # boto3's default would retry for many seconds


class BlackHole:
    """A port that accepts connections and never answers: a database that hangs. Counts the connections."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def test_readyz_is_bounded_in_time_and_a_probe_flood_costs_one_check_a_second(tmp_path: Path) -> None:
    hole = BlackHole()
    try:
        with serve(
            tmp_path,
            DPMSF_REPLAY_STORE="dynamodb://tokens",
            AWS_ENDPOINT_URL=f"http://127.0.0.1:{hole.port}",
            AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test",
            AWS_DEFAULT_REGION="us-east-1",
        ) as (base, _):
            started = time.monotonic()
            first = httpx.get(f"{base}/readyz", timeout=10)
            took = time.monotonic() - started

            def probe(_: int) -> tuple[int, float]:
                t0 = time.monotonic()
                answer = httpx.get(f"{base}/readyz", timeout=10)
                return answer.status_code, time.monotonic() - t0

            flood_started = time.monotonic()
            with ThreadPoolExecutor(16) as pool:
                answers = list(pool.map(probe, range(200)))
            flood_took = time.monotonic() - flood_started
            health = httpx.get(f"{base}/healthz", timeout=2)
    finally:
        hole.close()
    assert first.status_code == 503 and first.json()["checks"]["replay"] == "timeout"
    assert took < 3.5  # each check has 1 s
    assert {status for status, _ in answers} == {503}
    assert max(t for _, t in answers) < 3.5
    assert health.status_code == 200  # the hung database never blocks the liveness probe
    # one connection per check round at most (a hung check is awaited again, not started twice)
    assert len(hole.accepted) <= 2 + flood_took, (len(hole.accepted), flood_took)


def _slow_call(base: str, seconds: float, out: dict[str, Any]) -> None:
    try:
        answer = httpx.get(f"{base}/rest/services/nap/", params={"seconds": seconds}, timeout=30)
        out["status"], out["body"] = answer.status_code, answer.json()
    except Exception as exc:  # reported by the test's assertion
        out["error"] = repr(exc)


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "workers-2"])
def test_sigterm_lets_a_slow_request_finish_refuses_new_ones_and_exits_0(tmp_path: Path, workers: int) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [DPMSF, "serve", "--port", str(port), "--workers", str(workers)]
    env = _env(tmp_path, DPMSF_GRACE_SECONDS="20")
    with running(command, ROOT, env, tmp_path / "server.log", f"{base}/healthz") as proc:
        out: dict[str, Any] = {}
        caller = threading.Thread(target=_slow_call, args=(base, 3, out))
        caller.start()
        time.sleep(0.8)  # the request is in flight
        proc.send_signal(signal.SIGTERM)
        refused_at = None
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    pass
            except OSError:
                refused_at = time.monotonic()
                break
            time.sleep(0.05)
        assert refused_at is not None, "the server still accepted connections after SIGTERM"
        assert proc.poll() is None  # still draining
        caller.join(30)
        code = proc.wait(timeout=20)
    assert out == {"status": 200, "body": {"results": "rested"}}, out
    assert code == 0, (tmp_path / "server.log").read_text()[-3000:]


def test_a_request_longer_than_the_grace_period_is_cut_and_the_server_still_exits(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [DPMSF, "serve", "--port", str(port)]
    env = _env(tmp_path, DPMSF_GRACE_SECONDS="1")
    with running(command, ROOT, env, tmp_path / "server.log", f"{base}/healthz") as proc:
        out: dict[str, Any] = {}
        caller = threading.Thread(target=_slow_call, args=(base, 20, out))
        caller.start()
        time.sleep(0.8)
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
        took = time.monotonic() - stopped
        caller.join(30)
    assert took < 8, took  # the grace period (1 s) and shutdown, not the request's 20 s
    assert code == 0
    assert "status" not in out  # the request was cut, not answered


def test_dpmsf_serve_logs_json_lines_when_asked(tmp_path: Path) -> None:
    with serve(tmp_path, DPMSF_LOG_FORMAT="json") as (base, proc):
        httpx.get(f"{base}/rest/services/nap/", params={"seconds": 0})
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    lines = [line for line in (tmp_path / "server.log").read_text().splitlines() if line.strip()]
    logged = [json.loads(line) for line in lines if not line.startswith("DPMSF:")]  # the banner is for people
    assert logged, lines
    access = [entry for entry in logged if entry.get("logger") == "dpmsf.access"]
    assert any("/rest/services/nap/" in entry["message"] for entry in access), logged
    assert {"severity", "message", "time"} <= set(access[0])
    assert any(entry["message"] == "Shutting down" for entry in logged), logged


def test_the_container_command_drains_on_sigterm_too(tmp_path: Path) -> None:
    """The Dockerfile's gunicorn command line (and app.yaml's): a slow request finishes after SIGTERM, exit 0."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    command = [gunicorn, "-c", "dpmsf_core/gunicorn_conf.py", "-k", "dpmsf_core.gunicorn_worker.UvicornWorker"]
    command += ["-w", "1", "-b", f"127.0.0.1:{port}", "handler.gae:app"]
    env = _env(tmp_path, DPMSF_GRACE_SECONDS="15")
    with running(command, ROOT, env, tmp_path / "server.log", f"{base}/healthz") as proc:
        out: dict[str, Any] = {}
        caller = threading.Thread(target=_slow_call, args=(base, 2, out))
        caller.start()
        time.sleep(0.8)
        proc.send_signal(signal.SIGTERM)
        caller.join(30)
        code = proc.wait(timeout=20)
    assert out == {"status": 200, "body": {"results": "rested"}}, (tmp_path / "server.log").read_text()[-3000:]
    assert code == 0
