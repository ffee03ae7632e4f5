"""Every shell example of README.md and docs/ runs here, as a reader runs it, against a real server.

The reader's setup: a project made by ``dpmsf init`` with the README's ``plugins/welcome.py`` added, served by
``dpmsf serve`` beside the bundled plugins, tenants on (``ADMIN_ID``), ``dpmsf`` on PATH, every command run in the
project's folder. The pages say ``127.0.0.1:8080``; the server listens on a free port and the blocks are run with
that port. In a ``console`` block each ``$ command`` is followed by its output, compared line by line (``...``
stands for any text); a ``bash`` block must exit 0, and every ``curl`` in it must get an answer below 400. A
block whose first line is ``# not run here: <reason>`` is skipped with that reason (tests/docsnippets.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from bundled import bundled
from conftest import ROOT
from docsnippets import Block, plugin_file, shell_blocks
from ports import free_port
from serverproc import running

from dpmsf_core.tenancy.tokens import generate_key

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ADMIN = "5b0f2d7e-1c3a-4e8b-9f6d-2a4c6e8b0d13"
CURL_FAILS = 'curl() { command curl --fail-with-body "$@"; }\n'  # a 4xx or 5xx answer fails the block


@dataclass
class Reader:
    project: Path
    env: dict[str, str]
    port: int


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reader]:
    work = tmp_path_factory.mktemp("reader")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DPMSF_")}
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(work),
        "ADMIN_ID": ADMIN,
        "DPMSF_ADMIN_KEY": generate_key(),
    }
    made = subprocess.run(
        [sys.executable, "-m", "dpmsf_core", "init", "project"], cwd=work, env=env, capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    project = work / "project"
    (project / "plugins" / "welcome.py").write_text(plugin_file("welcome.py"), encoding="utf-8")
    port = free_port()
    command = [sys.executable, "-m", "dpmsf_core", "serve", "--port", str(port)]
    command += ["--plugins", f"{bundled()}{os.pathsep}{project / 'plugins'}"]
    url = f"http://127.0.0.1:{port}/rest/services/__dir__/"
    with running(command, project, env, work / "server.log", url):
        yield Reader(project, env, port)


def _on(reader: Reader, text: str) -> str:
    return text.replace("127.0.0.1:8080", f"127.0.0.1:{reader.port}")


def _sh(reader: Reader, script: str, *, strict: bool) -> subprocess.CompletedProcess[str]:
    flags = ["-euo", "pipefail"] if strict else ["-o", "pipefail"]
    return subprocess.run(
        ["bash", *flags, "-c", script],
        cwd=reader.project,
        env=reader.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def console_steps(text: str) -> list[tuple[str, list[str]]]:
    """``$ command`` lines (a trailing backslash continues one) and the output lines under each."""
    steps: list[tuple[str, list[str]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        assert line.startswith("$ "), f"output before any command: {line!r}"
        command = line[2:]
        while command.endswith("\\") and i + 1 < len(lines):
            i += 1
            command = command + "\n" + lines[i]
        i += 1
        output = []
        while i < len(lines) and not lines[i].startswith("$ "):
            output.append(lines[i])
            i += 1
        steps.append((command, output))
    return steps


def matches(expected: list[str], got: str) -> bool:
    """``expected`` lines against the output; ``...`` stands for any text, across lines too."""
    pattern = ".*".join(re.escape(part) for part in "\n".join(expected).split("..."))
    return re.fullmatch(pattern, got.rstrip("\n"), re.S) is not None


def _param(block: Block) -> object:
    reason = block.skip_reason
    marks = [pytest.mark.skip(reason=f"not run here: {reason}")] if reason else []
    return pytest.param(block, id=block.id, marks=marks)


BLOCKS = shell_blocks()


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS])
def test_the_example_runs_as_shown(reader: Reader, block: Block) -> None:
    if block.lang == "console":
        for command, output in console_steps(block.text):
            done = _sh(reader, _on(reader, command), strict=False)
            assert done.returncode == 0, f"{block.id}: {command}\n{done.stdout}{done.stderr}"
            assert matches(output, done.stdout), (
                f"{block.id}: {command}\nexpected:\n{chr(10).join(output)}\ngot:\n{done.stdout}"
            )
    else:
        done = _sh(reader, CURL_FAILS + _on(reader, block.text), strict=True)
        assert done.returncode == 0, (
            f"{block.id} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )


def test_every_block_is_run_or_says_why_not() -> None:
    """The convention holds: shell examples are bash or console blocks, and a skipped one gives its reason."""
    assert len(BLOCKS) > 10
    assert all(b.lang in ("bash", "console") for b in BLOCKS), [(b.id, b.lang) for b in BLOCKS]
    assert all(b.skip_reason for b in BLOCKS if "not run here" in b.text.splitlines()[0]), "a marker without reason"
    run = [b for b in BLOCKS if not b.skip_reason]
    assert len(run) >= 8 and any(b.file.name == "README.md" for b in run)


def test_the_upload_example_leaves_the_first_screen_answering(reader: Reader) -> None:
    """The README's upload example used to upload a copy of hello.py, after which its own first curl (hello-world)
    answered 409. Run the upload example, then the first screen's examples: they still answer as shown."""
    upload = next(b for b in BLOCKS if "/rest/admin/plugins/" in b.text and not b.skip_reason)
    first = next(b for b in BLOCKS if b.file == ROOT / "README.md" and b.lang == "console")
    assert "hello-world" in first.text
    test_the_example_runs_as_shown(reader, upload)
    test_the_example_runs_as_shown(reader, first)
    listing = _sh(reader, _on(reader, "curl -s http://127.0.0.1:8080/rest/services/__dir__/"), strict=True).stdout
    assert '"shout"' in listing  # the upload really happened


def test_the_testing_guides_python_example_passes(tmp_path: Path) -> None:
    """The tests docs/guides/testing.md shows, run as a reader's test file against the bundled plugins."""
    from docsnippets import blocks

    (example,) = [
        b.text for b in blocks(ROOT / "docs" / "guides" / "testing.md") if b.text.startswith("from dpmsf_core.testing")
    ]
    assert 'json={"item": "tea"}' in example  # the Lambda helper takes json= as the HTTP client does
    (tmp_path / "test_example.py").write_text(example.replace('"plugins"', repr(str(bundled()))), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DPMSF_")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_example.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert done.stdout.startswith("..") and "[100%]" in done.stdout
