"""Powertools Logger's JSON lines on Lambda, written without importing Powertools.

Importing any part of ``aws_lambda_powertools`` runs its package ``__init__``, which loads Logger, Metrics and
Tracer with jmespath and typing_extensions: 15 to 20 ms of a cold start whose whole budget is about 100 ms. The
lines written here are Powertools' own, key for key and in its order (``tests/test_jsonlog.py`` holds them to its
``LambdaPowertoolsFormatter``): ``level``, ``location``, ``message``, ``timestamp``, ``service``, the appended keys
(``cold_start``, ``function_*``, ``correlation_id``), a record's extras, ``exception``, ``exception_name``,
``exception_notes``, ``stack_trace`` and ``xray_trace_id``. The settings are read as Powertools reads them:
``POWERTOOLS_SERVICE_NAME``, then the level from ``AWS_LAMBDA_LOG_LEVEL`` (Advanced Logging Controls),
``POWERTOOLS_LOG_LEVEL`` or ``LOG_LEVEL``. The settings not reproduced here (sampling, logging the event, dev mode,
no deduplication) select Powertools' Logger itself (:func:`wants_powertools`), as ``DPMSF_POWERTOOLS_LOGGER=1`` does.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Mapping
from typing import IO, Any

from ..switches import switched_off

RESERVED_LOG_ATTRS = frozenset(
    (
        "name",
        "msg",
        "args",
        "level",
        "levelname",
        "levelno",
        "pathname",
        "filename",
        "module",
        "exc_info",
        "exc_text",
        "stack_info",
        "lineno",
        "funcName",
        "created",
        "msecs",
        "relativeCreated",
        "thread",
        "threadName",
        "processName",
        "process",
        "asctime",
        "location",
        "timestamp",
    )
)
_ALC_LEVELS = {
    "TRACE": "NOTSET",
    "DEBUG": "DEBUG",
    "INFO": "INFO",
    "WARN": "WARNING",
    "ERROR": "ERROR",
    "FATAL": "CRITICAL",
}
_POWERTOOLS_ONLY = (
    "POWERTOOLS_LOGGER_SAMPLE_RATE",
    "POWERTOOLS_LOGGER_LOG_EVENT",
    "POWERTOOLS_LOG_DEDUPLICATION_DISABLED",
    "POWERTOOLS_DEV",
    "DPMSF_POWERTOOLS_LOGGER",
)


def wants_powertools(env: Mapping[str, str]) -> bool:
    """A setting only Powertools' Logger honours is set: use it, whatever it costs."""
    return any(not switched_off(env.get(name)) for name in _POWERTOOLS_ONLY)


def log_level(env: Mapping[str, str]) -> str:
    """Powertools' precedence: Lambda's Advanced Logging Controls, then ``POWERTOOLS_LOG_LEVEL``/``LOG_LEVEL``."""
    alc = _ALC_LEVELS.get(env.get("AWS_LAMBDA_LOG_LEVEL") or "")
    if alc:
        return alc
    level = env.get("POWERTOOLS_LOG_LEVEL") or env.get("LOG_LEVEL")
    return level.upper() if level else "INFO"


class PowertoolsShapedFormatter(logging.Formatter):
    """``LambdaPowertoolsFormatter``'s output with its defaults (local time, ``str`` for what JSON cannot hold)."""

    def __init__(self, service: str, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.log_format: dict[str, Any] = {
            "level": "%(levelname)s",
            "location": "%(funcName)s:%(lineno)d",
            "message": None,
            "timestamp": "%(asctime)s",
            "service": service,
        }
        self.environ = environ  # None: the process environment, read per line (Lambda sets the trace id per invoke)

    def append_keys(self, **keys: Any) -> None:
        self.log_format.update(keys)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """``2021-05-03 10:20:19,650+0000``: milliseconds before the offset, which ``logging`` cannot do."""
        return time.strftime(f"%Y-%m-%d %H:%M:%S,{int(record.msecs):03d}%z", time.localtime(record.created))

    def format(self, record: logging.LogRecord) -> str:
        values = record.__dict__.copy()
        values["asctime"] = self.formatTime(record)
        line: dict[str, Any] = {}
        for key, value in self.log_format.items():
            if value and key in RESERVED_LOG_ATTRS:
                if not isinstance(value, str):
                    raise ValueError(f"Logging key {key!r} overrides a reserved attribute: it must be a str")
                line[key] = value % values
            else:
                line[key] = value
        line.update((k, v) for k, v in values.items() if k not in RESERVED_LOG_ATTRS)
        line["message"] = _message(record)
        exc_info = record.exc_info
        if isinstance(exc_info, tuple) and hasattr(exc_info[0], "__name__"):
            line.setdefault("exception", self.formatException(exc_info))
            # hasattr above does not narrow exc_info[0] from None for mypy
            line.setdefault("exception_name", exc_info[0].__name__)  # type: ignore[union-attr]
            line.setdefault("exception_notes", getattr(exc_info[1], "__notes__", None))
            line["stack_trace"] = _stack_trace(exc_info)
        else:
            for key in ("exception", "exception_name", "exception_notes"):
                line.setdefault(key, None)
            line["stack_trace"] = None
        line["xray_trace_id"] = self._trace_id()
        return json.dumps(
            {k: v for k, v in line.items() if v is not None}, default=str, separators=(",", ":"), ensure_ascii=False
        )

    def _trace_id(self) -> str | None:
        header = (self.environ if self.environ is not None else os.environ).get("_X_AMZN_TRACE_ID")
        return header.split(";")[0].replace("Root=", "") if header else None


def _message(record: logging.LogRecord) -> Any:
    """A dict stays a dict, a format string is formatted, a string that is JSON is decoded (as Powertools does)."""
    message = record.msg
    if isinstance(message, dict):
        return message
    if record.args:
        return record.getMessage()
    if isinstance(message, str):
        try:
            return json.loads(message)
        except (ValueError, TypeError):
            pass
    return message


def _stack_trace(exc_info: Any) -> dict[str, Any]:
    return {
        "type": exc_info[0].__name__,
        "value": exc_info[1],
        "module": exc_info[1].__class__.__module__,
        "frames": [
            {"file": fs.filename, "line": fs.lineno, "function": fs.name, "statement": fs.line}
            for fs in traceback.extract_tb(exc_info[2])
        ],
    }


class _SuppressFilter(logging.Filter):
    """Powertools' deduplication: the root logger's handlers (Lambda's own) drop what our handler already wrote."""

    def __init__(self, logger: str) -> None:
        super().__init__()
        self.logger = logger

    def filter(self, record: logging.LogRecord) -> bool:
        return self.logger not in record.name


class JSONLogger:
    """What DPMSF uses of Powertools' ``Logger``: a JSON handler on the service's logger, ``append_keys``, and
    ``copy_config_to(name)`` (its ``copy_config_to_registered_loggers`` for one logger)."""

    def __init__(self, service: str, env: Mapping[str, str], stream: IO[str] | None = None) -> None:
        self.name = service
        self.level = log_level(env)
        self.formatter = PowertoolsShapedFormatter(service)
        self.append_keys = self.formatter.log_format.update  # once per invoke: a plain dict update, nothing more
        self.handler = logging.StreamHandler(stream or sys.stdout)
        self.handler.setFormatter(self.formatter)
        logger = logging.getLogger(service)
        logger.setLevel(self.level)
        logger.addHandler(self.handler)
        for handler in logging.root.handlers:
            if type(handler).__name__ == "LogCaptureHandler" and type(handler).__module__ == "_pytest.logging":
                continue  # as Powertools: pytest's caplog keeps seeing records
            handler.addFilter(_SuppressFilter(service))

    def copy_config_to(self, name: str) -> None:
        logger = logging.getLogger(name)
        logger.setLevel(self.level)
        logger.handlers = [self.handler]
        logger.propagate = False
        self.append_keys(name="%(name)s")
