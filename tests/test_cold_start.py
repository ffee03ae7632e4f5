"""A Lambda cold start imports only what the first request needs: no boto3, no FastAPI, no pydantic."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from bundled import bundled
from childproc import run_for_result

ROOT = Path(__file__).resolve().parent.parent

# what a GET to a plain function never needs: the AWS SDK, web frameworks, the event loop (and so Mangum, whose
# package imports it), Powertools (its log lines are written by aws/jsonlog.py), the sandbox, SQLite
HEAVY = (
    "boto3",
    "fastapi",
    "pydantic",
    "aws_xray_sdk",
    "asyncio",
    "concurrent.futures",
    "ssl",
    "mangum",
    "aws_lambda_powertools",
    "starlette",
    "sqlite3",
    "dpmsf_core.sandbox.loader",
)

CHILD = """
import json, sys, time
HEAVY = HEAVY_MODULES
start = time.perf_counter()
from handler.aws_lambda import handler
sys.path.insert(0, "tests")
from eventdata import lambda_context, load_event
event = load_event("apigw_v1", path="/rest/services/hello-world/", query={"name": "cold"})
out = handler(event, lambda_context())
heavy = [m for m in HEAVY if m in sys.modules]
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
        "DPMSF_PLUGINS": str(bundled()),
        **env,
    }
    return run_for_result([sys.executable, "-c", CHILD.replace("HEAVY_MODULES", repr(HEAVY))], cwd=ROOT, env=clean)


@pytest.mark.slow
def test_cold_start_with_bundled_plugins(tmp_path: Path) -> None:
    result = cold_start(tmp_path)
    assert result["out"]["statusCode"] == 200
    assert json.loads(result["out"]["body"])["results"]["hello"] == "cold"
    # pydantic, asyncio and starlette come with the bundled plugins themselves (showcase.py, todo.py) when the
    # folder has no manifest, as here: only the core's own imports are checked
    assert not {"boto3", "fastapi", "aws_xray_sdk", "aws_lambda_powertools", "mangum"} & set(result["heavy"]), result


@pytest.mark.slow
def test_cold_start_imports_nothing_heavy(tmp_path: Path) -> None:
    folder = tmp_path / "plugins"
    folder.mkdir()
    shutil.copy(ROOT / "plugins" / "hello.py", folder / "hello.py")
    result = cold_start(tmp_path, DPMSF_PLUGINS=str(folder))
    assert result["out"]["statusCode"] == 200
    assert result["heavy"] == [], result


@pytest.mark.slow
def test_a_powertools_only_setting_brings_powertools_logger(tmp_path: Path) -> None:
    folder = tmp_path / "plugins"
    folder.mkdir()
    shutil.copy(ROOT / "plugins" / "hello.py", folder / "hello.py")
    result = cold_start(tmp_path, DPMSF_PLUGINS=str(folder), POWERTOOLS_LOGGER_SAMPLE_RATE="0.5")
    assert result["out"]["statusCode"] == 200
    assert "aws_lambda_powertools" in result["heavy"], result
