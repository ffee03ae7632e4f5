"""Cloud Logging's structured lines: one JSON object per line, which App Engine and Cloud Run turn into entries.

Every line has ``severity``, ``message`` and ``time``; inside a request also the request id, the endpoint
(``module.api``) and ``logging.googleapis.com/trace`` (``projects/<GOOGLE_CLOUD_PROJECT>/traces/<id>`` from
``X-Cloud-Trace-Context``, else W3C ``traceparent``), so that the console groups a request's lines under its
request log entry. The per-request line (``dpmsf.access``) adds ``status``, ``latency`` and ``latency_ms``:
per-endpoint request counts and latency distributions are log-based metrics on ``endpoint`` and
``latency_ms``. See https://cloud.google.com/logging/docs/structured-logging for the special fields.
"""

from __future__ import annotations

import json
import logging
import os
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..context import RequestLog, current_request, elapsed_ms

if TYPE_CHECKING:
    from collections.abc import Mapping

TRACE_KEY = "logging.googleapis.com/trace"
_CLOUD_TRACE = re.compile(r"^([0-9a-fA-F]{32})(?:/([0-9]{1,20}))?(?:;o=([01]))?")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_SEVERITY = {"WARN": "WARNING", "FATAL": "CRITICAL"}


def project_id(env: Mapping[str, str] | None = None) -> str:
    """``GOOGLE_CLOUD_PROJECT`` (set on App Engine and by gcprunner.sh), else the id inside ``GAE_APPLICATION``,
    else, on Cloud Run (``K_SERVICE``, which sets no project variable), the metadata server's answer."""
    env = os.environ if env is None else env
    found: str | None = env.get("GOOGLE_CLOUD_PROJECT") or env.get("GAE_APPLICATION", "").partition("~")[2]
    if not found and env.get("K_SERVICE"):
        found = _metadata_project(env.get("GCE_METADATA_HOST") or "metadata.google.internal")
    return str(found or "-")


def _metadata_project(host: str) -> str | None:
    """``/computeMetadata/v1/project/project-id`` (once, at start-up, 1 s at most); None when unreachable."""
    import urllib.request

    request = urllib.request.Request(
        f"http://{host}/computeMetadata/v1/project/project-id", headers={"Metadata-Flavor": "Google"}
    )
    try:
        with urllib.request.urlopen(request, timeout=1) as answer:
            return answer.read().decode("ascii").strip() or None
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def trace_fields(header: str | None, project: str) -> dict[str, Any]:
    """``X-Cloud-Trace-Context: TRACE/SPAN;o=1`` (decimal span) or ``traceparent`` -> Cloud Logging's trace fields."""
    if not header:
        return {}
    found = _CLOUD_TRACE.match(header)
    if found:
        trace, span, sampled = found.group(1).lower(), found.group(2), found.group(3)
        fields: dict[str, Any] = {TRACE_KEY: f"projects/{project}/traces/{trace}"}
        if span is not None and int(span) < 2**64:
            fields["logging.googleapis.com/spanId"] = f"{int(span):016x}"
        if sampled is not None:
            fields["logging.googleapis.com/trace_sampled"] = sampled == "1"
        return fields
    found = _TRACEPARENT.match(header.strip().lower())
    if found:
        return {
            TRACE_KEY: f"projects/{project}/traces/{found.group(1)}",
            "logging.googleapis.com/spanId": found.group(2),
            "logging.googleapis.com/trace_sampled": int(found.group(3), 16) & 1 == 1,
        }
    return {}


class CloudLoggingFormatter(logging.Formatter):
    """A ``logging.Formatter`` whose output is one JSON object (no newline inside: one line, one entry)."""

    dpmsf_format = "json"  # how logconfig.installed() recognises it without importing this module

    def __init__(self) -> None:
        super().__init__()
        self.project = project_id()

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)  # Error Reporting reads the trace in message
        elif record.stack_info:
            message += "\n" + self.formatStack(record.stack_info)
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds")
        entry: dict[str, Any] = {
            "severity": _SEVERITY.get(record.levelname, record.levelname),
            "message": message,
            "time": stamp.removesuffix("+00:00") + "Z",
            "logger": record.name,
            "logging.googleapis.com/sourceLocation": {
                "file": record.pathname,
                "line": str(record.lineno),
                "function": record.funcName,
            },
        }
        request: RequestLog | None = current_request.get()
        if request is not None:
            entry.update(trace_fields(request.trace_header, self.project))
            entry["request_id"] = request.request_id
            entry["endpoint"] = request.endpoint or "-"
            entry["logging.googleapis.com/labels"] = {"request_id": request.request_id}
            if record.name == "dpmsf.access":
                latency = getattr(record, "latency_ms", None)
                latency = float(latency) if isinstance(latency, int | float) else elapsed_ms(request)
                entry["latency_ms"] = round(latency, 3)
                entry["latency"] = f"{latency / 1000:.6f}s"
                for key in ("status", "method", "path"):
                    if hasattr(record, key):
                        entry[key] = getattr(record, key)
        return json.dumps(entry, ensure_ascii=False, default=str)
