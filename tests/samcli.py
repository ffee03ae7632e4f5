"""The real AWS SAM CLI for the tests, from PyPI in its own virtualenv (build/sam-venv, gitignored, reused).

SAM CLI pins its own boto3, cfn-lint and click; beside our dev tools they would fight, so it gets its own
environment, made once per machine. Without the package index the tests that need it skip saying so, except
where ``DPMSF_REQUIRE_SAM=1`` (.ci/run sets it): in CI a missing tool is a failure, not a skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAM_VENV = ROOT / "build" / "sam-venv"
SAM_CLI = "aws-sam-cli==1.170.0"  # the version these tests were written against; bump deliberately


def required() -> bool:
    return os.environ.get("DPMSF_REQUIRE_SAM") == "1"


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI."""
    if required():
        pytest.fail(f"{reason} (DPMSF_REQUIRE_SAM=1: CI must run this test)")
    pytest.skip(reason)


def sam_executable() -> Path:
    """build/sam-venv/bin/sam, installing aws-sam-cli there on first use (35-60 s here)."""
    sam = SAM_VENV / "bin" / "sam"
    stamp = SAM_VENV / f".installed-{SAM_CLI}"
    if sam.is_file() and stamp.is_file():
        return sam
    base = getattr(sys, "_base_executable", sys.executable)  # a plain interpreter, not our venv's
    steps = [
        [base, "-m", "venv", "--clear", str(SAM_VENV)],
        # --no-compile: bytecode for ~100 packages is most of the install time; sam compiles what it uses
        [str(SAM_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile", "--disable-pip-version-check"]
        + [SAM_CLI],
    ]
    for step in steps:
        proc = subprocess.run(step, capture_output=True, text=True, timeout=600, check=False)
        if proc.returncode != 0:
            unavailable(f"could not install {SAM_CLI} into {SAM_VENV}: {(proc.stderr or proc.stdout)[-800:]}")
    stamp.write_text(SAM_CLI + "\n")
    return sam


def sam_env(**extra: str) -> dict[str, str]:
    """No telemetry, no update check, a region for the validator; no credentials are needed or given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(SAM_CLI_TELEMETRY="0", SAM_CLI_DISABLE_UPDATE_CHECK="1", AWS_DEFAULT_REGION="us-east-1", **extra)
    return env
