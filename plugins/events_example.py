"""Example event functions: SQS messages (with partial batch failure) and a schedule, wired in infra/template.yaml.

Deployed with the SAM template, the example queue and the ``rate(5 minutes)`` schedule invoke the same
Lambda function as the HTTP API; the handler routes those events here. Send ``{"fail": true}`` to the
queue to see one message reported in ``batchItemFailures`` (retried, then moved to the dead-letter
queue) while the others in the batch are deleted.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from dpmsf_core import expose

logger = logging.getLogger("dpmsf.plugins.events_example")


class ExampleFailure(Exception):
    """Raised on purpose for a message whose body is ``{"fail": true}``."""


@expose.event(source="sqs")
def on_message(record: dict[str, Any]) -> None:
    """Log one SQS message; fail the ones that ask for it."""
    try:
        body = json.loads(record.get("body") or "null")
    except ValueError:
        body = record.get("body")
    queue = record.get("eventSourceARN", "").rsplit(":", 1)[-1]
    logger.info("SQS message %s from %s: %r", record.get("messageId"), queue, body)
    if isinstance(body, dict) and body.get("fail") is True:
        raise ExampleFailure(f"message {record.get('messageId')} asked to fail")


@expose.event(source="schedule")
def every_five_minutes(event: dict[str, Any]) -> None:
    """Log each scheduled tick (EventBridge rule ``rate(5 minutes)``)."""
    logger.info("Scheduled event %s at %s from %s", event.get("id"), event.get("time"), event.get("resources"))
