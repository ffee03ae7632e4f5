"""Security figures of the security issue, side by side in one run; prints ratios against the targets.

    .venv/bin/python bench/security_bench.py [--seconds 6] [--connections 1,16] [--calls 400]

(a) the token check per request (mint + verify + replay-store claim) in µs, in-memory and SQLite replay stores;
(b) one trivial endpoint served by uvicorn (one worker) with tokens off and on, the same wrk + Lua load client for
    both: every request of the "on" run carries a fresh pre-minted token (the Lua script reads them from a file);
(c) a sandboxed tenant call through a warm WebAssembly guest against the same function in-process: over HTTP (a
    tenant module and an admin module in the same server, same client, tenant token for both) and
    SandboxPool.call_sync directly; then compiling the interpreter, deserializing it, a tenant's first call on a new
    guest, and the memory of a warm guest's worker process (PSS: shared pages counted once).

Needs `wrk` (Debian package `wrk`). Servers: uvicorn, one worker, access log off, 127.0.0.1.
"""

from __future__ import annotations

import argparse
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
sys.path.insert(0, str(ROOT))
PY = sys.executable

from dpmsf_core.tenancy.replay import MemoryReplayStore, SQLiteReplayStore  # noqa: E402
from dpmsf_core.tenancy.tenants import MemoryTenantRegistry, SQLiteTenantRegistry, key_lookup  # noqa: E402
from dpmsf_core.tenancy.tokens import TokenVerifier, generate_key, mint  # noqa: E402

ADMIN = "00000000-0000-4000-8000-00000000be0c"
TENANT = "7e7a7e7a-0000-4000-8000-00000000be0c"

# The same function body twice: trusted (admin, in-process) and a tenant's (sandbox worker).
FUNCTION = '''
@expose.endpoint(method="GET", API="{api}")
def {name}(a: int = 1, b: int = 2):
    """Trivial work: the figure is the dispatch cost."""
    return {{"sum": a + b}}
'''
ADMIN_PLUGIN = (
    "from dpmsf_core import expose\n"
    + FUNCTION.format(api="hello", name="hello")
    + FUNCTION.format(api="add-admin", name="add_admin")
)
TENANT_PLUGIN = f'from dpmsf_core import expose\n\n__tenant__ = "{TENANT}"\n' + FUNCTION.format(
    api="add-tenant", name="add_tenant"
)

LUA = r"""
-- One fresh token per request, read from the file named after `--` (no file: no Authorization header).
local tokens = {}
local i = 0
function init(args)
  if args[1] and args[1] ~= "" then
    for line in io.lines(args[1]) do tokens[#tokens + 1] = line end
  end
end
function request()
  if #tokens == 0 then return wrk.format("GET", nil, {}) end
  i = i + 1
  if i > #tokens then i = 1 end -- would replay: answered 401 and caught as Non-2xx
  return wrk.format("GET", nil, {["Authorization"] = "Bearer " .. tokens[i]})
end
"""


# -- (a) token check ----------------------------------------------------------------------------------------------


def token_check_us(replay: object, rounds: int = 7, n: int = 3000) -> tuple[float, float, float]:
    """Median µs per op over ``rounds``: (mint, verify + claim, mint + verify + claim)."""
    registry = MemoryTenantRegistry()
    tenant = registry.add(name="bench", tenant_id=TENANT)
    verifier = TokenVerifier(key_lookup(registry), replay)  # type: ignore[arg-type]
    key = tenant.key
    header = "Bearer "
    for _ in range(500):  # warm caches (AESGCM object, key lookup, sqlite statement cache)
        verifier.verify(header + mint(TENANT, key))
    mints, verifies, totals = [], [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        tokens = [mint(TENANT, key) for _ in range(n)]
        t1 = time.perf_counter()
        for token in tokens:
            verifier.verify(header + token)
        t2 = time.perf_counter()
        for _ in range(n):
            verifier.verify(header + mint(TENANT, key))
        t3 = time.perf_counter()
        mints.append((t1 - t0) / n * 1e6)
        verifies.append((t2 - t1) / n * 1e6)
        totals.append((t3 - t2) / n * 1e6)
    return statistics.median(mints), statistics.median(verifies), statistics.median(totals)


def claims_with_live_ids(live: int, n: int = 8192) -> tuple[int, float, float]:
    """MemoryReplayStore.claim once it holds ``live`` unexpired ids (a busy server: 60 s TTL x 2.5k req/s = 150k)."""
    store = MemoryReplayStore()
    expires = time.time() + 600
    for i in range(live):
        store.claim(f"{i:032x}", expires)
    worst = 0.0
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        store.claim(f"f{i:031x}", expires)
        worst = max(worst, time.perf_counter() - t)
    return live, (time.perf_counter() - t0) / n * 1e6, worst * 1000


# -- servers and load -----------------------------------------------------------------------------------------------


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


class Load:
    """wrk with one Lua script for every run: the same client whether tokens are sent or not."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.script = tmp / "tokens.lua"
        self.script.write_text(LUA)
        self.files = 0

    def token_file(self, tenant: str, key: str, count: int) -> str:
        self.files += 1
        path = self.tmp / f"tokens_{self.files}.txt"
        path.write_text("\n".join(mint(tenant, key, ttl=300) for _ in range(count)) + "\n")
        return str(path)

    def run(
        self, url: str, seconds: float, connections: int, tokens: tuple[str, str] | None, rate_hint: float
    ) -> dict[str, float]:
        """Warm up 1 s, then measure; with ``tokens`` (tenant, key) every request carries a new token."""
        for duration, _measure in ((1, False), (seconds, True)):
            count = int(rate_hint * (duration + 1) * 1.5) + 2000
            extra = ["--", self.token_file(*tokens, count)] if tokens else []
            out = subprocess.run(
                ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(self.script), url, *extra],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            if "Non-2xx" in out or "Socket errors" in out:
                raise RuntimeError(f"{url} answered errors (too few tokens?):\n{out}")
        dist = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+(?:us|ms|s))$", out, re.M))
        p50 = re.fullmatch(r"([\d.]+)(us|ms|s)", dist["50"])
        p99 = re.fullmatch(r"([\d.]+)(us|ms|s)", dist["99"])
        return {
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": _ms(*p50.groups()),
            "p99": _ms(*p99.groups()),
        }


def state_with_tenant(state: Path) -> str:
    """A tenant registry (the server's default SQLite file) holding TENANT; returns its key."""
    state.mkdir(parents=True, exist_ok=True)
    registry = SQLiteTenantRegistry(str(state / "tenants.db"))
    existing = registry.get(TENANT)
    return existing.key if existing else registry.add(name="bench-tenant", tenant_id=TENANT).key


def asgi_request_us(plugins: Path, tmp: Path, admin_key: str, n: int = 3000, rounds: int = 5) -> tuple[float, float]:
    """Server CPU per request without network or client: the app called in-process, tokens off and on (µs)."""
    import asyncio

    from dpmsf_core.app import create_app
    from dpmsf_core.config import Settings

    def scope(token: str | None) -> dict[str, object]:
        headers = [(b"host", b"bench")]
        if token:
            headers.append((b"authorization", b"Bearer " + token.encode()))
        path = "/rest/services/hello/"
        return {"type": "http", "method": "GET", "path": path, "query_string": b"", "headers": headers, "root_path": ""}

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        pass

    async def measure(app: object, tokens: bool) -> float:
        results = []
        for r in range(rounds + 1):
            scopes = [scope(mint(ADMIN, admin_key) if tokens else None) for _ in range(n)]
            t0 = time.perf_counter()
            for s in scopes:
                await app(s, receive, send)  # type: ignore[operator]
            if r:  # the first round warms up
                results.append((time.perf_counter() - t0) / n * 1e6)
        return statistics.median(results)

    figures = []
    for require in ("0", "1"):
        env = {"DPMSF_PLUGINS": str(plugins), "DPMSF_STATE_DIR": str(tmp / f"state-asgi-{require}")}
        env |= {"ADMIN_ID": ADMIN, "DPMSF_ADMIN_KEY": admin_key, "DPMSF_REQUIRE_TOKENS": require}
        app = create_app(Settings.from_env(env, dotenv=None))
        try:
            figures.append(asyncio.run(measure(app, require == "1")))
        finally:
            app.close()
    return figures[0], figures[1]


# -- (c) sandbox directly -------------------------------------------------------------------------------------------


def sandbox_direct_ms(calls: int) -> tuple[float, float]:
    """p50 ms of SandboxPool.call_sync on a warm worker, and of the same function called in-process."""
    from dpmsf_core.sandbox import SandboxPool

    source = TENANT_PLUGIN
    namespace: dict[str, object] = {}
    exec(compile(source, "<bench>", "exec"), namespace)  # trusted here: our own constant text
    local = namespace["add_tenant"]
    path = "/bench/tenant_plugin.py"
    with SandboxPool(size=1) as pool:
        for _ in range(50):
            pool.call_sync(source=source, path=path, function="add_tenant", args=[1], kwargs={"b": 2}, tenant=TENANT)
        sandboxed = []
        for _ in range(calls):
            t0 = time.perf_counter()
            pool.call_sync(source=source, path=path, function="add_tenant", args=[1], kwargs={"b": 2}, tenant=TENANT)
            sandboxed.append((time.perf_counter() - t0) * 1000)
    direct = []
    for _ in range(calls):
        t0 = time.perf_counter()
        local(1, b=2)  # type: ignore[operator]
        direct.append((time.perf_counter() - t0) * 1000)
    return statistics.median(sandboxed), statistics.median(direct)


def _memory_mb(pid: int) -> tuple[float, float]:
    """(PSS, RSS) of one process in MB: PSS counts the pages it shares (wasmtime, the compiled module) once."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if parts and parts[0] in ("Rss:", "Pss:"):
            values[parts[0]] = int(parts[1]) / 1024
    return values["Pss:"], values["Rss:"]


def sandbox_lifecycle(tmp: Path) -> dict[str, float]:
    """Compile once, deserialize per guest, a tenant's first call, memory per warm guest."""
    from dpmsf_core.sandbox import SandboxPool, runtime

    started = time.perf_counter()
    compiled = runtime.compile_to(tmp / "fresh.cwasm")
    figures = {"compile_s": time.perf_counter() - started}
    import wasmtime

    engine = wasmtime.Engine(runtime.engine_config())
    started = time.perf_counter()
    wasmtime.Module.deserialize_file(engine, compiled.path)
    figures["deserialize_ms"] = (time.perf_counter() - started) * 1000
    source = TENANT_PLUGIN
    path = "/bench/tenant_plugin.py"
    first = []
    with SandboxPool(size=4) as pool:  # the compiled module is cached: what a server's first tenant call costs
        for i in range(4):
            started = time.perf_counter()
            pool.call_sync(source=source, path=path, function="add_tenant", args=[1], kwargs={}, tenant=f"t{i}")
            first.append((time.perf_counter() - started) * 1000)
        memory = [_memory_mb(pid) for pid in pool.workers()]
    figures["first_call_ms"] = statistics.median(first)
    figures["first_call_max_ms"] = max(first)
    figures["pss_mb"] = statistics.median(m[0] for m in memory)
    figures["rss_mb"] = statistics.median(m[1] for m in memory)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--connections", default="1,16", help="comma-separated wrk connection counts for (b)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating off/on rounds for (b)")
    parser.add_argument("--calls", type=int, default=400, help="calls for the direct sandbox figure")
    opts = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("bench needs wrk: apt-get install wrk")
    seconds = max(1, round(opts.seconds))
    conns = [int(c) for c in opts.connections.split(",") if c.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="dpmsf-secbench-"))
    try:
        run(tmp, seconds, conns, opts.calls, opts.rounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(tmp: Path, seconds: int, conns: list[int], calls: int, rounds: int) -> None:
    print("(a) token check, µs per op (median of 7 rounds)", flush=True)
    mem = token_check_us(MemoryReplayStore())
    sql_store = SQLiteReplayStore(str(tmp / "replay-a.db"))
    sql = token_check_us(sql_store)
    sql_store.close()
    print("                                     mint   verify+claim   mint+verify+claim")
    print(f"  memory replay store            {mem[0]:8.1f} {mem[1]:12.1f} {mem[2]:16.1f}")
    big = claims_with_live_ids(150_000)
    print(f"  sqlite replay store            {sql[0]:8.1f} {sql[1]:12.1f} {sql[2]:16.1f}   ({sql[2] / mem[2]:.2f}x)")

    print(
        f"  memory store claim with {big[0]:,} live ids: {big[1]:.2f} µs average, worst {big[2]:.1f} ms"
        " (every 1024th claim rebuilds the dict once it holds >= 100k ids)"
    )

    plugins = tmp / "plugins"
    plugins.mkdir()
    (plugins / "bench_admin.py").write_text(ADMIN_PLUGIN)
    (plugins / "bench_tenant.py").write_text(TENANT_PLUGIN)
    admin_key = generate_key()
    state = tmp / "state"
    tenant_key = state_with_tenant(state)
    base = {
        "DPMSF_PLUGINS": str(plugins),
        "DPMSF_STATE_DIR": str(state),
        "ADMIN_ID": ADMIN,
        "DPMSF_ADMIN_KEY": admin_key,
        "DPMSF_RELOAD": "1",
    }
    load = Load(tmp)

    print(
        f"\n(b) GET /rest/services/hello/ (admin module), uvicorn 1 worker each, wrk -t1 + Lua (same script both runs),"
        f" {seconds} s x {rounds} alternating rounds, medians"
    )
    rows: dict[tuple[str, int], dict[str, float]] = {}
    for c in conns:
        servers = {  # fresh servers per connection count: the replay store starts empty each time
            "off": Server(env={**base, "DPMSF_REQUIRE_TOKENS": "0"}, factory=True),
            "on": Server(env={**base, "DPMSF_REQUIRE_TOKENS": "1"}, factory=True),
        }
        try:
            samples: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
            for _ in range(rounds):  # off, on, off, on...: both see the same background load on a shared machine
                for mode, tokens in (("off", None), ("on", (ADMIN, admin_key))):
                    hint = max([s["rps"] for s in samples["off"]] or [10000])
                    url = f"{servers[mode].base}/rest/services/hello/"
                    samples[mode].append(load.run(url, seconds, c, tokens, hint))
        finally:
            for server in servers.values():
                server.close()
        for mode in ("off", "on"):
            rows[(mode, c)] = r = {k: statistics.median(s[k] for s in samples[mode]) for k in ("rps", "p50", "p99")}
            print(
                f"  tokens {mode:<3} -c{c:<3} {r['rps']:9.0f} req/s   p50 {r['p50']:6.2f} ms   p99 {r['p99']:6.2f} ms",
                flush=True,
            )
    inproc_off, inproc_on = asgi_request_us(plugins, tmp, admin_key)
    print(
        f"  in-process ASGI request (no network): off {inproc_off:.1f} µs, on {inproc_on:.1f} µs"
        f" (+{inproc_on - inproc_off:.1f} µs: verify + claim + next token)"
    )

    print("\n(c) sandboxed tenant function vs the same function in-process (admin module), same server and client")
    server = Server(env={**base, "DPMSF_REQUIRE_TOKENS": "1"}, factory=True)
    http: dict[str, dict[str, float]] = {}
    try:
        runs: dict[str, list[dict[str, float]]] = {"in-process": [], "sandbox": []}
        for _ in range(rounds):
            for name, path in (("in-process", "add-admin"), ("sandbox", "add-tenant")):
                url = f"{server.base}/rest/services/{path}/?a=1&b=2"
                runs[name].append(load.run(url, seconds, 1, (TENANT, tenant_key), 6000))
        for name, samples in runs.items():
            http[name] = r = {k: statistics.median(s[k] for s in samples) for k in ("rps", "p50", "p99")}
            print(
                f"  {name:<11} -c1  {r['rps']:9.0f} req/s   p50 {r['p50']:6.2f} ms   p99 {r['p99']:6.2f} ms", flush=True
            )
    finally:
        server.close()
    pool_ms, direct_ms = sandbox_direct_ms(calls)
    print(f"  SandboxPool.call_sync p50 {pool_ms:.3f} ms   direct call p50 {direct_ms * 1000:.2f} µs")
    life = sandbox_lifecycle(tmp)
    print(
        f"  compile the interpreter once {life['compile_s']:.1f} s; deserialize it {life['deserialize_ms']:.1f} ms;"
        f" a tenant's first call {life['first_call_ms']:.0f} ms (max {life['first_call_max_ms']:.0f} ms of 4);"
        f" a warm guest's worker PSS {life['pss_mb']:.1f} MB (RSS {life['rss_mb']:.1f} MB)"
    )

    print("\nfigure                                                    value    target")
    print(f"token check (mint+verify+claim), memory store         {mem[2]:7.1f} µs")
    print(f"token check (mint+verify+claim), sqlite store         {sql[2]:7.1f} µs")
    for c in conns:
        on, off = rows[("on", c)], rows[("off", c)]
        print(f"-c{c:<3} p50 latency tokens on / off                      {on['p50'] / off['p50']:6.2f}x   <= 1.3x")
        print(f"-c{c:<3} p99 latency tokens on / off                      {on['p99'] / off['p99']:6.2f}x   <= 1.3x")
        print(f"-c{c:<3} throughput tokens on / off                       {on['rps'] / off['rps']:6.2f}x")
    overhead = http["sandbox"]["p50"] - http["in-process"]["p50"]
    ratio = http["sandbox"]["p50"] / http["in-process"]["p50"]
    print(f"sandboxed call p50 overhead over HTTP                 {overhead:7.3f} ms   ({ratio:.2f}x in-process)")
    print(f"sandboxed call p50 overhead, SandboxPool direct       {pool_ms - direct_ms:7.3f} ms   <= 0.25 ms")
    print(f"a tenant's first call (new guest)                     {life['first_call_ms'] / 1000:7.3f} s    <= 0.5 s")
    print(f"memory per warm guest (worker PSS)                    {life['pss_mb']:7.1f} MB   <= 64 MB")


if __name__ == "__main__":
    main()
