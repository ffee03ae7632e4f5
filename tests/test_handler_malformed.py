"""Malformed Lambda events through the real handler: every sample in ``tests/events/`` and mutations of it (a field
removed, null, of the wrong type; a body flagged base64 that is not) are answered or logged, never raised.

HTTP events Mangum cannot read get a 400 problem+json in the answer shape of their source; batch records that
cannot be processed are reported in ``batchItemFailures`` (so nothing is deleted unprocessed).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bundled import bundled
from eventdata import EVENTS_DIR, lambda_context, load_event

from dpmsf_core.app import create_app
from dpmsf_core.aws.lambda_adapter import build_handler
from dpmsf_core.config import Settings

SAMPLES = sorted(p.stem for p in EVENTS_DIR.glob("*.json"))
PROBLEM = "application/problem+json"


def _sample(name: str) -> dict[str, Any]:
    return json.loads((EVENTS_DIR / f"{name}.json").read_text())


def _mutations(name: str) -> Iterator[Any]:
    """The sample itself, then one field at a time (top level, ``requestContext``, first record) removed, null,
    a number, a string and a list; a body that claims to be base64 and is not; a record that is not an object."""
    event = _sample(name)
    yield pytest.param(event, id=f"{name}-as-is")
    places: list[tuple[str, list[str]]] = [("", list(event))]
    if isinstance(event.get("requestContext"), dict):
        places.append(("requestContext", list(event["requestContext"])))
    records = event.get("Records")
    if isinstance(records, list) and records:
        places.append(("Records.0", [k for k in records[0] if k not in ("eventSource", "EventSource")]))
    for where, keys in places:
        for key in keys:
            for label, value in (("del", ...), ("null", None), ("int", 12), ("str", "x"), ("list", [])):
                mutated = copy.deepcopy(event)
                target = mutated
                for part in where.split(".") if where else []:
                    target = target[int(part)] if part.isdigit() else target[part]
                if value is ...:
                    del target[key]
                else:
                    target[key] = value
                yield pytest.param(mutated, id=f"{name}-{label}-{where + '.' if where else ''}{key}")
    if "body" in event:
        mutated = copy.deepcopy(event)
        mutated.update(isBase64Encoded=True, body="not base64!")
        yield pytest.param(mutated, id=f"{name}-bad-base64")
    if isinstance(records, list):
        yield pytest.param({**event, "Records": [*records, "garbage"]}, id=f"{name}-garbage-record")


CASES = [case for name in SAMPLES for case in _mutations(name)]
JUNK = [None, [], "x", 3, {}, {"Records": []}, {"Records": [1]}, {"requestContext": {"http": {}}}, {"httpMethod": 1}]


@pytest.fixture(scope="module")
def handler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    state = tmp_path_factory.mktemp("state")
    settings = Settings.from_env({"DPMSF_PLUGINS": str(bundled()), "DPMSF_STATE_DIR": str(state)}, dotenv=None)
    built = build_handler(create_app(settings))
    yield built
    built.close()


def _check_answer(out: Any) -> None:
    """An HTTP answer is never a 5xx; a 400 is a problem+json naming the event as unreadable."""
    if not isinstance(out, dict) or not ("statusCode" in out or "status" in out):
        return
    status = int(out.get("statusCode") or out.get("status") or 0)
    assert status < 500, out
    if status == 400 and "Bad Event" in (out.get("body") or ""):
        problem = json.loads(out["body"])
        assert problem["status"] == 400 and problem["title"] == "Bad Event"
        assert "Traceback" not in out["body"]


@pytest.mark.parametrize("event", CASES)
def test_sample_and_mutations_never_raise(handler: Any, event: Any) -> None:
    # the bundled plugins take SQS (events_example) and schedules, none raises on SNS/S3/EventBridge: nothing
    # here may fail the invocation
    _check_answer(handler(event, lambda_context()))


@pytest.mark.parametrize("event", JUNK, ids=repr)
def test_junk_is_answered_or_ignored(handler: Any, event: Any) -> None:
    out = handler(event, lambda_context())
    _check_answer(out)


def test_bad_base64_is_a_400_problem_in_the_rest_shape(handler: Any, caplog: pytest.LogCaptureFixture) -> None:
    event = load_event("apigw_v1", path="/rest/services/hello-world/", method="POST")
    event.update(isBase64Encoded=True, body="not base64!")
    ctx = lambda_context()
    out = handler(event, ctx)
    problem = json.loads(out.pop("body"))
    assert out == {"statusCode": 400, "headers": {"content-type": PROBLEM}, "isBase64Encoded": False}
    assert problem == {
        "type": "https://dpmsf.dev/problems/bad-request",
        "title": "Bad Event",
        "status": 400,
        "detail": problem["detail"],
        "request_id": ctx.aws_request_id,
    }
    assert problem["detail"].startswith("The Lambda event could not be read as an HTTP request (Error: Invalid base64")
    assert any("malformed HTTP event" in r.getMessage() and "base64" in r.getMessage() for r in caplog.records)


def test_cloudfront_sample_is_served_and_a_stripped_one_is_a_400(handler: Any) -> None:
    out = handler(_sample("cloudfront_viewer_request"), lambda_context())
    assert out["status"] == 200
    assert json.loads(out["body"]) == {"results": {"hello": "edge", "args": [], "kwargs": {"name": "edge"}}}
    stripped = _sample("cloudfront_viewer_request")
    del stripped["Records"][0]["cf"]["request"]["clientIp"]
    out = handler(stripped, lambda_context())
    assert json.loads(out.pop("body"))["detail"] == (
        "The Lambda event could not be read as an HTTP request (KeyError: 'clientIp')."
    )
    assert out == {
        "status": "400",
        "statusDescription": "Bad Request",
        "headers": {"content-type": [{"key": "Content-Type", "value": PROBLEM}]},
    }


def test_alb_multi_value_mode_answer_uses_multi_value_headers(handler: Any) -> None:
    event = load_event("alb_multi", path="/rest/services/hello-world/")
    del event["httpMethod"]
    out = handler(event, lambda_context())
    out.pop("body")
    assert out == {
        "statusCode": 400,
        "statusDescription": "400 Bad Request",
        "isBase64Encoded": False,
        "multiValueHeaders": {"content-type": [PROBLEM]},
    }


@pytest.mark.parametrize(
    ("name", "key", "expected_id"),
    [
        pytest.param("sqs", "messageId", "", id="sqs-without-messageId"),
        pytest.param("dynamodb_stream", "dynamodb", "", id="stream-without-dynamodb"),
    ],
)
def test_malformed_batch_record_is_reported_failed(
    handler: Any, name: str, key: str, expected_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    event = _sample(name)
    del event["Records"][0][key]
    out = handler(event, lambda_context())
    assert {"itemIdentifier": expected_id} in out["batchItemFailures"]  # "": Lambda retries the whole batch
    assert any("malformed" in r.getMessage() and name.split("_")[0] in r.getMessage() for r in caplog.records)


def test_garbage_record_beside_good_ones_fails_the_batch_not_the_invocation(handler: Any) -> None:
    event = _sample("sqs")
    event["Records"].append("garbage")
    out = handler(event, lambda_context())
    # the bundled events_example fails {"fail": true} (second record); the garbage one has no id: ""
    assert out == {"batchItemFailures": [{"itemIdentifier": event["Records"][1]["messageId"]}, {"itemIdentifier": ""}]}


def test_every_sample_is_covered() -> None:
    assert "cloudfront_viewer_request" in SAMPLES and len(SAMPLES) >= 14
    assert Path(EVENTS_DIR / "README.md").read_text().count("cloudfront_viewer_request.json") == 1
