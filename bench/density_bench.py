"""Density figures of issue 20, side by side with the admin's in-process call, in one run over HTTP on ``dpmsf serve``.

    .venv/bin/python bench/density_bench.py [--tenants 10,100,1000] [--seconds 8] [--env K=V ...]

One server (bundled plugins, access log off, default settings but ADMIN_ID and DPMSF_ADMIN_KEY) with the largest
``--tenants`` count registered; each tenant uploads its own trivial module (``return 'ok'``), the admin uploads the
same source, which runs in the server's process (the in-process reference).

(1) first call: each of ``--first`` fresh tenants calls once, one after the other: a new guest every time (after the
    pool is full, another tenant's idle guest is recycled for it). p50 and p99, minus the in-process p50.
(2) warm overhead: one tenant's warm guest against the admin's in-process call, interleaved, one client: p50 each.
(0) cold: the very first tenant call on the fresh server, which starts the pool (and its template, if any).
(3) PSS per idle guest: after ``--idle`` tenants (20) each called once, the Pss line of /proc/<pid>/smaps_rollup
    of every sandbox process (the template too, when there is one), summed and divided by the number of guests. PSS
    counts a page shared by k processes as 1/k in each, so copy-on-write pages are never counted twice.
(4) round robin: for each ``--tenants`` count N, 8 clients call N tenants in turn (client c calls tenant c, c+8, ...)
    for ``--seconds``: req/s, p50, p99 and the non-200 answers; then the in-process reference the same way.
(5) memory: the server's RSS and the sandbox processes' PSS sum after each round robin.

The ratios printed are sandboxed / in-process, and each figure at N tenants / at the smallest N.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isolation_bench import ADMIN, Host, Sample, _descendants, _proc_stats, _statuses, _timed

TRIVIAL = "from dpmsf_core import expose\n\n\n@expose.endpoint\ndef ok():\n    return 'ok'\n"
CLIENTS = 8


def tenant_ids(n: int) -> list[str]:
    return [f"dddd{k:04d}-0000-4000-8000-0000000d0020" for k in range(n)]


def url(index: int | None) -> str:
    return "/rest/services/dens_ref/ok/" if index is None else f"/rest/services/dens_{index}/ok/"


def sandbox_pids(host: Host) -> list[int]:
    return _descendants(host.proc.pid, _proc_stats())


def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def memory(host: Host) -> tuple[int, int, float, float]:
    """(guests, template processes, PSS of every sandbox process in MB, the server's own RSS in MB)."""
    pids = sandbox_pids(host)
    templates = [p for p in pids if comm(p) == "dpmsf-template"]
    total = sum(pss_kb(p) for p in pids) / 1024
    return len(pids) - len(templates), len(templates), total, host.rss_mb()


class Bench:
    def __init__(self, host: Host, tenants: list[str]) -> None:
        self.host, self.tenants = host, tenants

    def call(self, client: httpx.Client, sample: Sample, index: int | None) -> None:
        who = ADMIN if index is None else self.tenants[index]
        _timed(sample, lambda: client.get(url(index), headers=self.host.auth(who)))

    def first_calls(self, start: int, count: int) -> Sample:
        sample = Sample()
        with self.host.client() as client:
            for i in range(start, start + count):
                self.call(client, sample, i)
                time.sleep(0.05)  # the previous guest settles (its replacement, if any, starts)
        return sample

    def warm(self, calls: int) -> tuple[Sample, Sample]:
        ours, ref = Sample(), Sample()
        with self.host.client() as client:
            for _ in range(20):
                self.call(client, Sample(), 0)
                self.call(client, Sample(), None)
            for _ in range(calls):
                self.call(client, ours, 0)
                self.call(client, ref, None)
        return ours, ref

    def round_robin(self, n: int | None, seconds: float) -> tuple[Sample, float]:
        """8 clients, client c calling tenants c, c+8, ... of the first ``n`` (None: the admin's in-process call)."""
        samples = [Sample() for _ in range(CLIENTS)]
        stop = time.monotonic() + seconds

        def loop(c: int) -> None:
            k = c
            with self.host.client() as client:
                while time.monotonic() < stop:
                    self.call(client, samples[c], None if n is None else k % n)
                    k += CLIENTS

        threads = [threading.Thread(target=loop, args=(c,)) for c in range(CLIENTS)]
        began = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - began
        total = Sample()
        for s in samples:
            total.ms += s.ms
            total.status += s.status
        return total, len(total.ms) / elapsed


def _errors(counts: Counter[str]) -> str:
    bad = Counter({k: v for k, v in counts.items() if k != "200"})
    return _statuses(bad) if bad else "none"


def setup(opts: argparse.Namespace, tmp: Path) -> tuple[Host, list[str]]:
    count = max(opts.tenant_counts + [opts.first + opts.idle + 1])
    tenants = tenant_ids(count)
    env = dict(kv.split("=", 1) for kv in opts.env)
    print(f"starting dpmsf serve with {count} tenants ({', '.join(opts.env) or 'default settings'})", flush=True)
    host = Host(tmp, "density", tenants, env)
    began = time.monotonic()
    with host.client() as client:
        host.upload_ok(client, ADMIN, "dens_ref", TRIVIAL)
        for i, tenant in enumerate(tenants):
            host.upload_ok(client, tenant, f"dens_{i}", TRIVIAL)
    print(f"  {count + 1} modules uploaded in {time.monotonic() - began:.1f} s", flush=True)
    return host, tenants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", default="10,100", help="round-robin tenant counts, e.g. 10,100,1000")
    parser.add_argument("--seconds", type=float, default=8, help="each round-robin phase")
    parser.add_argument("--first", type=int, default=30, help="fresh tenants whose first call is timed")
    parser.add_argument("--idle", type=int, default=0, help="tenants warmed for PSS (default: the pool's size)")
    parser.add_argument("--warm-calls", type=int, default=300, help="warm calls of each kind")
    parser.add_argument("--env", action="append", default=[], metavar="K=V", help="a setting for the server")
    opts = parser.parse_args()
    opts.tenant_counts = sorted(int(n) for n in opts.tenants.split(",") if n.strip())
    opts.idle = opts.idle or 20
    tmp = Path(tempfile.mkdtemp(prefix="dpmsf-density-"))
    host, tenants = setup(opts, tmp)
    bench = Bench(host, tenants)
    rows: list[tuple[str, str, str]] = []
    try:
        cold = Sample()
        with host.client() as client:
            bench.call(client, cold, 0)  # the pool (and its template, if any) starts for this call
        print(f"\n(0) cold: a tenant's first call on a fresh server (the pool starts) {cold.line()}", flush=True)
        rows.append(("cold first call", f"{cold.pct(0.5):.1f} ms", ""))
        ours, ref = bench.warm(opts.warm_calls)
        overhead = ours.pct(0.5) - ref.pct(0.5)
        print(f"\n(2) warm call      sandboxed {ours.line()}\n    in-process             {ref.line()}")
        print(f"    overhead p50 {overhead:.3f} ms ({ours.pct(0.5) / ref.pct(0.5):.2f}x in-process)", flush=True)
        rows.append(("warm overhead p50", f"{overhead:.3f} ms", "<= 0.15 ms"))

        first = bench.first_calls(1, opts.first)
        print(f"\n(1) first call on a new guest {first.line()}")
        print(f"    minus in-process p50: {first.pct(0.5) - ref.pct(0.5):.1f} ms", flush=True)
        rows.append(("first call p50", f"{first.pct(0.5):.1f} ms", "<= 20 ms"))

        time.sleep(1.0)
        idle_from = 1 + opts.first
        with host.client() as client:
            for i in range(idle_from, idle_from + opts.idle):
                bench.call(client, Sample(), i)
        time.sleep(1.0)
        guests, templates, pss, rss = memory(host)
        per = pss / max(1, guests)
        print(
            f"\n(3) {guests} idle guests, {templates} template: PSS {pss:.1f} MB in all, {per:.1f} MB per guest;"
            f" server RSS {rss:.0f} MB",
            flush=True,
        )
        rows.append(("PSS per idle guest", f"{per:.1f} MB", "<= 8 MB"))

        ref_rr, ref_rate = bench.round_robin(None, opts.seconds)
        print(f"\n(4) in-process, {CLIENTS} clients: {ref_rate:.0f} req/s  {ref_rr.line()}", flush=True)
        base: tuple[float, float] | None = None
        for n in opts.tenant_counts:
            bench.round_robin(n, min(2.0, opts.seconds))  # every tenant called once: its guest started
            rr, rate = bench.round_robin(n, opts.seconds)
            guests, templates, pss, rss = memory(host)
            base = base or (rate, rr.pct(0.99))
            print(
                f"    {n:>5} tenants: {rate:7.0f} req/s ({rate / ref_rate:.2f}x in-process, {rate / base[0]:.2f}x"
                f" of {opts.tenant_counts[0]} tenants)  {rr.line()}  errors: {_errors(rr.status)}",
                flush=True,
            )
            print(
                f"                 p99 {rr.pct(0.99) / base[1]:.2f}x of {opts.tenant_counts[0]} tenants;"
                f" {guests} guests, {templates} template, sandbox PSS {pss:.0f} MB, server RSS {rss:.0f} MB,"
                f" together {pss + rss:.0f} MB",
                flush=True,
            )
            rows.append((f"{n} tenants req/s", f"{rate:.0f}", ">= 300" if n == 100 else ""))
            rows.append((f"{n} tenants p99", f"{rr.pct(0.99):.1f} ms", "<= 100 ms" if n == 100 else ""))
            rows.append((f"{n} tenants errors", _errors(rr.status), "none" if n == 100 else ""))
            rows.append((f"{n} tenants memory (RSS + PSS)", f"{pss + rss:.0f} MB", "<= 1536 MB" if n == 100 else ""))
    finally:
        host.close()
    print("\nfigure                              value           target")
    for figure, value, target in rows:
        print(f"{figure:<35} {value:<15} {target}")
    if os.environ.get("DENSITY_KEEP"):
        print(f"kept {tmp}")


if __name__ == "__main__":
    main()
