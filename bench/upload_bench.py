"""Uploads against everyone else, side by side in one run (issue 18, item 1):

    .venv/bin/python bench/upload_bench.py [--seconds 8] [--modules 5] [--lines 15000]

(a) an anonymous ``GET /rest/services/hello/``'s p50/p99/max alone, then while a tenant keeps uploading hostile
    modules (60,000 ``x=1`` lines; one line of 60,000 statements; 19,000 lines whose last endpoint is invalid),
    two uploads in flight at any time; target: p99 at most 1.5x alone and never above 250 ms;
(b) start-up: the time from starting uvicorn until ``hello`` answers, with no stored tenant module and with
    ``--modules`` stored modules of ``--lines`` lines each (uploaded over HTTP, so the tenant index is written as
    in production), then again with the index deleted (every module read at start-up, as before the index).

Servers: uvicorn, one worker, access log off, 127.0.0.1 (``bench/servers.py``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import Server

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dpmsf_core.tenancy.tenants import SQLiteTenantRegistry  # noqa: E402
from dpmsf_core.tenancy.tokens import mint  # noqa: E402

ADMIN = "00000000-0000-4000-8000-0000000b0a0d"
TENANT = "7e7a7e7a-0000-4000-8000-0000000b0a0d"
HELLO = 'from dpmsf_core import expose\n\n\n@expose.endpoint\ndef hello():\n    return "hi"\n'


def module(lines: int, api: str = "ping", tail: str = "") -> str:
    head = f"from dpmsf_core import expose\n\n\n@expose.endpoint(API={api!r})\ndef {api}():\n    return 1\n\n"
    return head + "x=1\n" * lines + tail


HOSTILE = [
    module(60_000),
    "x=1;" * 60_000,
    module(19_000, tail="@expose.endpoint(method='FETCH')\ndef bad():\n    pass\n"),
]


class Setup:
    def __init__(self, folder: Path) -> None:
        (folder / "plugins").mkdir(parents=True)
        (folder / "plugins" / "hello.py").write_text(HELLO)
        self.uploads = folder / "uploads"
        self.env = {
            "DPMSF_PLUGINS": str(folder / "plugins"),
            "DPMSF_STATE_DIR": str(folder / "state"),
            "DPMSF_UPLOAD_DIR": str(self.uploads),
            "ADMIN_ID": ADMIN,
            "DPMSF_UPLOAD_CPU": "30",  # (b) uploads big modules on purpose; (a) is refused by lines and nodes
        }
        os.makedirs(folder / "state", exist_ok=True)
        registry = SQLiteTenantRegistry(str(folder / "state" / "tenants.db"), state_dir=str(folder / "state"))
        self.key = registry.add("bench", TENANT).key

    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {mint(TENANT, self.key)}"}

    def start(self) -> tuple[Server, float]:
        began = time.perf_counter()
        server = Server("dpmsf_core.asgi:create", self.env, factory=True)
        while True:
            try:
                if httpx.get(server.url("/rest/services/hello/"), timeout=5).status_code == 200:
                    return server, time.perf_counter() - began
            except httpx.TransportError:
                pass
            time.sleep(0.01)


def probe(url: str, seconds: float) -> list[float]:
    out: list[float] = []
    with httpx.Client(timeout=60) as client:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            began = time.perf_counter()
            client.get(url)
            out.append((time.perf_counter() - began) * 1000)
            time.sleep(0.01)
    return out


def figures(ms: list[float]) -> str:
    p99 = statistics.quantiles(ms, n=100)[98]
    return f"p50 {statistics.median(ms):6.1f} ms  p99 {p99:6.1f} ms  max {max(ms):7.1f} ms  (n={len(ms)})"


def hostile_uploads(setup: Setup, seconds: float) -> None:
    setup.env.pop("DPMSF_UPLOAD_CPU")  # the default budget
    server, _ = setup.start()
    try:
        url = server.url("/rest/services/hello/")
        probe(url, 0.5)
        alone = probe(url, seconds)
        stop = threading.Event()
        statuses: list[int] = []

        def attack() -> None:
            with httpx.Client(timeout=120) as client:
                i = 0
                while not stop.is_set():
                    r = client.put(server.url("/rest/admin/plugins/burn"), content=HOSTILE[i % 3], headers=setup.auth())
                    statuses.append(r.status_code)
                    i += 1

        attackers = [threading.Thread(target=attack) for _ in range(2)]
        for t in attackers:
            t.start()
        time.sleep(0.5)
        during = probe(url, seconds)
        stop.set()
        for t in attackers:
            t.join()
        p_alone, p_during = (statistics.quantiles(x, n=100)[98] for x in (alone, during))
        print(f"(a) anonymous probe alone:            {figures(alone)}")
        print(f"    during hostile uploads:           {figures(during)}")
        print(f"    uploads answered: {sorted({s: statuses.count(s) for s in statuses}.items())}")
        print(f"    p99 ratio {p_during / p_alone:.2f}x (target <= 1.5x), p99 {p_during:.0f} ms (target < 250 ms)")
    finally:
        server.close()


def start_up(setup: Setup, count: int, lines: int) -> None:
    def median_start(times: int = 3) -> float:
        took = []
        for _ in range(times):
            server, seconds = setup.start()
            server.close()
            took.append(seconds)
        return statistics.median(took)

    median_start(1)  # warm: bytecode written, caches filled
    empty = median_start()
    server, _ = setup.start()
    try:
        for i in range(count):
            r = httpx.put(
                server.url(f"/rest/admin/plugins/big{i}"),
                content=module(lines, api=f"api{i}"),
                headers=setup.auth(),
                timeout=120,
            )
            assert r.status_code in (200, 201), r.text
    finally:
        server.close()
    indexed = median_start()
    (setup.uploads / ".dpmsf-tenant-index.json").unlink()
    unindexed = median_start(1)  # reads every module, and writes the index again
    print(f"(b) start-up until hello answers (median of 3): no stored module {empty * 1000:.0f} ms; {count} stored")
    print(f"    modules of {lines} lines: {indexed * 1000:.0f} ms with the tenant index, {unindexed * 1000:.0f} ms")
    print("    without it (every module read at start-up, as before the index)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--modules", type=int, default=5)
    parser.add_argument("--lines", type=int, default=15_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dpmsf-upload-bench-") as tmp:
        hostile_uploads(Setup(Path(tmp) / "a"), args.seconds)
        start_up(Setup(Path(tmp) / "b"), args.modules, args.lines)


if __name__ == "__main__":
    main()
