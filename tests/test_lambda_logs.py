"""On Lambda every log line of a request is one JSON object naming the invocation (Powertools Logger's keys)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from eventdata import lambda_context, load_event

PLUGIN = """
import logging

from dpmsf_core import expose

@expose.endpoint
def noisy():
    logging.getLogger("dpmsf.plugins.noisy").warning("working on it")
    return "done"
"""


@pytest.fixture(autouse=True)
def _logging_restored() -> Any:
    """The observer configures logging for a Lambda process; later tests in this process get theirs back."""
    import logging

    root = logging.getLogger()
    ours = {name: logging.getLogger(name) for name in ("dpmsf", "dpmsf.access")}
    saved = (root.handlers[:], root.level, {n: (x.level, x.handlers[:]) for n, x in ours.items()})
    factory = logging.getLogRecordFactory()
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    for name, (level, handlers) in saved[2].items():
        ours[name].setLevel(level)
        ours[name].handlers[:] = handlers
    logging.setLogRecordFactory(factory)


def test_a_plugins_log_line_carries_the_request_and_cold_start(
    tmp_path: Path, plugin_dir: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from dpmsf_core.app import create_app
    from dpmsf_core.aws.lambda_adapter import LambdaAdapter
    from dpmsf_core.aws.observability import PowertoolsObserver
    from dpmsf_core.config import Settings

    plugin_dir.write("noisy.py", PLUGIN)
    env = {"DPMSF_STATE_DIR": str(tmp_path), "DPMSF_PLUGINS": str(plugin_dir.path)}
    app = create_app(Settings.from_env(env, dotenv=None))
    watcher = PowertoolsObserver({"AWS_LAMBDA_FUNCTION_NAME": "fn", "POWERTOOLS_SERVICE_NAME": "shop"})
    adapter = LambdaAdapter(app, watcher=watcher)
    handler = watcher.wrap(adapter)
    try:
        for request_id in ("req-1", "req-2"):
            event = load_event("apigw_v1", path="/rest/services/noisy/", query={})
            event["requestContext"]["requestId"] = f"apigw-{request_id}"
            assert handler(event, lambda_context(aws_request_id=request_id))["statusCode"] == 200
    finally:
        adapter.close()
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{") and "_aws" not in x]
    logged = [x for x in lines if x.get("message") == "working on it"]
    assert [(x["function_request_id"], x["correlation_id"], x["cold_start"]) for x in logged] == [
        ("req-1", "apigw-req-1", True),
        ("req-2", "apigw-req-2", False),
    ]
    assert {x["level"] for x in logged} == {"WARNING"} and {x["service"] for x in logged} == {"shop"}
