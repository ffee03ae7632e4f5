"""A ``firestore://`` store with neither the emulator nor Google credentials is refused at start, in one line that
names the command to run; google-auth never probes the cloud metadata server from here (a local listener stands
in for 169.254.169.254 and counts who knocks)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT
from metadatafake import Knocks
from ports import free_port

from dpmsf_core.config import Settings
from dpmsf_core.errors import ConfigError

STORES = ("DPMSF_STORE", "DPMSF_TENANTS", "DPMSF_REPLAY_STORE")


@pytest.fixture
def metadata() -> Iterator[Knocks]:
    knocks = Knocks()
    yield knocks
    knocks.close()


def _bare_env(home: Path, **extra: str) -> dict[str, str]:
    """This environment without anything of Google's or ours: a machine with no gcloud login (an empty HOME)."""
    prefixes = ("DPMSF_", "GOOGLE_", "FIRESTORE_", "GAE_", "GCE_", "K_SERVICE", "CLOUDSDK_", "NO_GCE_CHECK", "ADMIN")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    return {**env, "HOME": str(home), **extra}


@pytest.mark.parametrize("name", STORES)
def test_serve_refuses_firestore_without_emulator_or_credentials(name: str, tmp_path: Path, metadata: Knocks) -> None:
    """``dpmsf serve`` stops before binding, with one line naming the variable and ``dpmsf gcp-run``; nothing
    knocked on the metadata address (GCE_METADATA_IP is where google-auth's probe would go)."""
    (tmp_path / "plugins").mkdir()
    port = free_port()
    env = _bare_env(tmp_path, **{name: "firestore://dpmsf-x", "GCE_METADATA_IP": metadata.address})
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "dpmsf_core", "serve", "--port", str(port), "--plugins", str(tmp_path / "plugins")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dpmsf: Firestore is configured"), done.stderr
    assert f"{name}=firestore://dpmsf-x" in lines[0] and "Run `dpmsf gcp-run` in your project" in lines[0]
    assert "gcloud auth application-default login" in lines[0]
    assert metadata.count == 0
    assert took < 20  # a metadata probe would add 3 tries of 3 s; here nothing waits on the network
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()  # it never served


@pytest.mark.parametrize(
    "where",
    ["emulator", "key file", "CLOUDSDK_CONFIG", "gcloud login", "App Engine", "Cloud Run", "metadata host"],
)
def test_each_place_google_auth_finds_credentials_lets_it_start(where: str, tmp_path: Path) -> None:
    key = tmp_path / "key.json"
    key.write_text("{}")
    config = tmp_path / "gcloud-config"
    config.mkdir()
    (config / "application_default_credentials.json").write_text("{}")
    (tmp_path / ".config").mkdir()
    (tmp_path / ".config" / "gcloud").symlink_to(config)
    base = {"HOME": str(tmp_path / "nobody"), "DPMSF_STORE": "firestore://s", "DPMSF_TENANTS": "firestore://t"}
    source = {
        "emulator": {"FIRESTORE_EMULATOR_HOST": "127.0.0.1:8086"},
        "key file": {"GOOGLE_APPLICATION_CREDENTIALS": str(key)},
        "CLOUDSDK_CONFIG": {"CLOUDSDK_CONFIG": str(config)},
        "gcloud login": {"HOME": str(tmp_path)},  # ~/.config/gcloud/application_default_credentials.json
        "App Engine": {"GAE_SERVICE": "default", "GAE_ENV": "standard"},
        "Cloud Run": {"K_SERVICE": "shop"},
        "metadata host": {"GCE_METADATA_HOST": "metadata.google.internal"},
    }[where]
    with pytest.raises(ConfigError, match="Firestore is configured"):  # without it: refused
        Settings.from_env(base, dotenv=None)
    assert Settings.from_env(base | source, dotenv=None).store == "firestore://s"


def test_a_local_app_engine_run_is_not_google_and_a_missing_key_file_is_named(tmp_path: Path) -> None:
    """``GAE_ENV=localdev`` (dev_appserver, dpmsf gcp-run) has no runtime credentials; a key file that is not there
    is named, not left to fail on the first request."""
    local = {"HOME": str(tmp_path), "DPMSF_STORE": "firestore://s", "GAE_SERVICE": "default", "GAE_ENV": "localdev"}
    with pytest.raises(ConfigError, match="neither its emulator"):
        Settings.from_env(local, dotenv=None)
    gone = str(tmp_path / "gone.json")
    with pytest.raises(ConfigError, match=f"GOOGLE_APPLICATION_CREDENTIALS names {gone}, which is not a file"):
        Settings.from_env(local | {"GAE_ENV": "localdev", "GOOGLE_APPLICATION_CREDENTIALS": gone}, dotenv=None)


def test_the_default_path_reads_no_credentials_and_imports_nothing_of_google(tmp_path: Path) -> None:
    code = (
        "import sys; from dpmsf_core.config import Settings; Settings.from_env(dotenv=None);"
        "print(sorted(m for m in sys.modules if m.startswith(('google', 'dpmsf_core.gcp'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_bare_env(tmp_path), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


_DEFAULT = """
import google.auth, google.auth.exceptions
try:
    google.auth.default()
except google.auth.exceptions.DefaultCredentialsError:
    print("no credentials")
"""


def test_gcp_run_keeps_google_auth_off_the_metadata_server(tmp_path: Path, metadata: Knocks) -> None:
    """google-auth asked for credentials in the environment ``dpmsf gcp-run`` gives its server: it answers that
    there are none without a knock on the metadata address; the same call without NO_GCE_CHECK knocks (control)."""
    pytest.importorskip("google.auth", reason="google-auth is not installed (pip install -e '.[gcp]')")
    from dpmsf_core.cli.gcprun import environment

    base = _bare_env(tmp_path, GCE_METADATA_IP=metadata.address, GCE_METADATA_TIMEOUT="1")
    base["GCE_METADATA_DETECT_RETRIES"] = "1"
    server_env = environment(base, {"DPMSF_STORE": "firestore://s"}, free_port())
    assert server_env["NO_GCE_CHECK"] == "true" and server_env["GOOGLE_CLOUD_PROJECT"] == "demo-dpmsf-local"

    def ask(env: dict[str, str]) -> str:
        done = subprocess.run([sys.executable, "-c", _DEFAULT], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert ask(server_env) == "no credentials"
    assert metadata.count == 0
    assert ask({k: v for k, v in server_env.items() if k != "NO_GCE_CHECK"}) == "no credentials"
    assert metadata.count >= 1  # the listener does see google-auth's probe when nothing stops it
    # google-auth obeys only the exact word "true": gcp-run sets it whatever the caller's variable says
    assert environment(base | {"NO_GCE_CHECK": "True"}, {}, 8080)["NO_GCE_CHECK"] == "true"


@pytest.mark.parametrize(
    "command",
    [
        "gunicorn -c dpmsf_core/gunicorn_conf.py -k dpmsf_core.gunicorn_worker.UvicornWorker -w 2 handler.gae:app",
        "uvicorn handler.gae:app",
    ],
)
def test_app_engines_entry_refuses_it_in_one_line_too(command: str, tmp_path: Path, metadata: Knocks) -> None:
    """app.yaml's command line (and the container's plain uvicorn) run where Google's runtime is not: one line,
    gunicorn stops instead of respawning workers, nothing knocks on the metadata address."""
    tool = Path(sys.executable).parent / command.split()[0]
    if not tool.exists():
        pytest.skip(f"{tool.name} is not installed (pip install -e '.[gae]')")
    port = free_port()
    env = _bare_env(tmp_path, DPMSF_STORE="firestore://dpmsf-store", GCE_METADATA_IP=metadata.address)
    env["DPMSF_PLUGINS"] = "my_plugins"
    argv = [str(tool), *command.split()[1:], "-b" if "gunicorn" in command else "--port", f"127.0.0.1:{port}"]
    argv[-1] = argv[-1] if "gunicorn" in command else str(port)
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    refused = [line for line in done.stderr.splitlines() if "Firestore is configured" in line]
    assert len(refused) == 1 and refused[0].startswith("dpmsf: ") and "dpmsf gcp-run" in refused[0], done.stderr
    assert "Traceback" not in done.stderr and metadata.count == 0
