"""``/rest/services/...``: resolve the endpoint, check the caller, bind the arguments, call, answer."""

from __future__ import annotations

import contextvars
import functools
import logging
import os
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .config import Settings
from .context import RequestInfo, reset_current, set_current
from .directory import without_paths
from .errors import (
    DPMSFError,
    FunctionFailed,
    GatewayTimeout,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
)
from .exchange import JSON, BodyBudget, Receive, Responder, Scope, read_body, scope_get
from .expose import allowed_methods, runs_for
from .lazyloop import ensure_running_loop
from .loading.registry import Endpoint, Registry
from .params import assemble, parse_body, parse_query
from .resolve import Route, resolve_route, visible_to
from .responses import encode_results, is_framework_response
from .security import LazySecurity, bearer

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    from .loading.snapshot import ModuleReport, Snapshot

log = logging.getLogger("dpmsf")


class ServiceDispatcher:
    """Calls plugin functions; holds what that needs: the registry, the settings, the security layer, a pool."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        security: LazySecurity,
        directory: Callable[[str | None, str], dict[str, Any]],
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.security = security
        self.directory = directory
        self.parm_names = settings.url_parm_names
        self._executor: ThreadPoolExecutor | None = None
        self._visible_anon = visible_to(None, settings.admin_id)
        self.body_budget = BodyBudget(settings.body_budget)  # bodies being received, all requests together

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The pool sync functions run in, made on first use: on Lambda they run inline and it is never needed
        (``concurrent.futures`` and ``asyncio`` stay out of a cold start)."""
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(max_workers=40, thread_name_prefix="dpmsf-sync")
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _refuse_failed_module(
        self, snapshot: Snapshot, segments: list[str], tenant: str | None, visible: Callable[[str | None], bool]
    ) -> None:
        """A call to a module that failed to load is a 503 saying why (to whom may see where), not a 404."""
        if not segments:
            return
        failed = [r for r in snapshot.reports if r.status == "error" and visible(r.tenant)]
        for report in failed:
            if segments[0] in (report.name, report.real_name):
                raise ServiceUnavailable(f"Module '{report.name}' failed to load: {self._why(report, tenant)}")
        owned = self.registry.owned_folders  # uploads: whose they are is the security layer's to say, not ours
        plain = [r for r in failed if os.path.realpath(r.folder) not in owned]
        for report in plain[:50]:  # an unqualified API name that a module which failed to load mentions
            if _declares(report.source, segments[0]):
                raise ServiceUnavailable(
                    f"API '{segments[0]}' is probably in module '{report.name}', which failed to load: "
                    f"{self._why(report, tenant)}"
                )

    def _why(self, report: ModuleReport, tenant: str | None) -> str | None:
        own = tenant is not None and (tenant == self.settings.admin_id or tenant == report.tenant)
        return report.error if own else without_paths(report.error)

    def _mark_stale(self, snapshot: Snapshot, endpoint: Endpoint, responder: Responder) -> None:
        """A module whose newer file failed to load still serves its last good version: every answer says so."""
        if endpoint.module in snapshot.stale:
            reason = without_paths(snapshot.stale[endpoint.module]) or "the newer file failed to load"
            responder.add_header("DPMSF-Stale", _header_text(reason))

    async def serve(
        self, scope: Scope, receive: Receive, responder: Responder, headers: dict[str, str], rid: str, rest: str
    ) -> None:
        """Authorize (``_route_for``, ``_authorize``) -> bind (``plan.bind``) -> answer (``_answer``): every plugin
        call passes here, so the steps are plain calls, and no coroutine or object more than before."""
        method: str = scope["method"]
        segments = [s for s in rest.split("/") if s]
        snapshot = self.registry.refresh_routing()  # modules from the packaged manifest import when first called
        if segments and segments[0] == "__dir__" and len(segments) == 1:
            await self._serve_directory(scope, responder, headers, method)
            return
        token = bearer(headers)
        tenant = self.security().verify(token) if token is not None else None  # a token is spent once verified
        route = self._route_for(snapshot, segments, tenant, method, responder)
        endpoint, url_params = route.endpoint, route.params
        scope["dpmsf.endpoint"] = f"{endpoint.module}.{endpoint.api}"  # the per-endpoint metrics dimension
        scope["dpmsf.tenant"] = endpoint.tenant or tenant  # metering: billed to the module's owner, else the caller
        serving = snapshot.modules.get(endpoint.module)
        if serving is not None and serving.version:  # a rollout is observed answer by answer
            responder.add_header("DPMSF-Plugin-Version", serving.version)
        if method == "OPTIONS" and "OPTIONS" not in endpoint.methods:
            await responder.preflight(list(route.allow), headers)
            return
        self._authorize(route, method, tenant, responder)

        body = await read_body(scope, receive, headers, self.settings.max_body, self.body_budget)
        plan = endpoint.plan
        body_obj = parse_body(body, headers.get("content-type"), raw_ok=plan.accepts_raw_body)
        templated = endpoint.template is not None
        args, kwargs = assemble(_query(scope), [] if templated else url_params, body_obj, self.parm_names)
        if templated:
            kwargs.update(route.path_values)  # a template's names are the URL's: never overridden by query or body
        info = RequestInfo(
            method=method,
            path=scope["path"],
            headers=headers,
            query=kwargs,
            body=body,
            tenant=tenant,
            request_id=rid,
            api=endpoint.api,
            module=endpoint.module,
            event=scope_get(scope, "aws.event"),
            context=scope_get(scope, "aws.context"),
            root_path=(scope_get(scope, "root_path") or "").rstrip("/"),
        )
        bound = set_current(info)
        try:
            mapped = isinstance(body_obj, dict) and "__map__" in body_obj  # names given by the caller win
            named_url = [] if mapped or templated else list(zip(self.parm_names, url_params, strict=False))
            args, kwargs = plan.bind(args, kwargs, info, body_obj, named_url)
            result = await self._invoke(endpoint, args, kwargs)
        finally:
            reset_current(bound)
        await self._answer(result, scope, receive, responder, endpoint.api)

    async def _serve_directory(self, scope: Scope, responder: Responder, headers: dict[str, str], method: str) -> None:
        """``__dir__``: what this caller may call, GET only; ``?pretty=1`` indents it for a terminal or a tab."""
        scope["dpmsf.endpoint"] = "__dir__"
        if method != "OPTIONS" and not runs_for(("GET",), method):
            raise MethodNotAllowed("__dir__ answers GET only.", allowed_methods(("GET",)))
        tenant = self.security.tenant_for_read(headers)
        listing = self.directory(tenant, scope.get("root_path") or "")
        if parse_query(scope["query_string"]).get("pretty", "0") not in ("", "0", "false", "no"):
            import json  # ?pretty=1: indented, for reading in a terminal or a browser tab

            await responder.send(200, json.dumps(listing, indent=2, default=str).encode() + b"\n", JSON)
        else:
            await responder.json(200, listing)

    def _route_for(
        self, snapshot: Any, segments: list[str], tenant: str | None, method: str, responder: Responder
    ) -> Route:
        """Which endpoint this caller reaches at this URL: a module still deferred imports first, since what it
        really serves decides; a 404 for a module that failed to load is a 503 saying so; a stale one is marked."""
        visible = self._visible_anon if tenant is None else visible_to(tenant, self.settings.admin_id)
        try:
            route = resolve_route(
                snapshot, segments, max_url_params=self.settings.num_url_parms, visible=visible, method=method
            )
            turns = 0
            while route.endpoint.deferred:  # its module imports now: what it really serves (or its error) decides
                turns += 1
                snapshot = self.registry.materialize(route.endpoint.module) if turns < 4 else self.registry.refresh()
                route = resolve_route(
                    snapshot, segments, max_url_params=self.settings.num_url_parms, visible=visible, method=method
                )
        except NotFound:
            self._refuse_failed_module(snapshot, segments, tenant, visible)
            raise
        self._mark_stale(snapshot, route.endpoint, responder)
        return route

    def _authorize(self, route: Route, method: str, tenant: str | None, responder: Responder) -> None:
        """Whether the call may go on: 405 (with ``Allow``) for a method the endpoint does not answer, 401 without
        a token where one is required; a caller with a token gets the next one on the answer."""
        endpoint = route.endpoint
        if not runs_for(endpoint.methods, method):
            allow = list(route.allow)
            raise MethodNotAllowed(f"API '{endpoint.api}' answers {', '.join(allow)}; not {method}.", allow)
        if tenant is not None:
            next_token = self.security().next_token(tenant)
            if next_token:
                responder.add_header("X-DPMSF-Next-Token", next_token)
        elif endpoint.auth or (endpoint.auth is None and self.settings.require_tokens):
            raise Unauthorized("missing bearer token")

    def _answer(self, result: Any, scope: Scope, receive: Receive, responder: Responder, api: str) -> Awaitable[None]:
        """A response the function built goes out as built (bounded); any other result as our JSON. It returns the
        send for ``serve`` to await: a coroutine of its own would cost every call one more object."""
        if is_framework_response(result):
            ensure_running_loop()  # a streaming response runs in a task group
            return responder.passthrough(result, scope, receive, self.settings.max_response, api)
        return responder.send(200, encode_results(result, api, self.settings.max_response), JSON)

    async def _invoke(self, endpoint: Endpoint, args: list[Any], kwargs: dict[str, Any]) -> Any:
        timeout = self.settings.function_timeout or None
        if timeout is None:  # on Lambda, which enforces its own: no timer, so a call that never waits needs no loop
            try:
                return await self._call(endpoint, args, kwargs)
            except DPMSFError:
                raise
            except Exception as exc:
                raise self._failed(endpoint, exc) from None
        import asyncio  # a timer needs the loop; the untimed path above never imports it

        deadline = asyncio.timeout(timeout)  # ``expired()`` tells our timeout from the plugin's own
        try:
            async with deadline:
                return await self._call(endpoint, args, kwargs)
        except DPMSFError:
            raise
        except TimeoutError as exc:
            if deadline.expired():
                raise GatewayTimeout(f"API '{endpoint.api}' ran past its timeout of {timeout} s.") from None
            raise self._failed(endpoint, exc) from None
        except Exception as exc:
            raise self._failed(endpoint, exc) from None

    async def _call(self, endpoint: Endpoint, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if endpoint.is_async:
            ensure_running_loop()  # a Lambda request is stepped without a loop until something needs one
            return await endpoint.func(*args, **kwargs)
        if self.settings.sync_inline:
            return endpoint.func(*args, **kwargs)
        ensure_running_loop()
        import asyncio

        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, endpoint.func, *args, **kwargs)
        return await loop.run_in_executor(self.executor, call)

    def _failed(self, endpoint: Endpoint, exc: Exception) -> FunctionFailed:
        """A function's own exception: logged in full; the caller learns nothing of it unless debug is on."""
        log.exception("API %s/%s raised", endpoint.module, endpoint.api, exc_info=exc)
        err = FunctionFailed(f"API '{endpoint.api}' failed; the server log has the details.")
        if self.settings.debug:
            err.detail = f"API '{endpoint.api}' raised {type(exc).__name__}: {exc}"
            err.extra["traceback"] = traceback.format_exception(exc)
        return err


def _query(scope: Scope) -> dict[str, Any]:
    """The query parameters: parsed already by the Lambda adapter (``dpmsf.query``), else from ``query_string``."""
    parsed = scope_get(scope, "dpmsf.query")
    return parsed if parsed is not None else parse_query(scope["query_string"])


def _header_text(text: str, limit: int = 300) -> str:
    """A reason as one header line: printable ASCII only, bounded (it may quote a plugin's source)."""
    flat = "".join(c if 32 <= ord(c) < 127 else "?" for c in " ".join(text.split()))
    return flat[:limit]


def _declares(path: str, api: str) -> bool:
    """Whether a module's source names ``api`` as an endpoint (``def api(``, ``API="api"``, ``path="api/..."``),
    read as text: the module could not be imported. Only on the way to a 404, so its cost does not matter."""
    import re

    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            source = fh.read(1 << 20)
    except OSError:
        return False
    name = re.escape(api)
    found = re.search(rf"^\s*(?:async\s+)?def\s+{name}\s*\(|\b(?:API|path)\s*=\s*[\"']{name}[\"'/]", source, re.M)
    return found is not None
