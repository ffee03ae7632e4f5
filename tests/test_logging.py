"""One log format for every line of a real server process: ``dpmsf serve`` (1 and 2 workers), a plain ``uvicorn
--workers 2``, and gunicorn as App Engine runs it (``./gcprunner.sh``: one Cloud Logging JSON object per line)."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from ports import free_port
from serverproc import running

from dpmsf_core.gcp.cloudlogging import CloudLoggingFormatter, project_id, trace_fields
from dpmsf_core.logconfig import CONFIG_FILE, RequestLog, current_request, dict_config, log_format

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO |WARNING|ERROR|CRITICAL) \[(-|[A-Za-z0-9._:-]+)\] [\w.]+: \S"
)
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CHATTY = (
    'import logging\n\ndef chatty():\n    logging.getLogger("plugin.chatty").warning("inside the function")\n'
    "    return 1\n"
)


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "chatty.py").write_text(CHATTY)
    (folder / "broken.py").write_text("def broken(:\n")  # its load error is logged too, in the same format
    return folder


@contextmanager
def server(command: list[str], port: int, env: dict[str, str], log: Path) -> Iterator[str]:
    """A real server process with a clean environment (no DPMSF_/GAE_ settings of ours leak in)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("DPMSF_", "GAE_", "K_SERVICE"))}
    full_env.update({"PATH": f"{BIN}:{os.environ['PATH']}", **env})
    base = f"http://127.0.0.1:{port}"
    with running(command, ROOT, full_env, log, base + "/"):
        yield base


def exercise(base: str) -> None:
    """Requests on every worker: each carries its own id; one calls a function that logs."""
    for i in range(8):
        httpx.get(f"{base}/rest/services/chatty/", headers={"x-request-id": f"req-{i}"}, timeout=10)
    missing = httpx.get(f"{base}/rest/services/no-such-api/", headers={"x-request-id": "req-404"}, timeout=10)
    assert missing.status_code == 404


def assert_text_lines(log: Path, workers: int) -> list[str]:
    # The CLI's banner ("DPMSF: http://...") is printed for a person, not logged.
    lines = [line for line in log.read_text().splitlines() if not line.startswith("DPMSF: ")]
    bad = [line for line in lines if not TEXT_LINE.match(line)]
    assert bad == [], "lines not in the one format:\n" + "\n".join(bad)
    access = [line for line in lines if " dpmsf.access: " in line and "/rest/services/" in line]  # not the probe
    assert len(access) == 9 and all(re.search(r"\[req-(\d|404)\] dpmsf.access: 127\.0\.0\.1 \"GET ", a) for a in access)
    assert any(re.search(r" WARNING \[req-0\] plugin.chatty: inside the function$", line) for line in lines)
    assert any(re.search(r" ERROR \[-\] dpmsf.registry: plugin .*broken.py failed to load", line) for line in lines)
    started = [line for line in lines if "uvicorn.error: Started server process" in line]
    assert len(started) == workers
    assert not any('HTTP/1.1" 200' in line for line in lines)  # uvicorn's own access line: ours replaces it
    return lines


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_dpmsf_serve_writes_one_readable_format(workers: int, plugins: Path, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    command = [str(BIN / "dpmsf"), "serve", "--port", str(port), "--workers", str(workers), "--plugins", str(plugins)]
    with server(command, port, {"DPMSF_STATE_DIR": str(tmp_path / "state")}, log) as base:
        exercise(base)
    lines = assert_text_lines(log, workers)
    assert any("uvicorn.error: Finished server process" in line for line in lines)  # shutdown lines too


@pytest.mark.slow
def test_plain_uvicorn_with_workers_and_our_log_config(plugins: Path, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    command = [
        str(BIN / "uvicorn"),
        "dpmsf_core.asgi:create",
        "--factory",
        "--workers",
        "2",
        "--port",
        str(port),
        "--log-config",
        CONFIG_FILE,
    ]
    env = {"DPMSF_STATE_DIR": str(tmp_path / "state"), "DPMSF_PLUGINS": str(plugins)}
    with server(command, port, env, log) as base:
        exercise(base)
    lines = assert_text_lines(log, 2)
    assert any("uvicorn.error: Started parent process" in line for line in lines)  # the parent's own lines too


@pytest.mark.slow
def test_plain_uvicorn_keeps_its_own_level_and_no_access_log(plugins: Path, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    command = [str(BIN / "uvicorn"), "dpmsf_core.asgi:create", "--factory", "--port", str(port)]
    command += ["--no-access-log", "--log-level", "warning"]
    env = {"DPMSF_STATE_DIR": str(tmp_path / "state"), "DPMSF_PLUGINS": str(plugins)}
    with server(command, port, env, log) as base:
        exercise(base)
    lines = log.read_text().splitlines()
    assert [line for line in lines if not TEXT_LINE.match(line)] == []
    assert not any(" INFO " in line for line in lines)  # --log-level warning: no access lines, no start-up chatter
    assert any(re.search(r" WARNING \[req-0\] plugin.chatty: inside the function$", line) for line in lines)


@pytest.mark.slow
def test_gunicorn_locally_writes_the_readable_format(plugins: Path, tmp_path: Path) -> None:
    """app.yaml's command line outside Google Cloud (no GAE_SERVICE): gunicorn's own lines are readable too."""
    port = free_port()
    log = tmp_path / "server.log"
    command = [
        str(BIN / "gunicorn"),
        "-c",
        "dpmsf_core/gunicorn_conf.py",
        "-k",
        "dpmsf_core.gunicorn_worker.UvicornWorker",
        "-w",
        "2",
        "-b",
        f"127.0.0.1:{port}",
        "handler.gae:app",
    ]
    env = {"DPMSF_STATE_DIR": str(tmp_path / "state"), "DPMSF_PLUGINS": str(plugins)}
    with server(command, port, env, log) as base:
        exercise(base)
    lines = assert_text_lines(log, 2)
    assert any(" gunicorn.error: Booting worker with pid: " in line for line in lines)


@pytest.mark.slow
def test_app_engine_lines_are_cloud_logging_json(plugins: Path, tmp_path: Path) -> None:
    """gcprunner.sh: app.yaml's entrypoint (gunicorn, 2 uvicorn workers), GAE_SERVICE set as on App Engine."""
    port = free_port()
    log = tmp_path / "server.log"
    state = tmp_path / "state"
    env = {
        "DPMSF_STATE_DIR": str(state),
        "DPMSF_PLUGINS": str(plugins),
        "GOOGLE_CLOUD_PROJECT": "demo-project",
        # Instance-local state for this test (app.yaml's Firestore defaults are tested with the emulator).
        "DPMSF_TENANTS": f"sqlite:///{state}/tenants.db",
        "DPMSF_STORE": f"sqlite:///{state}/store.db",
        "DPMSF_REPLAY_STORE": f"sqlite:///{state}/replay.db",
    }
    with server(["./gcprunner.sh", "--port", str(port)], port, env, log) as base:
        trace = {"x-cloud-trace-context": f"{TRACE_ID}/123;o=1"}
        for i in range(6):
            httpx.get(f"{base}/rest/services/chatty/", headers={"x-request-id": f"gae-{i}", **trace}, timeout=10)
    lines = [line for line in log.read_text().splitlines() if not line.startswith("dpmsf gcp-run: ")]  # its own lines
    entries = []
    for line in lines:
        entry = json.loads(line)  # every line is one JSON object
        assert isinstance(entry, dict) and entry["severity"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        assert isinstance(entry["message"], str) and entry["time"].endswith("Z")
        entries.append(entry)
    assert {e["logger"] for e in entries} >= {"gunicorn.error", "uvicorn.error", "dpmsf.registry", "dpmsf.access"}
    access = [e for e in entries if e["logger"] == "dpmsf.access" and e["path"] != "/"]  # not the readiness probe
    assert len(access) == 6
    for entry in access:
        assert entry["logging.googleapis.com/trace"] == f"projects/demo-project/traces/{TRACE_ID}"
        assert entry["logging.googleapis.com/spanId"] == "000000000000007b"
        assert entry["request_id"] == entry["logging.googleapis.com/labels"]["request_id"]
        assert (entry["endpoint"], entry["status"], entry["method"]) == ("chatty.chatty", 200, "GET")
        assert isinstance(entry["latency_ms"], float) and entry["latency"] == f"{entry['latency_ms'] / 1000:.6f}s"
    assert sorted(e["request_id"] for e in access) == [f"gae-{i}" for i in range(6)]
    [inside] = [e for e in entries if e["logger"] == "plugin.chatty" and e["request_id"] == "gae-0"]
    assert (inside["severity"], inside["message"], inside["endpoint"]) == (
        "WARNING",
        "inside the function",
        "chatty.chatty",
    )
    assert inside["logging.googleapis.com/trace"] == f"projects/demo-project/traces/{TRACE_ID}"
    [broken] = [e for e in entries if e["severity"] == "ERROR" and "broken.py" in e["message"]][:1]
    assert "request_id" not in broken  # outside any request
    workers = {e["message"] for e in entries if e["message"].startswith("Started server process")}
    assert len(workers) == 2


# -- the formatters, in process ------------------------------------------------------------------------------------


def _record(name: str, msg: str, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(name, level, __file__, 10, msg, None, None, "fn")
    record.__dict__.update(extra)
    return record


def test_json_line_inside_a_request() -> None:
    formatter = CloudLoggingFormatter()
    formatter.project = "p1"
    scope = {"dpmsf.endpoint": "todo.tasks"}
    token = current_request.set(RequestLog("rid-1", scope, f"{TRACE_ID}/1;o=0", time.perf_counter()))
    try:
        entry = json.loads(formatter.format(_record("dpmsf.access", "done", status=201, latency_ms=12.5)))
    finally:
        current_request.reset(token)
    del entry["time"]
    assert entry == {
        "severity": "INFO",
        "message": "done",
        "logger": "dpmsf.access",
        "logging.googleapis.com/sourceLocation": {"file": __file__, "line": "10", "function": "fn"},
        "logging.googleapis.com/trace": f"projects/p1/traces/{TRACE_ID}",
        "logging.googleapis.com/spanId": "0000000000000001",
        "logging.googleapis.com/trace_sampled": False,
        "request_id": "rid-1",
        "endpoint": "todo.tasks",
        "logging.googleapis.com/labels": {"request_id": "rid-1"},
        "latency_ms": 12.5,
        "latency": "0.012500s",
        "status": 201,
    }


def test_json_exception_is_one_line_with_the_traceback_in_message() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("dpmsf", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    line = CloudLoggingFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["severity"] == "ERROR" and entry["message"].startswith("failed\nTraceback (most recent call last):")
    assert entry["message"].endswith("ValueError: boom") and "request_id" not in entry


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(
            f"{TRACE_ID}/123;o=1",
            {
                "logging.googleapis.com/trace": f"projects/p/traces/{TRACE_ID}",
                "logging.googleapis.com/spanId": "000000000000007b",
                "logging.googleapis.com/trace_sampled": True,
            },
            id="cloud-trace",
        ),
        pytest.param(TRACE_ID, {"logging.googleapis.com/trace": f"projects/p/traces/{TRACE_ID}"}, id="trace-only"),
        pytest.param(
            f"00-{TRACE_ID}-b7ad6b7169203331-01",
            {
                "logging.googleapis.com/trace": f"projects/p/traces/{TRACE_ID}",
                "logging.googleapis.com/spanId": "b7ad6b7169203331",
                "logging.googleapis.com/trace_sampled": True,
            },
            id="traceparent",
        ),
        pytest.param("not-a-trace", {}, id="garbage"),
        pytest.param(None, {}, id="absent"),
    ],
)
def test_trace_fields(header: str | None, expected: dict[str, object]) -> None:
    assert trace_fields(header, "p") == expected


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "text"),
        ({"GAE_SERVICE": "default"}, "json"),
        ({"K_SERVICE": "dpmsf"}, "json"),
        ({"GAE_SERVICE": "default", "DPMSF_LOG_FORMAT": "text"}, "text"),
        ({"DPMSF_LOG_FORMAT": "JSON"}, "json"),
    ],
)
def test_log_format_choice(env: dict[str, str], expected: str) -> None:
    assert log_format(env) == expected


def test_shipped_log_config_file_is_dict_config() -> None:
    """The file a plain uvicorn command line reads is what dpmsf serve and gunicorn use (no drift)."""
    assert json.loads(Path(CONFIG_FILE).read_text()) == dict_config()


def test_cloud_run_project_comes_from_the_metadata_server() -> None:
    """Cloud Run sets K_SERVICE but no project variable: the formatter asks the metadata server (GCE_METADATA_HOST,
    the variable google-auth honours too), here a loopback stand-in answering as Google documents."""
    import http.server
    import threading

    seen: list[str | None] = []

    class Metadata(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Metadata-Flavor"))
            ok = self.path == "/computeMetadata/v1/project/project-id"
            self.send_response(200 if ok else 404)
            self.end_headers()
            self.wfile.write(b"run-project" if ok else b"")

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metadata)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        host = f"127.0.0.1:{httpd.server_address[1]}"
        assert project_id({"K_SERVICE": "dpmsf", "GCE_METADATA_HOST": host}) == "run-project"
        assert seen == ["Google"]
        assert project_id({"K_SERVICE": "dpmsf", "GOOGLE_CLOUD_PROJECT": "set"}) == "set"  # no call then
        assert project_id({"GAE_APPLICATION": "e~gae-project"}) == "gae-project"
        assert project_id({}) == "-" and len(seen) == 1  # off Google Cloud: never asked
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert project_id({"K_SERVICE": "dpmsf", "GCE_METADATA_HOST": host}) == "-"  # unreachable: no project, no hang
