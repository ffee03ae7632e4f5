"""The EMF lines the Lambda handler writes: Powertools' shape, whole, line by line."""

from __future__ import annotations

import json

import pytest

from dpmsf_core.aws.emf import EMFWriter

ENV = {"POWERTOOLS_METRICS_NAMESPACE": "Shop", "POWERTOOLS_SERVICE_NAME": "orders", "AWS_LAMBDA_FUNCTION_NAME": "fn"}


def written(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for line in lines:
        aws = line["_aws"]
        assert isinstance(aws, dict) and isinstance(aws.pop("Timestamp"), int)
    return lines


def definitions(dimensions: list[str], *metrics: tuple[str, str]) -> list[dict[str, object]]:
    named = [{"Name": n, "Unit": u} for n, u in metrics]
    return [{"Namespace": "Shop", "Dimensions": [dimensions], "Metrics": named}]


def test_one_line_per_request_and_event_and_a_cold_start_line_first(capsys: pytest.CaptureFixture[str]) -> None:
    emf = EMFWriter(ENV)
    emf.request('todo."tasks"', 200, 12.34567, 0.0061728)
    emf.request("todo.tasks", 404, 1.0, 0.0005)
    emf.event("sqs", 2)
    emf.flush()
    basic = [("Requests", "Count"), ("Latency", "Milliseconds"), ("GBSeconds", "None")]
    assert written(capsys) == [
        {
            "_aws": {"CloudWatchMetrics": definitions(["function_name", "service"], ("ColdStart", "Count"))},
            "function_name": "fn",
            "service": "orders",
            "ColdStart": [1.0],
        },
        {
            "_aws": {"CloudWatchMetrics": definitions(["endpoint", "service"], *basic)},
            "endpoint": 'todo."tasks"',
            "service": "orders",
            "Requests": [1.0],
            "Latency": [12.346],
            "GBSeconds": [0.0061728],
        },
        {
            "_aws": {"CloudWatchMetrics": definitions(["endpoint", "service"], *basic, ("ClientErrors", "Count"))},
            "endpoint": "todo.tasks",
            "service": "orders",
            "Requests": [1.0],
            "Latency": [1.0],
            "GBSeconds": [0.0005],
            "ClientErrors": [1.0],
        },
        {
            "_aws": {
                "CloudWatchMetrics": definitions(["source", "service"], ("Events", "Count"), ("EventFailures", "Count"))
            },
            "source": "sqs",
            "service": "orders",
            "Events": [1.0],
            "EventFailures": [2.0],
        },
    ]
    emf.request("m.boom", 502, 3.0, 0.001)
    emf.flush()
    (line,) = written(capsys)  # no second cold start
    assert line["Errors"] == [1.0] and line["endpoint"] == "m.boom"
    emf.flush()
    assert capsys.readouterr().out == ""  # nothing pending: nothing written


def test_metrics_disabled_writes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    emf = EMFWriter({**ENV, "POWERTOOLS_METRICS_DISABLED": "true"})
    emf.request("a.b", 200, 1.0, 0.001)
    emf.event("sqs", 0)
    emf.flush()
    assert capsys.readouterr().out == ""
