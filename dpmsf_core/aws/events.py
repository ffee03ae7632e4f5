"""Route non-HTTP Lambda events (SQS, SNS, S3, EventBridge, schedules, DynamoDB streams) to ``@expose.event`` functions.

The Lambda handler asks :func:`event_source` first: ``None`` means an HTTP event for Mangum, anything
else goes to :func:`dispatch_event` with the ``(EventSpec, function)`` pairs the registry collected.

- SQS and DynamoDB streams: one call per record through Powertools' ``BatchProcessor``; a record whose
  function raises is reported in ``batchItemFailures`` (the function needs ``ReportBatchItemFailures``).
- SNS and S3: one call per record; if any call raised, :class:`EventHandlingError` is raised after all
  records were tried, so Lambda's asynchronous retries and on-failure destination apply.
- EventBridge and scheduled events: one call with the whole event; an exception propagates.
- A malformed record (not an object; an SQS record without ``messageId``, a stream record without
  ``dynamodb.SequenceNumber``) is logged with the reason and reported failed; ``""`` as its id when it has
  none, which Lambda takes as "retry the whole batch". A malformed SNS or S3 record is logged and skipped.

A function gets the record (or the EventBridge event) as a dict, first positional argument, and the
Lambda context as ``context=`` when it declares a parameter of that name. ``async def`` works too.
``match=`` is compared (``fnmatch``-style, so ``orders-*`` works) with the queue, topic, bucket or table
name, the EventBridge ``detail-type`` / ``source``, or the rule name of a scheduled event.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from ..expose import EventSpec

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Mapping

    from ..context import LambdaContext

logger = logging.getLogger("dpmsf.events")

EventHandler = tuple[EventSpec, Callable[..., Any]]

_RECORD_SOURCES = {"aws:sqs": "sqs", "aws:sns": "sns", "aws:s3": "s3", "aws:dynamodb": "dynamodb"}


class EventHandlingError(Exception):
    """One or more event functions raised; Lambda then retries the invocation (SNS, S3, EventBridge)."""

    def __init__(self, source: str, failures: list[tuple[str, BaseException]]) -> None:
        self.source = source
        self.failures = failures
        names = ", ".join(f"{name}: {type(exc).__name__}: {exc}" for name, exc in failures)
        super().__init__(f"{len(failures)} {source} record call(s) failed ({names})")


def event_source(event: Any) -> str | None:
    """``None`` for HTTP events (API Gateway v1/v2, ALB, Function URL, Lambda@Edge); else the event source.

    Returns ``"sqs"``, ``"sns"``, ``"s3"``, ``"dynamodb"``, ``"schedule"``, ``"eventbridge"`` or ``"unknown"``.
    """
    if not isinstance(event, dict):
        return "unknown"
    records = event.get("Records")
    if isinstance(records, list) and records and isinstance(records[0], dict):
        first = records[0]
        if "cf" in first:
            return None  # Lambda@Edge (CloudFront) request
        return _RECORD_SOURCES.get(first.get("eventSource") or first.get("EventSource") or "", "unknown")
    context = event.get("requestContext")
    if isinstance(context, dict) and ("elb" in context or "http" in context or "httpMethod" in event):
        return None  # ALB, payload 2.0 (HTTP API, Function URL), REST / payload 1.0
    if "httpMethod" in event and "path" in event:
        return None
    if "detail-type" in event and "source" in event:
        if event["detail-type"] == "Scheduled Event" and event["source"] == "aws.events":
            return "schedule"
        return "eventbridge"
    return "unknown"


def dispatch_event(event: dict[str, Any], context: LambdaContext, handlers: list[EventHandler]) -> dict[str, Any]:
    """Call the functions whose ``EventSpec`` takes ``event``; answer what Lambda expects for that source."""
    source = event_source(event)
    if source is None:
        raise ValueError("dispatch_event() got an HTTP event; send HTTP events to the ASGI adapter")
    candidates = [(spec, func) for spec, func in handlers if spec.source in (source, "any")]
    with _Caller(context) as caller:
        if source in ("sqs", "dynamodb"):
            return _dispatch_batch(event, source, candidates, caller)
        if source in ("sns", "s3"):
            return _dispatch_records(event, source, candidates, caller)
        return _dispatch_whole(event, source, candidates, caller)


# -- names to match against ------------------------------------------------------------------------


def _arn_resource(arn: str) -> str:
    """``arn:aws:sqs:us-east-1:123:queue-name`` -> ``queue-name``; ``...:table/t/stream/x`` -> ``table/t/stream/x``."""
    return arn.split(":", 5)[5] if arn.count(":") >= 5 else arn


def record_names(source: str, record: dict[str, Any]) -> list[str]:
    """The names ``match=`` is compared with for one record (or one EventBridge event)."""
    if source == "sqs":
        return [_arn_resource(record.get("eventSourceARN", ""))]
    if source == "sns":
        return [_arn_resource((record.get("Sns") or {}).get("TopicArn", ""))]
    if source == "s3":
        return [((record.get("s3") or {}).get("bucket") or {}).get("name", "")]
    if source == "dynamodb":
        resource = _arn_resource(record.get("eventSourceARN", ""))  # table/<name>/stream/<label>
        parts = resource.split("/")
        return [parts[1] if len(parts) > 1 else resource]
    if source in ("schedule", "eventbridge"):
        names = [str(record.get("detail-type", "")), str(record.get("source", ""))]
        for arn in record.get("resources") or []:
            resource = _arn_resource(str(arn))
            if ":events:" in str(arn) and resource.startswith("rule/"):
                names.append(resource.rsplit("/", 1)[-1])  # rule/<name> or rule/<bus>/<name>
        return names
    return []


def _takes(spec: EventSpec, source: str, record: dict[str, Any]) -> bool:
    if spec.match is None:
        return True
    return any(name and fnmatchcase(name, spec.match) for name in record_names(source, record))


def _label(spec: EventSpec, func: Callable[..., Any]) -> str:
    module = getattr(func, "__module__", None)
    return f"{module}.{spec.name}" if module else spec.name


def _unhandled(event: Any, source: str) -> dict[str, Any]:
    records = event.get("Records") if isinstance(event, dict) else None
    count = len(records) if isinstance(records, list) else 1
    logger.warning("No @expose.event function takes this %s event (%d record(s)); it was ignored", source, count)
    return {"handled": 0, "source": source, "records": count}


# -- the three shapes ------------------------------------------------------------------------------


def _malformed_record(source: str, record: Any) -> str | None:
    """Why a batch record cannot be processed (not an object, no id to report it by), or ``None`` if it can."""
    if not isinstance(record, dict):
        return f"a record is a {type(record).__name__}, not an object"
    if source == "sqs":
        ok = isinstance(record.get("messageId"), str) and record["messageId"]
        return None if ok else "the record has no messageId"
    stream = record.get("dynamodb")
    if not isinstance(stream, dict) or not isinstance(stream.get("SequenceNumber"), str):
        return "the record has no dynamodb.SequenceNumber"
    return None


def _record_id(source: str, record: Any) -> str:
    """The id Lambda knows a record by; ``""`` when it has none, which makes Lambda fail (retry) the whole batch."""
    if not isinstance(record, dict):
        return ""
    if source == "sqs":
        return str(record.get("messageId") or "")
    stream = record.get("dynamodb")
    return str(stream.get("SequenceNumber") or "") if isinstance(stream, dict) else ""


def _dispatch_batch(
    event: dict[str, Any], source: str, candidates: list[EventHandler], caller: _Caller
) -> dict[str, Any]:
    malformed: list[dict[str, str]] = []
    records = []
    for record in event["Records"]:
        why = _malformed_record(source, record)
        if why is None:
            records.append(record)
            continue
        logger.error("A malformed %s record is reported as failed (%s), so it is not deleted", source, why)
        malformed.append({"itemIdentifier": _record_id(source, record)})
    if not records:
        return {"batchItemFailures": malformed}
    event = {**event, "Records": records}
    if not any(_takes(spec, source, rec) for rec in records for spec, _ in candidates):
        logger.warning(
            "No @expose.event function takes these %d %s record(s): reported as failed, so they are retried and "
            "then go to the dead-letter queue instead of being deleted",
            len(records),
            source,
        )

    from aws_lambda_powertools.utilities.batch import (  # loaded only when an SQS/stream batch arrives
        BatchProcessor,
        EventType,
        process_partial_response,
    )

    event_type = EventType.SQS if source == "sqs" else EventType.DynamoDBStreams

    def record_handler(record: Any) -> None:
        raw = record.raw_event
        taken = False
        for spec, func in candidates:
            if _takes(spec, source, raw):
                taken = True
                caller.call(spec, func, raw)
        if not taken:  # a record nobody takes (or whose function failed to load) is never dropped
            raise LookupError(f"no @expose.event function takes this {source} record")

    # All records failing is reported like any partial failure instead of raising: Lambda retries them all.
    processor = BatchProcessor(event_type=event_type, raise_on_entire_batch_failure=False, logger=logger)
    response: dict[str, Any] = dict(
        process_partial_response(event=event, record_handler=record_handler, processor=processor)
    )
    if malformed:
        response["batchItemFailures"] = [*response.get("batchItemFailures", []), *malformed]
    return response


def _dispatch_records(
    event: dict[str, Any], source: str, candidates: list[EventHandler], caller: _Caller
) -> dict[str, Any]:
    handled = 0
    failures: list[tuple[str, BaseException]] = []
    for record in event["Records"]:
        if not isinstance(record, dict):  # retrying would not make it readable: logged, not raised
            logger.error("Ignored a malformed %s record: a %s, not an object", source, type(record).__name__)
            continue
        for spec, func in candidates:
            if not _takes(spec, source, record):
                continue
            handled += 1
            try:
                caller.call(spec, func, record)
            except Exception as exc:  # every record is tried before the invocation fails
                logger.exception("Event function %s failed on a %s record", _label(spec, func), source)
                failures.append((_label(spec, func), exc))
    if not handled:
        return _unhandled(event, source)
    if failures:
        raise EventHandlingError(source, failures)
    return {"handled": handled, "source": source, "records": len(event["Records"])}


def _dispatch_whole(
    event: dict[str, Any], source: str, candidates: list[EventHandler], caller: _Caller
) -> dict[str, Any]:
    chosen = [(spec, func) for spec, func in candidates if _takes(spec, source, event)]
    if not chosen:
        return _unhandled(event, source)
    for spec, func in chosen:
        caller.call(spec, func, event)
    return {"handled": len(chosen), "source": source, "records": 1}


# -- calling sync and async functions --------------------------------------------------------------


class _Caller:
    """Calls event functions; runs coroutines on one event loop per dispatch, created only if needed."""

    def __init__(self, context: LambdaContext) -> None:
        self.context = context
        self._runner: asyncio.Runner | None = None
        self._wants_context: dict[Callable[..., Any], bool] = {}

    def __enter__(self) -> _Caller:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            self._runner.close()

    def _takes_context(self, func: Callable[..., Any]) -> bool:
        if func not in self._wants_context:
            params: Mapping[str, inspect.Parameter]
            try:
                params = inspect.signature(func).parameters
            except (TypeError, ValueError):
                params = {}  # builtins without a signature get the record only
            self._wants_context[func] = "context" in params
        return self._wants_context[func]

    def call(self, spec: EventSpec, func: Callable[..., Any], record: dict[str, Any]) -> Any:
        kwargs = {"context": self.context} if self._takes_context(func) else {}
        result = func(record, **kwargs)
        if inspect.isawaitable(result):
            result = self._await(result)
        return result

    def _await(self, awaitable: Any) -> Any:
        import asyncio  # only an async event function needs it: a cold start for a sync one never imports it

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            if self._runner is None:
                self._runner = asyncio.Runner()
            return self._runner.run(_as_coroutine(awaitable))
        # Called from inside a running loop (an async caller): finish it on a private loop in a thread.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, _as_coroutine(awaitable)).result()


async def _as_coroutine(awaitable: Any) -> Any:
    return await awaitable
