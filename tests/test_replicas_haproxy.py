"""The multi-replica test on one machine, real parts only: PostgreSQL (tenants, used tokens, documents), a moto S3
server (plugins), three ``dpmsf serve`` replicas and HAProxy (Debian's package) in front, health-checking
``/readyz``, as a Kubernetes Service or a Knative revision would spread requests.

Skipped when haproxy is not installed, unless ``DPMSF_REQUIRE_HAPROXY=1`` (``.ci/run`` sets it once it installed
the package); PostgreSQL likewise with ``DPMSF_REQUIRE_POSTGRES=1``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import httpx
import pytest
from motoserver import moto_server
from replicaset import VERSION_HEADER, Cluster, HAProxyMissing, cluster, haproxy, haproxy_binary, wait_for_version

from dpmsf_core.tenancy.tokens import mint

pytest_plugins = ["pgserver"]

PING = '''
from dpmsf_core import expose


@expose.endpoint(method="GET")
def ping():
    """Uploaded through the balancer."""
    return "{text}"
'''


@pytest.fixture(scope="module")
def balanced(tmp_path_factory: pytest.TempPathFactory, pg_database: Callable[[], str]) -> Iterator[tuple[Cluster, str]]:
    """Three ready replicas and HAProxy; (the cluster, the balancer's URL)."""
    try:
        haproxy_binary()
    except HAProxyMissing as missing:
        if os.environ.get("DPMSF_REQUIRE_HAPROXY") == "1":
            pytest.fail(f"DPMSF_REQUIRE_HAPROXY=1 but {missing}")
        pytest.skip(str(missing))
    folder = tmp_path_factory.mktemp("balanced")
    with moto_server() as s3_url, cluster(folder, pg_database(), s3_url, replicas=3) as found:
        with haproxy(found.replicas, folder) as url:
            yield found, url


def test_every_replica_is_ready_and_the_balancer_reaches_each(balanced: tuple[Cluster, str]) -> None:
    found, url = balanced
    for replica in found.replicas:
        ready = httpx.get(f"{replica.base}/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"plugins": "ok", "store": "ok", "tenants": "ok", "replay": "ok"}
    with httpx.Client(timeout=10) as http:
        pids = Counter(
            http.get(f"{url}/rest/services/whoami/", headers={"Authorization": f"Bearer {found.token()}"}).json()[
                "results"
            ]["pid"]
            for _ in range(12)
        )
    assert len(pids) == 3, pids  # round robin: every replica answered through the balancer


def test_a_plugin_uploaded_through_the_balancer_is_served_by_each_replica_within_5_s(
    balanced: tuple[Cluster, str],
) -> None:
    found, url = balanced
    answer = found.upload(url, "ping", PING.format(text="first"))
    assert answer.status_code == 201, answer.text
    version = found.stored_version("ping")
    start = time.monotonic()
    took = [wait_for_version(r.base, "/rest/services/ping/", version, timeout=5.0) for r in found.replicas]
    assert time.monotonic() - start < 5.0, took
    for replica in found.replicas:
        served = httpx.get(f"{replica.base}/rest/services/ping/")
        assert served.json()["results"] == "first" and served.headers[VERSION_HEADER] == version


def test_a_token_presented_to_two_replicas_succeeds_exactly_once(balanced: tuple[Cluster, str]) -> None:
    found, _ = balanced
    r1, r2, _ = found.replicas
    outcomes = []
    for _ in range(20):
        token = mint(found.admin, found.admin_key)
        barrier = threading.Barrier(2)
        statuses: list[int] = []

        def present(base: str, token: str = token, barrier: threading.Barrier = barrier, out: list = statuses) -> None:
            barrier.wait()
            auth = {"Authorization": f"Bearer {token}"}
            out.append(httpx.get(f"{base}/rest/services/whoami/", headers=auth, timeout=30).status_code)

        threads = [threading.Thread(target=present, args=(base,)) for base in (r1.base, r2.base)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        outcomes.append(sorted(statuses))
    assert outcomes == [[200, 401]] * 20


def test_concurrent_writes_from_all_replicas_are_readable_from_each(balanced: tuple[Cluster, str]) -> None:
    found, _ = balanced
    run = uuid.uuid4().hex[:8]
    written: dict[str, str] = {}
    lock = threading.Lock()

    def writer(base: str, n: int) -> None:
        with httpx.Client(timeout=30) as http:
            for i in range(25):
                doc_id, text = f"{run}-{n}-{i}", f"from {base} #{i}"
                answer = http.put(f"{base}/rest/services/note/", params={"id": doc_id, "text": text})
                assert answer.status_code == 200, answer.text
                with lock:
                    written[doc_id] = text

    threads = [threading.Thread(target=writer, args=(r.base, n)) for n, r in enumerate(found.replicas * 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(written) == 150
    for replica in found.replicas:
        with httpx.Client(timeout=30) as http:
            for doc_id, text in written.items():
                got = http.get(f"{replica.base}/rest/services/read/", params={"id": doc_id}).json()["results"]
                assert got is not None and got["text"] == text, (replica.name, doc_id)


class Load:
    """Writers through the balancer, each write a fresh id; which were acknowledged, and every status seen."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.acknowledged: list[str] = []
        self.statuses: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._write, args=(n,)) for n in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _write(self, n: int) -> None:
        run = uuid.uuid4().hex[:8]
        with httpx.Client(timeout=30) as http:
            i = 0
            while not self._stop.is_set():
                doc_id = f"load-{run}-{n}-{i}"
                try:
                    status = http.put(f"{self.url}/rest/services/note/", params={"id": doc_id, "text": "x"}).status_code
                except httpx.TransportError:
                    status = 0
                with self._lock:
                    self.statuses.append((time.monotonic(), status))
                    if status == 200:
                        self.acknowledged.append(doc_id)
                i += 1


def test_sigterm_during_a_slow_request_lets_it_finish(balanced: tuple[Cluster, str]) -> None:
    found, url = balanced
    replica = found.replicas[1]
    result: dict[str, object] = {}
    marker = found.folder / f"slow-{uuid.uuid4().hex[:6]}"

    def slow() -> None:
        params = {"seconds": "2", "marker": str(marker)}
        answer = httpx.get(f"{replica.base}/rest/services/slow/", params=params, timeout=30)
        result.update(status=answer.status_code, body=answer.json())

    caller = threading.Thread(target=slow)
    with Load(url) as load:
        caller.start()
        deadline = time.monotonic() + 10
        while not marker.exists():  # the request is running
            assert time.monotonic() < deadline, "the slow request never started"
            time.sleep(0.01)
        replica.signal(signal.SIGTERM)
        caller.join(30)
        assert replica.proc is not None and replica.proc.wait(timeout=30) == 0  # drained, then a clean exit
        time.sleep(0.5)
    assert result["status"] == 200 and result["body"]["results"]["slept"] == 2.0  # type: ignore[index]
    lost = [status for _, status in load.statuses if status != 200]
    assert lost == [] and len(load.statuses) > 20, Counter(s for _, s in load.statuses)
    replica.start()  # back for the next test


def test_a_replica_killed_under_load_loses_no_acknowledged_write(balanced: tuple[Cluster, str]) -> None:
    found, url = balanced
    victim = found.replicas[2]
    with Load(url) as load:
        time.sleep(1.0)
        victim.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        time.sleep(2.5)
    assert victim.proc is not None and victim.proc.wait(timeout=10) == -signal.SIGKILL
    after = [status for at, status in load.statuses if at > killed_at + 1.0]
    assert after and all(status == 200 for status in after), Counter(after)  # the balancer keeps answering
    print(
        f"SIGKILL under load: {len(load.acknowledged)} writes acknowledged,"
        f" statuses {dict(Counter(s for _, s in load.statuses))}"
    )
    survivor = found.replicas[0]
    with httpx.Client(timeout=30) as http:
        missing = [
            doc_id
            for doc_id in load.acknowledged
            if http.get(f"{survivor.base}/rest/services/read/", params={"id": doc_id}).json()["results"] is None
        ]
    assert missing == [] and len(load.acknowledged) > 20
