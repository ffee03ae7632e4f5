"""Three ``dpmsf serve`` replicas on one machine, real parts (PostgreSQL, a moto S3 server, HAProxy):

    .venv/bin/python bench/replicas_bench.py [--changes 20] [--load-threads 4]

(a) propagation: after an admin upload through one replica is acknowledged, seconds until every other replica
    serves the new version (its ``DPMSF-Plugin-Version``), p50 and p99 over ``--changes`` uploads; once with
    PostgreSQL LISTEN/NOTIFY (polling every 3600 s, so only the notification can explain it), once by polling
    alone (``DPMSF_NOTIFY=off``, ``DPMSF_S3_REFRESH=1``);
(b) a rolling restart of the three replicas (SIGTERM, drained exit, start, ready) while writers send PUTs through
    HAProxy: requests sent, answered 200, lost (anything else; target 0).

The machine's other work shares its CPUs: compare runs of the same day, not across machines.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import httpx  # noqa: E402
from motoserver import moto_server  # noqa: E402
from pgserver import new_database, postgres  # noqa: E402
from replicaset import VERSION_HEADER, Cluster, cluster, haproxy  # noqa: E402

HELLO = 'from dpmsf_core import expose\n\n\n@expose.endpoint(method="GET")\ndef hello():\n    return {n}\n'


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def until_all_serve(bases: list[str], version: str, timeout: float = 30.0) -> float:
    """Seconds until every base answers ``/rest/services/hello/`` with ``version`` (each polled every 10 ms)."""
    start = time.monotonic()
    done: dict[str, float] = {}

    def watch(base: str) -> None:
        with httpx.Client(timeout=5) as http:
            while time.monotonic() - start < timeout:
                answer = http.get(f"{base}/rest/services/hello/")
                if answer.headers.get(VERSION_HEADER) == version:
                    done[base] = time.monotonic() - start
                    return
                time.sleep(0.01)

    threads = [threading.Thread(target=watch, args=(base,)) for base in bases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(done) != len(bases):
        raise TimeoutError(f"not every replica served {version} within {timeout} s: {done}")
    return max(done.values())


def propagation(found: Cluster, changes: int) -> list[float]:
    uploader, *others = found.replicas
    took = []
    for n in range(changes):
        answer = found.upload(uploader.base, "hello", HELLO.format(n=n))
        assert answer.status_code in (200, 201), answer.text
        took.append(until_all_serve([r.base for r in others], found.stored_version("hello")))
    return took


def rolling_restart(found: Cluster, url: str, threads: int) -> Counter[int]:
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def write(n: int) -> None:
        with httpx.Client(timeout=30) as http:
            i = 0
            while not stop.is_set():
                try:
                    status = http.put(f"{url}/rest/services/note/", params={"id": f"roll-{n}-{i}"}).status_code
                except httpx.TransportError:
                    status = 0
                with lock:
                    statuses[status] += 1
                i += 1

    writers = [threading.Thread(target=write, args=(n,)) for n in range(threads)]
    for t in writers:
        t.start()
    time.sleep(1)
    for replica in found.replicas:
        code = replica.stop(timeout=60)
        assert code == 0, f"{replica.name} exited {code}"
        replica.start()
        time.sleep(1)  # the balancer's health check sees it up again (inter 300 ms, rise 1)
    time.sleep(1)
    stop.set()
    for t in writers:
        t.join()
    return statuses


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--load-threads", type=int, default=4)
    args = parser.parse_args()
    with postgres() as server, moto_server() as s3_url, tempfile.TemporaryDirectory() as tmp:
        print(f"(a) propagation of an upload to the 2 other replicas, s, {args.changes} uploads each")
        modes = {
            "notification (LISTEN/NOTIFY)": {"DPMSF_S3_REFRESH": "3600"},
            "polling (DPMSF_S3_REFRESH=1)": {"DPMSF_S3_REFRESH": "1", "DPMSF_NOTIFY": "off"},
        }
        for n, (mode, env) in enumerate(modes.items()):
            folder = Path(tmp) / f"prop-{n}"
            folder.mkdir()
            with cluster(folder, new_database(server), s3_url, replicas=3, **env) as found:
                took = propagation(found, args.changes)
            print(
                f"    {mode:30s} p50 {statistics.median(took):6.3f}  p99 {percentile(took, 99):6.3f}"
                f"  max {max(took):6.3f}"
            )
        folder = Path(tmp) / "roll"
        folder.mkdir()
        with cluster(folder, new_database(server), s3_url, replicas=3) as found, haproxy(found.replicas, folder) as url:
            statuses = rolling_restart(found, url, args.load_threads)
        lost = sum(count for status, count in statuses.items() if status != 200)
        print(
            f"(b) rolling restart of 3 replicas behind HAProxy, {args.load_threads} writers (PUT through the balancer)"
        )
        print(f"    requests {sum(statuses.values())}, answered 200: {statuses[200]}, lost: {lost} {dict(statuses)}")


if __name__ == "__main__":
    main()
