"""App Engine: ./gcprunner.sh runs app.yaml's entrypoint (gunicorn + uvicorn workers on handler.gae:app) locally,
with its Firestore defaults against the emulator; Google's own dev_appserver.py runs app.yaml too."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from bundled import bundled
from ports import free_port
from serverproc import running

from dpmsf_core.tenancy.tokens import generate_key, mint

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "00000000-0000-4000-8000-0000000000ae"
ADMIN_KEY = generate_key()


@pytest.fixture(scope="module")
def gae_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    missing = [m for m in ("gunicorn", "uvicorn_worker") if importlib.util.find_spec(m) is None]
    if missing:
        reason = f"{', '.join(missing)} not installed (pip install -e '.[gae]')"
        print(f"skipping App Engine test: {reason}")
        pytest.skip(reason)
    port = free_port()
    state = tmp_path_factory.mktemp("gae")
    # app.yaml's env_variables apply; ours win where set. Its Firestore stores become SQLite files here, each one
    # shared by both workers (the Firestore defaults run against the emulator in test_app_yaml_firestore_defaults).
    env = {
        **os.environ,
        "DPMSF_STATE_DIR": str(state),
        "DPMSF_PLUGINS": f"my_plugins:{bundled()}",  # opted into the bundled demos (app.yaml serves my_plugins/)
        "ADMIN_ID": ADMIN,
        "DPMSF_ADMIN_KEY": ADMIN_KEY,
        "DPMSF_TENANTS": f"sqlite:///{state}/tenants.db",
        "DPMSF_STORE": f"sqlite:///{state}/store.db",
        "DPMSF_REPLAY_STORE": f"sqlite:///{state}/replay.db",
    }
    env.pop("AWS_LAMBDA_FUNCTION_NAME", None)
    base = f"http://127.0.0.1:{port}"
    with running(["./gcprunner.sh", str(port)], ROOT, env, state / "server.log", base + "/", 30):
        yield base


@pytest.mark.slow
def test_directory_and_plugin(gae_server: str) -> None:
    directory = httpx.get(gae_server + "/rest/services/__dir__/", timeout=10)
    assert directory.status_code == 200
    apis = {e["api"] for e in directory.json()["endpoints"]}
    assert {"hello-world", "sample-one"} <= apis

    hello = httpx.get(gae_server + "/rest/services/hello-world/", params={"name": "x"}, timeout=10)
    assert hello.status_code == 200
    assert hello.json()["results"]["hello"] == "x"
    assert hello.headers["x-request-id"]


@pytest.mark.slow
def test_errors_are_problem_json(gae_server: str) -> None:
    missing = httpx.get(gae_server + "/rest/services/no-such-api/", timeout=10)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


@pytest.mark.slow
def test_a_token_is_single_use_across_both_workers(gae_server: str) -> None:
    """app.yaml runs two gunicorn workers: one replay store (Firestore there, one SQLite file here) for both."""
    token = mint(ADMIN, ADMIN_KEY)
    codes = [
        httpx.get(gae_server + "/rest/services/hello-world/", headers={"authorization": f"Bearer {token}"}, timeout=10)
        for _ in range(6)
    ]
    assert sorted(r.status_code for r in codes) == [200, 401, 401, 401, 401, 401]


def test_gcprunner_applies_app_yaml_and_binds_loopback() -> None:
    out = subprocess.run(
        ["./gcprunner.sh", "--show"],  # dpmsf gcp-run --show: the environment and command line, nothing started
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], "DPMSF_REQUIRE_TOKENS": "1", "FIRESTORE_EMULATOR_HOST": "127.0.0.1:1"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "DPMSF_STATE_DIR=/tmp/dpmsf\n" in out and "DPMSF_REPLAY_STORE=firestore://dpmsf-replay\n" in out
    assert "DPMSF_TENANTS=firestore://dpmsf-tenants\n" in out and "DPMSF_STORE=firestore://dpmsf-store\n" in out
    assert "DPMSF_REQUIRE_TOKENS=1\n" in out  # the caller's environment wins over app.yaml
    assert "DPMSF_PLUGINS=my_plugins\n" in out  # the user's plugins only: not the bundled demos
    assert "-b 127.0.0.1:$PORT" in out and "PORT=8080\n" in out
    assert "NO_GCE_CHECK=true\n" in out  # google-auth never asks the metadata server (169.254.169.254) here
    assert "GOOGLE_CLOUD_PROJECT=demo-dpmsf-local\n" in out  # a "demo-" project never reaches Google
    assert "FIRESTORE_EMULATOR_HOST=127.0.0.1:1\n" in out  # an emulator already running is used as it is


def test_gcprunner_without_an_emulator_or_gcloud_says_what_to_run(tmp_path: Path) -> None:
    """app.yaml keeps data in Firestore: with no emulator and no way to start one, nothing starts half-working."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "DPMSF_GCLOUD": str(tmp_path / "no-gcloud")}
    done = subprocess.run(
        ["./gcprunner.sh", "--port", str(free_port())], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "app.yaml keeps data in Firestore (DPMSF_" in done.stderr and "is not on PATH" in done.stderr
    assert "gcloud emulators firestore start --host-port=127.0.0.1:8086" in done.stderr
    assert "FIRESTORE_EMULATOR_HOST" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_gcprunner_starts_the_firestore_emulator_and_stops_it(tmp_path: Path) -> None:
    """One command, as app.yaml is: no FIRESTORE_EMULATOR_HOST, no credentials (an empty HOME); the todo plugin
    stores a task in the emulator it started, and the emulator ends with the server."""
    if shutil.which("gcloud") is None or importlib.util.find_spec("google.cloud.firestore") is None:
        pytest.skip("the Google Cloud CLI or google-cloud-firestore is not installed (pip install -e '.[gcp]')")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DPMSF_", "GAE_", "GOOGLE_", "FIRESTORE_"))}
    env |= {"HOME": str(tmp_path), "DPMSF_STATE_DIR": str(tmp_path / "state"), "DPMSF_MASTER_KEY": generate_key()}
    env["DPMSF_PLUGINS"] = (
        f"my_plugins:{bundled()}"  # app.yaml serves only my_plugins/: the operator opts into the demos
    )
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    with running(["./gcprunner.sh", "--port", str(port)], ROOT, env, log, base + "/", 120):
        created = httpx.post(base + "/rest/services/todo/tasks/", json={"title": "kept"}, timeout=30)
        assert created.status_code in (200, 201), created.text
        listed = httpx.get(base + "/rest/services/todo/tasks/", timeout=30).json()["results"]
        assert [t["title"] for t in listed] == ["kept"]
    started = next(line for line in log.read_text().splitlines() if "Firestore emulator on 127.0.0.1:" in line)
    emulator = started.split("Firestore emulator on ")[1].split(",")[0]
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://{emulator}/", timeout=5)  # stopped with the server: nothing left running
    assert "Traceback" not in log.read_text() and "metadata" not in log.read_text().lower()


def _single_use(base: str) -> list[int]:
    token = mint(ADMIN, ADMIN_KEY)
    auth = {"authorization": f"Bearer {token}"}
    return sorted(
        httpx.get(base + "/rest/services/hello-world/", headers=auth, timeout=20).status_code for _ in range(6)
    )


def _warm_up(host: str, project: str) -> None:
    """The emulator's very first call takes seconds (the JVM warming up); both workers meeting it at once would
    outlast the client's 10 s deadline. Real Firestore has no such start."""
    code = "from google.cloud import firestore; firestore.Client(project=%r).collection('w').document('w').get()"
    env = {**os.environ, "FIRESTORE_EMULATOR_HOST": host}
    subprocess.run([sys.executable, "-c", code % project], env=env, check=True, timeout=60, capture_output=True)


@pytest.mark.slow
def test_app_yaml_firestore_defaults(tmp_path: Path) -> None:
    """app.yaml as it is (Firestore for tenants, replay and store) against the emulator: the token is accepted
    once across both workers (the replay store is one Firestore collection for them)."""
    emulator = pytest.importorskip("firestore_emulator", reason="tests/firestore_emulator.py is not in this tree")
    if importlib.util.find_spec("gunicorn") is None:
        pytest.skip("gunicorn not installed (pip install -e '.[gae]')")
    try:
        context = emulator.firestore_emulator_process()
        host = context.__enter__()
    except emulator.EmulatorMissing as exc:
        pytest.skip(str(exc))
    try:
        _warm_up(host, emulator.PROJECT)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DPMSF_", "GAE_"))}
        env.update(
            {
                "FIRESTORE_EMULATOR_HOST": host,
                "GOOGLE_CLOUD_PROJECT": emulator.PROJECT,
                "DPMSF_STATE_DIR": str(tmp_path / "state"),
                "DPMSF_PLUGINS": f"my_plugins:{bundled()}",  # opted into the bundled demos: hello-world
                "ADMIN_ID": ADMIN,
                "DPMSF_ADMIN_KEY": ADMIN_KEY,
                "DPMSF_MASTER_KEY": generate_key(),
            }
        )
        base = f"http://127.0.0.1:{port}"
        with running(["./gcprunner.sh", "--port", str(port)], ROOT, env, tmp_path / "server.log", base + "/", 60):
            assert _single_use(base) == [200, 401, 401, 401, 401, 401]
        assert "Traceback" not in (tmp_path / "server.log").read_text()
    finally:
        context.__exit__(None, None, None)


def _python312() -> str | None:
    """A working python3.12 interpreter's real path (a pyenv shim may exist and still refuse to run, and
    dev_appserver checks the path it is given)."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [shutil.which("python3.12"), *map(str, sorted(pyenv.glob("versions/3.12*/bin/python3.12")))]
    for candidate in filter(None, candidates):
        found = subprocess.run([candidate, "-c", "import sys; print(sys.executable)"], capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip():
            return found.stdout.strip()
    return None


def _dev_appserver() -> tuple[list[str], str]:
    """The command that runs dev_appserver.py here, and the python3.12 it gives the app; skip saying why not."""
    found = shutil.which("dev_appserver.py")
    if found is None:
        pytest.skip("dev_appserver.py is not on PATH (the Google Cloud CLI's app-engine-python component)")
    sdk = Path(found).resolve().parent.parent
    # The SDK's own Python: under another interpreter dev_appserver imports that interpreter's certifi, whose
    # current releases lack the as_str() the SDK's bundled requests calls (ImportError at start-up).
    bundled = sdk / "platform" / "bundledpythonunix" / "bin" / "python3"
    python = str(bundled) if bundled.exists() else shutil.which("python3") or "python3"
    runtime = _python312()
    if runtime is None:
        pytest.skip("no python3.12 for app.yaml's runtime: python312 (on PATH or under pyenv)")
    return [python, "-W", "ignore", str(Path(found).resolve())], str(runtime)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_dev_appserver_runs_app_yaml(tmp_path: Path) -> None:
    """Google's dev_appserver.py reads app.yaml, builds a venv from requirements.txt (pip, from PyPI) and runs the
    entrypoint: our endpoints, problem+json errors, Cloud Logging JSON lines, one token accepted once."""
    command, runtime = _dev_appserver()
    app = tmp_path / "app"  # the deployed files; no Dockerfile (dev_appserver refuses python312 beside one)
    app.mkdir()
    for name in ("app.yaml", "requirements.txt"):
        shutil.copy(ROOT / name, app / name)
    for name, source in (("dpmsf_core", ROOT / "dpmsf_core"), ("handler", ROOT / "handler"), ("plugins", bundled())):
        shutil.copytree(source, app / name, ignore=shutil.ignore_patterns("__pycache__"))
    port, admin, api = free_port(), free_port(), free_port()
    state = tmp_path / "state"
    overrides = {  # instance-local SQLite (each file shared by the two workers) instead of Firestore
        "DPMSF_STATE_DIR": str(state),
        "DPMSF_PLUGINS": f"my_plugins:{bundled()}",  # opted into the bundled demos: hello-world
        "DPMSF_TENANTS": f"sqlite:///{state}/tenants.db",
        "DPMSF_STORE": f"sqlite:///{state}/store.db",
        "DPMSF_REPLAY_STORE": f"sqlite:///{state}/replay.db",
        "ADMIN_ID": ADMIN,
        "DPMSF_ADMIN_KEY": ADMIN_KEY,
        "GOOGLE_CLOUD_PROJECT": "demo-dpmsf",
    }
    argv = [
        *command,
        f"--port={port}",
        f"--admin_port={admin}",
        f"--api_port={api}",
        "--host=127.0.0.1",
        "--admin_host=127.0.0.1",
        "--api_host=127.0.0.1",
        "--skip_sdk_update_check=yes",
        "--automatic_restart=no",
        f"--storage_path={tmp_path / 'storage'}",
        f"--runtime_python_path={runtime}",
        *[f"--env_var={k}={v}" for k, v in overrides.items()],
        "app.yaml",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DPMSF_", "GAE_", "CLOUDSDK_PYTHON"))}
    env.update({"CLOUDSDK_CORE_DISABLE_PROMPTS": "1", "PIP_CACHE_DIR": str(ROOT / "build" / "pip-cache")})
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "dev_appserver.log"
    with running(argv, app, env, log, base + "/", 780, status=200):
        hello = httpx.get(base + "/rest/services/hello-world/", params={"name": "gae"}, timeout=20)
        assert hello.status_code == 200 and hello.json()["results"]["hello"] == "gae"
        missing = httpx.get(base + "/rest/services/no-such-api/", timeout=20)
        assert (missing.status_code, missing.headers["content-type"]) == (404, "application/problem+json")
        assert _single_use(base) == [200, 401, 401, 401, 401, 401]
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.startswith('{"severity"')]
    access = [e for e in entries if e.get("logger") == "dpmsf.access" and e.get("path", "").startswith("/rest/")]
    assert {e["endpoint"] for e in access} >= {"hello.hello-world", "-"}
    assert all(e["request_id"] and isinstance(e["latency_ms"], float) for e in access)
