"""Guests forked from a template: each starts in milliseconds as a copy of a guest that never ran tenant code.

Attacks on what a copy could share: a module global one tenant's call leaves behind, the random generators'
state, a template that was given a call (it must never be forked again); and what each copy must have of its own:
its limits, its seccomp filter, its fds, its clocks. The pool's memory bound is attacked with a flood of new
tenants and checked against the memory the kernel reports, not against what the pool believes.
"""

from __future__ import annotations

import json
import marshal
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dpmsf_core.sandbox import SandboxLimits, SandboxPool, runtime
from dpmsf_core.sandbox.channel import CALL_FLAG, STAMP_BYTES
from dpmsf_core.sandbox.memory import pss_mb
from dpmsf_core.sandbox.pool import default_cache_dir
from dpmsf_core.sandbox.process import worker_config
from dpmsf_core.sandbox.template import Template, TemplateFailed

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform != "linux", reason="fork, pidfds: Linux")]

LIMITS = SandboxLimits(cpu_seconds=1, wall_seconds=3, memory_mb=128)
SOURCE = '''import json
import random
import time
import uuid


def leave(value):
    """Leaves ``value`` where the next tenant's code would look: a stdlib module's global, and its own."""
    json.LEFT_BEHIND = value
    global MINE
    MINE = value
    return value


def look():
    return [getattr(json, "LEFT_BEHIND", None), globals().get("MINE")]


def draw():
    return [random.random(), str(uuid.uuid4())]


def nap(seconds):
    began = time.monotonic()
    time.sleep(seconds)
    return time.monotonic() - began
'''


def call(pool: SandboxPool, tenant: str, function: str, *args: Any) -> Any:
    return pool.call_sync(
        source=SOURCE, path=f"/{tenant}/mod.py", function=function, args=list(args), kwargs={}, tenant=tenant
    )


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if parent_of(int(entry)) == pid:
                    found.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return found


@pytest.fixture(scope="module")
def pool() -> Iterator[SandboxPool]:
    with SandboxPool(size=4, limits=LIMITS) as p:
        yield p


def test_a_global_left_by_one_tenant_never_shows_in_another_tenants_first_call(pool: SandboxPool) -> None:
    assert call(pool, "alice", "leave", "alice's secret") == "alice's secret"
    assert call(pool, "alice", "look") == ["alice's secret", "alice's secret"]  # it does stay in her guest
    assert call(pool, "bob", "look") == [None, None]
    template = pool.templates.pid if pool.templates else None
    assert template is not None and {parent_of(pid) for pid in pool.workers()} == {template}  # both were forked


def test_forked_guests_draw_their_own_random_numbers(pool: SandboxPool) -> None:
    """WASI's generator lives in the guest's store and ``random`` is seeded at import: both were copied."""
    first = [call(pool, tenant, "draw") for tenant in ("carol", "dave", "erin")]
    assert len({f[0] for f in first}) == 3 and len({f[1] for f in first}) == 3, first


def test_a_forked_guest_has_its_own_limits_filter_and_fds(pool: SandboxPool) -> None:
    assert call(pool, "frank", "nap", 0.2) >= 0.19  # its clocks and sleep work without the template's threads
    (pid,) = [p for p in pool.workers() if Path(f"/proc/{p}/comm").read_text().strip() == "dpmsf-guest"][:1]
    status = Path(f"/proc/{pid}/status").read_text()
    assert "Seccomp:\t2" in status and "NoNewPrivs:\t1" in status
    limits = Path(f"/proc/{pid}/limits").read_text()
    assert "Max open files            64" in limits and "Max file size             0" in limits
    fds = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    assert not any(fd.startswith("socket:") for fd in fds), fds  # nothing of the template's channel


def test_a_new_guest_starts_in_milliseconds(pool: SandboxPool) -> None:
    call(pool, "gina", "look")  # the template is up
    waits = []
    for k in range(5):
        began = time.monotonic()
        assert call(pool, f"new-{k}", "look") == [None, None]
        waits.append(time.monotonic() - began)
    assert sorted(waits)[2] < 0.15, waits  # ~10-20 ms here; a guest started from nothing took ~250 ms


def _raw_call(template: Template, source: str, function: str) -> dict[str, Any]:
    """A call written straight to a template's channel, as a bug in the server would; its guest's answer."""
    frame = {"op": "call", "nonce": "n", "path": "/x.py", "sha": "s", "source": source}
    payload = marshal.dumps({**frame, "function": function, "args": ["left by a call"], "kwargs": {}})
    template.sock.sendall((len(payload) | CALL_FLAG).to_bytes(4, "big") + payload)
    assert template.proc.stdout is not None
    out = template.proc.stdout.fileno()
    data = b""
    while len(data) < 4 or len(data) < 4 + STAMP_BYTES + (int.from_bytes(data[:4], "big") & 0x7FFFFFFF):
        chunk = os.read(out, 65536)
        assert chunk, "the template ended"
        data += chunk
    return json.loads(data[4 + STAMP_BYTES :])  # type: ignore[no-any-return]


def test_a_template_that_ran_tenant_code_is_refused() -> None:
    compiled = runtime.compiled_module(default_cache_dir()).path
    template = Template(sys.executable, worker_config(LIMITS, compiled), None)
    try:
        answer = _raw_call(template, SOURCE, "leave")
        assert answer["ok"] is True and answer["result"] == "left by a call"  # tenant code ran in the template
        with pytest.raises(TemplateFailed):
            template.fork()
        assert children_of(template.pid) == []  # nothing was forked from it
        with pytest.raises(TemplateFailed):
            template.fork()  # nor ever will be
    finally:
        template.close()


def test_the_pool_replaces_a_template_that_ran_tenant_code() -> None:
    with SandboxPool(size=3, limits=LIMITS) as pool:
        assert call(pool, "alice", "look") == [None, None]
        assert pool.templates is not None
        tainted = pool.templates.get(LIMITS, pool.compiled)
        assert tainted is not None
        assert _raw_call(tainted, SOURCE, "leave")["result"] == "left by a call"
        assert call(pool, "bob", "look") == [None, None]  # a fresh template's guest: nothing left behind
        assert pool.templates.pid not in (None, tainted.pid)
        assert children_of(tainted.pid) == []


def test_the_pool_stays_within_its_memory_under_a_flood_of_new_tenants() -> None:
    """60 new tenants, 4 clients at once, against a 70 MB budget: the guests and the template, as the kernel counts
    their proportional set sizes, stay within it all along, and every call is served."""
    budget = 70
    peak, guests_seen, errors = [0.0], [0], []
    stop = threading.Event()
    with SandboxPool(size=64, limits=LIMITS, memory_mb_total=budget) as pool:

        def watch() -> None:
            while not stop.wait(0.05):
                template = pool.templates.pid if pool.templates else None
                everyone = {template, *children_of(template)} if template else set(pool.workers())
                peak[0] = max(peak[0], sum(pss_mb(p) or 0.0 for p in everyone))
                guests_seen[0] = max(guests_seen[0], len(everyone) - 1)

        def flood(k: int) -> None:
            for i in range(k, 60, 4):
                try:
                    assert call(pool, f"tenant-{i}", "leave", i) == i
                except Exception as exc:
                    errors.append(repr(exc))

        watcher = threading.Thread(target=watch)
        watcher.start()
        clients = [threading.Thread(target=flood, args=(k,)) for k in range(4)]
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        stop.set()
        watcher.join()
        assert errors == []
        assert 2 <= guests_seen[0] < 20, guests_seen  # as many as fit, never one per tenant
        assert peak[0] <= budget * 1.1, peak  # measured, with a tenth for the moments between two samples
        time.sleep(1.5)  # the guests that grew past the budget meanwhile are ended, least recently used first
        template = pool.templates.pid if pool.templates else None
        assert template is not None
        settled = sum(pss_mb(p) or 0.0 for p in {template, *children_of(template)})
        assert settled <= budget, settled
