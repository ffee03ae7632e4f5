"""DPMSF's Lambda log lines are Powertools Logger's, key for key: Powertools' own formatter is the oracle."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from typing import Any

import pytest
from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

from dpmsf_core.aws.jsonlog import JSONLogger, PowertoolsShapedFormatter, log_level, wants_powertools

KEYS = {
    "cold_start": True,
    "function_name": "fn",
    "function_memory_size": 512,
    "function_arn": "arn:aws:lambda:us-east-1:123456789012:function:fn",
    "function_request_id": "req-1",
    "correlation_id": None,  # None is dropped, as Powertools drops it
    "name": "%(name)s",  # what copy_config_to_registered_loggers appends
}


def record(msg: Any, *args: Any, exc: bool = False, **extra: Any) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            err = ValueError("bad value")
            err.add_note("while reading the body")
            raise err
        except ValueError:
            exc_info = sys.exc_info()
    rec = logging.getLogger("dpmsf.plugins.shop").makeRecord(
        "dpmsf.plugins.shop", logging.WARNING, __file__, 42, msg, args, exc_info, "checkout", extra
    )
    return rec


RECORDS = {
    "plain": lambda: record("working on it"),
    "format args": lambda: record("%d items for %s", 3, "ada"),
    "dict message": lambda: record({"order": 7, "total": 9.5}),
    "JSON string": lambda: record('{"decoded": true}'),
    "number string": lambda: record("123"),
    "extras": lambda: record("with extras", endpoint="shop.checkout", amount=object.__new__(object)),
    "exception": lambda: record("failed", exc=True),
    "unicode": lambda: record("héllo ✓"),
}


@pytest.mark.parametrize("case", sorted(RECORDS))
def test_a_line_is_the_one_powertools_writes(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_X_AMZN_TRACE_ID", "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1")
    ours = PowertoolsShapedFormatter("shop")
    theirs = LambdaPowertoolsFormatter(service="shop")
    ours.append_keys(**KEYS)
    theirs.append_keys(**KEYS)
    rec = RECORDS[case]()
    mine, reference = ours.format(rec), theirs.format(rec)
    if case == "extras":  # an object's str() names its address: the same object, so the same text
        assert "amount" in json.loads(mine)
    assert list(json.loads(mine).items()) == list(json.loads(reference).items())  # values and key order
    assert mine == reference


def test_without_a_trace_header_there_is_no_trace_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("_X_AMZN_TRACE_ID", raising=False)
    rec = record("x")  # one record for both: its timestamp is part of the line
    line = json.loads(PowertoolsShapedFormatter("shop").format(rec))
    assert line == json.loads(LambdaPowertoolsFormatter(service="shop").format(rec))
    assert "xray_trace_id" not in line and line["service"] == "shop"


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"POWERTOOLS_LOG_LEVEL": "debug"},
        {"LOG_LEVEL": "ERROR"},
        {"POWERTOOLS_LOG_LEVEL": "WARNING", "LOG_LEVEL": "DEBUG"},
        {"AWS_LAMBDA_LOG_LEVEL": "WARN", "POWERTOOLS_LOG_LEVEL": "ERROR"},
        {"AWS_LAMBDA_LOG_LEVEL": "FATAL"},
    ],
)
def test_the_level_is_chosen_as_powertools_chooses_it(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("POWERTOOLS_LOG_LEVEL", "LOG_LEVEL", "AWS_LAMBDA_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Powertools warns when Lambda's level is above its own
        reference = Logger(service=f"level-check-{len(env)}-{sorted(env)}")
    assert logging.getLevelName(log_level(env)) == reference.log_level


def test_the_settings_only_powertools_honours_select_powertools() -> None:
    assert not wants_powertools({"POWERTOOLS_SERVICE_NAME": "shop", "POWERTOOLS_LOG_LEVEL": "DEBUG"})
    assert not wants_powertools({"POWERTOOLS_DEV": "false"})
    assert wants_powertools({"POWERTOOLS_LOGGER_SAMPLE_RATE": "0.1"})
    assert wants_powertools({"POWERTOOLS_LOGGER_LOG_EVENT": "true"})
    assert wants_powertools({"DPMSF_POWERTOOLS_LOGGER": "1"})


def test_the_service_logger_writes_json_and_the_root_handlers_do_not_repeat_it() -> None:
    import io

    stream, root_stream = io.StringIO(), io.StringIO()
    root_handler = logging.StreamHandler(root_stream)
    logging.root.addHandler(root_handler)
    try:
        logger = JSONLogger("jsonlog-test-service", {"POWERTOOLS_LOG_LEVEL": "INFO"}, stream=stream)
        logger.append_keys(function_request_id="req-9")
        logging.getLogger("jsonlog-test-service.child").info("hello %s", "there")
        logging.getLogger("jsonlog-test-service.child").debug("below the level")
    finally:
        logging.root.removeHandler(root_handler)
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert [(x["message"], x["level"], x["function_request_id"]) for x in lines] == [("hello there", "INFO", "req-9")]
    assert root_stream.getvalue() == ""  # Powertools' deduplication: Lambda's root handler stays quiet
