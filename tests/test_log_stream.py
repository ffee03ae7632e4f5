"""``DPMSF_LOG_STREAM=stdout``: a real ``dpmsf serve`` (one worker and two) writes every log line, as JSON, to
standard output, where a collector that reads only stdout finds it; standard error keeps only the banner. Without
it the lines stay on standard error, as before."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import ROOT
from ports import free_port

from dpmsf_core.logconfig import log_stream

DPMSF = str(Path(sys.executable).parent / "dpmsf")


def serve(tmp_path: Path, workers: int, **env: str) -> tuple[list[str], list[str]]:
    """Run ``dpmsf serve``, make requests, SIGTERM it; its stdout and stderr lines."""
    (tmp_path / "plugins").mkdir(exist_ok=True)
    (tmp_path / "plugins" / "hi.py").write_text("def hi():\n    return 'hi'\n")
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith(("DPMSF_", "GAE_", "K_SERVICE"))}
    full.update({"DPMSF_PLUGINS": str(tmp_path / "plugins"), "DPMSF_STATE_DIR": str(tmp_path / "state"), **env})
    out, err = tmp_path / f"out-{workers}.log", tmp_path / f"err-{workers}.log"
    command = [DPMSF, "serve", "--port", str(port), "--workers", str(workers)]
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(command, cwd=ROOT, env=full, stdout=stdout, stderr=stderr, start_new_session=True)
    try:
        deadline = time.monotonic() + 40
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()[-3000:]
            time.sleep(0.1)
        for i in range(4):
            answer = httpx.get(f"http://127.0.0.1:{port}/rest/services/hi/", headers={"x-request-id": f"s-{i}"})
            assert answer.status_code == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    return out.read_text().splitlines(), err.read_text().splitlines()


@pytest.mark.parametrize("workers", [1, 2])
def test_json_lines_on_stdout_when_asked(tmp_path: Path, workers: int) -> None:
    stdout, stderr = serve(tmp_path, workers, DPMSF_LOG_FORMAT="json", DPMSF_LOG_STREAM="stdout")
    entries = [json.loads(line) for line in stdout]  # every line is one JSON object
    assert all(isinstance(e, dict) and e["severity"] and isinstance(e["message"], str) for e in entries)
    access = sorted(e["request_id"] for e in entries if e.get("logger") == "dpmsf.access" and e["path"] != "/healthz")
    assert access == [f"s-{i}" for i in range(4)]
    started = [e for e in entries if e["message"].startswith("Started server process")]
    assert len(started) == workers  # every worker's lines, not only the first process's
    assert any(e["message"] == "Finished server process" or "Shutting down" in e["message"] for e in entries)
    assert stderr and all(line.startswith("DPMSF: ") for line in stderr), stderr  # the banner alone


def test_without_it_the_lines_stay_on_stderr(tmp_path: Path) -> None:
    stdout, stderr = serve(tmp_path, 1, DPMSF_LOG_FORMAT="json")
    assert stdout == []
    entries = [json.loads(line) for line in stderr if line.startswith("{")]
    assert sum(1 for e in entries if e["logger"] == "dpmsf.access" and e["path"] == "/rest/services/hi/") == 4


@pytest.mark.parametrize(
    ("value", "expected"),
    [("stdout", "stdout"), ("STDOUT ", "stdout"), ("stderr", "stderr"), ("", "stderr"), ("x", "stderr")],
)
def test_log_stream_choice(value: str, expected: str) -> None:
    assert log_stream({"DPMSF_LOG_STREAM": value}) == expected
