"""Per-tenant metering: CPU-ms as reported against CPU-ms as measured, and what counting costs.

    .venv/bin/python bench/metering_bench.py [--calls 10]

(a) a real server (uvicorn, one worker, one guest): a tenant's sandboxed function spins a fixed amount of work,
    ``--calls`` times at three sizes; the worker process's CPU clock (``/proc/<pid>/stat``, user + system) is read
    around each call, and the CPU-ms that ``GET /rest/admin/usage`` reports for the tenant over the same calls
    is set against it (target: within 5 %);
(b) in-process: the cost of one ``UsageMeter.count`` (what a request, a sandboxed call or a store operation adds
    to its path) and of one flush of 1,000 tenants into the SQLite usage file (off the event loop).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import Server

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from dpmsf_core.metering import Counts, SQLiteUsageSink, UsageMeter  # noqa: E402
from dpmsf_core.tenancy.tokens import generate_key, mint  # noqa: E402

ADMIN = "00000000-0000-4000-8000-00000000be0c"
TENANT = "7e7a7e7a-0000-4000-8000-0000000be7e2"
SPIN = '''from dpmsf_core import expose


@expose.endpoint
def spin(n: int = 1):
    """A fixed amount of work: CPU time, whatever else the machine is doing."""
    total = 0
    for i in range(n):
        total += i
    return total >= 0
'''


def worker_pid(server_pid: int) -> int:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == server_pid and b"sandbox/worker.py" in cmdline:
            return int(entry)
    raise RuntimeError("no sandbox worker found")


def cpu_ms(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def reported(client: httpx.Client, admin_key: str) -> float:
    token = mint(ADMIN, admin_key)
    rows = client.get("/rest/admin/usage", headers={"authorization": f"Bearer {token}"}).json()["results"]
    return float(next((r["cpu_ms"] for r in rows if r["tenant"] == TENANT), 0.0))


def cpu_against_measured(calls: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        admin_key = generate_key()
        (Path(tmp) / "plugins").mkdir()
        env = {
            "ADMIN_ID": ADMIN,
            "DPMSF_ADMIN_KEY": admin_key,
            "DPMSF_STATE_DIR": f"{tmp}/state",
            "DPMSF_PLUGINS": f"{tmp}/plugins",
            "DPMSF_SANDBOX_WORKERS": "1",
            "DPMSF_KEY_CACHE": "0",
        }
        added = subprocess.run(
            [sys.executable, "-m", "dpmsf_core", "tenant", "add", TENANT, "--name", "bench"],
            env={**os.environ, **env},
            cwd=tmp,
            capture_output=True,
            text=True,
            check=True,
        )
        key = json.loads(added.stdout)["key"]
        server = Server("dpmsf_core.asgi:create", {**env, "PWD": tmp}, factory=True)
        try:
            client = httpx.Client(base_url=server.base, timeout=30)

            def call(n: int) -> httpx.Response:
                headers = {"authorization": f"Bearer {mint(TENANT, key)}"}
                return client.get("/rest/services/bench_spin/spin/", params={"n": n}, headers=headers)

            up = client.put(
                "/rest/admin/plugins/bench_spin", content=SPIN, headers={"authorization": f"Bearer {mint(TENANT, key)}"}
            )
            assert up.status_code == 201, up.text
            assert call(1).status_code == 200  # the guest is warm
            pid = worker_pid(server.proc.pid)
            print(f"(a) CPU-ms of a tenant's sandboxed calls, {calls} calls per size, worker pid {pid}")
            print(f"    {'iterations':>10}  {'measured ms':>12}  {'reported ms':>12}  {'reported/measured':>17}")
            for n in (100_000, 300_000, 1_000_000):
                before_report, measured = reported(client, admin_key), 0.0
                for _ in range(calls):
                    before = cpu_ms(pid)
                    answer = call(n)
                    measured += cpu_ms(pid) - before
                    assert answer.status_code == 200, answer.text
                got = reported(client, admin_key) - before_report
                ratio = got / measured if measured else float("nan")
                print(f"    {n:>10,}  {measured:>12.1f}  {got:>12.1f}  {ratio:>17.4f}")
        finally:
            server.close()


def counting_cost() -> None:
    meter = UsageMeter(None)
    tenant = TENANT
    number = 200_000
    per = timeit.timeit(lambda: meter.count(tenant, store_ops=1, store_bytes=100), number=number) / number
    request = timeit.timeit(lambda: meter.request(tenant, 200), number=number) / number
    print(f"(b) UsageMeter.count: {per * 1e6:.2f} µs; UsageMeter.request: {request * 1e6:.2f} µs")
    with tempfile.TemporaryDirectory() as tmp:
        sink = SQLiteUsageSink(f"{tmp}/usage.db")
        hour = int(time.time()) // 3600 * 3600
        rows = {(f"{i:08d}-0000-4000-8000-000000000000", hour): Counts(requests=i, cpu_ms=1.5) for i in range(1000)}
        sink.add(rows)  # the file and its table exist
        started = time.perf_counter()
        sink.add(rows)
        print(f"    one flush of 1,000 tenants into usage.db: {(time.perf_counter() - started) * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=10, help="calls per size")
    args = parser.parse_args()
    cpu_against_measured(args.calls)
    counting_cost()


if __name__ == "__main__":
    main()
