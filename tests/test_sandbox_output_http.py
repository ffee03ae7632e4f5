"""A tenant's guest floods the server with frames, over real HTTP: another caller's latency stays where it was.

Also the positional ``RequestInfo`` of a sandboxed function, which the HTTP path passes by position.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpmsf_core.tenancy.tokens import generate_key, mint

pytestmark = pytest.mark.slow

ADMIN = "00000000-0000-4000-8000-00000000000a"
MALLORY = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
NOISY = (Path(__file__).parent / "plugins" / "tenant_sandbox" / "noisy.py").read_text(encoding="utf-8")


@pytest.fixture
def server(plugin_dir: Any, make_app: Callable[..., Any], serve: Callable[[Any], httpx.Client], tmp_path: Path) -> Any:
    plugin_dir.write("hello.py", 'from dpmsf_core import expose\n\n__alias__ = "v1"\n\ndef hi():\n    return "hi"\n')
    app = make_app(
        plugin_dir.path,
        env={
            "ADMIN_ID": ADMIN,
            "DPMSF_ADMIN_KEY": generate_key(),
            "DPMSF_SANDBOX_TIMEOUT": "5",
            "DPMSF_STORE": f"sqlite:///{tmp_path / 'store.db'}",
        },
    )
    app.get_security().tenants.add(name="mallory", tenant_id=MALLORY)
    client = serve(app)
    key = app.get_security().tenants.get(MALLORY).key

    def auth() -> dict[str, str]:
        return {"authorization": f"Bearer {mint(MALLORY, key)}"}

    assert client.put("/rest/admin/plugins/noisy", content=NOISY, headers=auth()).status_code == 201
    return client, auth


def probe_ms(client: httpx.Client, times: int) -> float:
    waits = []
    for _ in range(times):
        started = time.perf_counter()
        assert client.get("/rest/services/v1/hi/").json() == {"results": "hi"}
        waits.append(time.perf_counter() - started)
        time.sleep(0.02)
    return statistics.median(waits) * 1000


@pytest.mark.parametrize("size", [1_000_000, 400_000])
def test_a_frame_flood_does_not_slow_another_caller(server: Any, size: int) -> None:
    """Pre-encoded 1 MB store frames kept the server at 100 % CPU: an anonymous probe's median went 3 -> 146 ms."""
    client, auth = server
    assert client.get("/rest/services/noisy/hello/", headers=auth()).json() == {"results": "hello"}
    alone = probe_ms(client, 15)
    stop = threading.Event()
    statuses: list[int] = []

    def flood() -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=30) as own:
            while not stop.is_set():
                url = f"/rest/services/noisy/frame_flood/?size={size}&rounds=200"
                statuses.append(own.get(url, headers=auth()).status_code)

    floods = [threading.Thread(target=flood) for _ in range(2)]
    for thread in floods:
        thread.start()
    try:
        time.sleep(0.5)
        cpu, wall = time.process_time(), time.monotonic()
        during = probe_ms(client, 30)
        busy = (time.process_time() - cpu) / (time.monotonic() - wall)  # of one core, by the server's threads
    finally:
        stop.set()
        for thread in floods:
            thread.join()
    assert busy < 0.35, busy  # served, the flood took 0.5 of a core here; stopped, about 0.1 (0.25 under load)
    assert during < 3 * alone + 30, (alone, during)
    assert statuses and all(status in (413, 500, 503) for status in statuses), statuses  # stopped, never served


def test_a_positional_request_info_is_injected(server: Any) -> None:
    """``def method_of(request: RequestInfo)`` always answered 422: the request was passed by position."""
    client, auth = server
    assert client.get("/rest/services/noisy/method_of/", headers=auth()).json() == {"results": "GET"}
    assert client.post("/rest/services/noisy/method_of/", headers=auth(), json={}).json() == {"results": "POST"}
