"""The README's test command says what it runs and how long the whole suite takes, shows pytest's progress and
the time it took, and keeps pytest's exit status (CI runs it: .ci/run)."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_the_test_command_shows_steps_progress_and_time() -> None:
    args, status = ["tests/test_resolve.py"], 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("DPMSF_")}
    done = subprocess.run(
        ["./run-tests.sh", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=580,
    )
    assert done.returncode == status, done.stdout[-3000:] + done.stderr[-3000:]
    steps = [line for line in done.stderr.splitlines() if line.startswith("DPMSF: ")]
    assert steps[-4].startswith("DPMSF: ruff") and steps[-3] == "DPMSF: mypy ..."
    assert steps[-2] == f"DPMSF: pytest -p no:cacheprovider {' '.join(args)} ..."
    finished = re.fullmatch(r"DPMSF: finished in (\d+) s \(pytest exit status (\d+)\)", steps[-1])
    assert finished is not None and int(finished.group(2)) == status
    assert re.search(r"^\.+ +\[100%\]$", done.stdout, re.M), done.stdout  # pytest's progress line


def test_the_whole_suite_says_how_long_it_takes() -> None:
    """Run with no arguments (pytest told through PYTEST_ADDOPTS to select nothing): the notice a newcomer reads
    before the long run, with the time the README gives."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DPMSF_")}
    env["PYTEST_ADDOPTS"] = "-p no:cacheprovider -k no_test_has_this_name"
    done = subprocess.run(["./run-tests.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=580)
    assert done.returncode == 5, done.stderr[-3000:]
    notice = "DPMSF: pytest, the whole suite: about 10 minutes on a 2-core machine"
    assert any(line.startswith(notice) for line in done.stderr.splitlines()), done.stderr
    assert "the whole suite takes about 10 minutes on a 2-core machine" in (ROOT / "README.md").read_text()
