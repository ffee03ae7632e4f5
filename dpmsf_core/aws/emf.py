"""CloudWatch Embedded Metric Format lines, written directly: one per request or event, flushed per invocation.

Powertools' ``Metrics`` (``add_dimension``, ``add_metric``, ``log_metrics``) cost about 280,000 instructions per
warm invoke here (validation, a metric set rebuilt and serialised through several layers each time): more than
our whole dispatch. The lines are simple, documented JSON
(https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html),
so they are built from fixed pieces here, in the shape Powertools writes (values as one-element lists, the
``service`` dimension, a separate ``ColdStart`` line with ``function_name`` on the first invocation), so that
dashboards, alarms and ``dpmsf cost`` read them the same. ``POWERTOOLS_METRICS_NAMESPACE``,
``POWERTOOLS_SERVICE_NAME`` and ``POWERTOOLS_METRICS_DISABLED`` apply as Powertools documents them.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping

from ..switches import switched_on

_REQUEST_METRICS = (("Requests", "Count"), ("Latency", "Milliseconds"), ("GBSeconds", "None"))
# per-tenant usage (metering/): (Counts field, metric, unit), one line per tenant and invocation
TENANT_METRICS = (
    ("requests", "Requests", "Count"),
    ("errors", "Errors", "Count"),
    ("cpu_ms", "CPUMilliseconds", "Milliseconds"),
    ("wall_ms", "WallMilliseconds", "Milliseconds"),
    ("gb_seconds", "GBSeconds", "None"),
    ("store_ops", "StoreOperations", "Count"),
    ("store_bytes", "StoreBytes", "Bytes"),
    ("upload_bytes", "UploadBytes", "Bytes"),
)


def _definitions(namespace: str, dimensions: list[str], metrics: list[tuple[str, str]]) -> str:
    """The constant ``CloudWatchMetrics`` part of one kind of line, as JSON text."""
    return json.dumps(
        [
            {
                "Namespace": namespace,
                "Dimensions": [dimensions],
                "Metrics": [{"Name": name, "Unit": unit} for name, unit in metrics],
            }
        ],
        separators=(",", ":"),
    )


def _fixed(value: float, digits: int) -> str:
    """``value`` to ``digits`` decimals, written from an integer: float formatting costs several thousand
    instructions a number, integer formatting a few hundred."""
    scale = 10**digits
    units = int(value * scale + 0.5)
    return f"{units // scale}.{units % scale:0{digits}d}"


class EMFWriter:
    """Collects the lines of one invocation and writes them to stdout (Lambda sends stdout to CloudWatch Logs)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        namespace = env.get("POWERTOOLS_METRICS_NAMESPACE") or "DPMSF"
        service = env.get("POWERTOOLS_SERVICE_NAME") or "dpmsf"
        self.disabled = switched_on(env.get("POWERTOOLS_METRICS_DISABLED"))
        self._service = json.dumps(service)
        self._function = json.dumps(env.get("AWS_LAMBDA_FUNCTION_NAME") or "")
        dims = ["endpoint", "service"]
        self._requests = {
            kind: _definitions(namespace, dims, [*_REQUEST_METRICS, *extra])
            for kind, extra in (("ok", []), ("client", [("ClientErrors", "Count")]), ("server", [("Errors", "Count")]))
        }
        self._events = _definitions(namespace, ["source", "service"], [("Events", "Count"), ("EventFailures", "Count")])
        self._cold = _definitions(namespace, ["function_name", "service"], [("ColdStart", "Count")])
        self._tenant = _definitions(namespace, ["tenant", "service"], [(m, u) for _, m, u in TENANT_METRICS])
        self._pending: list[str] = []
        self._cold_start = True
        self._labels: dict[str, str] = {}  # endpoint -> its JSON text: a few per deployment, one per request

    def request(self, endpoint: str, status: int, milliseconds: float, gb_seconds: float) -> None:
        """One HTTP request's metrics, under its ``endpoint`` dimension (``module.api``).

        Values are written in fixed notation (``0.073``, ``0.000036709``) from integers (:func:`_fixed`): ``round()``
        then ``repr()`` of a float cost about as much as the rest of the line.
        """
        if self.disabled:
            return
        kind, extra = "ok", ""
        label = self._labels.get(endpoint)
        if label is None:
            label = self._labels[endpoint] = json.dumps(endpoint)
        if status >= 500:
            kind, extra = "server", ',"Errors":[1.0]'
        elif status >= 400:
            kind, extra = "client", ',"ClientErrors":[1.0]'
        self._pending.append(
            f'{{"_aws":{{"Timestamp":{int(time.time() * 1000)},"CloudWatchMetrics":{self._requests[kind]}}},'
            f'"endpoint":{label},"service":{self._service},"Requests":[1.0],'
            f'"Latency":[{_fixed(milliseconds, 3)}],"GBSeconds":[{_fixed(gb_seconds, 9)}]{extra}}}'
        )

    def event(self, source: str, failures: int) -> None:
        """One non-HTTP event's metrics, under its ``source`` dimension."""
        if self.disabled:
            return
        self._pending.append(
            f'{{"_aws":{{"Timestamp":{int(time.time() * 1000)},"CloudWatchMetrics":{self._events}}},'
            f'"source":{json.dumps(source)},"service":{self._service},"Events":[1.0],"EventFailures":[{failures}.0]}}'
        )

    def tenant(self, tenant: str, counts: Mapping[str, float]) -> None:
        """One tenant's usage during this invocation (``metering.Counts.as_dict()``), under its ``tenant`` dimension.

        Counts are written as integers, milliseconds to the microsecond, GB-seconds to 9 decimals (as above)."""
        if self.disabled:
            return
        values = []
        for field, metric, _ in TENANT_METRICS:
            value = counts.get(field, 0)
            text = _fixed(value, 9 if field == "gb_seconds" else 3) if isinstance(value, float) else f"{int(value)}.0"
            values.append(f'"{metric}":[{text}]')
        self._pending.append(
            f'{{"_aws":{{"Timestamp":{int(time.time() * 1000)},"CloudWatchMetrics":{self._tenant}}},'
            f'"tenant":{json.dumps(tenant)},"service":{self._service},{",".join(values)}}}'
        )

    def flush(self) -> None:
        """Write the invocation's lines (and, the first time, the ``ColdStart`` line) in one write."""
        if self._cold_start:
            self._cold_start = False
            if not self.disabled:
                self._pending.insert(
                    0,
                    f'{{"_aws":{{"Timestamp":{int(time.time() * 1000)},"CloudWatchMetrics":{self._cold}}},'
                    f'"function_name":{self._function},"service":{self._service},"ColdStart":[1.0]}}',
                )
        if self._pending:
            lines, self._pending = self._pending, []
            sys.stdout.write("\n".join(lines) + "\n")
