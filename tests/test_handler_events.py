"""Non-HTTP events through the real Lambda handler: SQS partial failures, schedules, SNS, S3, EventBridge, unknown."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eventdata import lambda_context, load_event

from dpmsf_core.app import create_app
from dpmsf_core.aws.events import EventHandlingError
from dpmsf_core.aws.lambda_adapter import build_handler
from dpmsf_core.config import Settings

SQS_FAIL_ID = "2e1424d4-f796-459a-8184-9c92662be6da"

PLUGIN = """
import json

from dpmsf_core import expose

LOG = {log!r}


def _note(kind, payload):
    with open(LOG, "a") as fh:
        fh.write(json.dumps({{"kind": kind, "payload": payload}}) + "\\n")


@expose.event(source="sns")
def on_sns(record):
    _note("sns", record["Sns"]["Message"])


@expose.event(source="s3")
async def on_s3(record, context):
    _note("s3", [record["s3"]["object"]["key"], context.function_name])


@expose.event(source="eventbridge")
def on_eventbridge(event):
    _note("eventbridge", event["detail-type"])
"""


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    log = tmp_path / "calls.jsonl"
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "listeners.py").write_text(PLUGIN.format(log=str(log)))
    # the bundled plugins (events_example.py: SQS with {"fail": true}, schedule) and the listeners above
    settings = Settings.from_env({"DPMSF_PLUGINS": f".:{folder}", "DPMSF_STATE_DIR": str(tmp_path)}, dotenv=None)
    handler = build_handler(create_app(settings))
    try:
        yield handler, log
    finally:
        handler.close()


def calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_sqs_failed_record_is_reported(setup: tuple[Any, Path], caplog: pytest.LogCaptureFixture) -> None:
    handler, _ = setup
    with caplog.at_level(logging.INFO, logger="dpmsf"):
        out = handler(load_event("sqs"), lambda_context())
    assert out == {"batchItemFailures": [{"itemIdentifier": SQS_FAIL_ID}]}
    assert "asked to fail" in caplog.text


def test_schedule_reaches_the_bundled_function(setup: tuple[Any, Path], caplog: pytest.LogCaptureFixture) -> None:
    handler, _ = setup
    with caplog.at_level(logging.INFO, logger="dpmsf"):
        out = handler(load_event("scheduled"), lambda_context())
    assert out == {"handled": 1, "source": "schedule", "records": 1}
    assert "Scheduled event" in caplog.text


def test_sns_s3_eventbridge(setup: tuple[Any, Path]) -> None:
    handler, log = setup
    sns = load_event("sns")
    assert handler(sns, lambda_context()) == {"handled": 1, "source": "sns", "records": 1}
    s3 = load_event("s3_put")
    assert handler(s3, lambda_context()) == {"handled": 1, "source": "s3", "records": 1}
    assert handler(load_event("eventbridge"), lambda_context()) == {"handled": 1, "source": "eventbridge", "records": 1}
    got = calls(log)
    assert [c["kind"] for c in got] == ["sns", "s3", "eventbridge"]
    assert got[0]["payload"] == sns["Records"][0]["Sns"]["Message"]
    assert got[1]["payload"] == [s3["Records"][0]["s3"]["object"]["key"], "dpmsf-test"]


def test_http_still_works_after_an_async_event_function(setup: tuple[Any, Path]) -> None:
    handler, _ = setup
    handler(load_event("s3_put"), lambda_context())  # runs a coroutine on a private loop
    out = handler(load_event("apigw_v1", path="/rest/services/ping/", query={}), lambda_context())
    assert json.loads(out["body"]) == {"results": "pong"}


def test_failing_sns_function_fails_the_invocation(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "bad.py").write_text(
        "from dpmsf_core import expose\n\n\n@expose.event(source='sns')\ndef boom(record):\n    raise ValueError('x')\n"
    )
    handler = build_handler(create_app(Settings.from_env({"DPMSF_PLUGINS": str(folder)}, dotenv=None)))
    try:
        with pytest.raises(EventHandlingError):
            handler(load_event("sns"), lambda_context())
    finally:
        handler.close()


@pytest.mark.parametrize(
    "event",
    [
        pytest.param({"hello": "world"}, id="plain-dict"),
        pytest.param({"Records": [{"eventSource": "aws:kinesis", "kinesis": {}}]}, id="kinesis"),
        pytest.param([1, 2, 3], id="not-a-dict"),
    ],
)
def test_unknown_events_are_answered_without_crashing(
    setup: tuple[Any, Path], event: Any, caplog: pytest.LogCaptureFixture
) -> None:
    handler, _ = setup
    with caplog.at_level(logging.INFO, logger="dpmsf"):
        out = handler(event, lambda_context())
    assert isinstance(out, dict)
    assert caplog.records  # logged, not silently dropped


@pytest.mark.parametrize(
    ("name", "ids"),
    [
        pytest.param("sqs", lambda rec: rec["messageId"], id="sqs"),
        pytest.param("dynamodb_stream", lambda rec: rec["dynamodb"]["SequenceNumber"], id="dynamodb-stream"),
    ],
)
def test_records_of_a_function_that_failed_to_load_are_failed_not_deleted(
    tmp_path: Path, name: str, ids: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The module meant to take these records does not import: every record comes back in batchItemFailures
    (retried, then dead-lettered), not reported handled (Lambda would delete them)."""
    folder = tmp_path / "p"
    folder.mkdir()
    source = "sqs" if name == "sqs" else "dynamodb"
    (folder / "orders.py").write_text(
        f"from dpmsf_core import expose\nimport no_such_module_here\n\n\n@expose.event(source={source!r})\n"
        "def take(record):\n    pass\n"
    )
    settings = Settings.from_env({"DPMSF_PLUGINS": str(folder), "DPMSF_STATE_DIR": str(tmp_path)}, dotenv=None)
    handler = build_handler(create_app(settings))
    event = load_event(name)
    try:
        with caplog.at_level(logging.WARNING):
            out = handler(event, lambda_context())
    finally:
        handler.close()
    assert out == {"batchItemFailures": [{"itemIdentifier": ids(rec)} for rec in event["Records"]]}
    assert f"No @expose.event function takes these {len(event['Records'])} {source} record(s)" in caplog.text
