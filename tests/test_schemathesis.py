"""The OpenAPI document matches what the server answers: ``schemathesis run --checks all`` against a real server
on 127.0.0.1 serving the bundled plugins (todo included: its stateful create/read/delete is exercised) and the
README's first plugin (``welcome.py``: a catch-all and a path template under one API name).

Bounded for CI: few examples per operation and a fixed seed, so a run is reproducible and takes ~15 s. To look
deeper by hand, run the same command with ``--max-examples 200`` and another ``--seed``.

One rule the document cannot express is allowed, for one operation, in the config below: the todo list's
``cursor`` must be one a previous list returned (opaque), so an arbitrary cursor is a 422. The polyglot
endpoints whose program is not installed (Node, a JDK) answer 502 by design; they are left out, saying so.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bundled import bundled
from docsnippets import plugin_file

from dpmsf_core.testing import http_client

pytestmark = pytest.mark.slow

SEED = 20261202
MAX_EXAMPLES = 20

CONFIG = """
[[operations]]
include-name = "GET /rest/services/tasks/"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx", "422"]
"""


PROGRAMS = {"hello-node": ("node",), "hello-java": ("java", "javac"), "hello-shell": ("sh",)}


def missing_programs() -> list[str]:
    """``--exclude-path`` options for the polyglot endpoints whose program this machine lacks (they answer 502)."""
    out = []
    for api, tools in PROGRAMS.items():
        if any(shutil.which(tool) is None for tool in tools):
            print(f"schemathesis: leaving out /rest/services/polyglot/{api}/ ({' or '.join(tools)} not installed)")
            out += ["--exclude-path", f"/rest/services/polyglot/{api}/"]
    return out


def schemathesis() -> list[str]:
    found = shutil.which("schemathesis", path=os.path.dirname(sys.executable)) or shutil.which("schemathesis")
    if found is None:
        pytest.skip("schemathesis is not installed: pip install -e '.[dev]'")
    return [found]


@pytest.mark.timeout(360)
def test_schemathesis_finds_nothing(tmp_path: Path) -> None:
    command = schemathesis()
    (tmp_path / "schemathesis.toml").write_text(CONFIG, encoding="utf-8")
    readme = tmp_path / "readme" / "plugins"  # the README's first plugin, as a reader adds it
    readme.mkdir(parents=True)
    (readme / "welcome.py").write_text(plugin_file("welcome.py"), encoding="utf-8")
    with http_client([bundled(), readme], DPMSF_STATE_DIR=str(tmp_path / "state")) as client:
        spec = client.get("/openapi.json").json()
        excluded = missing_programs()
        operations = sum(len(ops) for path, ops in spec["paths"].items() if path not in excluded)
        args = [
            *command,
            "--config-file",
            str(tmp_path / "schemathesis.toml"),
            "run",
            str(client.base_url).rstrip("/") + "/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            "--generation-database",
            "none",
            "--workers",
            "1",
            "--request-timeout",
            "60",
            "--max-response-time",  # "all" includes a response-time check; a JVM on a busy CI machine is slow
            "60",
            "--no-color",
            *excluded,
        ]
        done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"schemathesis found something ({' '.join(args)}):\n{out[-12000:]}"
    tested = re.search(r"Tested:\s*(\d+)", out)
    assert tested is not None and int(tested.group(1)) == operations > 25, out[-3000:]
    counted = re.search(r"(\d+) generated, (\d+) passed", out)
    assert counted is not None and counted.group(1) == counted.group(2) and int(counted.group(1)) > 500, out[-3000:]
