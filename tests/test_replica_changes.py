"""Replicas agree within seconds: an admin upload, a tenant upload, a replacement and a delete made through one
``dpmsf serve`` replica are served by the others within 5 s, each answer naming the version that served it.

Four replicas share an S3 bucket (a moto server) and a PostgreSQL server: two hear changes by LISTEN/NOTIFY with
polling switched off in practice (``DPMSF_S3_REFRESH=3600``), one polls every second with notifications off, and
one does neither: it must still serve the old version, so the others' speed is the notification's (or the poll's).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import httpx
import pytest
from motoserver import moto_server
from replicaset import VERSION_HEADER, Cluster, cluster, wait_for_version

from dpmsf_core.tenancy.tenants_postgres import PostgresTenantRegistry
from dpmsf_core.tenancy.tokens import mint

pytest_plugins = ["pgserver"]

HELLO = '''
from dpmsf_core import expose


@expose.endpoint(method="GET")
def hello():
    """Which version answers."""
    return "{text}"
'''
MINE = '''
from dpmsf_core import expose


@expose.endpoint(method="GET", auth=True)
def mine():
    """A tenant's own function, in the sandbox."""
    return "{text}"
'''
WITHIN = 5.0  # the promise, in seconds


@pytest.fixture(scope="module")
def s3_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, pg_database: Callable[[], str], s3_url: str
) -> Iterator[Cluster]:
    """Started once for the module (four replicas take about 10 s here); each test uses its own module names."""
    with cluster(tmp_path_factory.mktemp("replicas"), pg_database(), s3_url, replicas=0) as found:
        found.add_replica(DPMSF_S3_REFRESH="3600").start()  # r1: where changes are made
        found.add_replica(DPMSF_S3_REFRESH="3600").start()  # r2: hears them
        found.add_replica(DPMSF_S3_REFRESH="1", DPMSF_NOTIFY="off").start()  # r3: polls
        found.add_replica(DPMSF_S3_REFRESH="3600", DPMSF_NOTIFY="off").start()  # r4: neither: the control
        yield found


def test_admin_upload_replace_and_delete_reach_every_replica_within_5_s(replicas: Cluster) -> None:
    r1, r2, r3, r4 = replicas.replicas
    timings: dict[str, list[float]] = {"notify": [], "poll": []}
    before: str | None = None
    for text in ("v1", "v2"):
        answer = replicas.upload(r1.base, "hello", HELLO.format(text=text))
        assert answer.status_code in (200, 201), answer.text
        version = replicas.stored_version("hello")
        local = httpx.get(f"{r1.base}/rest/services/hello/")
        assert local.json()["results"] == text and local.headers[VERSION_HEADER] == version  # the bucket's hash
        timings["notify"].append(wait_for_version(r2.base, "/rest/services/hello/", version, timeout=WITHIN))
        timings["poll"].append(wait_for_version(r3.base, "/rest/services/hello/", version, timeout=WITHIN))
        assert httpx.get(f"{r2.base}/rest/services/hello/").json()["results"] == text
        control = httpx.get(f"{r4.base}/rest/services/hello/")  # the control has not seen any of it
        assert control.status_code == 404, "the control replica saw the change: nothing was measured"
        assert version != before
        before = version
    deleted = httpx.delete(
        f"{r1.base}/rest/admin/plugins/hello", headers={"Authorization": f"Bearer {replicas.token()}"}
    )
    assert deleted.status_code == 204
    timings["notify"].append(wait_for_version(r2.base, "/rest/services/hello/", None, timeout=WITHIN))
    timings["poll"].append(wait_for_version(r3.base, "/rest/services/hello/", None, timeout=WITHIN))
    print("propagation to another replica, s:", {k: [round(t, 3) for t in v] for k, v in timings.items()})
    assert max(timings["notify"]) < 2.0  # a notification, not a poll: well under the 5 s


def test_a_tenant_upload_reaches_the_other_replicas(replicas: Cluster) -> None:
    r1, r2, r3, _ = replicas.replicas
    registry = PostgresTenantRegistry(replicas.pg_url, master_key=replicas.master_key)
    tenant = registry.add(name="team")
    registry.close()

    def auth() -> str:
        return mint(tenant.id, tenant.key)

    def upload_and_wait(name: str, api: str, text: str, timeout: float) -> float:
        source = MINE.replace("def mine", f"def {api}").format(text=text)
        answer = replicas.upload(r1.base, name, source, token=auth())
        assert answer.status_code == 201, answer.text
        assert answer.json()["results"]["tenant"] == tenant.id
        version = replicas.stored_version(name)
        took: list[float] = []
        waits = [
            threading.Thread(
                target=lambda base=r.base: took.append(
                    wait_for_version(base, f"/rest/services/{api}/", version, timeout=timeout, auth=auth)
                )
            )
            for r in (r2, r3)
        ]
        for t in waits:
            t.start()
        for t in waits:
            t.join()
        assert len(took) == 2, "a replica never served the tenant's module"
        return max(took)

    # the first tenant call of a replica starts its sandbox guests: warm them, so what is timed is the change
    upload_and_wait("teamwarm", "warm", "warm", timeout=60)
    assert upload_and_wait("teamcode", "mine", "one", timeout=WITHIN) < WITHIN
    served = httpx.get(f"{r2.base}/rest/services/mine/", headers={"Authorization": f"Bearer {auth()}"})
    assert served.json()["results"] == "one"
    anonymous = httpx.get(f"{r2.base}/rest/services/mine/")  # still the tenant's own, on every replica
    assert anonymous.status_code in (401, 404)


def test_every_replica_names_the_same_version_and_shares_the_documents(replicas: Cluster) -> None:
    r1, r2, _, r4 = replicas.replicas
    notes = replicas.stored_version("notes")
    for replica in replicas.replicas:
        answer = httpx.get(f"{replica.base}/rest/services/read/", params={"id": "none"})
        assert answer.status_code == 200 and answer.headers[VERSION_HEADER] == notes
    put = httpx.put(f"{r1.base}/rest/services/note/", params={"id": "n1", "text": "hi"})
    assert put.status_code == 200 and put.headers[VERSION_HEADER] == notes
    assert httpx.get(f"{r2.base}/rest/services/read/", params={"id": "n1"}).json()["results"]["text"] == "hi"
