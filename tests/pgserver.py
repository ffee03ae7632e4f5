"""A real PostgreSQL server on 127.0.0.1 for tests, from Debian's ``postgresql`` package: ``initdb`` and ``pg_ctl``
in a temporary folder on a free port, once per session; a pytest plugin (``pytest_plugins = ["pgserver"]``):

- ``postgres_server``: the server's URL without a database (``postgresql://dpmsf:<password>@127.0.0.1:<port>``),
  with password authentication (SCRAM) so URLs carry a real secret. Skipped, saying why, when ``initdb``/``pg_ctl``
  or psycopg are missing, unless ``DPMSF_REQUIRE_POSTGRES=1`` (CI sets it after installing the package): then the
  test fails instead.
- ``pg_url``: a fresh, empty database on that server for one test, its full URL.

As root the server runs as the ``postgres`` user the package creates (PostgreSQL refuses to run as root), in a
folder it owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from ports import free_port

PASSWORD = "pg-secret-" + uuid.uuid4().hex[:12]  # tests check it never appears in an answer or an error


class PostgresMissing(RuntimeError):
    """The server's programs or psycopg are not installed here: tests skip with this message."""


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4] or 0))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    raise PostgresMissing("PostgreSQL's initdb/pg_ctl not found: apt-get install postgresql")


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@contextlib.contextmanager
def postgres(timeout: float = 60) -> Iterator[str]:
    """Start a server in a new temporary folder; yield its URL without a database; stop it and remove the folder."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise PostgresMissing("psycopg is not installed: pip install 'dpmsf[postgres]'") from None
    bindir = _bin_dir()
    folder = Path(tempfile.mkdtemp(prefix="dpmsf-pg-"))
    data = folder / "data"
    try:
        pwfile = folder / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        run = {"check": True, "capture_output": True, "text": True, "timeout": timeout}
        subprocess.run(
            _as_server_user(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "dpmsf",
                    f"--pwfile={pwfile}",
                    "-A",
                    "scram-sha-256",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ]
            ),
            **run,  # type: ignore[arg-type]
        )
        port = free_port()
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        log = folder / "server.log"
        started = subprocess.run(
            _as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "start"]),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if started.returncode != 0:
            text = log.read_text() if log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {started.stdout}{started.stderr}{text[-2000:]}")
        try:
            yield f"postgresql://dpmsf:{PASSWORD}@127.0.0.1:{port}"
        finally:
            subprocess.run(
                _as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                timeout=timeout,
            )
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"{exc.cmd[0]} failed: {exc.stdout}{exc.stderr}") from exc
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    try:
        with postgres() as url:
            yield url
    except PostgresMissing as missing:
        if os.environ.get("DPMSF_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"DPMSF_REQUIRE_POSTGRES=1 but {missing}")
        pytest.skip(str(missing))


def new_database(server: str) -> str:
    """Create an empty database on ``server`` (a URL without one); its full URL."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:16]
    with psycopg.connect(server + "/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{server}/{name}"


@pytest.fixture(scope="session")
def pg_database(postgres_server: str) -> Callable[[], str]:
    """``pg_database()``: the URL of a new empty database on the session's server (for module-scoped fixtures and
    tests that need several)."""
    return lambda: new_database(postgres_server)


@pytest.fixture
def pg_url(postgres_server: str) -> str:
    """A new empty database for this test: ``postgresql://dpmsf:...@127.0.0.1:port/t_<hex>``."""
    return new_database(postgres_server)
