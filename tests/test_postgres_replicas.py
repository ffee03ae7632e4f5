"""Two ``dpmsf serve`` replicas sharing a real PostgreSQL server for tenants and used tokens, over HTTP: a token
presented to both at once is accepted exactly once; ``/readyz`` checks the database and never shows its password."""

from __future__ import annotations

import os
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ROOT
from ports import free_port
from serverproc import running

from dpmsf_core.tenancy.tokens import generate_key, mint

pytest_plugins = ["pgserver"]

DPMSF = str(Path(sys.executable).parent / "dpmsf")
WHOAMI = '''
import os
from dpmsf_core import expose


@expose.endpoint(method="GET", auth=True)
def whoami():
    """Which replica answered."""
    return {"pid": os.getpid()}
'''


def _env(tmp: Path, name: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DPMSF_", "AWS_"))}
    env.update({"DPMSF_PLUGINS": str(tmp / "plugins"), "DPMSF_STATE_DIR": str(tmp / name), **extra})
    return env


@pytest.fixture
def replicas(tmp_path: Path, pg_url: str) -> Iterator[tuple[list[str], str, str]]:
    """Two replicas (each its own state folder, like two machines) with the tenant registry and the replay store in
    one PostgreSQL database; both create the admin tenant at start-up, one wins."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "who.py").write_text(WHOAMI)
    admin, key = str(uuid.uuid4()), generate_key()
    shared = {
        "DPMSF_REPLAY_STORE": pg_url,
        "DPMSF_TENANTS": pg_url,
        "DPMSF_MASTER_KEY": generate_key(),
        "ADMIN_ID": admin,
        "DPMSF_ADMIN_KEY": key,
    }
    bases = []
    with ExitStack() as stack:
        for name in ("one", "two"):
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            command = [DPMSF, "serve", "--port", str(port), "--no-access-log"]
            env = _env(tmp_path, name, **shared)
            stack.enter_context(running(command, ROOT, env, tmp_path / f"{name}.log", f"{base}/healthz"))
            bases.append(base)
        yield bases, admin, key


def test_a_token_sent_to_two_replicas_at_once_is_accepted_once(replicas: tuple[list[str], str, str]) -> None:
    bases, admin, key = replicas

    def call(base: str, token: str) -> tuple[int, Any]:
        answer = httpx.get(f"{base}/rest/services/whoami/", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        return answer.status_code, answer.json()

    pids = {base: call(base, mint(admin, key))[1]["results"]["pid"] for base in bases}  # both warm, both serve
    assert len(set(pids.values())) == 2
    outcomes: list[list[tuple[str, int]]] = []
    for _ in range(30):
        token = mint(admin, key)
        barrier = threading.Barrier(4)
        found: list[tuple[str, int]] = []

        def attempt(base: str, token: str = token, barrier: threading.Barrier = barrier, found: list = found) -> None:
            barrier.wait()
            found.append((base, call(base, token)[0]))

        threads = [threading.Thread(target=attempt, args=(base,)) for base in bases for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        outcomes.append(found)
    statuses = [sorted(Counter(status for _, status in found).items()) for found in outcomes]
    assert all(s == [(200, 1), (401, 3)] for s in statuses), statuses
    winners = Counter(base for found in outcomes for base, status in found if status == 200)
    assert set(winners) == set(bases), winners  # each replica won some: they really raced
    print("postgres replay over HTTP, 2 dpmsf serve replicas: 30 tokens x 4 concurrent requests, wins", dict(winners))
    for base in bases:
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"plugins": "ok", "store": "ok", "tenants": "ok", "replay": "ok"}


def test_readyz_with_postgres_down_says_replay_and_not_the_password(tmp_path: Path) -> None:
    (tmp_path / "plugins").mkdir()
    closed = free_port()
    password = "pw-" + uuid.uuid4().hex
    url = f"postgresql://dpmsf:{password}@127.0.0.1:{closed}/dpmsf"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = _env(tmp_path, "state", DPMSF_REPLAY_STORE=url)
    log = tmp_path / "server.log"
    with running([DPMSF, "serve", "--port", str(port)], ROOT, env, log, f"{base}/healthz"):
        ready = httpx.get(f"{base}/readyz", timeout=10)
    assert ready.status_code == 503
    assert ready.json()["checks"]["replay"] in ("unreachable", "timeout")
    assert password not in ready.text and str(closed) not in ready.text
    assert password not in log.read_text()  # the log says why, without the password
