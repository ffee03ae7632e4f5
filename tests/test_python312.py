"""The performance wing (eager stepping, the gateway reader, the buffered cycle) leans on private asyncio APIs, and
Lambda runs Python 3.12: its tests run on 3.12 too, in a venv of their own holding only what they need (at the
versions this venv has) with the source tree on ``PYTHONPATH``. About 40 s the first time, 15 s after; skipped
without a 3.12 (``pyenv install 3.12``) unless ``DPMSF_REQUIRE_PY312=1`` (CI)."""

from __future__ import annotations

import os
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "build" / "py312-venv"
FILES = ["tests/test_eager.py", "tests/test_gateway.py", "tests/test_cycle.py"]
NEEDS = ["pytest", "pytest-timeout", "hypothesis", "mangum", "httpx"]

pytestmark = pytest.mark.slow


def python312() -> str | None:
    """pyenv's 3.12 resolved to its real interpreter (a shim would re-read the environment), else None."""
    prefix = (
        subprocess.run(["pyenv", "prefix", "3.12"], capture_output=True, text=True) if shutil.which("pyenv") else None
    )
    found = [Path(prefix.stdout.strip()) / "bin" / "python3.12"] if prefix and prefix.returncode == 0 else []
    found += sorted(Path.home().glob(".pyenv/versions/3.12*/bin/python3.12"), reverse=True)
    return next((str(p) for p in found if os.access(p, os.X_OK)), None)


@pytest.mark.timeout(600)
def test_the_performance_wing_passes_on_python_312() -> None:
    interpreter = python312()
    if interpreter is None:
        if os.environ.get("DPMSF_REQUIRE_PY312") == "1":
            pytest.fail("no Python 3.12 (DPMSF_REQUIRE_PY312=1: this test must run)")
        pytest.skip("no Python 3.12: pyenv install 3.12")
    python = VENV / "bin" / "python3.12"
    if not python.exists():
        subprocess.run([interpreter, "-m", "venv", "--clear", str(VENV)], check=True, timeout=120)
    pins = [f"{name}=={metadata.version(name)}" for name in NEEDS]
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [str(python), "-m", "pytest", "-p", "no:cacheprovider", *FILES],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " skipped" not in run.stdout, run.stdout[-1000:]
