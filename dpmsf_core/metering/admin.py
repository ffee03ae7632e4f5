"""``GET /rest/admin/usage[?tenant=ID][&since=...]``: every tenant's usage, for the admin only.

Guarded like the other admin routes (a bearer token, single use, the next one in ``X-DPMSF-Next-Token``), and
then the admin's alone: a tenant's token is a 403 and shows no figures, its own included (what a tenant costs
is the operator's business). The figures are the persisted ones plus this process's unflushed ones; read off
the event loop.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import Forbidden, MethodNotAllowed, ServiceUnavailable, UnprocessableArguments
from ..exchange import Responder, Scope
from ..params import parse_query
from ..security import bearer, require
from .report import parse_since, report

if TYPE_CHECKING:
    from ..security import LazySecurity
    from .meter import UsageMeter

log = logging.getLogger("dpmsf.metering")


class UsageApp(Protocol):
    """What the report needs of the app: ``app.DPMSFApp``, named by shape (the app imports this module)."""

    security: LazySecurity

    def get_meter(self) -> UsageMeter: ...


async def usage_report(app: UsageApp, scope: Scope, responder: Responder, headers: dict[str, str]) -> None:
    security = app.security()
    token = bearer(headers)
    caller = require(security.verify(token) if token else None)
    next_token = security.next_token(caller)
    if next_token:
        responder.add_header("X-DPMSF-Next-Token", next_token)
    if not security.is_admin(caller):
        raise Forbidden("Usage is reported to the admin only.")
    if scope["method"] not in ("GET", "HEAD"):
        raise MethodNotAllowed("The usage report answers GET.", ["GET", "HEAD"])
    query = parse_query(scope["query_string"])
    try:
        since = parse_since(_one(query.get("since")), time.time())
    except ValueError as exc:
        raise UnprocessableArguments(str(exc), errors=[{"param": "since"}]) from None
    tenant = _tenant(_one(query.get("tenant")))
    from ..lazyloop import ensure_running_loop

    ensure_running_loop()  # on Lambda a request is stepped without a loop until it needs one
    import asyncio

    try:
        usage = await asyncio.to_thread(app.get_meter().report, tenant, since)
    except Exception as exc:  # the usage file or the shared store cannot be read: say so, no traceback
        log.warning("usage report failed: %s", exc)
        raise ServiceUnavailable("The usage report is unavailable right now; the server log has the details.") from None
    await responder.json(200, report(usage, since))


def _one(value: Any) -> str | None:
    """A query value given once (the last one when repeated); None when absent."""
    if isinstance(value, list):
        value = value[-1] if value else None
    return None if value is None else str(value)


def _tenant(raw: str | None) -> str | None:
    if raw is None or not raw.strip():
        return None
    from ..tenancy.tenants import tenant_id

    try:
        return tenant_id(raw.strip())
    except ValueError as exc:
        raise UnprocessableArguments(str(exc), errors=[{"param": "tenant"}]) from None
