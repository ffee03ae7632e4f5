"""Server memory during the store-list and demo-list attacks of issue 18, measured on a real ``dpmsf serve``.

    .venv/bin/python bench/store_memory_bench.py [--docs 1000] [--size 340000]

(a) store-list: ``--docs`` documents of ``--size`` bytes in one collection (written straight to the SQLite file
    first, as a tenant would have stored them), then a plugin's ``store.collection(...).list(limit=1000)``, twice;
(b) demo-list: as many tasks of ``--size`` bytes in the bundled todo demo's collection, then the issue's
    anonymous ``GET tasks/?limit=1000`` (now refused: at most 100) and ``?limit=100``.
For each: the server's RSS before, its high-water mark during (``VmHWM``) and its RSS after, in MB; the target is
growth under 150 MB. One server (uvicorn, one worker) on 127.0.0.1, its state in a temp folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dpmsf_core.store import SQLiteStore  # noqa: E402
from dpmsf_core.tenancy.quotas import Quotas  # noqa: E402

PLUGIN = """
from dpmsf_core import expose, store

@expose.endpoint
def count():
    page, cursor = store.collection("big").list(limit=1000)
    return {"n": len(page), "more": cursor is not None}
"""


def memory_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for {pid}")


def get(url: str) -> tuple[int, int]:
    """(status, bytes of the answer)."""
    try:
        with urllib.request.urlopen(url, timeout=120) as answer:
            return answer.status, len(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, len(exc.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--size", type=int, default=340_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dpmsf-membench-"))
    try:
        plugins = work / "plugins"
        plugins.mkdir()
        (plugins / "big.py").write_text(PLUGIN)
        shutil.copy(ROOT / "plugins" / "todo.py", plugins / "todo.py")
        started = time.monotonic()
        backend = SQLiteStore(work / "state" / "store.db", quotas=Quotas(store_mb=1e6))  # past the default 100 MB
        for i in range(args.docs):
            backend.put("_", "big", f"d{i:04d}", {"pad": "x" * args.size})
            backend.put("_", "tasks", f"t{i:04d}", {"id": f"t{i:04d}", "title": "x" * args.size, "done": False})
        backend.close()
        mb = 2 * args.docs * args.size / 1e6
        print(f"stored {2 * args.docs} documents ({mb:.0f} MB) in {time.monotonic() - started:.1f} s")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DPMSF_")}
        env.update({"DPMSF_STATE_DIR": str(work / "state"), "DPMSF_PLUGINS": str(plugins)})
        command = [sys.executable, "-m", "dpmsf_core", "serve", "--port", str(port), "--no-access-log"]
        server = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        base = f"http://127.0.0.1:{port}/rest/services"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    get(f"{base}/__dir__/")
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            for name, urls in [
                ("store-list", [f"{base}/big/count/"] * 2),
                ("demo-list", [f"{base}/todo/tasks/?limit=1000", f"{base}/todo/tasks/?limit=100"]),
            ]:
                before = memory_mb(server.pid, "VmRSS")
                answers = [get(url) for url in urls]
                peak, after = memory_mb(server.pid, "VmHWM"), memory_mb(server.pid, "VmRSS")
                print(
                    json.dumps(
                        {
                            "attack": name,
                            "answers": [f"{status}: {size:,} bytes" for status, size in answers],
                            "rss_before_mb": round(before),
                            "hwm_during_mb": round(peak),
                            "rss_after_mb": round(after),
                            "growth_mb": round(max(peak, after) - before),
                            "target": "growth < 150 MB",
                        }
                    )
                )
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(20)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
