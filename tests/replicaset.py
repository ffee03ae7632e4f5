"""Several ``dpmsf serve`` replicas on one machine sharing real parts, as on a cluster: plugins in an S3 bucket (a moto
server), tenants, tokens and documents in PostgreSQL (tests/pgserver.py), HAProxy from Debian's package in front.

Used by the multi-replica tests and by ``bench/replicas_bench.py``. HAProxy missing: ``HAProxyMissing`` (tests skip,
unless ``DPMSF_REQUIRE_HAPROXY=1``, which ``.ci/run`` sets once it installed the package).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from ports import free_port

ROOT = Path(__file__).resolve().parent.parent
DPMSF = str(Path(sys.executable).parent / "dpmsf")
VERSION_HEADER = "DPMSF-Plugin-Version"

# The trusted plugin every replica serves from the bucket: writes and reads documents, sleeps on request, says who
# answered. PUT by id: a write retried by the balancer lands once.
NOTES = '''
import os
import time

from dpmsf_core import expose, store


@expose.endpoint(method="PUT")
def note(id: str, text: str = ""):
    """Store one note; acknowledged only once committed."""
    return store.collection("notes").put(id, {"text": text, "pid": os.getpid()})


@expose.endpoint(method="GET")
def read(id: str):
    """One note, or null."""
    return store.collection("notes").get(id)


@expose.endpoint(method="GET")
def slow(seconds: float = 2.0, marker: str = ""):
    """A request that takes a while (a drain must let it finish); ``marker``: a file made once it runs."""
    if marker:
        open(marker, "w").close()
    time.sleep(seconds)
    return {"slept": seconds, "pid": os.getpid()}


@expose.endpoint(method="GET", auth=True)
def whoami():
    """Which replica answered (a token is required)."""
    return {"pid": os.getpid()}
'''


class HAProxyMissing(RuntimeError):
    """No ``haproxy`` program here: tests skip with this message."""


def version_of(source: str) -> str:
    """What ``DPMSF-Plugin-Version`` says for a single-file module of this text (manifest.content_version)."""
    return hashlib.sha256(source.encode()).hexdigest()[:12]


@dataclass
class Replica:
    """One ``dpmsf serve`` process with its own state folder, like a pod."""

    name: str
    env: dict[str, str]
    folder: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.folder / f"{self.name}.log"

    def start(self, wait: float = 60) -> None:
        """Start it and wait until ``/readyz`` says 200 (plugins loaded, every store answers)."""
        command = [DPMSF, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--no-access-log"]
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + wait
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.base}/readyz", timeout=3).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {wait:.0f} s: {self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (a drain), SIGKILL if it lingers; its exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(ProcessLookupError):  # a worker the supervisor left behind
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.returncode


@dataclass
class Cluster:
    """The shared parts and the replicas: ``admin``/``admin_key`` mint admin tokens, ``s3`` is a boto3 client."""

    folder: Path
    pg_url: str
    s3_url: str
    bucket: str
    admin: str
    admin_key: str
    master_key: str
    s3: Any
    replicas: list[Replica] = field(default_factory=list)

    def shared_env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DPMSF_", "AWS_"))}
        env.update(
            {
                "DPMSF_PLUGINS": f"s3://{self.bucket}/plugins",
                "AWS_ENDPOINT_URL": self.s3_url,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "DPMSF_STORE": self.pg_url,
                "DPMSF_TENANTS": self.pg_url,
                "DPMSF_REPLAY_STORE": self.pg_url,
                "DPMSF_MASTER_KEY": self.master_key,
                "ADMIN_ID": self.admin,
                "DPMSF_ADMIN_KEY": self.admin_key,
                "DPMSF_GRACE_SECONDS": "20",
                **extra,
            }
        )
        return env

    def add_replica(self, **extra: str) -> Replica:
        name = f"r{len(self.replicas) + 1}"
        state = self.folder / name
        state.mkdir()
        replica = Replica(name, {**self.shared_env(**extra), "DPMSF_STATE_DIR": str(state)}, self.folder)
        self.replicas.append(replica)
        return replica

    def token(self) -> str:
        from dpmsf_core.tenancy.tokens import mint

        return mint(self.admin, self.admin_key)

    def put_plugin(self, name: str, source: str) -> None:
        """Write a module into the bucket directly (not through a replica): only polling sees it."""
        self.s3.put_object(Bucket=self.bucket, Key=f"plugins/{name}.py", Body=source.encode())

    def stored_version(self, name: str) -> str:
        """The content hash of module ``name`` as the bucket holds it (an upload is stamped with its owner)."""
        body = self.s3.get_object(Bucket=self.bucket, Key=f"plugins/{name}.py")["Body"].read()
        return hashlib.sha256(body).hexdigest()[:12]

    def upload(self, base: str, name: str, source: str, token: str | None = None) -> httpx.Response:
        """``PUT /rest/admin/plugins/<name>`` through ``base`` (a replica or the balancer), as the admin by default."""
        auth = {"Authorization": f"Bearer {token or self.token()}"}
        return httpx.put(f"{base}/rest/admin/plugins/{name}", content=source, headers=auth, timeout=30)


@contextlib.contextmanager
def cluster(folder: Path, pg_url: str, s3_url: str, replicas: int = 3, **extra: str) -> Iterator[Cluster]:
    """A bucket holding ``notes.py``, then ``replicas`` replicas started one after the other (each ready)."""
    from motoserver import client

    from dpmsf_core.tenancy.tokens import generate_key
    from dpmsf_core.upload.validation import stamp_tenant

    s3 = client("s3", s3_url)
    bucket = f"dpmsf-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    found = Cluster(folder, pg_url, s3_url, bucket, str(uuid.uuid4()), generate_key(), generate_key(), s3)
    found.put_plugin("notes", stamp_tenant(NOTES, found.admin))  # the bucket takes uploads: each has an owner
    try:
        for _ in range(replicas):
            found.add_replica(**extra).start()
        yield found
    finally:
        for replica in found.replicas:
            replica.stop(timeout=10)


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if os.path.exists(p)), None)
    if found is None:
        raise HAProxyMissing("haproxy not found: apt-get install haproxy")
    return found


_HAPROXY_CONFIG = """
global
    maxconn 4000

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    retries 3
    option redispatch 1
    # a replica that died or closes: the request was not answered, so another one answers it
    retry-on conn-failure empty-response junk-response

frontend dpmsf
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 300ms fall 2 rise 1
{servers}
"""


@contextlib.contextmanager
def haproxy(replicas: list[Replica], folder: Path) -> Iterator[str]:
    """HAProxy in front of ``replicas`` (health-checked on ``/readyz``); yields its URL."""
    binary = haproxy_binary()
    port = free_port()
    servers = "\n".join(f"    server {r.name} 127.0.0.1:{r.port} check" for r in replicas)
    config = folder / "haproxy.cfg"
    config.write_text(_HAPROXY_CONFIG.format(port=port, servers=servers))
    check = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"haproxy refused its configuration: {check.stdout}{check.stderr}")
    log = folder / "haproxy.log"
    with log.open("w") as out:
        proc = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy not answering: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for_version(
    base: str, path: str, version: str | None, timeout: float = 10.0, auth: Callable[[], str] | None = None
) -> float:
    """Seconds until ``base + path`` answers with ``DPMSF-Plugin-Version: version`` (None: answers 404), each call
    with a fresh bearer token from ``auth`` if given; raises TimeoutError after ``timeout``."""
    start = time.monotonic()
    with httpx.Client(timeout=5) as http:
        while True:
            headers = {"Authorization": f"Bearer {auth()}"} if auth is not None else {}
            answer = http.get(base + path, headers=headers)
            seen = answer.headers.get(VERSION_HEADER) if answer.status_code == 200 else None
            if (version is None and answer.status_code == 404) or (version is not None and seen == version):
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"{base}{path}: still {answer.status_code} {seen} after {timeout} s")
            time.sleep(0.02)
