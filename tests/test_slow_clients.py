"""Slow clients over real HTTP, raw sockets against ``dpmsf serve``: header and body deadlines (408), a connection
limit (503), and an honest client served promptly while 50 slowloris clients try to hold the server."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ports import free_port
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

def big(size: int = 5_500_000):
    return 'x' * size

def keep(request: RequestInfo):
    with open(os.environ["KEEP_FILE"], "ab") as fh:
        fh.write(request.body + b"|")
    return len(request.body)
"""


def _serve(tmp_path: Path, workers: int, **env: str) -> Iterator[str]:
    for base, _ in _serve_proc(tmp_path, workers, **env):
        yield base


def _serve_proc(tmp_path: Path, workers: int, **env: str) -> Iterator[tuple[str, Any]]:
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
    with running(command, ROOT, full, tmp_path / f"server-{port}.log", base + "/rest/services/ping/") as proc:
        yield base, proc


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


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
    assert b'"type":"https://dpmsf.dev/problems/request-timeout"' in data  # compact, as every problem answer
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
    defaults = Limits.from_env({})
    assert (defaults.max_header_bytes, defaults.body_min_rate, defaults.send_timeout) == (65536, 1024.0, 30.0)
    assert defaults.max_per_client == 0 and Limits.from_env({"DPMSF_BODY_MIN_RATE": "0"}).body_min_rate == 0
    with pytest.raises(ConfigError, match="DPMSF_SEND_TIMEOUT"):
        Limits.from_env({"DPMSF_SEND_TIMEOUT": "0"})
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


def test_huge_headers_are_a_431_before_they_are_buffered(tmp_path: Path) -> None:
    """F7: 16 clients each try a 16 MB header; each is answered 431 and cut off after about 64 kB, the server's
    memory does not grow by what they sent, and an honest client is served meanwhile."""
    for base, proc in _serve_proc(tmp_path, 1, DPMSF_HEADER_TIMEOUT="30"):
        before = _rss_mb(proc.pid)
        sent: list[int] = []
        answers: list[bytes] = []

        def flood(base: str = base, sent: list[int] = sent, answers: list[bytes] = answers) -> None:
            sock = _connect(base)
            sock.sendall(b"GET /rest/services/ping/ HTTP/1.1\r\nHost: x\r\nX-Pad: ")
            total = 0
            try:
                for _ in range(16 * 16):
                    sock.sendall(b"a" * 65536)
                    total += 65536
            except OSError:
                pass
            sent.append(total)
            answers.append(_closed_within(sock, 5)[1])
            sock.close()

        threads = [threading.Thread(target=flood) for _ in range(16)]
        for thread in threads:
            thread.start()
        honest = httpx.get(base + "/rest/services/ping/", timeout=10)
        for thread in threads:
            thread.join()
        grown = _rss_mb(proc.pid) - before
        assert honest.status_code == 200
        assert max(sent) < 8 << 20, sent  # cut off long before its 16 MB
        assert grown < 40, grown
        assert sum(1 for a in answers if a.startswith(b"HTTP/1.1 431 ")) >= 12, [a[:40] for a in answers]
        assert any(b"DPMSF_MAX_HEADER_BYTES" in a for a in answers)
        big = "a" * 60000  # a large but allowed head still passes
        assert httpx.get(base + "/rest/services/ping/", headers={"x-big": big}, timeout=10).status_code == 200


def test_a_trickled_body_is_cut_by_the_minimum_rate(tmp_path: Path) -> None:
    """F5: a body sent a few bytes at a time no longer holds its connection for DPMSF_BODY_TIMEOUT (60 s here)."""
    for base in _serve(tmp_path, 1, DPMSF_BODY_TIMEOUT="60", DPMSF_BODY_MIN_RATE="1024"):
        sock = _connect(base)
        sock.sendall(b"POST /rest/services/keep/ HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        started = time.monotonic()
        data = b""
        sock.settimeout(0.5)
        while time.monotonic() - started < 20:
            try:
                sock.sendall(b"z" * 20)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            except TimeoutError:
                continue
            except OSError:
                break
        elapsed = time.monotonic() - started
        sock.close()
        assert data.startswith(b"HTTP/1.1 408 "), data[:200]
        assert b"DPMSF_BODY_MIN_RATE" in data
        assert elapsed < 12  # about the 5 s grace, far below the 60 s body deadline
        assert not (tmp_path / "kept").exists()  # the function never ran
        fast = httpx.post(base + "/rest/services/keep/", content=b"y" * 500_000, timeout=10)
        assert fast.json() == {"results": 500_000}


def test_answers_nobody_reads_are_dropped(tmp_path: Path) -> None:
    """F23: 30 clients ask for a 5.5 MB answer (more than the kernel buffers) and read none of it; after
    DPMSF_SEND_TIMEOUT each connection is aborted: its descriptor closed, its answer freed (a second round of
    30 reuses that memory instead of adding to it), where before they were held for ever."""
    for base, proc in _serve_proc(tmp_path, 1, DPMSF_SEND_TIMEOUT="4"):

        def fds(pid: int = proc.pid) -> int:
            return len(os.listdir(f"/proc/{pid}/fd"))

        def most_fds_within(seconds: float) -> int:  # the peak: on a busy machine the 30 are accepted slowly
            end, peak = time.monotonic() + seconds, 0
            while time.monotonic() < end:
                peak = max(peak, fds())
                time.sleep(0.1)
            return peak

        def fewest_fds_within(seconds: float, floor: int) -> int:
            end, low = time.monotonic() + seconds, fds()
            while low > floor and time.monotonic() < end:
                time.sleep(0.2)
                low = min(low, fds())
            return low

        idle_fds, before = fds(), _rss_mb(proc.pid)
        grown = []
        for _ in range(2):
            socks = []
            for _ in range(30):
                sock = _connect(base)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.sendall(b"GET /rest/services/big/ HTTP/1.1\r\nHost: x\r\n\r\n")
                socks.append(sock)
            held_fds = most_fds_within(3.0)  # within the 4 s send deadline: every answer is held
            left_fds = fewest_fds_within(15.0, idle_fds + 3)  # past it: every one aborted
            assert held_fds >= idle_fds + 25 and left_fds <= idle_fds + 3, (idle_fds, held_fds, left_fds)
            grown.append(_rss_mb(proc.pid) - before)
            for sock in socks:
                sock.close()
        assert grown[1] < grown[0] * 1.5 + 20, grown  # the first round's memory was given back for reuse
        assert httpx.get(base + "/rest/services/ping/", timeout=10).status_code == 200


def test_withheld_bodies_are_bounded_by_the_body_budget(tmp_path: Path) -> None:
    """F5: 24 clients each send 5 MB of a 6 MB body and wait; the server holds at most DPMSF_BODY_BUDGET_MB
    (8 here) of them, the rest are refused 503 with Retry-After, and an honest POST is served meanwhile."""
    env = {"DPMSF_BODY_BUDGET_MB": "8", "DPMSF_BODY_MIN_RATE": "0", "DPMSF_BODY_TIMEOUT": "30"}
    for base, proc in _serve_proc(tmp_path, 1, **env):
        before = _rss_mb(proc.pid)
        socks = []
        for _ in range(24):
            sock = _connect(base)
            sock.sendall(b"POST /rest/services/keep/ HTTP/1.1\r\nHost: x\r\nContent-Length: 6000000\r\n\r\n")
            try:
                sock.sendall(b"b" * 5_000_000)
            except OSError:
                pass
            socks.append(sock)
        time.sleep(1.0)
        grown = _rss_mb(proc.pid) - before
        honest = httpx.post(base + "/rest/services/keep/", content=b"small", timeout=10)
        refused = [data for _, data in (_closed_within(sock, 2) for sock in socks) if data.startswith(b"HTTP/1.1 503")]
        for sock in socks:
            sock.close()
        assert grown < 60, grown  # 120 MB was sent; the budget holds 8 MB (plus uvicorn's 64 kB per connection)
        assert honest.json() == {"results": 5}
        assert len(refused) >= 12 and b"retry-after: 5" in refused[0].lower() and b"DPMSF_BODY_BUDGET_MB" in refused[0]


def test_a_body_for_a_method_the_endpoint_refuses_is_never_awaited(server: str) -> None:
    """F5: a POST to a GET-only API is answered 405 at once, without waiting for (or holding) its 6 MB body."""
    sock = _connect(server)
    sock.sendall(b"DELETE /rest/services/ping/ HTTP/1.1\r\nHost: x\r\nContent-Length: 6000000\r\n\r\nx")
    started = time.monotonic()
    sock.settimeout(1.5)
    data = sock.recv(65536)  # the answer, before the body (which never comes)
    elapsed = time.monotonic() - started
    sock.close()
    assert data.startswith(b"HTTP/1.1 405 "), data[:200]
    assert elapsed < 1.0


def test_one_address_cannot_take_every_slot(tmp_path: Path) -> None:
    """F5: with DPMSF_MAX_CONNECTIONS_PER_IP, one address holding its share gets 503; another is still served."""
    env = {"DPMSF_MAX_CONNECTIONS_PER_IP": "10", "DPMSF_HEADER_TIMEOUT": "30"}
    for base in _serve(tmp_path, 1, **env):
        port = int(base.rsplit(":", 1)[1])

        def from_other(port: int = port) -> socket.socket:
            return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.2", 0))

        held = [from_other() for _ in range(10)]
        time.sleep(0.3)
        extra = from_other()
        closed, data = _closed_within(extra, 3)
        extra.close()
        assert closed and data.startswith(b"HTTP/1.1 503 ") and b"DPMSF_MAX_CONNECTIONS_PER_IP" in data, data[:200]
        assert httpx.get(base + "/rest/services/ping/", timeout=10).status_code == 200  # 127.0.0.1: its own share
        for sock in held:
            sock.close()
