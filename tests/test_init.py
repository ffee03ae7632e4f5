"""``dpmsf init``: a project of one's own, proven as a newcomer meets it: a fresh virtual environment with DPMSF
installed from a wheel (not this checkout), ``dpmsf init demo``, the project's own tests, then its server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import ROOT
from metadatafake import Knocks
from ports import free_port
from samcli import unavailable
from serverproc import running

from dpmsf_core.cli.init import SERVE, TEST, write_project

EXPECTED_FILES = [
    ".gcloudignore",
    ".gitignore",
    "README.md",
    "app.yaml",
    "infra/Makefile",
    "infra/template.yaml",
    "plugins/greetings.py",
    "pyproject.toml",
    "requirements.txt",
    "tests/test_greetings.py",
    "vendor/dpmsf-0.1.0-py3-none-any.whl",
]


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


def _run(
    argv: list[str], cwd: Path, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DPMSF_", "VIRTUAL_ENV", "PYTHON", "ADMIN"))}
    return subprocess.run(argv, cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A wheel of this checkout, built once, installed with pytest and httpx into a new virtual environment
    (once per test session): what ``pip install dpmsf`` gives a newcomer. Returns (venv, wheel, build output)."""
    if not _pypi_reachable():  # skipped locally; in CI (.ci/run sets DPMSF_REQUIRE_SAM=1) a failure
        unavailable("pypi.org is not reachable: the fresh virtual environment cannot install DPMSF's dependencies")
    base = tmp_path_factory.mktemp("fresh")
    wheels = base / "wheels"
    built = _run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(wheels), str(ROOT)], base)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = wheels.glob("dpmsf-*.whl")
    venv = base / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)], base)
    assert made.returncode == 0, made.stderr
    print("installing DPMSF and its dependencies into a fresh virtual environment...", file=sys.stderr)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    installed = _run([*pip, str(wheel), "pytest", "httpx"], base)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    return venv, wheel, built.stdout + built.stderr


def test_our_metadata_builds_without_warnings(fresh_venv: tuple[Path, Path, str]) -> None:
    _, _, output = fresh_venv
    assert "SetuptoolsDeprecationWarning" not in output and "License classifiers are deprecated" not in output
    assert "`project.license` as a TOML table is deprecated" not in output


@pytest.mark.slow
def test_a_new_project_passes_its_own_tests_and_serves(fresh_venv: tuple[Path, Path, str], tmp_path: Path) -> None:
    """The README's path with no flags: init, the project's tests, routes, a token minted in a sub-folder, and the
    server started at the root that accepts it (one state folder: the project's), over real HTTP."""
    venv, wheel, _ = fresh_venv
    dpmsf = str(venv / "bin" / "dpmsf")
    assert _run([dpmsf, "--version"], tmp_path).stdout.strip() == "dpmsf 0.1.0"
    made = _run([dpmsf, "init", "demo"], tmp_path)
    assert made.returncode == 0, made.stderr
    demo = tmp_path / "demo"
    assert sorted(str(p.relative_to(demo)) for p in demo.rglob("*") if p.is_file()) == EXPECTED_FILES
    assert (demo / "requirements.txt").read_text().splitlines()[-1] == f"./vendor/{wheel.name}[gae,gcp]"
    assert (demo / "vendor" / wheel.name).read_bytes() == wheel.read_bytes()  # the wheel it runs from
    assert "demo" in (demo / "README.md").read_text().splitlines()[0]

    tested = _run([str(venv / "bin" / "python"), "-m", "pytest", "-p", "no:cacheprovider"], demo, timeout=300)
    assert tested.returncode == 0, tested.stdout[-3000:] + tested.stderr[-3000:]
    assert "2 passed" in tested.stdout

    routes = _run([dpmsf, "routes"], demo / "plugins")
    assert routes.returncode == 0, routes.stderr
    assert "/rest/services/greetings/{lang}/" in routes.stdout and routes.stderr == ""
    outside = _run([dpmsf, "routes"], tmp_path)
    assert outside.returncode == 2 and f"{tmp_path} is not in a DPMSF project" in outside.stderr
    assert "--plugins FOLDER" in outside.stderr

    admin = {"ADMIN_ID": "00000000-0000-4000-8000-0000000000ad"}
    token = _run([dpmsf, "token"], demo / "tests", env=admin)
    assert token.returncode == 0, token.stderr
    port = free_port()
    with _serving([dpmsf, "serve", "--port", str(port)], demo, env={**admin, "DPMSF_REQUIRE_TOKENS": "1"}) as banner:
        assert banner.startswith(f"DPMSF: 2 endpoints from {demo / 'plugins'}")  # (and the tenants' uploads)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            url = "/rest/services/greetings/es/?name=Ada"
            assert client.get(url).status_code == 401
            answer = client.get(url, headers={"authorization": f"Bearer {token.stdout.strip()}"})
            assert answer.json() == {"results": {"greeting": "¡Hola, Ada!"}}
    assert sorted(p.name for p in (demo / ".dpmsf").iterdir()) >= ["master.key", "tenants.db"]


@pytest.mark.slow
def test_a_new_project_installs_from_itself_anywhere(fresh_venv: tuple[Path, Path, str], tmp_path: Path) -> None:
    """Moved to another folder (another machine), the project names no path of the one that made it, and
    ``pip install -r requirements.txt`` from it installs DPMSF from its own vendor/ folder."""
    venv, wheel, _ = fresh_venv
    maker = tmp_path / "maker"
    maker.mkdir()
    assert _run([str(venv / "bin" / "dpmsf"), "init", "shop"], maker).returncode == 0
    elsewhere = tmp_path / "colleague" / "shop"
    shutil.copytree(maker / "shop", elsewhere)
    shutil.rmtree(maker)
    texts = {p: p.read_text() for p in elsewhere.rglob("*") if p.is_file() and p.suffix != ".whl"}
    leaks = [str(p) for p, text in texts.items() if str(maker) in text or str(ROOT) in text or "file://" in text]
    assert leaks == []
    fresh = tmp_path / "colleague-venv"
    assert _run([sys.executable, "-m", "venv", str(fresh)], tmp_path).returncode == 0
    pip = [str(fresh / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps"]
    installed = _run([*pip, "-r", "requirements.txt"], elsewhere)
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]
    shown = _run([str(fresh / "bin" / "python"), "-m", "pip", "show", "-f", "dpmsf"], elsewhere).stdout
    assert "Version: 0.1.0" in shown and "handler/aws_lambda.py" in shown


class _serving:
    """A server subprocess: the context value is its first banner line, read once the port is bound."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("DPMSF_", "VIRTUAL_ENV", "PYTHON", "ADMIN"))}
        env = {**base, **(env or {})}
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, start_new_session=True
        )

    def __enter__(self) -> str:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 60
        lines: list[str] = []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if line.startswith("DPMSF: "):
                return line.rstrip("\n")
        self.__exit__()
        raise AssertionError("no banner:\n" + "\n".join(lines))

    def __exit__(self, *exc: object) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(15)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def test_init_writes_the_files_and_refuses_a_full_folder(tmp_path: Path) -> None:
    written = write_project(tmp_path / "mine", "mine")
    assert sorted(str(p.relative_to(tmp_path / "mine")) for p in written) == EXPECTED_FILES
    assert "{{" not in "".join(p.read_text() for p in written if p.suffix != ".whl")
    readme = (tmp_path / "mine" / "README.md").read_text()
    assert f"\n{SERVE}\n{TEST}\n" in readme  # the same two commands as dpmsf init prints
    again = subprocess.run(
        [sys.executable, "-m", "dpmsf_core", "init", str(tmp_path / "mine")], capture_output=True, text=True
    )
    assert again.returncode == 1 and "is not an empty folder; nothing written" in again.stderr


def test_the_generated_template_lints_clean(tmp_path: Path) -> None:
    write_project(tmp_path, "lintme")
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    linted = subprocess.run(
        [str(cfn_lint), "--", str(tmp_path / "infra" / "template.yaml")], capture_output=True, text=True, timeout=120
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr


@pytest.mark.slow
def test_the_generated_template_passes_sam_validate_lint(tmp_path: Path) -> None:
    from samcli import sam_env, sam_executable

    write_project(tmp_path, "samcheck")
    done = subprocess.run(
        [str(sam_executable()), "validate", "--lint", "--template-file", str(tmp_path / "infra" / "template.yaml")],
        cwd=tmp_path,
        env=sam_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "is a valid SAM Template" in done.stdout + done.stderr


def test_the_generated_app_yaml_keeps_data_and_installs_what_that_needs(tmp_path: Path) -> None:
    """App Engine's /tmp is per instance and lost with it: the store and the replay store are Firestore, and
    requirements.txt installs the Firestore client (DPMSF's gcp extra) beside the server (gae)."""
    import zipfile

    import yaml

    from dpmsf_core.config import Settings

    write_project(tmp_path, "shop")
    variables = yaml.safe_load((tmp_path / "app.yaml").read_text())["env_variables"]
    settings = Settings.from_env({**variables, "GAE_ENV": "standard"}, dotenv=None)
    assert settings.store.startswith("firestore://") and settings.replay_store.startswith("firestore://")
    line = (tmp_path / "requirements.txt").read_text().splitlines()[-1]
    assert line.startswith("./vendor/dpmsf-") and line.endswith("[gae,gcp]")
    with zipfile.ZipFile(tmp_path / line.removeprefix("./").split("[")[0]) as wheel:
        meta = wheel.read("dpmsf-0.1.0.dist-info/METADATA").decode()
    needs = {r.split(";")[0].split(">")[0][14:].strip() for r in meta.splitlines() if r.startswith("Requires-Dist:")}
    assert {"google-cloud-firestore", "gunicorn", "uvicorn-worker"} <= needs
    assert "'gcp'" in meta or '"gcp"' in meta
    ignored = (tmp_path / ".gcloudignore").read_text().splitlines()
    assert {".dpmsf/", ".venv/", "tests/", ".env"} <= set(ignored) and "vendor/" not in ignored


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_new_project_builds_with_sam_from_a_wheel_install(fresh_venv: tuple[Path, Path, str], tmp_path: Path) -> None:
    """As a user: DPMSF installed from a wheel (not this checkout) builds the project's artefact with ``sam build``
    from the project folder, with the project's own plugins and nothing of its local state."""
    from samcli import sam_env, sam_executable

    from dpmsf_core.packaging import LAMBDA_PYTHON, MARKER, find_python

    if find_python(LAMBDA_PYTHON) is None:
        unavailable(f"Python {LAMBDA_PYTHON} (the template's runtime) is neither on PATH nor under pyenv")
    venv, _, _ = fresh_venv
    assert _run([str(venv / "bin" / "dpmsf"), "init", "shop"], tmp_path).returncode == 0
    shop = tmp_path / "shop"
    (shop / ".dpmsf").mkdir()
    (shop / ".dpmsf" / "master.key").write_text("MASTER-KEY-CANARY")
    built = subprocess.run(
        [str(sam_executable()), "build", "-t", "infra/template.yaml", "--build-dir", str(tmp_path / "out")],
        cwd=shop,
        env=sam_env(PYTHON=str(venv / "bin" / "python")),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    function = tmp_path / "out" / "Function"
    assert json.loads((function / MARKER).read_text())["plugins"] == [str(shop / "plugins")]
    assert (function / "handler" / "aws_lambda.py").is_file() and not (function / "dpmsf_core" / "cli").exists()
    assert {"greetings.py", ".dpmsf-manifest.json"} <= {p.name for p in (function / "plugins").iterdir()}
    assert not [p for p in function.rglob("*") if p.name in (".dpmsf", "master.key", "vendor", "tests")]


def _emulator_unavailable(reason: str) -> None:
    """Skip locally, fail where the Firestore emulator is meant to be (DPMSF_REQUIRE_FIRESTORE=1)."""
    if os.environ.get("DPMSF_REQUIRE_FIRESTORE") == "1":
        pytest.fail(f"{reason} (DPMSF_REQUIRE_FIRESTORE=1: this test must run)")
    pytest.skip(reason)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_new_project_runs_as_on_app_engine_with_the_emulator(
    fresh_venv: tuple[Path, Path, str], tmp_path: Path
) -> None:
    """As a user: ``dpmsf init``, the project's venv from its own requirements.txt (DPMSF with [gae,gcp] from
    vendor/), the bundled todo plugin added to plugins/, then ``.venv/bin/dpmsf gcp-run`` with no emulator running
    and no Google credentials (an empty HOME): it starts the emulator, the task is stored in it and read back over
    HTTP, nothing knocks on the metadata address, and the emulator ends with the server."""
    gcloud = shutil.which("gcloud")
    if gcloud is None or not any(
        (Path(gcloud).resolve().parent.parent / "platform" / name).is_dir() for name in ("cloud-firestore-emulator",)
    ):
        _emulator_unavailable("the Google Cloud CLI with its Firestore emulator is not installed")
    venv, _, _ = fresh_venv
    assert _run([str(venv / "bin" / "dpmsf"), "init", "shop"], tmp_path).returncode == 0
    shop = tmp_path / "shop"
    assert "dpmsf gcp-run" in (shop / "README.md").read_text()  # the README names the one command
    bare = _run([str(venv / "bin" / "dpmsf"), "gcp-run"], shop)  # DPMSF without its extras: says what to install
    assert bare.returncode == 2 and "cannot import gunicorn, uvicorn_worker, google.cloud.firestore" in bare.stderr
    assert bare.stderr.strip().endswith(f"{venv / 'bin' / 'pip'} install -r requirements.txt"), bare.stderr
    started = time.monotonic()
    assert _run([sys.executable, "-m", "venv", ".venv"], shop).returncode == 0
    pip = [".venv/bin/pip", "install", "-q", "--disable-pip-version-check", "-r", "requirements.txt"]
    installed = _run(pip, shop, timeout=600)
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]
    print(f"the project's .venv from requirements.txt: {time.monotonic() - started:.1f} s", file=sys.stderr)
    shutil.copy(ROOT / "plugins" / "todo.py", shop / "plugins" / "todo.py")

    metadata = Knocks()  # where google-auth's probe would go (GCE_METADATA_IP): nobody may knock
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "FIRESTORE_", "GAE_", "GCE_", "NO_GCE"))}
    env = {k: v for k, v in env.items() if not k.startswith(("DPMSF_", "VIRTUAL_ENV", "PYTHON", "ADMIN", "CLOUDSDK"))}
    env |= {"HOME": str(home), "GCE_METADATA_IP": metadata.address, "DPMSF_STATE_DIR": str(tmp_path / "state")}
    log = tmp_path / "gcp-run.log"
    base = f"http://127.0.0.1:{port}"
    try:
        with running([".venv/bin/dpmsf", "gcp-run", "--port", str(port)], shop, env, log, base + "/", 150):
            created = httpx.post(base + "/rest/services/todo/tasks/", json={"title": "kept in Firestore"}, timeout=30)
            assert created.status_code == 201, created.text
            task = created.json()["results"]
            read = httpx.get(f"{base}/rest/services/todo/tasks/{task['id']}/", timeout=30)
            assert read.status_code == 200 and read.json()["results"]["title"] == "kept in Firestore"
            line = next(x for x in log.read_text().splitlines() if "Firestore emulator on 127.0.0.1:" in x)
            emulator = line.split("Firestore emulator on ")[1].split(",")[0]
            query = {"structuredQuery": {"from": [{"collectionId": "tasks", "allDescendants": True}]}}
            url = f"http://{emulator}/v1/projects/demo-dpmsf-local/databases/(default)/documents:runQuery"
            found = httpx.post(url, json=query, headers={"authorization": "Bearer owner"}, timeout=30).json()
            docs = [json.loads(r["document"]["fields"]["doc"]["stringValue"]) for r in found if "document" in r]
            assert [d["title"] for d in docs] == ["kept in Firestore"]  # in the emulator, not a local file
    finally:
        metadata.close()
    assert metadata.count == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://{emulator}/", timeout=5)  # stopped with the server
    text = log.read_text()
    assert "Traceback" not in text and "DefaultCredentialsError" not in text
    assert not (shop / ".dpmsf" / "store.db").exists() and not (tmp_path / "state" / "store.db").exists()
