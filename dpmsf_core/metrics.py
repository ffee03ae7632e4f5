"""Per-endpoint cost, locally: invocations, duration and GB-seconds per ``module.api``, served at ``/metrics`` in
Prometheus text format. On Lambda the same figures go out as EMF metrics instead (``aws/observability.py``).

GB-seconds are what Lambda bills: duration x configured memory / 1024. Locally the memory is the function's
would-be size: ``AWS_LAMBDA_FUNCTION_MEMORY_SIZE`` when set, else the template's ``MemorySize`` (512 MB), so a
local run estimates what the same calls would cost deployed.

Recording is a dict update under a lock (no import); ``prometheus_client`` is imported only when ``/metrics`` is
read. Who may read which series follows ``__dir__``: an endpoint's series is shown to whoever may see the
endpoint (a tenant's own endpoints to that tenant and the admin; shared ones to everyone allowed to read).

Per-tenant usage (``metering/``) is there too, as ``dpmsf_tenant_*`` counters with a ``tenant`` label: every
tenant's to the admin, a tenant's own to that tenant, none to an anonymous reader.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .loading.snapshot import Snapshot

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

    def render(self, shown: Callable[[str], bool], tenants: Mapping[str, Any] | None = None) -> bytes:
        """Prometheus text exposition of the endpoints ``shown`` accepts, and of ``tenants``' usage
        (``metering.Counts`` per tenant id)."""
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
                if tenants:
                    yield from _tenant_families(tenants, CounterMetricFamily)

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector())
        return bytes(generate_latest(registry))


_TENANT_SERIES = (  # Counts field, metric name, help, scale to the metric's unit
    ("requests", "dpmsf_tenant_requests", "Requests served for the tenant (its modules, or with its token).", 1),
    ("errors", "dpmsf_tenant_errors", "Of those, answers of 500 and above.", 1),
    ("cpu_ms", "dpmsf_tenant_cpu_seconds", "CPU time of the tenant's sandboxed calls (worker CPU clock).", 1e-3),
    ("wall_ms", "dpmsf_tenant_wall_seconds", "Wall time of the tenant's sandboxed calls.", 1e-3),
    ("gb_seconds", "dpmsf_tenant_gb_seconds", "Guest memory limit / 1024 x wall time of its sandboxed calls.", 1),
    ("store_ops", "dpmsf_tenant_store_operations", "Document-store operations of the tenant.", 1),
    ("store_bytes", "dpmsf_tenant_store_bytes", "JSON bytes the tenant's store operations wrote and read.", 1),
    ("upload_bytes", "dpmsf_tenant_upload_bytes", "Bytes of the modules the tenant uploaded.", 1),
)


def _tenant_families(tenants: Mapping[str, Any], family: Any) -> Iterator[Any]:
    for field, name, text, scale in _TENANT_SERIES:
        counter = family(name, text, labels=["tenant"])
        for tenant, counts in sorted(tenants.items()):
            counter.add_metric([tenant], getattr(counts, field) * scale)
        yield counter


def metrics_page(
    usage: EndpointUsage,
    snapshot: Snapshot,
    tenant: str | None,
    admin_id: str | None,
    tenants: Mapping[str, Any] | None = None,
) -> bytes:
    """``/metrics`` for ``tenant`` (``None``: anonymous): the series of the endpoints it may see, as ``__dir__``,
    and the usage of ``tenants`` it may see (all of them: the admin; its own: a tenant; none: anonymous)."""
    from .resolve import visible_to

    visible = visible_to(tenant, admin_id)
    admin = tenant is not None and tenant == admin_id
    owner = {f"{ep.module}.{ep.api}": ep.tenant for ep in snapshot.endpoints()}

    def shown(label: str) -> bool:
        if label in owner:
            return visible(owner[label])
        return admin or label in (NO_ENDPOINT, "__dir__")  # gone endpoints: the admin only

    own = {t: c for t, c in (tenants or {}).items() if admin or (tenant is not None and t == tenant)}
    return usage.render(shown, own)
