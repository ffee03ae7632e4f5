"""Replay stores: a token id is accepted once, even when threads or processes race for it (SQLite, DynamoDB on a
moto server, Firestore on Google's emulator, PostgreSQL on a real server from Debian's package)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dpmsf_core.tenancy.replay import (
    DynamoDBReplayStore,
    FirestoreReplayStore,
    MemoryReplayStore,
    PostgresReplayStore,
    ReplayStore,
    SQLiteReplayStore,
    create_dynamodb_table,
    make_replay_store,
)

ROOT = Path(__file__).resolve().parents[1]
LATER = time.time() + 3600
pytest_plugins = ["firestore_emulator", "pgserver"]


@pytest.fixture
def table(dynamodb: Any) -> str:
    name = f"dpmsf-{uuid.uuid4().hex[:8]}"
    create_dynamodb_table(name, client=dynamodb)
    return name


@pytest.fixture(params=["memory", "sqlite", "dynamodb", "firestore", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ReplayStore:
    if request.param == "memory":
        return MemoryReplayStore()
    if request.param == "postgresql":
        return PostgresReplayStore(request.getfixturevalue("pg_url"))
    if request.param == "sqlite":
        return SQLiteReplayStore(str(tmp_path / "replay.db"))
    if request.param == "firestore":
        request.getfixturevalue("firestore_env")
        return FirestoreReplayStore("dpmsf")
    return DynamoDBReplayStore(request.getfixturevalue("table"), client=request.getfixturevalue("dynamodb"))


def test_single_use(store: ReplayStore) -> None:
    jti = uuid.uuid4().hex
    assert store.claim(jti, LATER) is True
    assert store.claim(jti, LATER) is False
    assert store.claim(jti, LATER + 100) is False
    assert store.claim(uuid.uuid4().hex, LATER) is True


def _race(claim: Callable[[str, float], bool], jtis: list[str], workers: int) -> Counter[str]:
    """Run ``workers`` threads claiming the same ids in the same order; count the wins per id."""
    wins: Counter[str] = Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(workers)

    def work() -> None:
        barrier.wait()
        for jti in jtis:
            if claim(jti, LATER):
                with lock:
                    wins[jti] += 1

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return wins


def test_memory_threads_race_one_winner() -> None:
    jtis = [uuid.uuid4().hex for _ in range(2000)]
    wins = _race(MemoryReplayStore().claim, jtis, workers=8)
    assert wins == Counter(dict.fromkeys(jtis, 1))


def test_sqlite_threads_race_one_winner(tmp_path: Path) -> None:
    store = SQLiteReplayStore(str(tmp_path / "replay.db"))
    jtis = [uuid.uuid4().hex for _ in range(200)]
    wins = _race(store.claim, jtis, workers=4)
    assert wins == Counter(dict.fromkeys(jtis, 1))


_CHILD = """
import sys
from dpmsf_core.tenancy.replay import SQLiteReplayStore
store = SQLiteReplayStore(sys.argv[1])
jtis = sys.argv[2].split(",")
print("ready", flush=True)
sys.stdin.readline()
print(",".join(j for j in jtis if store.claim(j, 4e9)), flush=True)
"""


@pytest.mark.slow
def test_sqlite_processes_race_one_winner(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    jtis = [uuid.uuid4().hex for _ in range(300)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, path, ",".join(jtis)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(4)
    ]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        outputs = [child.communicate(timeout=30)[0].strip() for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    assert all(child.returncode == 0 for child in children)
    wins = Counter(j for out in outputs for j in out.split(",") if j)
    assert wins == Counter(dict.fromkeys(jtis, 1))
    assert sum(1 for out in outputs if out) >= 1


_RACE_WORKER = """
import sys, threading, time
from dpmsf_core.tenancy.replay import make_replay_store
store = make_replay_store(sys.argv[1])
store.claim("warm-up-" + sys.argv[2], 4e9)  # the connection is open (and a table made) before any race starts
print("ready", flush=True)
for line in sys.stdin:  # one race per line: "<start time> <id>,<id>,..."
    start_at, jtis = float(line.split()[0]), line.split()[1].split(",")
    won, lock = [], threading.Lock()
    def work(offset):
        time.sleep(max(0.0, start_at - time.time()))  # both processes start at the same wall-clock time
        for jti in jtis[offset:] + jtis[:offset]:  # each thread starts elsewhere: every id is contended
            if store.claim(jti, 4e9):
                with lock:
                    won.append(jti)
    threads = [threading.Thread(target=work, args=(n * len(jtis) // 4,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(",".join(won), flush=True)
"""


def _race_two_processes(*worker: str) -> list[list[int]]:
    """Two worker processes (``python -c *worker N``, 4 threads each) claim the same 300 ids at once, up to three
    times until both won some; each id must have exactly one winner. The wins per process in each race."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", *worker, str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for n in range(2)
    ]
    rounds: list[list[int]] = []
    try:
        for worker in workers:
            assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        for _ in range(3):
            jtis = [uuid.uuid4().hex for _ in range(300)]
            line = f"{time.time() + 0.5} {','.join(jtis)}\n"
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.write(line)
                worker.stdin.flush()
            per_worker = []
            for worker in workers:
                assert worker.stdout is not None
                per_worker.append([j for j in worker.stdout.readline().strip().split(",") if j])
            wins = Counter(j for won in per_worker for j in won)
            assert wins == Counter(dict.fromkeys(jtis, 1))  # every id claimed, none twice
            rounds.append([len(won) for won in per_worker])
            if all(per_worker):
                break
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.close()
            assert worker.wait(timeout=30) == 0
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
            for pipe in (worker.stdin, worker.stdout):
                if pipe is not None:
                    pipe.close()
    return rounds


@pytest.mark.slow
def test_firestore_two_worker_processes_race_one_winner(firestore_env: str) -> None:
    """Two worker processes (4 threads each) claim the same 300 ids at once: each id has exactly one winner.

    On a busy machine one process may be descheduled for the whole race, and then wins nothing (still correct);
    up to three races are run until both processes won some ids, so the test shows a real race each time."""
    rounds = _race_two_processes(_RACE_WORKER, "firestore://race")
    assert all(rounds[-1]), f"one process won every id in each race: {rounds}"  # they did race
    print("firestore replay race: 2 processes x 4 threads, 300 ids, wins per process in each race:", rounds)


_WHOAMI = """
import os
from dpmsf_core import expose


@expose.endpoint(method="GET", auth=True)
def whoami():
    return {"pid": os.getpid()}
"""


@pytest.mark.slow
def test_firestore_token_used_once_across_two_uvicorn_workers(firestore_env: str, tmp_path: Path) -> None:
    """The app under ``uvicorn --workers 2`` with Firestore tenants and replay store: each token, sent four times at
    once, is accepted by exactly one request; the other three answer 401, whichever worker they reached."""
    import json
    import urllib.error
    import urllib.request

    from ports import free_port
    from serverproc import running

    from dpmsf_core.tenancy.tokens import generate_key, mint

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "whoami.py").write_text(_WHOAMI)
    admin, key, port = str(uuid.uuid4()), generate_key(), free_port()
    env = {
        **os.environ,
        "DPMSF_PLUGINS": str(plugins),
        "DPMSF_STATE_DIR": str(tmp_path / "state"),
        "DPMSF_TENANTS": "firestore://dpmsf-tenants",
        "DPMSF_REPLAY_STORE": "firestore://dpmsf-replay",
        "DPMSF_MASTER_KEY": generate_key(),
        "ADMIN_ID": admin,
        "DPMSF_ADMIN_KEY": key,
    }
    base = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).parent / "uvicorn"), "dpmsf_core.asgi:create", "--factory"]
    command += ["--workers", "2", "--port", str(port), "--no-access-log"]

    def call(token: str) -> tuple[int, Any]:
        """(status, JSON body) of one GET on a new connection (urllib: no TLS context to build per call)."""
        request = urllib.request.Request(f"{base}/rest/services/whoami/", headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.load(answer)
        except urllib.error.HTTPError as refused:
            with refused:
                return refused.code, json.load(refused)

    with running(command, ROOT, env, tmp_path / "server.log", f"{base}/"):
        deadline, pids = time.monotonic() + 60, set()
        while len(pids) < 2 and time.monotonic() < deadline:  # both workers serve before the race starts
            status, body = call(mint(admin, key))
            assert status == 200, (status, body)
            pids.add(body["results"]["pid"])
        assert len(pids) == 2, pids
        answers: dict[str, list[tuple[int, Any]]] = {}
        for _ in range(40):
            token = mint(admin, key)
            barrier = threading.Barrier(4)
            found: list[tuple[int, Any]] = []

            def attempt(token: str = token, barrier: threading.Barrier = barrier, found: list = found) -> None:
                barrier.wait()
                found.append(call(token))

            threads = [threading.Thread(target=attempt) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            answers[token] = found
    statuses = [sorted(Counter(status for status, _ in found).items()) for found in answers.values()]
    assert all(s == [(200, 1), (401, 3)] for s in statuses), statuses
    winners = Counter(body["results"]["pid"] for found in answers.values() for status, body in found if status == 200)
    assert set(winners) == pids, winners  # both workers won some of the races
    refused = [body for found in answers.values() for status, body in found if status == 401]
    assert {(r["status"], r["detail"]) for r in refused} == {(401, "invalid or expired token")}
    print(
        "firestore replay over HTTP, uvicorn --workers 2: 40 tokens x 4 concurrent requests, wins per worker",
        dict(winners),
    )


def test_firestore_document_shape(firestore_env: str) -> None:
    from google.cloud import firestore

    jti = uuid.uuid4().hex
    assert FirestoreReplayStore("tokens").claim(jti, 1_700_000_060.5)
    snapshot = firestore.Client().collection("tokens").document(f"token#{jti}").get()
    assert snapshot.to_dict() == {"expires_at": datetime(2023, 11, 14, 22, 14, 21, tzinfo=UTC)}  # a TTL timestamp
    assert [d.id for d in firestore.Client().collection("tokens").stream()] == [f"token#{jti}"]


def test_firestore_ids_that_firestore_would_refuse(firestore_env: str) -> None:
    store = FirestoreReplayStore("tokens")
    for jti in ("a/b", "..", ".", "__x__", "%2F", "a%2Fb"):
        assert store.claim(jti, LATER) is True, jti
        assert store.claim(jti, LATER) is False, jti


def test_firestore_unreachable_raises_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    from google.api_core.exceptions import GoogleAPIError
    from ports import free_port

    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(GoogleAPIError):
        FirestoreReplayStore("tokens", timeout=0.5).claim("x", LATER)
    assert time.monotonic() - started < 5  # the library's own default would retry for 300 s


@pytest.mark.slow
def test_dynamodb_threads_race_one_winner(table: str, dynamodb: Any) -> None:
    store = DynamoDBReplayStore(table, client=dynamodb)
    jtis = [uuid.uuid4().hex for _ in range(25)]
    wins = _race(store.claim, jtis, workers=4)
    assert wins == Counter(dict.fromkeys(jtis, 1))


def test_dynamodb_item_shape_and_ttl(table: str, dynamodb: Any) -> None:
    jti = uuid.uuid4().hex
    assert DynamoDBReplayStore(table, client=dynamodb).claim(jti, 1_700_000_060.5)
    item = dynamodb.get_item(TableName=table, Key={"pk": {"S": f"token#{jti}"}, "sk": {"S": "token"}})["Item"]
    assert item == {"pk": {"S": f"token#{jti}"}, "sk": {"S": "token"}, "expires_at": {"N": "1700000061"}}
    ttl = dynamodb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
    assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "expires_at")


def test_memory_forgets_expired_ids() -> None:
    now = [1000.0]
    store = MemoryReplayStore(clock=lambda: now[0])
    assert store.claim("old", 1010.0)
    assert store.claim("young", 5000.0)
    now[0] = 2000.0
    for i in range(1100):  # enough claims to trigger a purge
        store.claim(f"filler-{i}", 1500.0 if i < 1000 else 9000.0)
    assert store.claim("old", 3000.0) is True
    assert store.claim("young", 5000.0) is False
    assert len(store) < 200


def test_sqlite_purge_forgets_only_expired(tmp_path: Path) -> None:
    now = [1000.0]
    store = SQLiteReplayStore(str(tmp_path / "replay.db"), clock=lambda: now[0])
    store.claim("old", 1010.0)
    store.claim("young", 5000.0)
    now[0] = 2000.0
    assert store.purge() == 1
    assert store.claim("old", 3000.0) is True
    assert store.claim("young", 5000.0) is False


def test_sqlite_is_shared_between_instances(tmp_path: Path) -> None:
    path = str(tmp_path / "replay.db")
    assert SQLiteReplayStore(path).claim("a", LATER)
    assert not SQLiteReplayStore(path).claim("a", LATER)


def test_sqlite_creates_missing_folders(tmp_path: Path) -> None:
    SQLiteReplayStore(str(tmp_path / "state" / "deeper" / "replay.db")).claim("a", LATER)
    assert (tmp_path / "state" / "deeper" / "replay.db").exists()


def test_sqlite_bad_path_fails_at_construction(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(OSError):
        SQLiteReplayStore(str(tmp_path / "a-file" / "replay.db"))


def test_make_replay_store(tmp_path: Path, moto_url: str, aws_env: None, table: str) -> None:
    assert isinstance(make_replay_store("memory"), MemoryReplayStore)
    sqlite_store = make_replay_store(f"sqlite:///{tmp_path}/r.db")  # tmp_path is absolute: four slashes
    assert isinstance(sqlite_store, SQLiteReplayStore) and sqlite_store.path == f"{tmp_path}/r.db"
    dynamo = make_replay_store(f"dynamodb://{table}?endpoint_url={moto_url}")
    assert isinstance(dynamo, DynamoDBReplayStore) and dynamo.table_name == table
    assert dynamo.claim("x", LATER) and not dynamo.claim("x", LATER)


def test_make_replay_store_firestore(firestore_env: str) -> None:
    made = make_replay_store("firestore://dpmsf-tokens")
    assert isinstance(made, FirestoreReplayStore) and made.collection == "dpmsf-tokens"
    assert made.claim("x", LATER) and not made.claim("x", LATER)
    named = make_replay_store("firestore://dpmsf?database=other-db")
    assert isinstance(named, FirestoreReplayStore) and named._firestore.database == "other-db"


def test_make_replay_store_relative_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = make_replay_store("sqlite:///replay.db")
    assert isinstance(store, SQLiteReplayStore) and store.path == "replay.db"
    assert (tmp_path / "replay.db").exists()


@pytest.mark.parametrize(
    "url",
    [
        "",
        "redis://x",
        "sqlite:///",
        "sqlite://relative.db",
        "dynamodb://",
        "dynamodb://t/x",
        "dynamodb://t?region=x",
        "firestore://",
        "firestore://a/b",
        "firestore://__x__",
        "firestore://a?project=p",
        "firestore://a?database=Bad_Name",
        "Memory",
    ],
)
def test_make_replay_store_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"Replay store URL has value {url!r}. Choices are: memory|")):
        make_replay_store(url)


def test_importing_security_modules_leaves_boto3_and_firestore_out() -> None:
    modules = "dpmsf_core.tenancy.replay, dpmsf_core.tenancy.tokens, dpmsf_core.tenancy.tenants, dpmsf_core.client"
    code = (
        f"import sys, {modules}; print('boto3' in sys.modules, 'google.cloud.firestore' in sys.modules,"
        " 'psycopg' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    assert out.stdout.strip() == "False False False", out.stderr


# -- PostgreSQL ----------------------------------------------------------------------------------------------------


def test_postgres_threads_race_one_winner(pg_url: str) -> None:
    store = PostgresReplayStore(pg_url)
    jtis = [uuid.uuid4().hex for _ in range(300)]
    wins = _race(store.claim, jtis, workers=6)
    assert wins == Counter(dict.fromkeys(jtis, 1))
    store.close()


def test_postgres_two_processes_race_one_winner(pg_url: str) -> None:
    """Two processes (two replicas, 4 threads each) claim the same 300 ids at once: each id has exactly one winner;
    up to three races are run until both processes won some ids, so the test shows a real race."""
    rounds = _race_two_processes(_RACE_WORKER, pg_url)
    assert all(rounds[-1]), f"one process won every id in each race: {rounds}"
    print("postgres replay race: 2 processes x 4 threads, 300 ids, wins per process in each race:", rounds)


def test_postgres_purge_forgets_only_expired_and_shares_between_instances(pg_url: str) -> None:
    now = [1_000_000.0]
    one = PostgresReplayStore(pg_url, clock=lambda: now[0])
    two = PostgresReplayStore(pg_url, clock=lambda: now[0])
    assert one.claim("old", now[0] + 10) and one.claim("new", now[0] + 1000)
    assert two.claim("old", now[0] + 10) is False  # another replica sees the claim
    now[0] += 100
    assert two.purge() == 1
    assert one.claim("new", now[0] + 1000) is False  # not expired: still remembered
    assert one.claim("old", now[0] + 10) is True  # expired and forgotten: harmless, the verifier refuses it
    import psycopg

    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM dpmsf_used_tokens").fetchone() == (2,)
    one.close()
    two.close()


def test_postgres_claims_purge_on_their_own(pg_url: str) -> None:
    now = [1_000_000.0]
    store = PostgresReplayStore(pg_url, clock=lambda: now[0])
    for n in range(5):
        assert store.claim(f"gone-{n}", now[0] + 1)
    now[0] += 120  # past _PURGE_SECONDS: the next claim deletes the expired rows first
    assert store.claim("fresh", now[0] + 60)
    import psycopg

    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT jti FROM dpmsf_used_tokens").fetchall() == [("fresh",)]
    store.close()


def test_make_replay_store_postgres(pg_url: str) -> None:
    store = make_replay_store(pg_url)
    assert isinstance(store, PostgresReplayStore)
    assert store.claim("x", LATER) is True and store.claim("x", LATER) is False
    store.close()


def test_postgres_unreachable_raises_quickly_without_the_password() -> None:
    from ports import free_port

    store = PostgresReplayStore(f"postgresql://dpmsf:hunter2-secret@127.0.0.1:{free_port()}/db", timeout=1.0)
    started = time.monotonic()
    with pytest.raises(Exception) as caught:
        store.claim("x", LATER)
    assert time.monotonic() - started < 5
    assert "hunter2-secret" not in str(caught.value)
    store.close()


@pytest.mark.parametrize(
    "url",
    ["postgresql://", "postgresql://host", "postgresql://u:pw-secret@host/", "postgresql://u:pw-secret@host/a/b"],
)
def test_bad_postgres_urls_are_refused_without_their_password(url: str) -> None:
    with pytest.raises(ValueError, match="Replay store URL has value") as caught:
        make_replay_store(url)
    assert "pw-secret" not in str(caught.value)
    assert "postgresql://user:password@host:5432/dbname" in str(caught.value)
