"""dpmsf_core.aws.events: which events are HTTP, and how SQS/SNS/S3/EventBridge/schedule events reach functions."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from eventdata import HTTP_EVENTS, lambda_context, load_event

from dpmsf_core.aws.events import EventHandlingError, dispatch_event, event_source, record_names
from dpmsf_core.expose import EventSpec, event_spec, expose

ROOT = Path(__file__).resolve().parent.parent
SQS_OK_ID = "059f36b4-87a3-44ab-83d2-661975830a7d"
SQS_FAIL_ID = "2e1424d4-f796-459a-8184-9c92662be6da"


def spec(source: str, match: str | None = None, name: str = "fn") -> EventSpec:
    return EventSpec(source=source, match=match, name=name)


class Recorder:
    """An event function that remembers what it got and fails on ``{"fail": true}`` bodies."""

    def __init__(self, *, fail_on_flag: bool = False, fail_always: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail_on_flag = fail_on_flag
        self.fail_always = fail_always

    def __call__(self, record: dict[str, Any]) -> str:
        self.calls.append(record)
        if self.fail_always:
            raise RuntimeError("always fails")
        if self.fail_on_flag and json.loads(record.get("body") or "{}").get("fail"):
            raise ValueError("asked to fail")
        return "ok"


# -- event_source ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", HTTP_EVENTS)
def test_http_events_are_left_to_mangum(name: str) -> None:
    assert event_source(load_event(name)) is None


@pytest.mark.parametrize(
    ("name", "source"),
    [
        pytest.param("sqs", "sqs", id="sqs"),
        pytest.param("sns", "sns", id="sns"),
        pytest.param("s3_put", "s3", id="s3"),
        pytest.param("eventbridge", "eventbridge", id="eventbridge"),
        pytest.param("scheduled", "schedule", id="schedule"),
        pytest.param("dynamodb_stream", "dynamodb", id="dynamodb"),
    ],
)
def test_event_source_of_non_http_events(name: str, source: str) -> None:
    assert event_source(load_event(name)) == source


def test_lambda_at_edge_and_payload_1_0_are_http() -> None:
    edge = {"Records": [{"cf": {"config": {"eventType": "viewer-request"}, "request": {"uri": "/"}}}]}
    payload_1_0 = {"version": "1.0", "httpMethod": "GET", "path": "/", "requestContext": {"httpMethod": "GET"}}
    assert event_source(edge) is None
    assert event_source(payload_1_0) is None


@pytest.mark.parametrize(
    "event",
    [
        pytest.param({}, id="empty"),
        pytest.param({"Records": []}, id="no-records"),
        pytest.param({"Records": [{"eventSource": "aws:kinesis"}]}, id="kinesis"),
        pytest.param({"requestContext": {"eventType": "MESSAGE", "connectionId": "x"}}, id="websocket"),
        pytest.param(["not", "a", "dict"], id="list"),
    ],
)
def test_anything_else_is_unknown(event: Any) -> None:
    assert event_source(event) == "unknown"


def test_names_for_match() -> None:
    assert record_names("sqs", load_event("sqs")["Records"][0]) == ["dpmsf-example-queue"]
    assert record_names("sns", load_event("sns")["Records"][0]) == ["dpmsf-topic"]
    assert record_names("s3", load_event("s3_put")["Records"][0]) == ["dpmsf-example-bucket"]
    assert record_names("dynamodb", load_event("dynamodb_stream")["Records"][0]) == ["dpmsf-table"]
    assert record_names("schedule", load_event("scheduled")) == [
        "Scheduled Event",
        "aws.events",
        "dpmsf-every-5-minutes",
    ]


# -- SQS and DynamoDB streams: partial batch responses ---------------------------------------------


def test_sqs_calls_once_per_record() -> None:
    fn = Recorder()
    result = dispatch_event(load_event("sqs"), lambda_context(), [(spec("sqs"), fn)])
    assert result == {"batchItemFailures": []}
    assert [r["messageId"] for r in fn.calls] == [SQS_OK_ID, SQS_FAIL_ID]
    assert fn.calls[0] == load_event("sqs")["Records"][0]  # the record itself, as a plain dict
    assert isinstance(fn.calls[0], dict)


def test_sqs_failed_record_is_reported_alone(caplog: pytest.LogCaptureFixture) -> None:
    fn = Recorder(fail_on_flag=True)
    with caplog.at_level(logging.WARNING, logger="dpmsf.events"):
        result = dispatch_event(load_event("sqs"), lambda_context(), [(spec("sqs"), fn)])
    assert result == {"batchItemFailures": [{"itemIdentifier": SQS_FAIL_ID}]}
    assert len(fn.calls) == 2
    assert "asked to fail" in caplog.text


def test_sqs_whole_batch_failing_is_reported_not_raised() -> None:
    result = dispatch_event(load_event("sqs"), lambda_context(), [(spec("sqs"), Recorder(fail_always=True))])
    assert result == {"batchItemFailures": [{"itemIdentifier": SQS_OK_ID}, {"itemIdentifier": SQS_FAIL_ID}]}


def test_dynamodb_stream_failure_uses_sequence_number() -> None:
    def fn(record: dict[str, Any]) -> None:
        if record["dynamodb"]["NewImage"]["title"]["S"] == "fail":
            raise ValueError("bad item")

    result = dispatch_event(load_event("dynamodb_stream"), None, [(spec("dynamodb", "dpmsf-*"), fn)])
    assert result == {"batchItemFailures": [{"itemIdentifier": "4421584500000000017450439092"}]}


@pytest.mark.parametrize(
    ("match", "called"),
    [
        pytest.param(None, True, id="no-match-takes-all"),
        pytest.param("dpmsf-example-queue", True, id="exact"),
        pytest.param("dpmsf-*", True, id="glob"),
        pytest.param("other-queue", False, id="other"),
    ],
)
def test_sqs_match_filters_by_queue_name(match: str | None, called: bool) -> None:
    fn = Recorder()
    result = dispatch_event(load_event("sqs"), None, [(spec("sqs", match), fn)])
    assert bool(fn.calls) is called
    every = [{"itemIdentifier": r["messageId"]} for r in load_event("sqs")["Records"]]
    expected = {"batchItemFailures": []} if called else {"batchItemFailures": every}  # not taken: never deleted
    assert result == expected


# -- SNS and S3: one call per record, failures raise after every record was tried ------------------


def test_sns_and_s3_records() -> None:
    on_topic, on_other_topic, on_bucket = Recorder(), Recorder(), Recorder()
    handlers = [
        (spec("sns", "dpmsf-topic"), on_topic),
        (spec("sns", "another-topic"), on_other_topic),
        (spec("s3", "dpmsf-example-bucket"), on_bucket),
    ]
    assert dispatch_event(load_event("sns"), None, handlers) == {"handled": 1, "source": "sns", "records": 1}
    assert dispatch_event(load_event("s3_put"), None, handlers) == {"handled": 1, "source": "s3", "records": 1}
    assert on_topic.calls[0]["Sns"]["Message"] == '{"hello": "sns"}'
    assert on_other_topic.calls == []
    assert on_bucket.calls[0]["s3"]["object"]["key"] == "plugins/hello.py"


def test_sns_failure_raises_after_all_functions_ran() -> None:
    failing, other = Recorder(fail_always=True), Recorder()
    handlers = [(spec("sns", name="failing"), failing), (spec("sns", name="other"), other)]
    with pytest.raises(EventHandlingError, match="1 sns record call") as info:
        dispatch_event(load_event("sns"), None, handlers)
    assert len(other.calls) == 1
    assert isinstance(info.value.failures[0][1], RuntimeError)


# -- EventBridge and schedules ---------------------------------------------------------------------


def test_schedule_and_eventbridge_are_separate_sources() -> None:
    on_schedule, on_rule, on_other_rule, on_ec2 = Recorder(), Recorder(), Recorder(), Recorder()
    handlers = [
        (spec("schedule"), on_schedule),
        (spec("schedule", "dpmsf-every-5-minutes"), on_rule),
        (spec("schedule", "nightly"), on_other_rule),
        (spec("eventbridge", "EC2 Instance State-change Notification"), on_ec2),
    ]
    assert dispatch_event(load_event("scheduled"), None, handlers) == {"handled": 2, "source": "schedule", "records": 1}
    assert on_schedule.calls == [load_event("scheduled")]
    assert len(on_rule.calls) == 1
    assert on_other_rule.calls == [] and on_ec2.calls == []

    result = dispatch_event(load_event("eventbridge"), None, handlers)
    assert result == {"handled": 1, "source": "eventbridge", "records": 1}
    assert on_ec2.calls[0]["detail"]["state"] == "terminated"


def test_eventbridge_failure_propagates() -> None:
    with pytest.raises(RuntimeError, match="always fails"):
        dispatch_event(load_event("eventbridge"), None, [(spec("eventbridge"), Recorder(fail_always=True))])


def test_any_source_takes_every_event() -> None:
    fn = Recorder()
    handlers = [(spec("any"), fn)]
    assert dispatch_event(load_event("scheduled"), None, handlers)["handled"] == 1
    assert dispatch_event(load_event("sqs"), None, handlers) == {"batchItemFailures": []}
    assert dispatch_event({"custom": "payload"}, None, handlers) == {"handled": 1, "source": "unknown", "records": 1}
    assert len(fn.calls) == 4


# -- calling convention: async functions, context, decorated functions -----------------------------


def _sync_fn(calls: list[Any]) -> Any:
    def fn(record: dict[str, Any]) -> None:
        calls.append(record)
        if json.loads(record.get("body") or "{}").get("fail"):
            raise ValueError("fail")

    return fn


def _async_fn(calls: list[Any]) -> Any:
    async def fn(record: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        calls.append(record)
        if json.loads(record.get("body") or "{}").get("fail"):
            raise ValueError("fail")

    return fn


@pytest.mark.parametrize("make", [pytest.param(_sync_fn, id="sync"), pytest.param(_async_fn, id="async")])
def test_sync_and_async_functions(make: Any) -> None:
    calls: list[Any] = []
    fn = make(calls)
    result = dispatch_event(load_event("sqs"), None, [(spec("sqs"), fn)])
    assert result == {"batchItemFailures": [{"itemIdentifier": SQS_FAIL_ID}]}
    assert dispatch_event(load_event("scheduled"), None, [(spec("schedule"), fn)])["handled"] == 1
    assert len(calls) == 3


def test_async_function_called_from_inside_a_running_loop() -> None:
    calls: list[Any] = []

    async def caller() -> dict[str, Any]:
        return dispatch_event(load_event("scheduled"), None, [(spec("schedule"), _async_fn(calls))])

    assert asyncio.run(caller())["handled"] == 1
    assert len(calls) == 1


def test_context_is_passed_to_functions_that_ask_for_it() -> None:
    seen: list[Any] = []
    ctx = lambda_context(function_name="fn-under-test")

    def fn(event: dict[str, Any], context: Any) -> None:
        seen.append(context.function_name)

    dispatch_event(load_event("scheduled"), ctx, [(spec("schedule"), fn)])
    assert seen == ["fn-under-test"]


def test_decorated_functions_carry_their_spec() -> None:
    @expose.event(source="sqs", match="dpmsf-example-queue")
    def on_message(record: dict[str, Any]) -> None:
        pass

    found = event_spec(on_message)
    assert found == EventSpec(source="sqs", match="dpmsf-example-queue", name="on_message")
    assert dispatch_event(load_event("sqs"), None, [(found, on_message)]) == {"batchItemFailures": []}


# -- nobody takes it -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        pytest.param({"custom": 1}, {"handled": 0, "source": "unknown", "records": 1}, id="unknown"),
        pytest.param(load_event("s3_put"), {"handled": 0, "source": "s3", "records": 1}, id="s3-no-function"),
        pytest.param(load_event("scheduled"), {"handled": 0, "source": "schedule", "records": 1}, id="schedule"),
    ],
)
def test_unhandled_events_are_logged_not_raised(
    event: dict[str, Any], expected: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="dpmsf.events"):
        assert dispatch_event(event, None, [(spec("sqs"), Recorder())]) == expected
    assert "No @expose.event function takes" in caplog.text


def test_http_event_is_refused() -> None:
    with pytest.raises(ValueError, match="HTTP event"):
        dispatch_event(load_event("apigw_v2"), None, [])


# -- the bundled example and the cost of importing --------------------------------------------------


def test_bundled_example_plugin() -> None:
    path = ROOT / "plugins" / "events_example.py"
    module_spec = importlib.util.spec_from_file_location("dpmsf_test_events_example", path)
    assert module_spec and module_spec.loader
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    handlers = [(s, obj) for obj in vars(module).values() if (s := event_spec(obj)) is not None]
    assert sorted(s.source for s, _ in handlers) == ["schedule", "sqs"]
    assert dispatch_event(load_event("sqs"), None, handlers) == {"batchItemFailures": [{"itemIdentifier": SQS_FAIL_ID}]}
    assert dispatch_event(load_event("scheduled"), None, handlers)["handled"] == 1


def test_importing_events_does_not_load_powertools() -> None:
    code = (
        "import sys, dpmsf_core.aws.events;"
        " print(sorted(m for m in sys.modules if m.startswith('aws_lambda_powertools')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_tenant_event_function_is_refused(plugin_dir: Any, make_app: Any) -> None:
    """Event sources belong to the deployment: a tenant's handler would see the admin's and other tenants' records."""
    tenant = "cccccccc-cccc-4ccc-8ccc-cccccccccccc"
    plugin_dir.write(
        "tenant_events.py",
        f'from dpmsf_core import expose\n\n__tenant__ = "{tenant}"\n\n'
        "@expose.event(source='any')\ndef sniff(record):\n    return record\n",
    )
    app = make_app(plugin_dir.path, env={"ADMIN_ID": "00000000-0000-4000-8000-00000000000a"})
    assert app.registry.snapshot.events() == []
    (report,) = [r for r in app.registry.snapshot.reports if r.real_name == "tenant_events"]
    assert report.status == "error"
    assert report.error.endswith(
        "line 6: @expose.event is not available to tenant modules: a deployment's event "
        "sources (queues, topics, buckets, schedules) belong to its admin, and their records "
        "may carry the admin's and other tenants' data"
    )


def test_a_queue_record_no_function_takes_is_failed_never_dropped(caplog: pytest.LogCaptureFixture) -> None:
    """SPEC: a queue or stream record that no function takes is reported as failed, so Lambda keeps it."""
    event = load_event("sqs")
    with caplog.at_level(logging.WARNING, logger="dpmsf.events"):
        result = dispatch_event(event, None, [(spec("sns"), Recorder())])
    assert result == {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in event["Records"]]}
    assert "reported as failed" in caplog.text
