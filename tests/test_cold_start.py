"""A Lambda cold start imports only what the first request needs: no boto3, no FastAPI, no pydantic."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import json, sys, time
start = time.perf_counter()
from handler.aws_lambda import handler
sys.path.insert(0, "tests")
from eventdata import lambda_context, load_event
event = load_event("apigw_v1", path="/rest/services/hello-world/", query={"name": "cold"})
out = handler(event, lambda_context())
heavy = [m for m in ("boto3", "fastapi", "pydantic", "aws_xray_sdk") if m in sys.modules]
print("RESULT " + json.dumps({"out": out, "heavy": heavy, "ms": (time.perf_counter() - start) * 1000}))
"""


def cold_start(tmp_path: Path, **env: str) -> dict:
    """Import the handler in a fresh interpreter, as Lambda does (env as Lambda sets it, no S3/DynamoDB)."""
    clean = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "AWS_LAMBDA_FUNCTION_NAME": "dpmsf-cold",
        "AWS_REGION": "us-east-1",
        "LAMBDA_TASK_ROOT": str(ROOT),
        "DPMSF_STATE_DIR": str(tmp_path / "state"),
        **env,
    }
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


@pytest.mark.slow
def test_cold_start_with_bundled_plugins(tmp_path: Path) -> None:
    result = cold_start(tmp_path)
    assert result["out"]["statusCode"] == 200
    assert json.loads(result["out"]["body"])["results"]["hello"] == "cold"
    # pydantic is imported by the bundled plugins/showcase.py itself (`from pydantic import BaseModel`), not the core
    assert not {"boto3", "fastapi", "aws_xray_sdk"} & set(result["heavy"]), result


@pytest.mark.slow
def test_cold_start_imports_nothing_heavy(tmp_path: Path) -> None:
    folder = tmp_path / "plugins"
    folder.mkdir()
    shutil.copy(ROOT / "plugins" / "hello.py", folder / "hello.py")
    result = cold_start(tmp_path, DPMSF_PLUGINS=str(folder))
    assert result["out"]["statusCode"] == 200
    assert result["heavy"] == [], result
