"""The ``dpmsf`` command as a user runs it: a subprocess, its output and exit code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from bundled import bundled
from conftest import ROOT
from ports import free_port

DPMSF = [sys.executable, "-m", "dpmsf_core"]


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DPMSF_", "ADMIN_", "NUM_URL", "URL_PARM"))}
    return subprocess.run(
        [*DPMSF, *args], capture_output=True, text=True, timeout=60, cwd=cwd or ROOT, env={**base, **(env or {})}
    )


def test_routes_lists_bundled_endpoints() -> None:
    out = run("routes").stdout
    assert out.splitlines()[0].split() == ["METHODS", "URL", "ENDPOINT", "DOC"]
    row = next(line for line in out.splitlines() if "/rest/services/hello-world/" in line)
    assert row.split()[:3] == ["GET,PUT,POST", "/rest/services/hello-world/", "hello.hello-world"]
    assert "/rest/services/v1/api-name/" in out


def test_openapi_prints_the_spec() -> None:
    spec = json.loads(run("openapi").stdout)
    assert spec["openapi"] == "3.1.0"
    assert "get" in spec["paths"]["/rest/services/hello-world/"]


def test_new_writes_a_working_skeleton(tmp_path: Path) -> None:
    result = run("new", "my_service", "--dir", str(tmp_path))
    assert result.returncode == 0 and "my-service" in result.stdout
    assert run("new", "my_service", "--dir", str(tmp_path)).returncode == 1  # never overwrites
    assert run("new", "bad-name", "--dir", str(tmp_path)).returncode == 2
    routes = run("routes", "--plugins", str(tmp_path)).stdout
    assert "/rest/services/my-service/" in routes and "/rest/services/my-service-typed/" in routes


def test_bad_config_is_one_line_and_exit_2() -> None:
    result = run("routes", env={"NUM_URL_PARMS": "abc"})
    assert result.returncode == 2
    assert result.stderr.strip() == "dpmsf: Config 'NUM_URL_PARMS' has value 'abc'. Not a valid int."
    result = run("serve", env={"URL_PARM3": "has-dash"})
    assert result.returncode == 2 and "URL_PARM3" in result.stderr and "Traceback" not in result.stderr


def test_dotenv_in_working_directory(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("NUM_URL_PARMS=x\n")
    assert "NUM_URL_PARMS" in run("routes", cwd=tmp_path).stderr


def test_tenant_and_token_commands(tmp_path: Path) -> None:
    env = {"DPMSF_STATE_DIR": str(tmp_path), "ADMIN_ID": "00000000-0000-4000-8000-0000000000ad"}
    added = json.loads(run("tenant", "add", "--name", "acme", env=env).stdout)
    assert added["name"] == "acme" and len(added["key"]) == 43
    listed = [json.loads(line) for line in run("tenant", "list", env=env).stdout.splitlines()]
    assert {t["name"] for t in listed} == {"admin", "acme"} and all("key" not in t for t in listed)
    token = run("token", "--tenant", added["id"], env=env).stdout.strip()
    from dpmsf_core.tenancy.replay import MemoryReplayStore
    from dpmsf_core.tenancy.tokens import TokenVerifier, decode_key

    verifier = TokenVerifier(lambda tid: decode_key(added["key"]), MemoryReplayStore())
    assert verifier.verify(token).tenant == added["id"]
    assert run("token", env=env).returncode == 0  # the admin's
    assert run("tenant", "disable", added["id"], env=env).returncode == 0
    assert run("token", "--tenant", added["id"], env=env).returncode == 1
    assert run("tenant", "disable", "not-a-uuid", env=env).returncode == 1


@pytest.mark.slow
def test_serve_runs_a_real_server(tmp_path: Path) -> None:
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("DPMSF_")}
    proc = subprocess.Popen(
        [*DPMSF, "serve", "--port", str(port), "--plugins", str(bundled())],
        cwd=ROOT,
        text=True,
        stderr=subprocess.PIPE,
        env={**base, "DPMSF_STATE_DIR": str(tmp_path)},
        start_new_session=True,
    )
    try:
        deadline = time.time() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/rest/services/hello-world/?name=cli", timeout=1)
                break
            except httpx.HTTPError:
                assert time.time() < deadline and proc.poll() is None, "server did not start"
                time.sleep(0.1)
        assert r.json()["results"]["hello"] == "cli"
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    assert "endpoints from" in err
    assert '"GET /rest/services/hello-world/" 200' in err  # a readable log line per request


def test_version_and_help_say_what_they_should() -> None:
    import subprocess
    import sys

    from dpmsf_core import __version__

    run = [sys.executable, "-m", "dpmsf_core"]
    version = subprocess.run([*run, "--version"], capture_output=True, text=True, timeout=60, check=True)
    assert version.stdout.strip() == f"dpmsf {__version__}"
    serve = subprocess.run([*run, "serve", "--help"], capture_output=True, text=True, timeout=60, check=True).stdout
    flat = " ".join(serve.split())  # argparse wraps lines
    assert "(default: 127.0.0.1)" in flat and "(default: 8080)" in flat and "(default: info)" in flat


# -- the project is where you stand -------------------------------------------------------------------------


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    """A project made by ``dpmsf init``, with a sub-folder to run commands from."""
    from dpmsf_core.cli.init import write_project

    write_project(tmp_path / "shop", "shop")
    (tmp_path / "shop" / "tests" / "deep").mkdir()
    return tmp_path / "shop"


def test_commands_use_the_project_they_stand_in(shop: Path) -> None:
    deep = shop / "tests" / "deep"
    routes = run("routes", cwd=deep)
    assert routes.returncode == 0, routes.stderr
    urls = {line.split()[1] for line in routes.stdout.splitlines()[1:]}
    assert urls == {"/rest/services/hello/", "/rest/services/greetings/{lang}/"}
    assert "/rest/services/hello/" in json.loads(run("openapi", cwd=deep).stdout)["paths"]
    event = json.loads((ROOT / "tests" / "events" / "apigw_v1.json").read_text())
    event |= {"path": "/rest/services/greetings/fr/", "queryStringParameters": {"name": "Ada"}}
    event["multiValueQueryStringParameters"] = {"name": ["Ada"]}
    (deep / "event.json").write_text(json.dumps(event))
    invoked = run("invoke", "--event", "event.json", cwd=deep)
    assert invoked.returncode == 0, invoked.stderr
    assert json.loads(json.loads(invoked.stdout)["body"]) == {"results": {"greeting": "Bonjour, Ada!"}}
    assert run("new", "inventory", cwd=deep).returncode == 0
    assert (shop / "plugins" / "inventory.py").is_file() and not (deep / "plugins").exists()
    assert not (deep / ".dpmsf").exists()  # the state folder is the project's, wherever the command ran


@pytest.mark.parametrize(
    ("args", "fix"),
    [
        pytest.param(["routes"], "pass --plugins FOLDER", id="routes"),
        pytest.param(["openapi"], "pass --plugins FOLDER", id="openapi"),
        pytest.param(["serve", "--port", "1"], "pass --plugins FOLDER", id="serve"),
        pytest.param(["invoke", "--event", "x.json"], "pass --plugins FOLDER", id="invoke"),
        pytest.param(["package", "--deps", "none"], "pass --plugins FOLDER", id="package"),
        pytest.param(["token"], "set DPMSF_STATE_DIR", id="token"),
        pytest.param(["tenant", "list"], "set DPMSF_STATE_DIR", id="tenant"),
    ],
)
def test_outside_a_project_a_command_names_the_flag_and_the_folder(args: list[str], fix: str, tmp_path: Path) -> None:
    done = run(*args, cwd=tmp_path, env={"ADMIN_ID": "00000000-0000-4000-8000-0000000000ad"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith(f"dpmsf: {tmp_path} is not in a DPMSF project") and fix in done.stderr
    assert "Traceback" not in done.stderr and list(tmp_path.iterdir()) == []  # nothing written, no .dpmsf


def test_a_token_minted_in_a_sub_folder_is_for_the_project_server(shop: Path) -> None:
    """Tenants and tokens live in the project's .dpmsf/, whichever of its folders the command runs in."""
    env = {"ADMIN_ID": "00000000-0000-4000-8000-0000000000ad"}
    added = json.loads(run("tenant", "add", "--name", "acme", cwd=shop, env=env).stdout)
    token = run("token", "--tenant", added["id"], cwd=shop / "plugins", env=env)
    assert token.returncode == 0, token.stderr
    from dpmsf_core.tenancy.replay import MemoryReplayStore
    from dpmsf_core.tenancy.tokens import TokenVerifier, decode_key

    verifier = TokenVerifier(lambda tid: decode_key(added["key"]), MemoryReplayStore())
    assert verifier.verify(token.stdout.strip()).tenant == added["id"]
    assert (shop / ".dpmsf").is_dir() and not (shop / "plugins" / ".dpmsf").exists()
