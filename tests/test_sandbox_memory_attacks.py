"""Hostile tenants against the memory-sized pool of forked guests (issue 20), over real HTTP on ``dpmsf serve``.

An attacker's pass found that guests growing after they were measured held the pool over its budget for as long as
they kept calling (400 MB against 200, 15 s), and that newcomers then waited their whole queue deadline for a 503;
and that guests plus the connections the server lets in could use up its open files. These tests assert the
effects of the fixes: the tree is brought back within the budget within a few samples, by ending the guest that
grew the most (a tenant that grew a guest is counted at that size from its next call on); guests leave the server
the files its connections need. Still open (issue 20's note): newcomers wait for a 503 while growers hold the
whole budget through calls back to back.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ports import free_port
from serverproc import running

from dpmsf_core.config import Settings
from dpmsf_core.security import Security
from dpmsf_core.tenancy.tokens import generate_key, mint

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform != "linux", reason="fork, /proc: Linux")]

ROOT = Path(__file__).resolve().parent.parent
TENANTS = 40
MODULE = """import time
from dpmsf_core import expose

held = []

@expose.endpoint
def ping():
    return "pong"

@expose.endpoint
def seed():
    # what CPython decided at start-up, in the template: str/bytes hashes (SipHash keyed by the hash secret)
    return [hash("dpmsf-probe"), hash(b"dpmsf-probe"), list({"a", "b", "c", "d", "e", "f", "g", "h"})]

@expose.endpoint
def hold(mb: int = 40, seconds: float = 2.5):
    # writes ``mb`` MB of fresh pages and keeps them: memory the guest takes after its first call was measured
    held.clear()
    held.append(bytearray(b"\\x01") * (mb << 20))
    time.sleep(seconds)
    return len(held)

@expose.endpoint
def spin():
    while True:
        pass
"""


class Server:
    """A running ``dpmsf serve``, its process, and tenants ``m0``, ``m1``... each with its module uploaded."""

    def __init__(self, base: str, keys: list[tuple[str, str]], proc: int) -> None:
        self.base, self.keys, self.pid = base, keys, proc

    def call(self, client: httpx.Client, tenant: int, api: str, **params: object) -> tuple[httpx.Response, float]:
        tenant_id, key = self.keys[tenant]
        began = time.monotonic()
        answer = client.get(
            f"/rest/services/m{tenant}/{api}/",
            params={k: str(v) for k, v in params.items()},
            headers={"authorization": f"Bearer {mint(tenant_id, key)}"},
        )
        return answer, time.monotonic() - began


def add_tenants(env: dict[str, str], count: int) -> list[tuple[str, str]]:
    tenants = Security(Settings.from_env(env, dotenv=None)).tenants
    keys = []
    for number in range(count):
        tenant_id = str(uuid.uuid4())
        tenants.add(name=f"t{number}", tenant_id=tenant_id)
        keys.append((tenant_id, tenants.get(tenant_id).key))
    return keys


BUDGET_MB = 200


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("forked")
    (tmp / "plugins").mkdir()
    env = {
        **os.environ,
        "DPMSF_PLUGINS": str(tmp / "plugins"),
        "DPMSF_STATE_DIR": str(tmp / "state"),
        "ADMIN_ID": str(uuid.uuid4()),
        "DPMSF_ADMIN_KEY": generate_key(),
        "DPMSF_SANDBOX_MEMORY_MB_TOTAL": str(BUDGET_MB),
        "DPMSF_SANDBOX_MEMORY_MB": "64",
        "DPMSF_SANDBOX_TIMEOUT": "4",
        "DPMSF_SANDBOX_CPU": "1",
        "DPMSF_TENANT_RATE": "0",
    }
    keys = add_tenants(env, TENANTS)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).parent / "dpmsf"), "serve", "--port", str(port)]
    with (
        running(command, ROOT, env, tmp / "server.log", f"{base}/") as proc,
        httpx.Client(base_url=base, timeout=30) as c,
    ):
        for number, (tenant_id, key) in enumerate(keys):
            headers = {"authorization": f"Bearer {mint(tenant_id, key)}"}
            assert c.put(f"/rest/admin/plugins/m{number}", content=MODULE, headers=headers).status_code == 201
        yield Server(base, keys, proc.pid)


# -- the process tree, as the kernel counts it ---------------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def descendants(root: int) -> list[int]:
    """Every process under ``root`` (the server's workers, the template, its guests)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(_stat(int(entry))[1])
            except (OSError, ValueError, IndexError):
                pass
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        kids = [p for p, parent in parents.items() if parent == pid]
        found += kids
        frontier += kids
    return found


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def smaps(pid: int, *fields: str) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            return sum(int(line.split()[1]) for line in fh if line.startswith(fields)) / 1024
    except (OSError, ValueError, IndexError):
        return 0.0


def sandbox_mb(server: Server) -> tuple[float, int]:
    """What the pool's guests and template take together, counted the way the budget says it counts them: the
    template's resident set plus each guest's private pages; and how many guests there are."""
    procs = descendants(server.pid)
    template = [p for p in procs if comm(p) == "dpmsf-template"]
    guests = [p for p in procs if comm(p) == "dpmsf-guest"]
    total = sum(smaps(p, "Rss:") for p in template) + sum(smaps(p, "Private_Clean:", "Private_Dirty:") for p in guests)
    return total, len(guests)


def template_pid(server: Server) -> int:
    found = [p for p in descendants(server.pid) if comm(p) == "dpmsf-template"]
    assert len(found) == 1, found
    return found[0]


class OverBudget:
    """When the tree first went over ``limit`` MB, and the longest stretch it stayed over."""

    def __init__(self, limit: float) -> None:
        self.limit, self.first, self.longest, self._since = limit, 0.0, 0.0, 0.0

    def see(self, used: float, now: float) -> None:
        if used <= self.limit:
            self._since = 0.0
            return
        self.first = self.first or now
        self._since = self._since or now
        self.longest = max(self.longest, now - self._since)


@pytest.fixture(scope="module")
def held_memory(server: Server) -> dict[str, object]:
    """8 tenants whose guests were measured small after a trivial first call, then write 40 MB each and hold them
    through calls back to back for 15 s; three newcomers call once after 11 s (when every guest was measured
    again). What the tree took, and how the newcomers fared."""
    growers = list(range(4, 4 + 8))
    with httpx.Client(base_url=server.base, timeout=30) as client:
        for tenant in growers:  # each gets its guest, measured small after a trivial first call
            answer, _ = server.call(client, tenant, "ping")
            assert answer.status_code == 200, answer.text
        time.sleep(1.5)
        before, _ = sandbox_mb(server)
    stop = threading.Event()
    peak, statuses = [0.0, 0], []
    over = OverBudget(BUDGET_MB * 1.1)
    newcomers: dict[int, tuple[int, float]] = {}
    began = time.monotonic()

    def grow(tenant: int) -> None:
        with httpx.Client(base_url=server.base, timeout=30) as client:
            while not stop.is_set():
                answer, _ = server.call(client, tenant, "hold", mb=40, seconds=2.5)
                statuses.append(answer.status_code)

    def newcomer(tenant: int) -> None:
        with httpx.Client(base_url=server.base, timeout=30) as client:
            answer, waited = server.call(client, tenant, "ping")
        newcomers[tenant] = (answer.status_code, round(waited, 2))

    threads = [threading.Thread(target=grow, args=(t,), daemon=True) for t in growers]
    for thread in threads:
        thread.start()
    arrivals = [threading.Thread(target=newcomer, args=(t,), daemon=True) for t in (18, 19, 20)]
    try:
        while time.monotonic() - began < 15 or len(newcomers) < len(arrivals):
            if time.monotonic() - began > 11 and not arrivals[0].is_alive() and not newcomers:
                for arrival in arrivals:
                    arrival.start()
                    time.sleep(0.3)
            used, guests = sandbox_mb(server)
            if used > peak[0]:
                peak[:] = [used, guests]
            over.see(used, time.monotonic() - began)
            time.sleep(0.2)
            if time.monotonic() - began > 40:
                break
        settled_under_load, _ = sandbox_mb(server)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    report = (
        f"budget {BUDGET_MB} MB; before {before:.0f} MB; peak {peak[0]:.0f} MB with {peak[1]} guests "
        f"(over budget from {over.first:.1f} s, at most {over.longest:.1f} s in a row); "
        f"after 15 s of load {settled_under_load:.0f} MB; "
        f"growers' statuses {sorted(set(statuses))}; newcomers meanwhile (status, s): {newcomers}"
    )
    print(report)
    return {
        "peak": peak[0],
        "longest_over": over.longest,
        "settled": settled_under_load,
        "newcomers": newcomers,
        "report": report,
    }


def test_guests_that_grow_during_their_calls_are_brought_back_within_the_budget(
    held_memory: dict[str, object],
) -> None:
    """The budget cannot stop a busy guest from growing (its own limit does), but the pool measures busy guests at
    every tick and, past the budget with no idle guest to end, ends the one that grew the most: the tree is over a
    tenth past the budget for a few samples at most, not for as long as the growers keep calling (before: 397-403
    MB against 200 for the whole 15 s), and is within it while they still call."""
    longest, settled = held_memory["longest_over"], held_memory["settled"]
    assert isinstance(longest, float) and isinstance(settled, float)
    assert longest < 3.0, held_memory["report"]
    assert settled <= BUDGET_MB * 1.1, held_memory["report"]


# -- open files -----------------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux) to set the server's fd limit")
def test_guests_and_allowed_connections_fit_in_the_servers_open_files(tmp_path: Path) -> None:
    """Each guest holds 4 of the server's fds (3 pipes and a pidfd); ``guests_within_fds`` keeps 256 for the
    server's own, but ``DPMSF_MAX_CONNECTIONS`` lets 500 clients in. Under a hard limit of 400 open files (1024 is
    a common one: there 100 active tenants and 500 connections do it), 30 tenants' warm guests and 300 idle
    connections (within the connection limit) leave no fd: measured on this branch, the server's page and a
    warm tenant's call are reset at connect, for everyone, while the connections stay open."""
    (tmp_path / "plugins").mkdir()
    env = {
        **os.environ,
        "DPMSF_PLUGINS": str(tmp_path / "plugins"),
        "DPMSF_STATE_DIR": str(tmp_path / "state"),
        "ADMIN_ID": str(uuid.uuid4()),
        "DPMSF_ADMIN_KEY": generate_key(),
        "DPMSF_TENANT_RATE": "0",
    }
    keys = add_tenants(env, 30)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = ["prlimit", "--nofile=400:400", "--", str(Path(sys.executable).parent / "dpmsf"), "serve"]
    command += ["--port", str(port)]
    held: list[socket.socket] = []
    with (
        running(command, ROOT, env, tmp_path / "server.log", f"{base}/") as proc,
        httpx.Client(base_url=base, timeout=30) as client,
    ):
        server = Server(base, keys, proc.pid)
        for number, (tenant_id, key) in enumerate(keys):
            headers = {"authorization": f"Bearer {mint(tenant_id, key)}"}
            assert client.put(f"/rest/admin/plugins/m{number}", content=MODULE, headers=headers).status_code == 201
        for tenant in range(len(keys)):
            assert server.call(client, tenant, "ping")[0].status_code == 200
        client.close()
        try:
            for _ in range(300):  # slow clients, each within the header timeout and the connection limit
                conn = socket.create_connection(("127.0.0.1", port))
                conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
                held.append(conn)
            time.sleep(1)
            fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
            outcome = {}
            with httpx.Client(base_url=base, timeout=10) as fresh:
                for name, url, tenant in (("page", "/", None), ("warm tenant", None, 0)):
                    try:
                        if tenant is None:
                            outcome[name] = str(fresh.get(url).status_code)
                        else:
                            outcome[name] = str(server.call(fresh, tenant, "ping")[0].status_code)
                    except httpx.TransportError as exc:
                        outcome[name] = repr(exc)
        finally:
            for conn in held:
                conn.close()
    report = f"server fds {fds} of 400 with 30 guests and 300 idle connections: {outcome}"
    print(report)
    assert outcome == {"page": "200", "warm tenant": "200"}, report
