"""Per-tenant metering, by value: what a tenant's requests, guests, store and uploads cost, as the meter counts it,
as ``/metrics``, EMF, ``GET /rest/admin/usage`` and ``dpmsf tenant usage`` report it, and that nobody but the admin
sees another tenant's figures.

The sandboxed tests run a real server (uvicorn on 127.0.0.1) with real guests; CPU-ms is checked against the
worker process's own CPU clock in ``/proc/<pid>/stat``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from bundled import bundled

from dpmsf_core.metering import Counts, SQLiteUsageSink, StoreUsageSink, UsageMeter
from dpmsf_core.metering.report import parse_since, report
from dpmsf_core.sandbox.usage import CallUsage
from dpmsf_core.tenancy.tokens import generate_key, mint

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "00000000-0000-4000-8000-00000000000a"
ALICE = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
BOB = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"
HOUR = 3600
SPIN_N = os.environ.get("DPMSF_TEST_SPIN_N", "1000000")  # about 0.3 s of a guest's CPU on this machine
T0 = 1_800_000_000.0  # an hour boundary (1_800_000_000 % 3600 == 0)

SHARED = """
from dpmsf_core import expose, store


@expose.endpoint
def jot(text: str = ""):
    return store.collection("jots").create({"t": text})["t"]
"""
SPIN = """
from dpmsf_core import expose, store


@expose.endpoint
def spin(n: int = 1):
    total = 0
    for i in range(n):  # a fixed amount of work: CPU time, whatever else the machine is doing
        total += i
    return total >= 0


@expose.endpoint
def fail():
    raise RuntimeError("tenant bug")


@expose.endpoint
def keep(text: str = ""):
    notes = store.collection("notes")
    notes.put("n1", {"text": text})
    got = notes.get("n1")
    page, _ = notes.list(limit=10)
    return [got["text"], len(page)]
"""


# -- the meter, the sinks and the report, without a server -------------------------------------------------------


def test_counts_add_up_per_tenant_and_hour_and_call_usage_becomes_cpu_wall_and_gb_seconds(tmp_path: Path) -> None:
    now = [T0 + 10]
    sink = SQLiteUsageSink(str(tmp_path / "state" / "usage.db"), state_dir=str(tmp_path / "state"))
    meter = UsageMeter(lambda: sink, clock=lambda: now[0], flush_seconds=3600)
    meter.request(ALICE, 200)
    meter.request(ALICE, 503)
    meter.call(CallUsage(ALICE, "spin", cpu_seconds=0.25, wall_seconds=0.5, memory_mb=256, ok=True))
    meter.call(CallUsage(None, "shared", cpu_seconds=9, wall_seconds=9, memory_mb=256, ok=True))  # nobody's
    meter.count(BOB, store_ops=2, store_bytes=100, upload_bytes=7)
    now[0] = T0 + HOUR + 5  # the next hour
    meter.count(ALICE, store_ops=1, store_bytes=10)
    assert {t: c.as_dict() for t, c in meter.totals().items()} == {
        ALICE: {"requests": 2, "errors": 1, "cpu_ms": 250.0, "wall_ms": 500.0, "gb_seconds": 0.125, "store_ops": 1,
                "store_bytes": 10, "upload_bytes": 0},
        BOB: {"requests": 0, "errors": 0, "cpu_ms": 0.0, "wall_ms": 0.0, "gb_seconds": 0.0, "store_ops": 2,
              "store_bytes": 100, "upload_bytes": 7},
    }  # fmt: skip
    meter.close()  # flushed: the buckets are on disk
    assert sink.read() == meter.totals()
    assert sink.read(ALICE, T0 + HOUR) == {ALICE: Counts(store_ops=1, store_bytes=10)}  # only the second hour
    assert sink.read(BOB, T0 + HOUR) == {}
    # who used what is the operator's business: the file is private
    assert stat.S_IMODE(os.stat(tmp_path / "state" / "usage.db").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o700


def test_two_processes_add_to_the_same_hour(tmp_path: Path) -> None:
    """Every worker process of a machine flushes into the same file: rows add up, none overwrites another."""
    path = str(tmp_path / "usage.db")
    first, second = SQLiteUsageSink(path), SQLiteUsageSink(path)
    first.add({(ALICE, int(T0)): Counts(requests=2, cpu_ms=1.5)})
    second.add({(ALICE, int(T0)): Counts(requests=3, cpu_ms=2.0), (BOB, int(T0)): Counts(errors=1)})
    assert first.read() == {ALICE: Counts(requests=5, cpu_ms=3.5), BOB: Counts(errors=1)}


def test_shared_store_sink_many_instances_no_lost_update(tmp_path: Path) -> None:
    """On DynamoDB/Firestore each instance writes its own running total per tenant and hour (a plain put, never a
    read-modify-write of a shared row); the report adds the instances up, and a tenant cannot read them."""
    from dpmsf_core import store
    from dpmsf_core.metering.sinks import NAMESPACE

    backend = store.SQLiteStore(tmp_path / "store.db")  # the same StoreBackend protocol as DynamoDB's
    one, two = StoreUsageSink(backend, instance="one"), StoreUsageSink(backend, instance="two")
    one.add({(ALICE, int(T0)): Counts(requests=1)})
    two.add({(ALICE, int(T0)): Counts(requests=10)})
    one.add({(ALICE, int(T0)): Counts(requests=1, store_bytes=5)})
    assert one.read() == {ALICE: Counts(requests=12, store_bytes=5)}
    # an instance that let go of an hour goes on from what it wrote for it (a retried, late flush)
    late = StoreUsageSink(backend, instance="one")
    late.add({(ALICE, int(T0)): Counts(requests=100)})
    assert late.read(ALICE, T0) == {ALICE: Counts(requests=112, store_bytes=5)}
    assert late.read(ALICE, T0 + HOUR) == {}
    with pytest.raises(ValueError):
        uuid.UUID(NAMESPACE)  # tenants are UUIDs: the reserved namespace is nobody's store


def test_a_failing_sink_loses_nothing(tmp_path: Path) -> None:
    broken = [True]
    sink = SQLiteUsageSink(str(tmp_path / "usage.db"))

    class Flaky:
        def add(self, rows: Any) -> None:
            if broken[0]:
                raise OSError("disk full")
            sink.add(rows)

        def read(self, tenant: str | None = None, since_hour: int | None = None) -> dict[str, Counts]:
            return sink.read(tenant, since_hour)

    meter = UsageMeter(Flaky, clock=lambda: T0, flush_seconds=3600)
    meter.count(ALICE, requests=1)
    meter.flush()
    meter.count(ALICE, requests=2)
    broken[0] = False
    assert meter.report() == {ALICE: Counts(requests=3)}


def test_tenants_past_the_cap_are_counted_together_memory_stays_bounded() -> None:
    meter = UsageMeter(lambda: SQLiteUsageSink(":memory:"), max_tenants=3, flush_seconds=3600, clock=lambda: T0)
    for i in range(1000):
        meter.count(str(uuid.UUID(int=i)), requests=1)
    totals = meter.totals()
    assert len(totals) == 4 and totals["-"].requests == 997
    assert meter.stats() == {"tenants": 4, "pending": 4}  # 3 tenants and the rest, for one hour
    meter.close()
    with pytest.raises(TypeError, match="unknown figure"):
        meter.count(ALICE, cpu=1)


def test_since_is_an_iso_time_or_a_duration() -> None:
    now = T0 + 1234
    assert parse_since("90s", now) == now - 90
    assert parse_since("15m", now) == now - 900
    assert parse_since("6h", now) == now - 6 * HOUR
    assert parse_since("2d", now) == now - 2 * 86400
    assert parse_since("2027-01-15T08:00:00Z", now) == 1_800_000_000.0
    assert parse_since("2027-01-15T08:00:00", now) == 1_800_000_000.0  # no zone: UTC
    assert parse_since("2027-01-15T09:00:00+01:00", now) == 1_800_000_000.0
    assert parse_since(None, now) is None
    with pytest.raises(ValueError, match=r"since='yesterday' is not valid\. Expected an ISO 8601 time"):
        parse_since("yesterday", now)
    assert report({}, T0 + 1800) == {"since": "2027-01-15T08:00:00Z", "results": []}  # whole hours


# -- EMF on Lambda --------------------------------------------------------------------------------------------------


def test_emf_tenant_line_whole(capsys: pytest.CaptureFixture[str]) -> None:
    from dpmsf_core.aws.emf import EMFWriter

    env = {
        "POWERTOOLS_METRICS_NAMESPACE": "Shop",
        "POWERTOOLS_SERVICE_NAME": "orders",
        "AWS_LAMBDA_FUNCTION_NAME": "fn",
    }
    emf = EMFWriter(env)
    emf.flush()  # the cold-start line
    capsys.readouterr()
    counts = Counts(
        requests=2, errors=1, cpu_ms=251.2345, wall_ms=300.5, gb_seconds=0.0751, store_ops=3, store_bytes=120
    )
    emf.tenant(ALICE, counts.as_dict())
    emf.flush()
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert isinstance(line["_aws"].pop("Timestamp"), int)
    metrics = [
        ("Requests", "Count"),
        ("Errors", "Count"),
        ("CPUMilliseconds", "Milliseconds"),
        ("WallMilliseconds", "Milliseconds"),
        ("GBSeconds", "None"),
        ("StoreOperations", "Count"),
        ("StoreBytes", "Bytes"),
        ("UploadBytes", "Bytes"),
    ]
    assert line == {
        "_aws": {
            "CloudWatchMetrics": [
                {
                    "Namespace": "Shop",
                    "Dimensions": [["tenant", "service"]],
                    "Metrics": [{"Name": n, "Unit": u} for n, u in metrics],
                }
            ]
        },
        "tenant": ALICE,
        "service": "orders",
        "Requests": [2.0],
        "Errors": [1.0],
        "CPUMilliseconds": [251.235],
        "WallMilliseconds": [300.5],
        "GBSeconds": [0.0751],
        "StoreOperations": [3.0],
        "StoreBytes": [120.0],
        "UploadBytes": [0.0],
    }


def test_lambda_invocation_writes_one_tenant_line_per_tenant(capsys: pytest.CaptureFixture[str]) -> None:
    """The observer drains the meter at the end of each invocation: a tenant's usage is written once."""
    from dpmsf_core.aws.observability import PowertoolsObserver

    meter = UsageMeter(None, per_invocation=True)
    env = {"AWS_LAMBDA_FUNCTION_NAME": "fn", "POWERTOOLS_SERVICE_NAME": "svc"}
    watcher = PowertoolsObserver(env, meter=lambda: meter)

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        meter.request(ALICE, 200)
        meter.count(ALICE, store_ops=1, store_bytes=10)
        return {}

    wrapped = watcher.wrap(handler)
    wrapped({}, None)
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    tenant_lines = [x for x in lines if "tenant" in x]
    assert [(x["tenant"], x["Requests"], x["StoreOperations"], x["StoreBytes"]) for x in tenant_lines] == [
        (ALICE, [1.0], [1.0], [10.0])
    ]
    wrapped({}, None)
    again = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["Requests"] for x in again if "tenant" in x] == [[1.0]]  # this invocation's, not the total


# -- over HTTP, with real guests ----------------------------------------------------------------------------------


class Server:
    def __init__(self, app: Any, client: httpx.Client) -> None:
        self.app, self.client = app, client

    def auth(self, tenant: str) -> dict[str, str]:
        key = self.app.get_security().tenants.get(tenant).key
        return {"authorization": f"Bearer {mint(tenant, key)}"}

    def call(self, tenant: str | None, url: str, **kw: Any) -> httpx.Response:
        headers = self.auth(tenant) if tenant else {}
        return self.client.get(f"/rest/services/{url}", headers=headers, **kw)

    def usage(self, caller: str | None, **params: str) -> httpx.Response:
        headers = self.auth(caller) if caller else {}
        return self.client.get("/rest/admin/usage", headers=headers, params=params)


def worker_pids() -> list[int]:
    """Our sandbox worker processes, from ``/proc`` (children of this process running worker.py)."""
    me, found = os.getpid(), []
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
        if ppid == me and b"sandbox/worker.py" in cmdline:
            found.append(int(entry))
    guests = [p for p in _children_of(found) if _comm(p) == "dpmsf-guest"]  # forked from the template (issue 20)
    return guests or found


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _children_of(parents: list[int]) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    if int(fh.read().rsplit(b")", 1)[1].split()[1]) in parents:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


def cpu_ms(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def server(
    plugin_dir: Any, make_app: Callable[..., Any], serve: Callable[[Any], httpx.Client], tmp_path: Path
) -> Iterator[Server]:
    plugin_dir.write("shared.py", SHARED)
    app = make_app(
        plugin_dir.path,
        env={
            "ADMIN_ID": ADMIN,
            "DPMSF_ADMIN_KEY": generate_key(),
            "DPMSF_SANDBOX_WORKERS": "1",
            "DPMSF_KEY_CACHE": "0",
            "DPMSF_STORE": f"sqlite:///{tmp_path / 'store.db'}",
        },
    )
    for tenant in (ALICE, BOB):
        app.get_security().tenants.add(name=tenant[:4], tenant_id=tenant)
    yield Server(app, serve(app))


@pytest.mark.slow
def test_cpu_ms_agrees_with_the_workers_cpu_clock_and_requests_errors_gb_seconds_add_up(server: Server) -> None:
    up = server.client.put("/rest/admin/plugins/alice_spin", content=SPIN, headers=server.auth(ALICE))
    assert up.status_code == 201, up.text
    assert server.call(ALICE, "alice_spin/spin/", params={"n": "1"}).json() == {"results": True}  # guest warm
    (pid,) = worker_pids()
    meter = server.app.meter
    before_meter, before_proc = meter.totals()[ALICE], cpu_ms(pid)
    answer = server.call(ALICE, "alice_spin/spin/", params={"n": SPIN_N})
    assert answer.json() == {"results": True}
    measured = cpu_ms(pid) - before_proc
    metered = meter.totals()[ALICE].cpu_ms - before_meter.cpu_ms
    print(f"spin: metered {metered:.1f} ms, /proc/{pid}/stat says {measured:.1f} ms")
    assert measured >= 150  # it did spin (about 0.3 s)
    assert metered == pytest.approx(measured, rel=0.05)
    assert server.call(ALICE, "alice_spin/fail/").status_code == 500
    totals = meter.totals()[ALICE]
    assert (totals.requests, totals.errors) == (3, 1)
    assert totals.wall_ms >= totals.cpu_ms * 0.9
    assert totals.gb_seconds == pytest.approx(256 / 1024 * totals.wall_ms / 1000, rel=1e-9)  # memory_mb / 1024 x wall
    assert totals.upload_bytes == len(SPIN.encode())
    assert BOB not in meter.totals()


@pytest.mark.slow
def test_store_traffic_is_counted_once_for_its_tenant(server: Server) -> None:
    """A guest's store requests and an in-process plugin serving a tenant's request: each operation once, with the
    JSON bytes moved; anonymous data (``_``) is nobody's."""
    assert server.client.put("/rest/admin/plugins/alice_spin", content=SPIN, headers=server.auth(ALICE)).status_code
    text = "x" * 1000
    assert server.call(ALICE, "alice_spin/keep/", params={"text": text}).json() == {"results": [text, 1]}
    doc = len(json.dumps({"id": "n1", "text": text}, separators=(",", ":")))
    alice = server.app.meter.totals()[ALICE]
    assert (alice.store_ops, alice.store_bytes) == (3, 3 * doc + 2)  # put, get, a list of one ("[...]")
    assert server.call(BOB, "jot/", params={"text": "hi"}).json() == {"results": "hi"}  # the HTTP store path
    bob = server.app.meter.totals()[BOB]
    assert (bob.requests, bob.store_ops) == (1, 1) and bob.store_bytes > len('{"t":"hi"}')
    assert server.call(None, "jot/", params={"text": "anon"}).status_code == 200
    assert set(server.app.meter.totals()) == {ALICE, BOB}


@pytest.mark.slow
def test_admin_usage_report_and_no_leak_to_tenants_or_anonymous(server: Server) -> None:
    assert server.client.put("/rest/admin/plugins/alice_spin", content=SPIN, headers=server.auth(ALICE)).status_code
    assert server.call(ALICE, "alice_spin/spin/", params={"n": "1000"}).status_code == 200
    assert server.call(BOB, "jot/", params={"text": "b"}).status_code == 200
    r = server.usage(ADMIN, since="1h")
    assert r.status_code == 200, r.text
    body = r.json()
    rows = {row["tenant"]: row for row in body["results"]}
    assert set(rows) == {ALICE, BOB} and body["since"].endswith(":00:00Z")
    assert rows[ALICE]["requests"] == 1 and rows[ALICE]["wall_ms"] > 0 and rows[ALICE]["upload_bytes"] == len(SPIN)
    assert rows[BOB]["store_ops"] == 1 and rows[BOB]["cpu_ms"] == 0
    assert "X-DPMSF-Next-Token" in r.headers
    one = server.usage(ADMIN, tenant=BOB.upper()).json()["results"]
    assert [row["tenant"] for row in one] == [BOB]
    # a tenant, even asking for itself, and anonymous callers: refused, and not one figure in the answer
    refused = [server.usage(BOB), server.usage(BOB, tenant=ALICE), server.usage(None)]
    assert [x.status_code for x in refused] == [403, 403, 401]
    for x in refused:
        assert x.headers["content-type"] == "application/problem+json"
        assert ALICE not in x.text and "cpu_ms" not in x.text and "requests" not in x.text
    forged = mint(ADMIN, generate_key())  # the admin's id, a key of the caller's own: not the admin
    assert server.client.get("/rest/admin/usage", headers={"authorization": f"Bearer {forged}"}).status_code == 401
    bad = server.usage(ADMIN, since="last week")
    assert bad.status_code == 422 and "since='last week' is not valid" in bad.json()["detail"]
    assert server.usage(ADMIN, tenant="nope").status_code == 422


@pytest.mark.slow
def test_metrics_shows_the_tenant_label_to_whom_it_belongs(server: Server) -> None:
    assert server.call(ALICE, "jot/", params={"text": "a"}).status_code == 200
    assert server.call(BOB, "jot/", params={"text": "b"}).status_code == 200

    def tenants(who: str | None) -> set[str]:
        headers = server.auth(who) if who else {}
        page = server.client.get("/metrics", headers=headers).text
        found: set[str] = set()
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(page):
            if family.name.startswith("dpmsf_tenant_"):
                found |= {s.labels["tenant"] for s in family.samples}
        return found

    assert tenants(ADMIN) == {ALICE, BOB}
    assert tenants(ALICE) == {ALICE}
    assert tenants(None) == set()
    page = server.client.get("/metrics", headers=server.auth(ADMIN)).text
    assert 'dpmsf_tenant_requests_total{tenant="' + BOB + '"} 1.0' in page


@pytest.mark.slow
def test_a_forged_tenant_flood_does_not_grow_the_meter(server: Server) -> None:
    for _ in range(200):
        forged = mint(str(uuid.uuid4()), generate_key())
        r = server.client.get("/rest/services/jot/", headers={"authorization": f"Bearer {forged}"})
        assert r.status_code == 401
    assert server.app.meter is None or server.app.meter.stats()["tenants"] == 0


@pytest.mark.slow
def test_usage_survives_a_restart_and_dpmsf_tenant_usage_reads_it(
    plugin_dir: Any, make_app: Callable[..., Any], serve: Callable[[Any], httpx.Client], tmp_path: Path
) -> None:
    env = {"ADMIN_ID": ADMIN, "DPMSF_KEY_CACHE": "0", "DPMSF_STORE": f"sqlite:///{tmp_path / 'store.db'}"}
    plugin_dir.write("shared.py", SHARED)

    def run(calls: int) -> None:
        app = make_app(plugin_dir.path, env=env)
        if app.get_security().tenants.get(ALICE) is None:
            app.get_security().tenants.add(name="alice", tenant_id=ALICE)
        srv = Server(app, serve(app))
        for _ in range(calls):
            assert srv.call(ALICE, "jot/").status_code == 200
        app.close()  # shutdown: what is left is flushed

    run(2)
    run(3)  # a restart: a new process adds to the same hour
    cli_env = {**os.environ, "DPMSF_STATE_DIR": str(tmp_path / "state"), **env}
    cli_env.pop("DPMSF_PLUGINS", None)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "dpmsf_core", "tenant", "usage", *args]
        return subprocess.run(command, env=cli_env, cwd=tmp_path, capture_output=True, text=True, timeout=60)

    out = cli(ALICE, "--since", "1h")
    assert out.returncode == 0, out.stderr
    (row,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert (row["tenant"], row["requests"], row["errors"], row["store_ops"]) == (ALICE, 5, 0, 5)
    assert [json.loads(x)["tenant"] for x in cli().stdout.splitlines()] == [ALICE]
    assert cli(BOB).stdout == ""  # nobody else used anything
    assert cli("--since", "2999-01-01T00:00:00Z").stdout == ""
    bad = cli("--since", "soon")
    assert (
        bad.returncode == 2
        and bad.stderr.startswith("dpmsf: --since='soon' is not valid")
        and "Traceback" not in bad.stderr
    )


@pytest.mark.slow
def test_a_plain_get_imports_no_metering(tmp_path: Path) -> None:
    """The cold-start path of a request that no tenant is billed for loads nothing of the meter."""
    from childproc import run_for_result

    child = (
        "import json, sys\n"
        "from handler.aws_lambda import handler\n"
        "sys.path.insert(0, 'tests')\n"
        "from eventdata import lambda_context, load_event\n"
        "out = handler(load_event('apigw_v1', path='/rest/services/hello-world/'), lambda_context())\n"
        "print('RESULT ' + json.dumps([out['statusCode'], sorted(m for m in sys.modules if 'metering' in m)]))\n"
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "AWS_LAMBDA_FUNCTION_NAME": "dpmsf-meter",
        "AWS_REGION": "us-east-1",
        "DPMSF_STATE_DIR": str(tmp_path / "state"),
        "DPMSF_PLUGINS": str(bundled()),
    }
    assert run_for_result([sys.executable, "-c", child], cwd=ROOT, env=env) == [200, []]


@pytest.mark.slow
def test_an_unreadable_usage_file_is_a_503_without_a_traceback(server: Server, tmp_path: Path) -> None:
    (tmp_path / "state" / "usage.db").mkdir(parents=True)  # not a database: the report cannot be read
    assert server.call(BOB, "jot/", params={"text": "b"}).status_code == 200  # serving is not affected
    r = server.usage(ADMIN)
    assert (r.status_code, r.headers["content-type"]) == (503, "application/problem+json")
    assert "Traceback" not in r.text and "usage.db" not in r.text
    assert server.app.meter is not None and server.app.meter.totals()[BOB].requests == 1  # still counting


@pytest.mark.slow
def test_on_dynamodb_usage_goes_to_the_shared_table(dynamodb: Any, moto_url: str, tmp_path: Path) -> None:
    """``DPMSF_STORE=dynamodb://...``: every instance's meter writes to the deployment's table (moto here), and a
    report from any instance (or the CLI) adds them up; nothing is written to the state directory."""
    from dpmsf_core.config import Settings
    from dpmsf_core.metering import sink_for
    from dpmsf_core.tenancy.replay import create_dynamodb_table

    table = f"dpmsf-{uuid.uuid4().hex[:8]}"
    create_dynamodb_table(table, client=dynamodb)
    settings = Settings.from_env(
        {"DPMSF_STORE": f"dynamodb://{table}?endpoint_url={moto_url}", "DPMSF_STATE_DIR": str(tmp_path / "state")},
        dotenv=None,
    )
    meters = [UsageMeter(lambda: sink_for(settings), clock=lambda: T0, flush_seconds=3600) for _ in range(2)]
    for i, meter in enumerate(meters):
        assert isinstance(meter.sink(), StoreUsageSink)
        meter.request(ALICE, 200 + 300 * i)
        meter.count(ALICE, store_ops=2, store_bytes=10)
        meter.close()
    assert meters[0].report(ALICE) == {ALICE: Counts(requests=2, errors=1, store_ops=4, store_bytes=20)}
    assert not (tmp_path / "state" / "usage.db").exists()


def test_a_sink_that_stays_down_does_not_grow_memory_without_end() -> None:
    class Down:
        def add(self, rows: Any) -> None:
            raise OSError("gone")

        def read(self, tenant: str | None = None, since_hour: int | None = None) -> dict[str, Counts]:
            raise OSError("gone")

    now = [T0]
    meter = UsageMeter(Down, clock=lambda: now[0], max_tenants=2, flush_seconds=3600)
    for hour in range(100):  # 100 hours of an outage, two tenants
        now[0] = T0 + hour * HOUR
        meter.count(ALICE, requests=1)
        meter.count(BOB, requests=1)
        meter.flush()
    assert meter.stats()["pending"] <= 8  # max_tenants x 4
    assert meter.totals()[ALICE].requests == 100  # /metrics still has everything
    assert UsageMeter(None).stats()["pending"] == 0


@pytest.mark.slow
def test_dpmsf_serve_flushes_at_sigterm_and_the_cli_reads_it(plugin_dir: Any, tmp_path: Path) -> None:
    """The real command: ``dpmsf serve`` stopped with SIGTERM writes what it counted; ``dpmsf tenant usage``,
    another process, reports it."""
    from ports import free_port
    from serverproc import running

    plugin_dir.write("shared.py", SHARED)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DPMSF_", "AWS_LAMBDA"))},
        "ADMIN_ID": ADMIN,
        "DPMSF_STATE_DIR": str(tmp_path / "state"),
        "DPMSF_PLUGINS": str(plugin_dir.path),
        "DPMSF_STORE": f"sqlite:///{tmp_path / 'store.db'}",
        "DPMSF_KEY_CACHE": "0",
    }
    dpmsf = [sys.executable, "-m", "dpmsf_core"]
    added = subprocess.run([*dpmsf, "tenant", "add", ALICE], env=env, cwd=tmp_path, capture_output=True, text=True)
    key = json.loads(added.stdout)["key"]
    port = free_port()
    with running([*dpmsf, "serve", "--port", str(port)], tmp_path, env, tmp_path / "serve.log",
                 f"http://127.0.0.1:{port}/"):  # fmt: skip
        for _ in range(4):
            headers = {"authorization": f"Bearer {mint(ALICE, key)}"}
            r = httpx.get(f"http://127.0.0.1:{port}/rest/services/jot/", params={"text": "x"}, headers=headers)
            assert r.status_code == 200, r.text
    out = subprocess.run([*dpmsf, "tenant", "usage"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["tenant"], r["requests"], r["store_ops"]) for r in rows] == [(ALICE, 4, 4)]


def test_the_flush_thread_writes_on_its_own_off_the_callers_thread(tmp_path: Path) -> None:
    import threading
    import time

    sink = SQLiteUsageSink(str(tmp_path / "usage.db"))
    writers: list[str] = []

    class Watched:
        def add(self, rows: Any) -> None:
            writers.append(threading.current_thread().name)
            sink.add(rows)

        def read(self, tenant: str | None = None, since_hour: int | None = None) -> dict[str, Counts]:
            return sink.read(tenant, since_hour)

    meter = UsageMeter(Watched, flush_seconds=0.05)
    meter.request(ALICE, 200)  # no I/O here: the first count starts the thread
    deadline = time.monotonic() + 10
    while not sink.read() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sink.read() == {ALICE: Counts(requests=1)}
    assert set(writers) == {"dpmsf-usage-flush"}
    meter.close()


@pytest.mark.slow
def test_dpmsf_tenant_usage_without_any_usage_creates_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "DPMSF_STATE_DIR": str(tmp_path / "nowhere"), "DPMSF_STORE": ""}
    out = subprocess.run([sys.executable, "-m", "dpmsf_core", "tenant", "usage"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert (out.returncode, out.stdout) == (0, "")
    assert out.stderr.startswith("dpmsf: no usage recorded in ") and "Traceback" not in out.stderr
    assert not (tmp_path / "nowhere").exists()
