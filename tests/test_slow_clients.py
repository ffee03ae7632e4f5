"""Slow clients over real HTTP, raw sockets against ``dpmsf serve``: header and body deadlines (408), a connection
limit (503), and an honest client served promptly while 50 slowloris clients try to hold the server."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import free_port
from serverproc import running

from dpmsf_core.errors import ConfigError
from dpmsf_core.slow_clients import Limits

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 2.0  # DPMSF_HEADER_TIMEOUT and DPMSF_BODY_TIMEOUT here (defaults 10 and 60 s)
PING = """
import os
from dpmsf_core import RequestInfo

def ping():
    return 'pong'

def echo(text: str = ''):
    return text

def keep(request: RequestInfo):
    with open(os.environ["KEEP_FILE"], "ab") as fh:
        fh.write(request.body + b"|")
    return len(request.body)
"""


def _serve(tmp_path: Path, workers: int, **env: str) -> Iterator[str]:
    plugins = tmp_path / "plugins"
    plugins.mkdir(exist_ok=True)
    (plugins / "ping.py").write_text(PING)
    port = free_port()
    full = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DPMSF_")},
        "DPMSF_STATE_DIR": str(tmp_path / "state"),
        "DPMSF_HEADER_TIMEOUT": str(TIMEOUT),
        "DPMSF_BODY_TIMEOUT": str(TIMEOUT),
        "KEEP_FILE": str(tmp_path / "kept"),
        **env,
    }
    command = [sys.executable, "-m", "dpmsf_core", "serve", "--port", str(port), "--plugins", str(plugins)]
    command += ["--workers", str(workers)]
    base = f"http://127.0.0.1:{port}"
    with running(command, ROOT, full, tmp_path / f"server-{port}.log", base + "/rest/services/ping/"):
        yield base


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    yield from _serve(tmp_path, 1)


def _connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed ``sock`` within ``seconds``, and what it sent before."""
    sock.settimeout(0.2)
    data = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, data
        if not chunk:
            return True, data
        data += chunk
    return False, data


def test_fifty_slowloris_clients_do_not_hold_the_server(server: str) -> None:
    slow = [_connect(server) for _ in range(50)]
    started = time.monotonic()
    for sock in slow:
        sock.sendall(b"GET /rest/services/ping/ HTTP/1.1\r\nHost: x\r\n")
    for _ in range(3):  # a header line now and then, as slowloris does, never the blank line that ends them
        time.sleep(0.3)
        for sock in slow:
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                pass
    honest = time.monotonic()
    answer = httpx.get(server + "/rest/services/ping/", timeout=10)
    assert answer.status_code == 200 and answer.json() == {"results": "pong"}
    assert time.monotonic() - honest < 1.0  # served promptly meanwhile
    outcomes = [_closed_within(sock, TIMEOUT * 3) for sock in slow]
    elapsed = time.monotonic() - started
    assert all(closed for closed, _ in outcomes), sum(1 for closed, _ in outcomes if not closed)
    assert elapsed < TIMEOUT * 4  # each closed within about its deadline, not only eventually
    said = [data for _, data in outcomes]
    assert sum(1 for data in said if data.startswith(b"HTTP/1.1 408 ")) >= 45, said[:3]
    assert b"DPMSF_HEADER_TIMEOUT" in said[0]
    for sock in slow:
        sock.close()


def test_a_client_that_never_speaks_is_closed(server: str) -> None:
    sock = _connect(server)
    closed, _ = _closed_within(sock, TIMEOUT * 3)
    sock.close()
    assert closed


def test_a_body_that_never_arrives_is_a_408(server: str) -> None:
    sock = _connect(server)
    sock.sendall(
        b"POST /rest/services/echo/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"text": "'
    )
    started = time.monotonic()
    closed, data = _closed_within(sock, TIMEOUT * 3)
    sock.close()
    assert closed and time.monotonic() - started < TIMEOUT * 3
    assert data.startswith(b"HTTP/1.1 408 "), data[:200]
    assert b"DPMSF_BODY_TIMEOUT" in data and b"application/problem+json" in data
    assert b'"type": "https://dpmsf.dev/problems/request-timeout"' in data
    assert httpx.post(server + "/rest/services/echo/", json={"text": "hi"}, timeout=10).json() == {"results": "hi"}


def test_a_body_cut_short_never_reaches_the_function(server: str, tmp_path: Path) -> None:
    sock = _connect(server)
    sock.sendall(b"POST /rest/services/keep/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n")
    sock.sendall(b"Content-Length: 1000\r\n\r\npartial")
    closed, data = _closed_within(sock, TIMEOUT * 3)
    sock.close()
    assert closed and data.startswith(b"HTTP/1.1 408 ")
    gone = _connect(server)  # and a client that leaves half-way
    gone.sendall(b"POST /rest/services/keep/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nhalf")
    time.sleep(0.3)
    gone.close()
    time.sleep(0.5)
    answer = httpx.post(server + "/rest/services/keep/", content=b"whole", timeout=10)
    assert answer.json() == {"results": 5}
    assert (tmp_path / "kept").read_bytes() == b"whole|"  # never a partial body


def test_a_keep_alive_connection_gets_a_deadline_for_each_request(server: str) -> None:
    sock = _connect(server)
    sock.sendall(b"GET /rest/services/ping/ HTTP/1.1\r\nHost: x\r\n\r\n")
    first = b""
    while b"pong" not in first:
        first += sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 200 ")
    sock.sendall(b"GET /rest/services/ping/ HTTP/1.1\r\nHost: x\r\n")  # the next request, never finished
    closed, data = _closed_within(sock, TIMEOUT * 3)
    sock.close()
    assert closed


def test_the_connection_limit(tmp_path: Path) -> None:
    for base in _serve(tmp_path, 1, DPMSF_MAX_CONNECTIONS="20", DPMSF_HEADER_TIMEOUT="30"):
        held = [_connect(base) for _ in range(20)]
        time.sleep(0.3)
        extra = _connect(base)
        closed, data = _closed_within(extra, 3)
        extra.close()
        assert closed and data.startswith(b"HTTP/1.1 503 "), data[:200]
        assert b"DPMSF_MAX_CONNECTIONS" in data
        for sock in held:
            sock.close()
        time.sleep(0.3)
        assert httpx.get(base + "/rest/services/ping/", timeout=10).status_code == 200


def test_two_workers_get_the_deadlines_too(tmp_path: Path) -> None:
    """``--workers 2``: uvicorn's worker processes receive the protocol and its limits pickled."""
    for base in _serve(tmp_path, 2):
        sock = _connect(base)
        sock.sendall(b"GET / HTTP/1.1\r\n")
        closed, data = _closed_within(sock, TIMEOUT * 3)
        sock.close()
        assert closed and data.startswith(b"HTTP/1.1 408 ")


def test_settings_are_checked() -> None:
    assert Limits.from_env({}).header_timeout == 10.0
    assert Limits.from_env({"DPMSF_MAX_CONNECTIONS": "7"}).max_connections == 7
    with pytest.raises(ConfigError, match="Config 'DPMSF_HEADER_TIMEOUT' has value 'soon'"):
        Limits.from_env({"DPMSF_HEADER_TIMEOUT": "soon"})
    with pytest.raises(ConfigError, match="greater than 0"):
        Limits.from_env({"DPMSF_BODY_TIMEOUT": "0"})


def test_gunicorn_as_app_yaml_runs_it(tmp_path: Path) -> None:
    """App Engine's and the container's command line: the worker class has the same deadlines."""
    import shlex

    import yaml

    entrypoint = yaml.safe_load((ROOT / "app.yaml").read_text())["entrypoint"]
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "ping.py").write_text(PING)
    port = free_port()
    argv = shlex.split(entrypoint.replace("-b :$PORT", f"-b 127.0.0.1:{port}"))
    argv[0] = str(Path(sys.executable).parent / "gunicorn")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DPMSF_")},
        "DPMSF_STATE_DIR": str(tmp_path / "state"),
        "DPMSF_PLUGINS": str(plugins),
        "DPMSF_HEADER_TIMEOUT": str(TIMEOUT),
    }
    base = f"http://127.0.0.1:{port}"
    with running(argv, ROOT, env, tmp_path / "gunicorn.log", base + "/rest/services/ping/"):
        sock = _connect(base)
        sock.sendall(b"GET /rest/services/ping/ HTTP/1.1\r\nHost: x\r\n")
        closed, data = _closed_within(sock, TIMEOUT * 3)
        sock.close()
        assert closed and data.startswith(b"HTTP/1.1 408 "), data[:200]
