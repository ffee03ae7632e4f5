"""The token check with PostgreSQL stores against SQLite and memory, same run, same machine.

    .venv/bin/python bench/postgres_bench.py [--calls 2000] [--threads 1,8]

(a) a token check per request (verify + replay-store claim) in µs, median of one run per thread count; the
    tenant's key comes from ``key_lookup``'s cache, as on a warm server;
(b) one uncached tenant registry read (``get``), µs median;
(c) the document store: ``get`` and ``put`` (a replacement, quota counted in the same transaction) of a 200-byte
    document, µs median, SQLite file against PostgreSQL, same run; writes of one tenant queue on its usage row,
    so ``put`` is also timed with a tenant per thread. The test server runs with fsync off, SQLite with its
    default (a sync per commit): compare the PostgreSQL figures with your own server's.

PostgreSQL: a real server from Debian's ``postgresql`` package, started like the tests start it
(``tests/pgserver.py``: initdb + pg_ctl in a temporary folder, fsync off, 127.0.0.1 over TCP).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from pgserver import postgres  # noqa: E402

from dpmsf_core.store import PostgresStore, SQLiteStore  # noqa: E402
from dpmsf_core.tenancy.replay import MemoryReplayStore, PostgresReplayStore, SQLiteReplayStore  # noqa: E402
from dpmsf_core.tenancy.tenants import SQLiteTenantRegistry, key_lookup  # noqa: E402
from dpmsf_core.tenancy.tenants_postgres import PostgresTenantRegistry  # noqa: E402
from dpmsf_core.tenancy.tokens import TokenVerifier, generate_key, mint  # noqa: E402

TENANT = "7e7a7e7a-0000-4000-8000-00000000be0c"


def timed(work: Callable[[], object], calls: int, threads: int) -> float:
    """Median µs of one ``work()`` over ``calls`` calls spread on ``threads`` threads."""
    samples: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def run() -> None:
        mine = []
        barrier.wait()
        for _ in range(calls // threads):
            t0 = time.perf_counter()
            work()
            mine.append((time.perf_counter() - t0) * 1e6)
        with lock:
            samples.extend(mine)

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return statistics.median(samples)


def token_check(replay: object, registry: object, key: str, calls: int, threads: int) -> float:
    verifier = TokenVerifier(key_lookup(registry, cache_seconds=3600), replay)  # type: ignore[arg-type]
    tokens = iter([mint(TENANT, key) for _ in range(calls + threads)])
    lock = threading.Lock()

    def one() -> object:
        with lock:
            token = next(tokens)
        return verifier.verify(token)

    one()  # warm: the key is cached, the pool open, the table made
    return timed(one, calls, threads)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--threads", default="1,8")
    args = parser.parse_args()
    threads = [int(n) for n in args.threads.split(",")]
    master, key = generate_key(), generate_key()
    with tempfile.TemporaryDirectory() as tmp, postgres() as server:
        import psycopg

        with psycopg.connect(server + "/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        url = server + "/bench"
        sqlite_tenants = SQLiteTenantRegistry(f"{tmp}/tenants.db", master_key=master)
        pg_tenants = PostgresTenantRegistry(url, master_key=master)
        for registry in (sqlite_tenants, pg_tenants):
            registry.add(tenant_id=TENANT, key=key)
        print(f"(a) token check (verify + claim), µs median of {args.calls} calls")
        for n in threads:
            memory = token_check(MemoryReplayStore(), sqlite_tenants, key, args.calls, n)
            sqlite = token_check(SQLiteReplayStore(f"{tmp}/replay-{n}.db"), sqlite_tenants, key, args.calls, n)
            pg = token_check(PostgresReplayStore(url), pg_tenants, key, args.calls, n)
            print(f"    {n} thread(s): memory {memory:7.1f}  sqlite {sqlite:7.1f}  postgresql {pg:7.1f}")
        print(f"(b) tenant registry get, uncached, µs median of {args.calls} calls")
        for n in threads:
            lite = timed(lambda: sqlite_tenants.get(TENANT), args.calls, n)
            pg = timed(lambda: pg_tenants.get(TENANT), args.calls, n)
            print(f"    {n} thread(s): sqlite {lite:7.1f}  postgresql {pg:7.1f}")
        print("    (a random id, never found)", end=" ")
        print(f"postgresql {timed(lambda: pg_tenants.get(str(uuid.uuid4())), args.calls, 1):7.1f}")
        pg_tenants.close()
        store_costs(url, tmp, args.calls, threads)


_local = threading.local()
_tenants = iter(range(10**9))


def own_tenant() -> str:
    """This thread's own tenant: its writes never wait for another thread's (each tenant's usage row is locked)."""
    if not hasattr(_local, "tenant"):
        _local.tenant = f"bench-{next(_tenants)}"
    return str(_local.tenant)


def store_costs(url: str, tmp: str, calls: int, threads: list[int]) -> None:
    """(c): get and put of one tenant's documents (each thread its own ids), SQLite against PostgreSQL."""
    doc = {"title": "x" * 180, "done": False}
    stores = {"sqlite": SQLiteStore(f"{tmp}/store.db"), "postgresql": PostgresStore(url)}
    for backend in stores.values():
        for i in range(64):
            backend.put(TENANT, "bench", f"d{i}", doc)
    print(f"(c) document store, µs median of {calls} calls (200-byte documents, one tenant)")
    for n in threads:
        row = []
        for name, backend in stores.items():
            ids = iter(range(10**9))
            lock = threading.Lock()

            def one_id(ids: object = ids, lock: threading.Lock = lock) -> str:
                with lock:
                    return f"d{next(ids) % 64}"  # type: ignore[call-overload]

            get = timed(lambda b=backend, f=one_id: b.get(TENANT, "bench", f()), calls, n)
            put = timed(lambda b=backend, f=one_id: b.put(TENANT, "bench", f(), doc), calls, n)
            own = timed(lambda b=backend, f=one_id: b.put(own_tenant(), "bench", f(), doc), calls, n)
            row.append(f"{name} get {get:7.1f} put {put:7.1f} (a tenant per thread {own:7.1f})")
        print(f"    {n} thread(s): " + "   ".join(row))
    for backend in stores.values():
        backend.close()


if __name__ == "__main__":
    main()
