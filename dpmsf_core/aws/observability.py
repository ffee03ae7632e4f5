"""Powertools' JSON log lines, its Tracer, and EMF metrics, on Lambda; nothing elsewhere (the local line is the access
log).

Imported cheaply: the log lines are Powertools Logger's, written by ``jsonlog`` (Powertools' own Logger when a
setting only it honours is set, such as sampling); the Tracer (with ``aws_xray_sdk``) loads only when X-Ray is
active for the function (``AWS_XRAY_DAEMON_ADDRESS``, set by Lambda with ``Tracing: Active``) and
``POWERTOOLS_TRACE_DISABLED`` is not true. Every ``POWERTOOLS_*`` setting (service name, log level, namespace,
sampling, ...) applies as Powertools documents it.

Metrics (EMF lines written by ``emf.py`` in Powertools' shape, at a fraction of its cost; one write per
invocation), dimension ``endpoint`` (``module.api``; ``-`` when no endpoint
was resolved): ``Requests`` (Count: invocations), ``Latency`` (Milliseconds: the duration of serving it),
``GBSeconds`` (duration x ``AWS_LAMBDA_FUNCTION_MEMORY_SIZE`` / 1024: what Lambda bills; ``dpmsf cost LOGFILE``
adds them up per endpoint), ``Errors`` (5xx, Count) and ``ClientErrors`` (4xx, Count) when they happen;
for non-HTTP events, dimension ``source``, ``Events`` and ``EventFailures``. Per-tenant usage (``metering/``), one
line per tenant that used something during the invocation, dimension ``tenant``: ``Requests``, ``Errors``,
``CPUMilliseconds``, ``WallMilliseconds``, ``GBSeconds`` (of its guests), ``StoreOperations``, ``StoreBytes``,
``UploadBytes``.
The per-request access line is off on Lambda unless ``DPMSF_ACCESS_LOG=1``.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ..config import on_lambda
from ..metrics import gb_seconds, memory_mb
from ..switches import switched_on

if TYPE_CHECKING:
    from ..config import Settings
    from ..context import LambdaContext

Handler = Callable[[dict[str, Any], "LambdaContext"], dict[str, Any]]  # a string: LambdaContext is for mypy only


class Observer(Protocol):
    """What the Lambda adapter reports to: one call per HTTP request or event, and a wrapper for the handler."""

    def wrap(self, handler: Handler) -> Handler: ...

    def request(self, scope: Mapping[str, Any], status: int, seconds: float) -> None: ...

    def event(self, source: str, result: object) -> None: ...


def observer(
    settings: Settings | None = None, env: Mapping[str, str] | None = None, meter: Callable[[], Any] | None = None
) -> Observer | None:
    """Powertools on Lambda; ``None`` elsewhere, so local runs pay nothing. ``meter`` returns the app's usage meter
    once it exists (else None): its per-tenant figures become EMF lines at the end of each invocation."""
    env = os.environ if env is None else env
    if not on_lambda(env):
        return None
    return PowertoolsObserver(env, patch_aws=_uses_aws(settings), meter=meter)


def _logger(service: str, env: Mapping[str, str]) -> Any:
    """Powertools' JSON lines for the ``dpmsf`` loggers (``jsonlog``: its format without its import cost), or
    Powertools' Logger itself when a setting only it honours is set."""
    from .jsonlog import JSONLogger, wants_powertools

    if not wants_powertools(env):
        logger = JSONLogger(service, env)
        if service != "dpmsf":
            logging.getLogger("dpmsf")
            logger.copy_config_to("dpmsf")
        return logger
    from aws_lambda_powertools import Logger

    powertools = Logger(service=service)
    if powertools.name != "dpmsf":
        from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

        logging.getLogger("dpmsf")  # make sure it is registered
        copy_config_to_registered_loggers(source_logger=powertools, include={"dpmsf"})
    return powertools


def endpoint_label(scope: Mapping[str, Any]) -> str:
    """``module.api`` of the endpoint the app resolved for this request (``scope["dpmsf.endpoint"]``), else ``-``."""
    endpoint = scope.get("dpmsf.endpoint")
    if endpoint is None:
        return "-"
    if isinstance(endpoint, str):
        return endpoint
    return f"{endpoint.module}.{endpoint.api}"


def correlation_id(event: Any) -> str | None:
    """API Gateway / Function URL request id, else the ALB trace header."""
    if not isinstance(event, dict):
        return None
    rc = event.get("requestContext")
    if isinstance(rc, dict) and rc.get("requestId"):
        return str(rc["requestId"])
    headers = event.get("headers") or {}
    for name in ("x-amzn-trace-id", "X-Amzn-Trace-Id"):
        if headers.get(name):
            return str(headers[name])
    multi = event.get("multiValueHeaders") or {}
    values = multi.get("x-amzn-trace-id") or multi.get("X-Amzn-Trace-Id")
    return str(values[0]) if values else None


def _uses_aws(settings: Settings | None) -> bool:
    """Patch botocore for X-Ray only when the app talks to AWS anyway (else it would import it for nothing)."""
    if settings is None:
        return False
    from ..sources import platform_of  # the one table of plugin URL schemes

    backends = [settings.replay_store, settings.tenants, settings.store]
    return any(str(u).startswith("dynamodb://") for u in backends) or any(
        platform_of(str(entry)) == "aws" for entry in settings.plugins
    )


class PowertoolsObserver:
    """Logger (JSON, Lambda context, correlation id), Metrics (EMF) and, when X-Ray is on, Tracer."""

    def __init__(
        self, env: Mapping[str, str], *, patch_aws: bool = False, meter: Callable[[], Any] | None = None
    ) -> None:
        from .emf import EMFWriter

        self.meter = meter

        service = env.get("POWERTOOLS_SERVICE_NAME") or "dpmsf"
        self.logger = _logger(service, env)
        if not switched_on(env.get("DPMSF_ACCESS_LOG")):
            # A JSON access line per request costs ~25 µs; Lambda's REPORT line, the metrics and API Gateway's
            # access logs already cover it. DPMSF_ACCESS_LOG=1 brings it back.
            logging.getLogger("dpmsf.access").setLevel(logging.WARNING)
        self.metrics = EMFWriter(env)
        self.memory_mb = memory_mb(env)  # set by Lambda; the template's default elsewhere (serverless-offline)
        self.tracer: Any = None
        disabled = switched_on(env.get("POWERTOOLS_TRACE_DISABLED"))
        if env.get("AWS_XRAY_DAEMON_ADDRESS") and not disabled:
            from aws_lambda_powertools import Tracer

            self.tracer = Tracer(service=service, patch_modules=["botocore"] if patch_aws else [])

    def wrap(self, handler: Handler) -> Handler:
        logger = self.logger

        metrics = self.metrics
        tenants = self.tenant_usage

        cold = [True]

        @functools.wraps(handler)
        def correlated(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
            # The keys Logger.inject_lambda_context adds, in one call: the decorator builds a model of the context,
            # checks for durable contexts, sampling and log buffers on every invoke (~45k instructions)
            logger.append_keys(
                cold_start=cold[0],
                function_name=getattr(context, "function_name", None),
                function_memory_size=getattr(context, "memory_limit_in_mb", None),
                function_arn=getattr(context, "invoked_function_arn", None),
                function_request_id=getattr(context, "aws_request_id", None),
                correlation_id=correlation_id(event),
            )
            cold[0] = False
            try:
                return handler(event, context)
            finally:
                tenants()
                metrics.flush()

        wrapped: Handler = correlated
        if self.tracer is not None:
            wrapped = self.tracer.capture_lambda_handler(wrapped)
        for name in ("app", "adapter", "close"):
            if hasattr(handler, name):
                setattr(wrapped, name, getattr(handler, name))
        return wrapped

    def request(self, scope: Mapping[str, Any], status: int, seconds: float) -> None:
        label = endpoint_label(scope)
        self.metrics.request(label, status, seconds * 1000, gb_seconds(seconds, self.memory_mb))
        if self.tracer is not None:
            self.tracer.put_annotation(key="endpoint", value=label)
            self.tracer.put_annotation(key="status", value=status)

    def tenant_usage(self) -> None:
        """This invocation's per-tenant usage, as EMF lines (nothing when no tenant used anything)."""
        meter = self.meter() if self.meter is not None else None
        if meter is not None:
            for tenant, counts in meter.drain_invocation().items():
                self.metrics.tenant(tenant, counts.as_dict())

    def event(self, source: str, result: object) -> None:
        failures = len(result.get("batchItemFailures") or ()) if isinstance(result, dict) else 0
        self.metrics.event(source, failures)
