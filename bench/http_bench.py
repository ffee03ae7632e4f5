"""HTTP figures of the core issue, side by side with plain FastAPI in the same run; prints ratios.

    .venv/bin/python bench/http_bench.py [--seconds 8] [--connections 32]

Needs `wrk` (Debian package `wrk`). Every server is uvicorn with one worker, access log off, on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import Server

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
PLUGIN = """
from dpmsf_core import expose

@expose.endpoint(method="GET", API="hello-async")
async def hello_async():
    return {"hello": "world"}

@expose.endpoint(method="GET", API="hello-sync")
def hello_sync():
    return {"hello": "world"}
"""
FILLER = """
from dpmsf_core import expose


@expose.endpoint(method="GET|POST", API="api-{i}")
def f{i}(*args, **kwargs):
    return {i}
"""


def make_plugins(base: Path, fillers: int) -> Path:
    folder = base / f"plugins_{fillers}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench.py").write_text(PLUGIN)
    for i in range(fillers):
        (folder / f"filler_{i:04d}.py").write_text(FILLER.format(i=i))
    import compileall

    compileall.compile_dir(str(folder), quiet=1)  # as deployed: bytecode present, files untouched for a while
    old = time.time() - 60
    for p in [*folder.iterdir(), folder]:
        os.utime(p, (old, old))
    return folder


def wrk(url: str, seconds: int, connections: int) -> tuple[float, float]:
    subprocess.run(["wrk", "-t1", f"-c{connections}", "-d2s", url], capture_output=True, check=True)  # warm-up
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    if "Non-2xx" in out:
        raise RuntimeError(f"{url} answered errors:\n{out}")
    return rps, float(p99.group(1)) * scale


def asgi_call_us(folder: Path, calls: int = 20000) -> float:
    """In-process cost of one request through the app (no network): the hot-reload check included."""
    os.environ["DPMSF_PLUGINS"] = str(folder)
    from dpmsf_core.app import create_app
    from dpmsf_core.config import Settings

    app = create_app(Settings.from_env(dotenv=None))
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/rest/services/hello-async/",
        "query_string": b"",
        "headers": [(b"host", b"x")],
        "root_path": "",
    }

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    async def run() -> float:
        for _ in range(500):
            await app(scope, receive, send)
        samples = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(calls // 5):
                await app(scope, receive, send)
            samples.append((time.perf_counter() - t0) / (calls // 5) * 1e6)
        return statistics.median(samples)

    try:
        return asyncio.run(run())
    finally:
        app.close()


def discovery_seconds(folder: Path) -> tuple[float, float]:
    code = (
        "import time,os;t=time.perf_counter();from dpmsf_core.app import create_app;"
        "from dpmsf_core.config import Settings;"
        f"a=create_app(Settings.from_env({{'DPMSF_PLUGINS': {str(folder)!r}}}, dotenv=None));"
        "print(time.perf_counter()-t, len(a.registry.snapshot.modules))"
    )
    for pyc in folder.rglob("__pycache__"):
        shutil.rmtree(pyc)
    cold = float(
        subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout.split()[0]
    )
    warm = float(
        subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout.split()[0]
    )
    return cold, warm


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    opts = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("bench needs wrk: apt-get install wrk")
    tmp = Path(tempfile.mkdtemp(prefix="dpmsf-bench-"))
    one = make_plugins(tmp, 0)
    many = make_plugins(tmp, 1000)

    rows: dict[str, tuple[float, float]] = {}
    plan = [
        ("fastapi async", "bench.baseline_fastapi:app", {}, False, "/hello-async"),
        ("fastapi sync", "bench.baseline_fastapi:app", {}, False, "/hello-sync"),
        ("dpmsf async", "dpmsf_core.asgi:create", {"DPMSF_PLUGINS": str(one)}, True, "/rest/services/hello-async/"),
        ("dpmsf sync", "dpmsf_core.asgi:create", {"DPMSF_PLUGINS": str(one)}, True, "/rest/services/hello-sync/"),
        (
            "dpmsf async, 1000 modules",
            "dpmsf_core.asgi:create",
            {"DPMSF_PLUGINS": str(many)},
            True,
            "/rest/services/hello-async/",
        ),
    ]
    for name, target, env, factory, path in plan:
        server = Server(target, env, factory)
        try:
            rows[name] = wrk(f"http://127.0.0.1:{server.port}{path}", opts.seconds, opts.connections)
        finally:
            server.close()
        print(f"{name:<28} {rows[name][0]:>9.0f} req/s   p99 {rows[name][1]:6.2f} ms", flush=True)

    one_us = asgi_call_us(one)
    many_us = asgi_call_us(many)
    cold, warm = discovery_seconds(many)

    def ratio(a: str, b: str, i: int) -> float:
        return rows[a][i] / rows[b][i]

    print()
    print("figure                                              value   target")
    print(
        f"async throughput dpmsf / fastapi                   {ratio('dpmsf async', 'fastapi async', 0):6.2f}x  >= 0.85x"
    )
    print(
        f"async p99 dpmsf / fastapi                          {ratio('dpmsf async', 'fastapi async', 1):6.2f}x  <= 1.2x"
    )
    print(f"sync throughput dpmsf / fastapi                    {ratio('dpmsf sync', 'fastapi sync', 0):6.2f}x  >= 1.0x")
    print(f"sync p99 dpmsf / fastapi                           {ratio('dpmsf sync', 'fastapi sync', 1):6.2f}x  <= 1.2x")
    print(
        f"HTTP throughput 1000 modules / 1 module            "
        f"{ratio('dpmsf async, 1000 modules', 'dpmsf async', 0):6.2f}x  >= 0.9x"
    )
    print(
        f"HTTP p99 1000 modules / 1 module                   "
        f"{ratio('dpmsf async, 1000 modules', 'dpmsf async', 1):6.2f}x  <= 1.2x"
    )
    print(f"in-process request, 1 module                      {one_us:7.1f} us")
    print(f"in-process request, 1000 modules                  {many_us:7.1f} us  ({many_us / one_us:.2f}x, <= 1.2x)")
    print(f"discover 1000 modules at start-up (no .pyc / .pyc) {cold:5.2f} s / {warm:.2f} s   <= 2 s")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
