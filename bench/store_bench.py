"""Store figures of the store issue, side by side in one run; prints ratios against the target.

    .venv/bin/python bench/store_bench.py [--seconds 5] [--connections 16] [--rounds 3] [--docs 10000]

(a) SQLiteStore get and put latency (µs, p50/p99) in one thread with 10,000 documents already in the collection
    (a temp SQLite file, WAL, as the app opens it): get of a random existing id, put replacing a random existing
    document, put of a new id, and the same through ``store.collection("tasks")`` as plugins call it;
(b) the todo API over HTTP: DPMSF serving the bundled ``plugins/todo.py`` (a temp plugins folder holding a copy of
    it, DPMSF_STORE on a temp SQLite file) against ``bench/baseline_todo_fastapi.py``, the same list and create
    handlers written directly in FastAPI on the same store code (SQLiteStore, tenant "_", collection "tasks") and
    the same kind of file. List is GET with 20 tasks present and ``?limit=20``; create is POST of a JSON task (wrk
    with a Lua script). Targets are interleaved over several rounds; each figure is the median of the rounds.
    Ratios DPMSF / FastAPI: throughput target >= 0.8x.
(c) the three store backends side by side, 1,000 documents in the collection (``--backend-docs``), one thread, the
    same calls on each: SQLiteStore on a temp file, DynamoDBStore on a moto server and FirestoreStore on Google's
    Firestore emulator (``gcloud emulators firestore start``), both on 127.0.0.1 and started here: get of a random
    existing id, put replacing a random existing document, and a list page of 100 starting after a random id.
    The two emulators are not the cloud services (no network round trip, no replication): the figures compare the
    code paths and client libraries, not DynamoDB with Firestore.

    .venv/bin/python bench/store_bench.py --backends-only [--backend-docs 1000] [--backend-calls 300]

Needs `wrk` (Debian package `wrk`) for (b), and the Google Cloud CLI with its Firestore emulator for the Firestore
column of (c) (the column says why when it is missing). Every server is uvicorn with one worker, access log off, on
127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import Server

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))  # motoserver.py, firestore_emulator.py: the servers the tests start
PY = sys.executable
TENANT = "_"
COLLECTION = "tasks"
SEED_TASKS = 20
BODY = {"title": "bench task", "description": "created by wrk", "done": False}

from dpmsf_core import store as store_mod  # noqa: E402
from dpmsf_core.store import SQLiteStore  # noqa: E402
from dpmsf_core.store.validation import encode_doc  # noqa: E402


def task_doc(i: int, doc_id: str) -> dict[str, object]:
    return {"id": doc_id, "title": f"task number {i}", "description": "something to do, some day", "done": i % 3 == 0}


def fill(path: Path, docs: int) -> list[str]:
    """``docs`` task documents in one transaction (set-up only), encoded as the store encodes them."""
    SQLiteStore(path).get(TENANT, COLLECTION, "x")  # creates the file and the schema as the store does
    ids = [uuid.uuid4().hex for _ in range(docs)]
    now = time.time()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO dpmsf_store (tenant, collection, id, doc, updated_at) VALUES (?, ?, ?, ?, ?)",
        [(TENANT, COLLECTION, doc_id, encode_doc(task_doc(i, doc_id)), now) for i, doc_id in enumerate(ids)],
    )
    conn.execute("COMMIT")
    conn.close()
    return ids


def timed(fn, args: list[tuple]) -> tuple[float, float]:
    """p50 and p99 in µs of ``fn(*a)`` for each ``a``."""
    samples = []
    clock = time.perf_counter_ns
    for a in args:
        t0 = clock()
        fn(*a)
        samples.append((clock() - t0) / 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def store_latency(base: Path, docs: int, calls: int) -> dict[str, tuple[float, float]]:
    path = base / "latency.db"
    ids = fill(path, docs)
    backend = SQLiteStore(path)
    count = backend._conn().execute("SELECT count(*) FROM dpmsf_store WHERE collection = ?", (COLLECTION,)).fetchone()
    assert count[0] == docs, count
    rng = random.Random(5)
    pick = [rng.choice(ids) for _ in range(calls)]
    warm = [(TENANT, COLLECTION, i) for i in pick[:500]]
    for a in warm:
        backend.get(*a)
    rows: dict[str, tuple[float, float]] = {}
    rows["SQLiteStore.get"] = timed(backend.get, [(TENANT, COLLECTION, i) for i in pick])
    rows["SQLiteStore.put (replace)"] = timed(
        backend.put, [(TENANT, COLLECTION, i, task_doc(n, i)) for n, i in enumerate(pick)]
    )
    fresh = [uuid.uuid4().hex for _ in range(calls)]
    rows["SQLiteStore.put (new id)"] = timed(
        backend.put, [(TENANT, COLLECTION, i, task_doc(n, i)) for n, i in enumerate(fresh)]
    )
    with store_mod.using(backend):
        tasks = store_mod.collection(COLLECTION)
        rows["collection.get"] = timed(tasks.get, [(i,) for i in pick])
        rows["collection.create"] = timed(tasks.create, [({"title": "t", "description": "", "done": False},)] * calls)
    backend.close()
    return rows


# -- (c) SQLite, DynamoDB on moto, Firestore on its emulator, side by side ------------------------------------------

BACKEND_OPS = ("get", "put (replace)", "list page (100)")


def backend_latency(backend: object, docs: int, calls: int) -> dict[str, tuple[float, float]]:
    """p50/p99 in µs of get, put and a list page on ``backend`` after filling it with ``docs`` documents."""
    from dpmsf_core.store.validation import encode_cursor

    ids = sorted(uuid.uuid4().hex for _ in range(docs))
    for n, doc_id in enumerate(ids):  # through the backend itself: each stores what it stores
        backend.put(TENANT, COLLECTION, doc_id, task_doc(n, doc_id))
    page, cursor = backend.list(TENANT, COLLECTION, limit=1000)
    assert len(page) == docs and cursor is None, (len(page), cursor)
    rng = random.Random(7)
    pick = [rng.choice(ids) for _ in range(calls)]
    starts = [encode_cursor(rng.choice(ids[: docs - 100])) for _ in range(calls)]
    for doc_id, start in zip(pick[:50], starts[:50], strict=True):  # warm-up: connections, caches, JIT
        backend.get(TENANT, COLLECTION, doc_id)
        backend.list(TENANT, COLLECTION, 100, start)
    return {
        "get": timed(backend.get, [(TENANT, COLLECTION, i) for i in pick]),
        "put (replace)": timed(backend.put, [(TENANT, COLLECTION, i, task_doc(n, i)) for n, i in enumerate(pick)]),
        "list page (100)": timed(backend.list, [(TENANT, COLLECTION, 100, c) for c in starts]),
    }


def backends_side_by_side(tmp: Path, docs: int, calls: int) -> None:
    import contextlib
    import os

    from firestore_emulator import PROJECT, EmulatorMissing, firestore_emulator_process
    from motoserver import client as moto_client
    from motoserver import moto_server

    from dpmsf_core.store import DynamoDBStore, FirestoreStore
    from dpmsf_core.tenancy.replay import create_dynamodb_table

    columns: dict[str, dict[str, tuple[float, float]] | str] = {}
    sqlite = SQLiteStore(tmp / "backends" / "store.db")
    columns["SQLite (file)"] = backend_latency(sqlite, docs, calls)
    sqlite.close()
    with moto_server() as url:
        dynamodb = moto_client("dynamodb", url)
        create_dynamodb_table("dpmsf-bench", client=dynamodb)
        columns["DynamoDB (moto)"] = backend_latency(DynamoDBStore("dpmsf-bench", client=dynamodb), docs, calls)
    with contextlib.ExitStack() as stack:
        try:
            host = stack.enter_context(firestore_emulator_process())
        except EmulatorMissing as exc:
            columns["Firestore (emulator)"] = f"not run: {exc}"
        else:
            os.environ["FIRESTORE_EMULATOR_HOST"], os.environ["GOOGLE_CLOUD_PROJECT"] = host, PROJECT
            columns["Firestore (emulator)"] = backend_latency(FirestoreStore("dpmsf-bench"), docs, calls)
    print(
        f"\n(c) store latency, {docs} documents in the collection, {calls} calls each, one thread"
        " (p50 / p99, ms; moto and the Firestore emulator on 127.0.0.1)"
    )
    print(f"    {'operation':<18}" + "".join(f"{name:>24}" for name in columns))
    for op in BACKEND_OPS:
        cells = []
        for figures in columns.values():
            if isinstance(figures, str):
                cells.append(f"{'-':>24}")
            else:
                p50, p99 = figures[op]
                cells.append(f"{p50 / 1000:>12.2f} / {p99 / 1000:<9.2f}")
        print(f"    {op:<18}" + "".join(cells), flush=True)
    for name, figures in columns.items():
        if isinstance(figures, str):
            print(f"    {name}: {figures}")


# -- (b) todo over HTTP ---------------------------------------------------------------------------------------------


def seed(path: Path) -> None:
    backend = SQLiteStore(path)
    for i in range(SEED_TASKS):
        doc_id = uuid.uuid4().hex
        backend.put(TENANT, COLLECTION, doc_id, task_doc(i, doc_id))
    backend.close()


def check(server: Server, list_path: str, create_path: str) -> None:
    """Both answer the same shapes before any load: 20 tasks listed, 201 + Location for a create."""
    with urllib.request.urlopen(server.url(list_path), timeout=10) as r:
        listed = json.load(r)
    assert r.status == 200 and len(listed["results"]) == SEED_TASKS and set(listed) == {"results", "cursor"}, listed
    req = urllib.request.Request(
        server.url(create_path),
        data=json.dumps(BODY).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        created = json.load(r)
    assert r.status == 201 and r.headers["Location"], r.status
    assert set(created) == {"results"} and set(created["results"]) == {"id", *BODY}, created
    # the create above made task 21: list with ?limit=20 still returns 20 (and a cursor)


def wrk(url: str, seconds: int, connections: int, script: Path | None = None) -> tuple[float, float]:
    extra = ["-s", str(script)] if script else []
    subprocess.run(["wrk", "-t1", f"-c{connections}", "-d1s", *extra, url], capture_output=True, check=True)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", *extra, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"{url} answered errors:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    return rps, float(p99.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=5_000)
    parser.add_argument("--backend-docs", type=int, default=1_000, help="(c): documents in the collection")
    parser.add_argument("--backend-calls", type=int, default=300, help="(c): timed calls per operation and backend")
    parser.add_argument("--backends-only", action="store_true", help="only (c), the three backends side by side")
    opts = parser.parse_args()
    if not opts.backends_only and not shutil.which("wrk"):
        sys.exit("bench needs wrk: apt-get install wrk (or run only (c) with --backends-only)")
    tmp = Path(tempfile.mkdtemp(prefix="dpmsf-store-bench-"))
    try:
        if not opts.backends_only:
            run(tmp, opts)
        backends_side_by_side(tmp, opts.backend_docs, opts.backend_calls)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(tmp: Path, opts: argparse.Namespace) -> None:
    print(f"(a) SQLiteStore, {opts.docs} documents in the collection, {opts.calls} calls each, one thread")
    for name, (p50, p99) in store_latency(tmp, opts.docs, opts.calls).items():
        print(f"    {name:<28} p50 {p50:7.1f} us   p99 {p99:7.1f} us", flush=True)
    servers, script = _todo_servers(tmp)
    try:
        results = _todo_over_http(servers, script, opts)
    finally:
        for server in servers.values():
            server.close()
    _print_todo(results)


# name: (server, list path, create path)
_TODO_TARGETS = {
    "dpmsf": ("dpmsf", "/rest/services/todo/tasks/", "/rest/services/todo/tasks/"),
    "fastapi": ("fastapi", "/tasks/", "/tasks/"),
    "fastapi raw": ("fastapi", "/raw/tasks/", "/raw/tasks/"),
}


def _todo_servers(tmp: Path) -> tuple[dict[str, Server], Path]:
    """The todo plugin under dpmsf and its FastAPI twin, each on its own seeded SQLite file, and wrk's POST script."""
    plugins = tmp / "plugins"
    plugins.mkdir()
    shutil.copy(ROOT / "plugins" / "todo.py", plugins / "todo.py")
    dpmsf_db, fastapi_db = tmp / "dpmsf" / "store.db", tmp / "fastapi" / "store.db"
    for db in (dpmsf_db, fastapi_db):
        seed(db)
    script = tmp / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(BODY))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    dpmsf_env = {
        "DPMSF_PLUGINS": str(plugins),
        "DPMSF_STATE_DIR": str(tmp / "dpmsf"),
        "DPMSF_STORE": f"sqlite:///{dpmsf_db}",  # an absolute path: sqlite:////tmp/...
    }
    servers = {
        "dpmsf": Server("dpmsf_core.asgi:create", dpmsf_env, factory=True),
        "fastapi": Server("bench.baseline_todo_fastapi:app", {"TODO_DB": str(fastapi_db)}),
    }
    return servers, script


def _todo_over_http(
    servers: dict[str, Server], script: Path, opts: argparse.Namespace
) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """wrk figures per (target, operation), rounds interleaved and their order alternated, so a drift of the
    machine falls on every target alike."""
    targets = _TODO_TARGETS
    check(servers["dpmsf"], targets["dpmsf"][1] + "?limit=20", targets["dpmsf"][2])
    check(servers["fastapi"], targets["fastapi"][1] + "?limit=20", targets["fastapi"][2])
    check(servers["fastapi"], targets["fastapi raw"][1] + "?limit=20", targets["fastapi raw"][2])
    print(
        f"\n(b) todo over HTTP: wrk -t1 -c{opts.connections}, {opts.seconds} s per run after warm-up, "
        f"{opts.rounds} rounds interleaved (median shown)"
    )
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    order = list(targets)
    for r in range(opts.rounds):
        for op in ("list", "create"):
            for name in order if r % 2 == 0 else order[::-1]:
                server, list_path, create_path = targets[name]
                if op == "list":
                    figure = wrk(servers[server].url(list_path + "?limit=20"), opts.seconds, opts.connections)
                else:
                    figure = wrk(servers[server].url(create_path), opts.seconds, opts.connections, script)
                results.setdefault((name, op), []).append(figure)
    return results


def _print_todo(results: dict[tuple[str, str], list[tuple[float, float]]]) -> None:
    """Medians per target and the ratios the issue's targets are stated in."""

    def med(name: str, op: str, i: int) -> float:
        return statistics.median(f[i] for f in results[(name, op)])

    for op in ("list", "create"):
        for name in _TODO_TARGETS:
            runs = " ".join(f"{f[0]:.0f}" for f in results[(name, op)])
            print(
                f"    {op:<7}{name:<13} {med(name, op, 0):8.0f} req/s   p99 {med(name, op, 1):6.2f} ms   (runs: {runs})"
            )
    print()
    print("figure                                        value   target")
    for op in ("list", "create"):
        for base in ("fastapi", "fastapi raw"):
            label = f"{op} throughput dpmsf / {base}"
            print(
                f"{label:<44} {med('dpmsf', op, 0) / med(base, op, 0):5.2f}x   >= 0.8x"
                if base == "fastapi"
                else f"{label:<44} {med('dpmsf', op, 0) / med(base, op, 0):5.2f}x   (stricter baseline)"
            )
        label = f"{op} p99 dpmsf / fastapi"
        print(f"{label:<44} {med('dpmsf', op, 1) / med('fastapi', op, 1):5.2f}x")


if __name__ == "__main__":
    main()
