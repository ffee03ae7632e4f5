"""`dpmsf package` builds a folder Lambda can run on its own; `dpmsf invoke` runs the handler on one event."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dpmsf_core.packaging import build

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "tests" / "events"
DPMSF = [sys.executable, "-m", "dpmsf_core"]

CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])  # only the artifact and the standard library: no repo, no site-packages
from handler.aws_lambda import handler

class Context:
    function_name = "dpmsf-pkg"
    function_version = "$LATEST"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:dpmsf-pkg"
    aws_request_id = "00000000-0000-4000-8000-000000000001"
    def get_remaining_time_in_millis(self):
        return 29000

event = json.load(open(sys.argv[2]))
out = handler(event, Context())
import dpmsf_core, pydantic_core
mods = [m for m in ("boto3", "fastapi") if m in sys.modules]
print("RESULT " + json.dumps({"out": out, "core": dpmsf_core.__file__, "heavy": mods, "path": sys.path}))
"""


def run_artifact(folder: Path, event: Path, tmp_path: Path, **env: str) -> dict:
    """Import and invoke the handler with `python -I -S` from an empty folder: nothing but the artifact."""
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", CHILD, str(folder), str(event)],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DPMSF_STATE_DIR": str(tmp_path / "state"), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def check_artifact(folder: Path, tmp_path: Path) -> None:
    assert (folder / "handler" / "aws_lambda.py").is_file()
    assert (folder / "plugins" / "hello.py").is_file()
    assert not (folder / "boto3").exists() and not (folder / "botocore").exists()
    assert not list(folder.glob("tests")) and not (folder / "bin").exists()
    pycs = list((folder / "dpmsf_core" / "__pycache__").glob("app.*.pyc"))
    assert pycs, "bytecode was not precompiled"
    assert pycs[0].read_bytes()[4:8] == b"\x01\x00\x00\x00"  # PEP 552 flags: hash-based, check_source off

    result = run_artifact(folder, EVENTS / "apigw_v1.json", tmp_path, AWS_LAMBDA_FUNCTION_NAME="dpmsf-pkg")
    assert Path(result["core"]).is_relative_to(folder)
    assert not any(str(ROOT) in p for p in result["path"])
    out = result["out"]
    assert out["statusCode"] == 200
    assert json.loads(out["body"]) == {
        "results": {"hello": "alice", "args": [], "kwargs": {"name": "alice", "tag": ["a", "b"]}}
    }
    assert result["heavy"] == []


def test_package_from_this_environment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "build" / "lambda"
    artifact = build(out, make_zip=True, deps="venv", log=print)
    assert artifact.bytecode and artifact.zip_path is not None and artifact.zip_path.is_file()
    assert 0 < artifact.zip_size < artifact.size
    names = {d.split("==")[0].lower().replace("_", "-") for d in artifact.distributions}
    assert {"mangum", "starlette", "aws-lambda-powertools", "cryptography", "pydantic-core"} <= names
    assert not names & {"boto3", "botocore", "s3transfer", "uvicorn", "pytest", "moto", "ruff"}
    check_artifact(out, tmp_path)


def test_package_cli_bundles_chosen_plugins(tmp_path: Path) -> None:
    plugins = tmp_path / "my_plugins"
    plugins.mkdir()
    shutil.copy(ROOT / "plugins" / "hello.py", plugins / "hello.py")
    (plugins / "__pycache__").mkdir()
    out = tmp_path / "art"
    proc = subprocess.run(
        [*DPMSF, "package", "--plugins", str(plugins), "--out", str(out), "--deps", "venv", "--zip"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "MiB zipped" in proc.stdout
    assert sorted(p.name for p in (out / "plugins").iterdir() if p.suffix == ".py") == ["hello.py"]
    result = run_artifact(out, EVENTS / "apigw_v1.json", tmp_path)
    assert result["out"]["statusCode"] == 200
    # a folder that is not an artifact is never wiped
    other = tmp_path / "precious"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    proc = subprocess.run([*DPMSF, "package", "--out", str(other), "--deps", "none"], capture_output=True, text=True)
    assert proc.returncode != 0 and (other / "keep.txt").exists()


@pytest.mark.slow
def test_package_with_pip_for_lambda_linux(tmp_path: Path) -> None:
    """The real thing: pip wheels for Lambda's manylinux x86_64 and this Python (needs the package index)."""
    out = tmp_path / "lambda"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    try:
        build(out, deps="pip", platform="manylinux2014_x86_64", python_version=version, log=print)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"pip could not reach the package index: {exc}")
    check_artifact(out, tmp_path)


@pytest.mark.parametrize(
    ("event", "want"),
    [
        pytest.param("apigw_v1.json", {"statusCode": 200}, id="apigw-v1"),
        pytest.param("function_url.json", {"statusCode": 200}, id="function-url"),
        pytest.param(
            "sqs.json", {"batchItemFailures": [{"itemIdentifier": "2e1424d4-f796-459a-8184-9c92662be6da"}]}, id="sqs"
        ),
    ],
)
def test_invoke_prints_the_response(event: str, want: dict, tmp_path: Path) -> None:
    proc = subprocess.run(
        [*DPMSF, "invoke", "--event", str(EVENTS / event), "--plugins", "."],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    response = json.loads(proc.stdout)
    assert {k: response[k] for k in want} == want


def test_invoke_rejects_bad_json(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    proc = subprocess.run([*DPMSF, "invoke", "--event", str(bad)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "not JSON" in proc.stderr


SANDBOX_CHILD = """
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
from dpmsf_core.sandbox import SandboxPool
started = time.monotonic()
with SandboxPool(size=1) as pool:
    value = pool.call_sync(source="def f(x):\\n    return x * 2\\n", path="/t/m.py", function="f", args=[21], kwargs={})
print("RESULT " + json.dumps({"value": value, "seconds": time.monotonic() - started, "compiled": pool.compiled}))
"""


@pytest.mark.slow
def test_package_ships_the_sandbox_precompiled(tmp_path: Path) -> None:
    artifact = build(tmp_path / "lambda", deps="venv", sandbox=True, log=lambda _line: None)
    folder = artifact.folder
    shipped = list((folder / "dpmsf_core" / "sandbox").glob("python-3.12.0.*.cwasm"))
    assert len(shipped) == 1
    assert not list(folder.rglob("python-3.12.0.wasm"))  # only the verified compiled form is shipped
    cache = tmp_path / "cache"
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", SANDBOX_CHILD, str(folder)],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DPMSF_SANDBOX_CACHE": str(cache)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT ") :])
    assert result["value"] == 42
    assert result["compiled"] == str(shipped[0])
    assert not cache.exists()  # nothing was compiled at this "cold start"
    assert result["seconds"] < 2
