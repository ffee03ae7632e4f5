"""Isolation figures of issue 18, side by side in one run: what one tenant (or an anonymous caller) costs the others.

    .venv/bin/python bench/isolation_bench.py [--sections probe,fair,memory,cpu] [--seconds 8] [--docs 600]

About 4 minutes with the defaults on 2 cores; ``--help`` lists every duration and size.

(1) probe:  an anonymous probe (GET /rest/services/hello-world/, bundled plugins) alone, then while a tenant uploads
            hostile modules (64,000 ``x=1`` lines, ~256 kB) and refused ones (a bad method name on the last lines).
(2) fair:   an honest tenant's trivial sandboxed call alone, then with 1, 2 and 6 flooding tenants, each keeping
            several calls in flight of a function that spins for ~1 s; non-200 answers counted by status.
(3) memory: the server process's RSS (/proc/<pid>/status) before, at its peak and after the store-list attack (a
            tenant stores ~340 kB documents, then lists 1000 of them from a sandboxed function, twice) and the
            demo-list attack (anonymous POSTs of ~340 kB todo tasks, then GET tasks/?limit=1000).
(4) cpu:    a tenant's CPU-ms as GET /rest/admin/usage reports it ("n/a" while that route answers 404) against the
            CPU time that the server's process tree measured (/proc/<pid>/stat utime + stime) over a spinning load.

Every section starts its own ``dpmsf serve`` (one process, bundled plugins, access log off) on 127.0.0.1 in a fresh
state folder, with the default settings except ADMIN_ID and DPMSF_ADMIN_KEY (uploads need an admin); ``--env K=V``
adds settings. The script measures servers with and without the fixes of issue 18: where a fixed server refuses (a
quota, a bounded demo, a paged listing), the refusals are counted and reported as such, never treated as a crash.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import free_port

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dpmsf_core.tenancy.tenants import SQLiteTenantRegistry  # noqa: E402
from dpmsf_core.tenancy.tokens import generate_key, mint  # noqa: E402

ADMIN = "00000000-0000-4000-8000-0000000150be"
MALLORY = "aaaaaaaa-aaaa-4aaa-8aaa-0000000150be"
HONEST = "bbbbbbbb-bbbb-4bbb-8bbb-0000000150be"
FLOODERS = [f"f100d00{k}-0000-4000-8000-0000000150be" for k in range(1, 7)]
SECTIONS = ("probe", "fair", "memory", "cpu")

TRIVIAL = "from dpmsf_core import expose\n\n\n@expose.endpoint\ndef ok():\n    return 'ok'\n"
SPIN = '''import time

from dpmsf_core import expose


@expose.endpoint
def spin(seconds: float = 1.0):
    """Computes (a busy loop) for ``seconds`` of its clock: the flood, and the CPU that metering must count."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n
'''
STORE = '''from dpmsf_core import expose, store


@expose.endpoint(method="POST")
def fill(start: int = 0, count: int = 10, size: int = 340000):
    """Stores ``count`` documents of ``size`` bytes; a refusal (a quota, a size limit) is counted, not raised."""
    docs = store.collection("big")
    pad = "x" * size
    stored, refused, error = 0, 0, ""
    for i in range(start, start + count):
        try:
            docs.put("d%06d" % i, {"pad": pad})
            stored += 1
        except Exception as exc:
            refused += 1
            error = error or (type(exc).__name__ + ": " + str(exc))[:200]
    return {"stored": stored, "refused": refused, "error": error}


@expose.endpoint
def scan(limit: int = 1000):
    """One listing of up to ``limit`` documents: what the host builds for it is the attack; the answer is small."""
    page, cursor = store.collection("big").list(limit=limit)
    return {"docs": len(page), "bytes": sum(len(d.get("pad", "")) for d in page), "more": cursor is not None}
'''


# -- the server -----------------------------------------------------------------------------------------------------


class Host:
    """``dpmsf serve`` in its own process group and state folder, with ``tenants`` registered before it starts."""

    def __init__(self, tmp: Path, label: str, tenants: list[str], env: dict[str, str]) -> None:
        self.state = tmp / f"state-{label}"
        self.state.mkdir(parents=True)
        registry = SQLiteTenantRegistry(str(self.state / "tenants.db"))  # the server's default registry file
        self.keys = {t: registry.add(name=f"bench-{t[:8]}", tenant_id=t).key for t in tenants}
        self.keys[ADMIN] = generate_key()
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"server-{label}.log"
        server_env = {**os.environ, "DPMSF_STATE_DIR": str(self.state), "ADMIN_ID": ADMIN}
        server_env |= {"DPMSF_ADMIN_KEY": self.keys[ADMIN], **env}
        command = [sys.executable, "-m", "dpmsf_core", "serve", "--port", str(self.port), "--plugins", "."]
        command += ["--no-access-log", "--log-level", "warning"]
        with self.log.open("w") as out:  # cwd: the state folder, so no stray .env is read
            self.proc = subprocess.Popen(
                command, cwd=self.state, env=server_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._wait()

    def _wait(self, timeout: float = 90) -> None:
        started = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dpmsf serve exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.base + "/", timeout=2).status_code < 500:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() - started > timeout:
                self.close()
                raise RuntimeError(f"dpmsf serve not answering after {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=120)

    def auth(self, tenant: str) -> dict[str, str]:
        """A fresh single-use token per request (the replay store refuses a second use)."""
        return {"authorization": f"Bearer {mint(tenant, self.keys[tenant])}"}

    def upload(self, client: httpx.Client, tenant: str, name: str, source: str) -> httpx.Response:
        return client.put(f"/rest/admin/plugins/{name}", content=source, headers=self.auth(tenant))

    def upload_ok(self, client: httpx.Client, tenant: str, name: str, source: str) -> None:
        r = self.upload(client, tenant, name, source)
        if r.status_code not in (200, 201) or r.json()["results"].get("status") not in (None, "loaded"):
            raise RuntimeError(f"upload of {name} answered {r.status_code}: {r.text[:500]}")

    def rss_mb(self) -> float:
        return _status_kb(self.proc.pid, "VmRSS") / 1024

    def cpu_s(self) -> tuple[float, float]:
        """(the sandbox workers' CPU: every descendant's own and reaped children's time plus the children the
        server reaped itself; the whole tree: that plus the server process's own time), in seconds."""
        stats = _proc_stats()
        tree = _descendants(self.proc.pid, stats)
        tick = os.sysconf("SC_CLK_TCK")
        own = stats.get(self.proc.pid)
        if own is None:
            raise RuntimeError("the server process is gone")
        workers = sum(sum(stats[p][1:5]) for p in tree if p in stats) + own[3] + own[4]
        return workers / tick, (workers + own[1] + own[2]) / tick

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _status_kb(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field_name} in /proc/{pid}/status")


def _proc_stats() -> dict[int, tuple[int, int, int, int, int]]:
    """pid -> (ppid, utime, stime, cutime, cstime) in clock ticks, for every process we may read."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        rest = raw[raw.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
        out[int(entry)] = (int(rest[1]), int(rest[11]), int(rest[12]), int(rest[13]), int(rest[14]))
    return out


def _descendants(root: int, stats: dict[int, tuple[int, int, int, int, int]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, st in stats.items():
        children.setdefault(st[0], []).append(pid)
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


# -- figures --------------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """Latencies (ms) of one caller in one phase, and the statuses it got (a transport error counts as "error")."""

    ms: list[float] = field(default_factory=list)
    status: Counter[str] = field(default_factory=Counter)

    def add(self, started: float, status: int | str) -> None:
        self.ms.append((time.perf_counter() - started) * 1000)
        self.status[str(status)] += 1

    def pct(self, q: float) -> float:
        if not self.ms:
            return math.nan
        ordered = sorted(self.ms)
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]  # nearest rank: p99 of 50 calls is the worst

    def line(self) -> str:
        return (
            f"n={len(self.ms):<5} p50 {self.pct(0.5):8.1f} ms  p99 {self.pct(0.99):8.1f} ms"
            f"  max {self.pct(1.0):8.1f} ms  {_statuses(self.status)}"
        )


def _statuses(counts: Counter[str]) -> str:
    return " ".join(f"{k}x{v}" for k, v in sorted(counts.items())) or "-"


def _non_200(counts: Counter[str]) -> str:
    return _statuses(Counter({k: v for k, v in counts.items() if k != "200"})) or "-"


def _timed(sample: Sample, call: Callable[[], httpx.Response]) -> httpx.Response | None:
    started = time.perf_counter()
    try:
        r = call()
    except httpx.HTTPError as exc:
        sample.add(started, type(exc).__name__)
        return None
    sample.add(started, r.status_code)
    return r


@dataclass
class Verdicts:
    """The summary table: one row per figure, with its floor and target."""

    rows: list[tuple[str, str, str, str]] = field(default_factory=list)

    def add(self, figure: str, value: str, floor: str = "", target: str = "", met: bool | None = None) -> None:
        verdict = "" if met is None else ("met" if met else "MISSED")
        self.rows.append((figure, value, floor, f"{target} {verdict}".strip()))

    def print(self) -> None:
        print("\nfigure                                              value            floor        target")
        for figure, value, floor, target in self.rows:
            print(f"{figure:<51} {value:<16} {floor:<12} {target}")


# -- (1) an anonymous probe during hostile uploads ------------------------------------------------------------------


def hostile_module(max_bytes: int, refused: bool) -> str:
    """~``max_bytes`` of ``x=1`` lines (the upload limit), then a function; a bad method name makes it refused."""
    tail = '\n@expose.endpoint(method="FETCH")\ndef f():\n    return 1\n' if refused else "\ndef f():\n    return 1\n"
    head = "from dpmsf_core import expose\n"
    lines = (max_bytes - len(head) - len(tail)) // 4
    return head + "x=1\n" * lines + tail


def probe(host: Host, seconds: float, interval: float) -> Sample:
    sample = Sample()
    with host.client() as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            _timed(sample, lambda: client.get("/rest/services/hello-world/"))
            time.sleep(interval)
    return sample


def section_probe(opts: argparse.Namespace, tmp: Path, verdicts: Verdicts) -> None:
    print("\n(1) anonymous GET /rest/services/hello-world/, alone and during a tenant's hostile uploads", flush=True)
    accepted = hostile_module(opts.upload_bytes, refused=False)
    refused = hostile_module(opts.upload_bytes, refused=True)
    # just inside a server's reading budget (20,000 lines): read to the end, in full, every time
    within = hostile_module(4 * opts.within_lines + 64, refused=False)
    with Host(tmp, "probe", [MALLORY], opts.env) as host:
        probe(host, 1.0, opts.interval)  # warm-up: the first requests import and compile
        alone = probe(host, opts.seconds, opts.interval)
        print(f"  alone (idle server, the floor)  {alone.line()}", flush=True)
        stop = threading.Event()
        uploads: dict[str, Sample] = {"accepted": Sample(), "refused": Sample(), "within budget": Sample()}

        def attack() -> None:
            with host.client() as client:
                i = 0
                while not stop.is_set():
                    name = f"iso_big_{i % 2}"  # two names replaced in turn: the store stays bounded
                    _timed(uploads["accepted"], partial(host.upload, client, MALLORY, name, accepted))
                    if stop.is_set():
                        break
                    _timed(uploads["refused"], lambda: host.upload(client, MALLORY, "iso_bad", refused))
                    if stop.is_set():
                        break
                    _timed(uploads["within budget"], lambda: host.upload(client, MALLORY, "iso_within", within))
                    i += 1

        attacker = threading.Thread(target=attack)
        attacker.start()
        try:
            time.sleep(0.2)  # the first upload is under way
            during = probe(host, opts.seconds, opts.interval)
        finally:
            stop.set()
            attacker.join()
        print(f"  during hostile uploads          {during.line()}")
        for kind, sample in uploads.items():
            size = len(within if kind == "within budget" else accepted) // 1000
            print(f"    {kind + ' uploads (' + str(size) + ' kB)':<29} {sample.line()}")
    ratio = during.pct(0.99) / alone.pct(0.99)
    print(f"  p99 during / alone {ratio:.2f}x (target <= 1.5x, and never above 250 ms)", flush=True)
    ok = ratio <= 1.5 and during.pct(1.0) <= 250
    verdicts.add("(1) probe p99 alone", f"{alone.pct(0.99):.1f} ms", "(the floor)")
    verdicts.add("(1) probe p99 during hostile uploads", f"{during.pct(0.99):.1f} ms", f"{alone.pct(0.99):.1f} ms")
    verdicts.add("(1) probe p99 during / alone", f"{ratio:.2f}x", "1.00x", "<= 1.5x", ratio <= 1.5)
    verdicts.add("(1) probe max during hostile uploads", f"{during.pct(1.0):.1f} ms", "", "<= 250 ms", ok)
    counts = uploads["accepted"].status + uploads["refused"].status + uploads["within budget"].status
    verdicts.add("(1) hostile uploads (answers)", _statuses(counts)[:16])


# -- (2) fair share -------------------------------------------------------------------------------------------------


def section_fair(opts: argparse.Namespace, tmp: Path, verdicts: Verdicts) -> None:
    counts = sorted({int(c) for c in opts.flooders.split(",") if c.strip()})
    print(
        f"\n(2) an honest tenant's trivial sandboxed call, alone and with {','.join(map(str, counts))} flooding tenants"
        f" ({opts.inflight} calls each in flight, spinning {opts.spin:g} s)",
        flush=True,
    )
    if max(counts) > len(FLOODERS):
        raise SystemExit(f"--flooders: at most {len(FLOODERS)}")
    phases: dict[int, tuple[Sample, Counter[str]]] = {}
    with Host(tmp, "fair", [HONEST, *FLOODERS], opts.env) as host:
        with host.client() as client:
            host.upload_ok(client, HONEST, "iso_honest", TRIVIAL)
            for k, tenant in enumerate(FLOODERS):
                host.upload_ok(client, tenant, f"iso_flood_{k}", SPIN)
            for _ in range(5):  # the honest tenant's guest is warm before the floor is taken
                client.get("/rest/services/iso_honest/ok/", headers=host.auth(HONEST))
        for n in [0, *[c for c in counts if c > 0]]:
            phases[n] = fair_phase(host, opts, n)
            honest, flood = phases[n]
            label = "alone (the floor)" if n == 0 else f"with {n} flooder{'s' if n > 1 else ''}"
            print(f"  {label:<20} {honest.line()}", flush=True)
            if n:
                print(f"  {'':<20} flooders' calls: {_statuses(flood)}", flush=True)
    alone = phases[0][0]
    for n in phases:
        honest, flood = phases[n]
        if n == 0:
            verdicts.add("(2) honest call p99 alone", f"{alone.pct(0.99):.1f} ms", "(the floor)")
            continue
        ratio = honest.pct(0.99) / alone.pct(0.99)
        last = n == max(phases)
        target = "<= 2x" if last and n >= 6 else ""
        verdicts.add(
            f"(2) honest call p99 with {n} flooder{'s' if n > 1 else ''}",
            f"{honest.pct(0.99):.1f} ms",
            f"{alone.pct(0.99):.1f} ms",
            f"{target} ({ratio:.1f}x)" if target else f"({ratio:.1f}x)",
            ratio <= 2 if target else None,
        )
        no503 = honest.status.get("503", 0) == 0
        verdicts.add(
            "(2)   honest tenant's non-200",
            _non_200(honest.status),
            "",
            "no 503" if target else "",
            no503 if target else None,
        )
        verdicts.add("(2)   flooders' non-200", _non_200(flood))


def fair_phase(host: Host, opts: argparse.Namespace, flooders: int) -> tuple[Sample, Counter[str]]:
    """Flooders start, get their calls queued, then the honest tenant calls in a loop until ``--fair-seconds`` and
    ``--min-calls`` are both reached (at most ``--fair-cap`` s); then the flood stops and drains."""
    stop = threading.Event()
    flood: list[Sample] = []

    def flood_loop(k: int, sample: Sample) -> None:
        with host.client() as client:
            url = f"/rest/services/iso_flood_{k}/spin/?seconds={opts.spin}"
            while not stop.is_set():
                r = _timed(sample, lambda: client.get(url, headers=host.auth(FLOODERS[k])))
                if r is None or r.status_code != 200:
                    time.sleep(opts.interval)  # refused at once (429, 503): the client must not eat the CPU

    threads = []
    for k in range(flooders):
        for _ in range(opts.inflight):
            flood.append(Sample())
            threads.append(threading.Thread(target=flood_loop, args=(k, flood[-1])))
    for thread in threads:
        thread.start()
    honest = Sample()
    try:
        if flooders:
            time.sleep(1.5)  # every flood call is queued or running before the honest tenant's first
        started = time.monotonic()
        with host.client() as client:
            while True:
                elapsed = time.monotonic() - started
                if elapsed >= opts.fair_cap or (elapsed >= opts.fair_seconds and len(honest.ms) >= opts.min_calls):
                    break
                _timed(honest, lambda: client.get("/rest/services/iso_honest/ok/", headers=host.auth(HONEST)))
                time.sleep(opts.interval)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    total: Counter[str] = Counter()
    for sample in flood:
        total += sample.status
    return honest, total


# -- (3) server memory ----------------------------------------------------------------------------------------------


class Peak:
    """The server's highest VmRSS while it runs, sampled every 20 ms (VmHWM cannot be reset on every kernel)."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.mb = host.rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.mb = max(self.mb, self.host.rss_mb())
            except (OSError, RuntimeError):
                return

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.mb


@dataclass
class Attack:
    """RSS (MB) of the server before, at the peak during the listings, after; what was stored and refused."""

    name: str
    before: float = 0.0
    after_fill: float = 0.0
    peak: float = 0.0
    after: float = 0.0
    stored: int = 0
    refused: int = 0
    refusals: Counter[str] = field(default_factory=Counter)
    lists: list[str] = field(default_factory=list)
    note: str = ""

    def print(self) -> None:
        print(
            f"  {self.name:<17} RSS before {self.before:6.0f} MB, after storing {self.after_fill:6.0f} MB,"
            f" peak during the listings {self.peak:6.0f} MB, after {self.after:6.0f} MB"
            f"  (growth: peak +{self.peak - self.before:.0f} MB, held +{self.after - self.before:.0f} MB)"
        )
        refused = f", refused {self.refused} ({_statuses(self.refusals)}{'; ' + self.note if self.note else ''})"
        print(f"  {'':<17} documents stored {self.stored}{refused if self.refused else ''}; listings: {self.lists}")


def section_memory(opts: argparse.Namespace, tmp: Path, verdicts: Verdicts) -> None:
    size = opts.doc_kb * 1000
    print(
        f"\n(3) server RSS (VmRSS of the dpmsf serve process): {opts.docs} documents of {opts.doc_kb} kB, then"
        " listings of 1000",
        flush=True,
    )
    attacks = [store_attack(opts, tmp, size), demo_attack(opts, tmp, size)]
    for attack in attacks:
        attack.print()
        growth = attack.peak - attack.before
        verdicts.add(
            f"(3) RSS growth, {attack.name} (peak)",
            f"+{growth:.0f} MB",
            f"{attack.before:.0f} MB",
            "< 150 MB",
            growth < 150,
        )
        verdicts.add(f"(3) RSS growth, {attack.name} (held after)", f"+{attack.after - attack.before:.0f} MB")
        if attack.refused:
            verdicts.add(f"(3)   {attack.name}: refused documents", f"{attack.refused}/{opts.docs}", "", "(a fix)")


def store_attack(opts: argparse.Namespace, tmp: Path, size: int) -> Attack:
    attack = Attack("store-list attack")
    with Host(tmp, "store", [MALLORY], opts.env) as host, host.client() as client:
        host.upload_ok(client, MALLORY, "iso_store", STORE)
        client.post("/rest/services/iso_store/fill/", json={"count": 1, "size": 10}, headers=host.auth(MALLORY))
        time.sleep(0.5)
        attack.before = host.rss_mb()
        per_call = max(1, opts.docs_per_call)
        for start in range(0, opts.docs, per_call):
            count = min(per_call, opts.docs - start)
            body = {"start": start, "count": count, "size": size}
            r = client.post("/rest/services/iso_store/fill/", json=body, headers=host.auth(MALLORY))
            if r.status_code == 200:
                result = r.json()["results"]
                attack.stored += result["stored"]
                attack.refused += result["refused"]
                if result["refused"]:
                    attack.refusals["in-guest"] += result["refused"]
                    attack.note = attack.note or result["error"]
            else:
                attack.refused += count
                attack.refusals[str(r.status_code)] += count
                attack.note = attack.note or _detail(r)
        time.sleep(0.5)
        attack.after_fill = host.rss_mb()
        peak = Peak(host)
        for _ in range(2):
            r = client.get("/rest/services/iso_store/scan/?limit=1000", headers=host.auth(MALLORY))
            if r.status_code == 200:
                result = r.json()["results"]
                more = ", more" if result["more"] else ""
                attack.lists.append(f"200: {result['docs']} docs, {result['bytes'] / 1e6:.0f} MB{more}")
            else:
                attack.lists.append(f"{r.status_code}: {_detail(r)[:80]}")
        time.sleep(1.0)
        attack.peak = peak.stop()
        attack.after = host.rss_mb()
    return attack


def demo_attack(opts: argparse.Namespace, tmp: Path, size: int) -> Attack:
    attack = Attack("demo-list attack")
    with Host(tmp, "demo", [], opts.env) as host, host.client() as client:
        probe_task = client.post("/rest/services/todo/tasks/", json={"title": "warm"})
        if probe_task.status_code == 404:
            attack.note = "the todo demo is not served"
        time.sleep(0.5)
        attack.before = host.rss_mb()
        title = "x" * size
        for _ in range(opts.docs):
            r = client.post("/rest/services/todo/tasks/", json={"title": title})
            if r.status_code in (200, 201):
                attack.stored += 1
            else:
                attack.refused += 1
                attack.refusals[str(r.status_code)] += 1
                attack.note = attack.note or _detail(r)
        time.sleep(0.5)
        attack.after_fill = host.rss_mb()
        peak = Peak(host)
        received = 0
        with client.stream("GET", "/rest/services/todo/tasks/?limit=1000") as r:
            for chunk in r.iter_bytes():
                received += len(chunk)
            attack.lists.append(f"{r.status_code}: {received / 1e6:.1f} MB answer")
        time.sleep(1.0)
        attack.peak = peak.stop()
        attack.after = host.rss_mb()
    return attack


def _detail(r: httpx.Response) -> str:
    try:
        return str(r.json().get("detail") or r.json().get("title") or r.text[:200])[:200]
    except (ValueError, AttributeError):
        return r.text[:200]


# -- (4) CPU-ms reported against measured ---------------------------------------------------------------------------


def _walk(doc: Any) -> Iterator[Any]:
    yield doc
    if isinstance(doc, dict):
        for value in doc.values():
            yield from _walk(value)
    elif isinstance(doc, list):
        for value in doc:
            yield from _walk(value)


def reported_cpu_ms(doc: Any, tenant: str) -> tuple[float, str] | None:
    """The tenant's CPU-ms in a usage report whose shape this script does not know yet: the first object that is
    the tenant's (keyed by its id, or holding it as a value) and has a numeric field named like CPU-ms."""
    for node in _walk(doc):
        if not isinstance(node, dict):
            continue
        mine = node.get(tenant) if isinstance(node.get(tenant), dict) else (node if tenant in node.values() else None)
        if mine is None:
            continue
        best: tuple[int, float, str] | None = None
        for key, value in mine.items():
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            k = key.lower().replace("_", "").replace("-", "")
            if "cpu" not in k:
                continue
            rank, ms = (0, float(value)) if k.endswith("ms") else (1, float(value) * 1000)
            if best is None or rank < best[0]:
                best = (rank, ms, key)
        if best:
            return best[1], best[2]
    return None


def usage(host: Host, client: httpx.Client) -> tuple[int, Any]:
    r = client.get("/rest/admin/usage", headers=host.auth(ADMIN))
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, r.text


def section_cpu(opts: argparse.Namespace, tmp: Path, verdicts: Verdicts) -> None:
    print(
        f"\n(4) CPU-ms: a tenant's {opts.cpu_calls} calls spinning {opts.cpu_spin:g} s each, reported against measured",
        flush=True,
    )
    with Host(tmp, "cpu", [MALLORY], opts.env) as host, host.client() as client:
        host.upload_ok(client, MALLORY, "iso_spin", SPIN)
        url = f"/rest/services/iso_spin/spin/?seconds={opts.cpu_spin}"
        client.get("/rest/services/iso_spin/spin/?seconds=0.01", headers=host.auth(MALLORY))  # warm its guest
        time.sleep(0.5)
        status0, before = usage(host, client)
        workers0, tree0 = host.cpu_s()
        wall0 = time.perf_counter()
        answers: Counter[str] = Counter()
        for _ in range(opts.cpu_calls):
            answers[str(client.get(url, headers=host.auth(MALLORY)).status_code)] += 1
        wall = time.perf_counter() - wall0
        time.sleep(0.3)  # a worker recycled after its call is reaped and counted
        workers1, tree1 = host.cpu_s()
        status1, after = usage(host, client)
    workers_ms, tree_ms = (workers1 - workers0) * 1000, (tree1 - tree0) * 1000
    print(f"  calls: {_statuses(answers)} in {wall:.2f} s wall")
    print(f"  measured: sandbox workers {workers_ms:.0f} CPU-ms, whole server process tree {tree_ms:.0f} CPU-ms")
    if status0 == 404 or status1 == 404:
        print("  reported: n/a (GET /rest/admin/usage answers 404)")
        verdicts.add("(4) CPU-ms reported / measured (workers)", "n/a", f"{workers_ms:.0f} ms", "within 5 %", False)
        return
    got0, got1 = reported_cpu_ms(before, MALLORY), reported_cpu_ms(after, MALLORY)
    if status1 != 200 or got1 is None:
        print(f"  reported: n/a (GET /rest/admin/usage: {status1}, no CPU-ms for the tenant in {str(after)[:300]})")
        verdicts.add("(4) CPU-ms reported / measured (workers)", "n/a", f"{workers_ms:.0f} ms", "within 5 %", False)
        return
    reported = got1[0] - (got0[0] if got0 else 0.0)
    ratio = reported / workers_ms if workers_ms else math.nan
    print(
        f"  reported: {reported:.0f} CPU-ms (field {got1[1]!r}, the difference over the load);"
        f" reported / workers {ratio:.3f}, reported / tree {reported / tree_ms:.3f}"
    )
    verdicts.add(
        "(4) CPU-ms reported / measured (workers)",
        f"{ratio:.3f}",
        f"{workers_ms:.0f} ms",
        "within 5 %",
        abs(ratio - 1) <= 0.05,
    )


# -- main -----------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated, of " + ",".join(SECTIONS))
    parser.add_argument("--seconds", type=float, default=8, help="(1) each probe phase")
    parser.add_argument("--interval", type=float, default=0.01, help="pause between a caller's requests, s")
    parser.add_argument("--upload-bytes", type=int, default=256_000, help="(1) size of a hostile module")
    parser.add_argument("--within-lines", type=int, default=19_000, help="(1) lines of a module inside the read budget")
    parser.add_argument("--flooders", default="1,2,6", help="(2) flooding tenant counts (at most 6)")
    parser.add_argument("--inflight", type=int, default=3, help="(2) calls each flooder keeps in flight")
    parser.add_argument("--spin", type=float, default=1.0, help="(2) seconds each flood call computes")
    parser.add_argument("--fair-seconds", type=float, default=6, help="(2) each phase, at least")
    parser.add_argument("--min-calls", type=int, default=3, help="(2) honest calls per phase, at least")
    parser.add_argument("--fair-cap", type=float, default=45, help="(2) each phase, at most")
    parser.add_argument("--docs", type=int, default=600, help="(3) documents stored per attack")
    parser.add_argument("--doc-kb", type=int, default=340, help="(3) size of each document, kB")
    parser.add_argument("--docs-per-call", type=int, default=8, help="(3) documents per sandboxed store call")
    parser.add_argument("--cpu-calls", type=int, default=6, help="(4) spinning calls")
    parser.add_argument("--cpu-spin", type=float, default=0.5, help="(4) seconds each call computes")
    parser.add_argument("--env", action="append", default=[], metavar="K=V", help="a setting for every server")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (server logs, state)")
    opts = parser.parse_args()
    opts.env = dict(item.split("=", 1) for item in opts.env)
    chosen = [s.strip() for s in opts.sections.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {','.join(SECTIONS)}")
    tmp = Path(tempfile.mkdtemp(prefix="dpmsf-isobench-"))
    verdicts = Verdicts()
    run = {"probe": section_probe, "fair": section_fair, "memory": section_memory, "cpu": section_cpu}
    started = time.monotonic()
    print(f"isolation bench: {os.cpu_count()} cores, dpmsf serve (default settings{_env_note(opts.env)}), {tmp}")
    try:
        for name in SECTIONS:
            if name not in chosen:
                continue
            try:
                run[name](opts, tmp, verdicts)
            except Exception as exc:  # one section's surprise (a fixed server answering otherwise) spares the rest
                print(f"  section {name} failed: {type(exc).__name__}: {exc}", flush=True)
                verdicts.add(f"({SECTIONS.index(name) + 1}) {name}: failed", type(exc).__name__)
    finally:
        verdicts.print()
        print(f"\n{time.monotonic() - started:.0f} s in all")
        if opts.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _env_note(env: dict[str, str]) -> str:
    return (" + " + json.dumps(env)) if env else ""


if __name__ == "__main__":
    main()
