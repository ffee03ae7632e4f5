"""Per-endpoint cost, locally: invocations, duration and GB-seconds per ``module.api``, served at ``/metrics`` in
Prometheus text format. On Lambda the same figures go out as EMF metrics instead (``aws/observability.py``).

GB-seconds are what Lambda bills: duration x configured memory / 1024. Locally the memory is the function's
would-be size: ``AWS_LAMBDA_FUNCTION_MEMORY_SIZE`` when set, else the template's ``MemorySize`` (512 MB), so a
local run estimates what the same calls would cost deployed.

Recording is a dict update under a lock (no import); ``prometheus_client`` is imported only when ``/metrics`` is
read. Who may read which series follows ``__dir__``: an endpoint's series is shown to whoever may see the
endpoint (a tenant's own endpoints to that tenant and the admin; shared ones to everyone allowed to read).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_MEMORY_MB = 512  # infra/template.yaml's MemorySize
NO_ENDPOINT = "-"  # a request that resolved no endpoint (404, /docs, ...)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def memory_mb(env: Mapping[str, str] | None = None) -> int:
    """The function's memory in MB: Lambda's ``AWS_LAMBDA_FUNCTION_MEMORY_SIZE``, else ``DEFAULT_MEMORY_MB``."""
    env = os.environ if env is None else env
    raw = (env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE") or "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_MEMORY_MB


def gb_seconds(seconds: float, memory: int) -> float:
    """What Lambda bills for ``seconds`` at ``memory`` MB."""
    return seconds * memory / 1024


@dataclass
class Usage:
    """The running totals of one endpoint."""

    invocations: int = 0
    errors: int = 0  # answers of 500 and above
    seconds: float = 0.0
    gb_seconds: float = 0.0


class EndpointUsage:
    """Totals per endpoint label (``module.api``, ``__dir__`` or ``-``) for this process, owned by the app."""

    def __init__(self, memory: int = DEFAULT_MEMORY_MB) -> None:
        self.memory = memory
        self._lock = threading.Lock()
        self._usage: dict[str, Usage] = {}

    def record(self, endpoint: str | None, status: int, seconds: float) -> None:
        label = endpoint or NO_ENDPOINT
        with self._lock:
            usage = self._usage.get(label)
            if usage is None:
                usage = self._usage[label] = Usage()
            usage.invocations += 1
            usage.errors += status >= 500
            usage.seconds += seconds
            usage.gb_seconds += gb_seconds(seconds, self.memory)

    def totals(self) -> dict[str, Usage]:
        """A copy of every endpoint's totals."""
        with self._lock:
            return {label: Usage(**vars(u)) for label, u in self._usage.items()}

    def render(self, shown: Callable[[str], bool]) -> bytes:
        """Prometheus text exposition of the endpoints ``shown`` accepts."""
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        totals = {label: u for label, u in sorted(self.totals().items()) if shown(label)}
        memory = self.memory

        class _Collector:
            def collect(self) -> Iterator[Any]:  # prometheus_client's collector protocol
                families = {
                    "invocations": CounterMetricFamily(
                        "dpmsf_endpoint_invocations", "Calls per endpoint (module.api).", labels=["endpoint"]
                    ),
                    "errors": CounterMetricFamily(
                        "dpmsf_endpoint_errors", "Answers of 500 and above per endpoint.", labels=["endpoint"]
                    ),
                    "seconds": CounterMetricFamily(
                        "dpmsf_endpoint_duration_seconds", "Time spent serving per endpoint.", labels=["endpoint"]
                    ),
                    "gb_seconds": CounterMetricFamily(
                        "dpmsf_endpoint_gb_seconds",
                        "Duration x memory / 1024: what Lambda bills, per endpoint.",
                        labels=["endpoint"],
                    ),
                }
                for label, usage in totals.items():
                    for name, family in families.items():
                        family.add_metric([label], getattr(usage, name))
                yield from families.values()
                size = GaugeMetricFamily("dpmsf_function_memory_mb", "The memory GB-seconds are computed for.")
                size.add_metric([], memory)
                yield size

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector())
        return bytes(generate_latest(registry))


def metrics_page(usage: EndpointUsage, snapshot: object, tenant: str | None, admin_id: str | None) -> bytes:
    """``/metrics`` for ``tenant`` (``None``: anonymous): the series of the endpoints it may see, as ``__dir__``."""
    from .resolve import visible_to

    visible = visible_to(tenant, admin_id)
    admin = tenant is not None and tenant == admin_id
    owner = {f"{ep.module}.{ep.api}": ep.tenant for ep in snapshot.endpoints()}  # type: ignore[attr-defined]

    def shown(label: str) -> bool:
        if label in owner:
            return visible(owner[label])
        return admin or label in (NO_ENDPOINT, "__dir__")  # gone endpoints: the admin only

    return usage.render(shown)
