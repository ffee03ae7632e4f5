"""A fresh interpreter for the tests that must see what a cold process sees (imports, Lambda start-ups)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any


def run_for_result(argv: list[str], *, cwd: Path | str, env: dict[str, str], timeout: float = 60) -> Any:
    """Run ``argv`` with exactly ``env``; the JSON it printed after ``RESULT `` (its stderr when it failed)."""
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])
