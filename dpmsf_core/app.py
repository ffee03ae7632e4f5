"""The ASGI app: it wires the parts together and routes; each part lives in its own module.

One catch-all app (no per-endpoint routes), so thousands of plugins cost nothing per request: ``dispatch.py``
serves ``/rest/services``, ``upload`` the admin routes, ``directory.py`` ``__dir__`` and ``/openapi.json``,
``exchange.py`` reads bodies and writes answers. It is a plain ASGI callable rather than a FastAPI instance on
purpose: importing FastAPI and pydantic costs ~150 ms of cold start on Lambda, and the request path needs
neither. ``/docs`` is Swagger UI served from files we ship (no CDN), and a DPMSF app mounts into any
FastAPI/Starlette app (``fastapi_app.mount("/", create_app())``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .config import BUNDLED_PLUGINS, Settings, on_lambda
from .context import RequestLog, current_request, reset_meter, reset_store, set_meter, set_store
from .directory import DiscoveryDocs
from .dispatch import ServiceDispatcher
from .errors import DPMSFError, FunctionFailed, NotFound
from .exchange import Receive, Responder, Scope, Send, request_headers, scope_get
from .loading.discovery import resolve_folder
from .loading.registry import Registry
from .metrics import EndpointUsage, memory_mb
from .mounting import DOCS_ASSETS, mount_root, route_path
from .resolve import SERVICES_PREFIX
from .security import LazySecurity
from .sources import open_plugin_path

if TYPE_CHECKING:
    from .health import Readiness
    from .loading.discovery import Candidate, LoadedModule, Metadata
    from .metering import UsageMeter
    from .sandbox.loader import SandboxedLoader
    from .security import Security
    from .sources.changes import PluginChanges
    from .store import StoreBackend
    from .tenancy.quotas import QuotaBook
    from .upload.handler import PluginUpload

log = logging.getLogger("dpmsf")
access_log = logging.getLogger("dpmsf.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_ADMIN_PREFIX = "/rest/admin"
_USAGE_PATH = "/rest/admin/usage"
_PROBES = ("/healthz", "/readyz")


class DPMSFApp:
    """Routes ``/rest/services/...``, ``/rest/admin/...``, ``/docs``, ``/openapi.json``, ``/metrics`` and ``/``."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        security: LazySecurity | None = None,
        upload: PluginUpload | None = None,
        store: StoreBackend | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.security = security or LazySecurity(settings)
        self.docs = DiscoveryDocs(settings, registry)
        self.services = ServiceDispatcher(settings, registry, self.security, self.docs.directory)
        self.admin = upload
        self.on_shutdown: list[Callable[[], Any]] = [self.services.close]
        # per-endpoint cost at /metrics; on Lambda the same figures are EMF metrics (aws/observability.py)
        self.usage = None if on_lambda() else EndpointUsage(memory_mb())
        # per-tenant usage (metering/): built when a tenant's usage is first counted; the store, the sandbox pool
        # and the upload handler reach it through the request's context (context.metered)
        self.meter: UsageMeter | None = None
        self._meter_lock = threading.Lock()
        self._meter_source = self.get_meter  # one bound method for every request's context
        self.on_shutdown.append(self._close_meter)
        # the document store plugins use (store.collection): this app's own, opened from settings.store_url when a
        # request first stores something, and handed to plugin code through the request's context (context.py)
        self.store = store
        self._store_lock = threading.Lock()
        self._store_source = self.get_store
        self.on_shutdown.append(self._close_store)
        self.readiness: Readiness | None = None  # the /readyz checks, made on the first probe
        self.changes: PluginChanges | None = None  # plugin changes heard from other replicas (sources/changes.py)

    def get_meter(self) -> UsageMeter:
        """The per-tenant usage meter, persisting to ``metering.sink_for(settings)``; made on first need."""
        meter = self.meter
        if meter is None:
            with self._meter_lock:
                if self.meter is None:
                    import functools

                    from .metering import UsageMeter, sink_for

                    self.meter = UsageMeter(functools.partial(sink_for, self.settings), per_invocation=on_lambda())
                meter = self.meter
        return meter

    def get_store(self) -> StoreBackend:
        """This app's document store, from ``settings.store_url`` with each tenant's quotas; opened on first need."""
        backend = self.store
        if backend is None:
            with self._store_lock:
                if self.store is None:
                    from .store import make_store

                    self.store = make_store(self.settings.store_url, self.security.quotas.for_tenant)
                backend = self.store
        return backend

    def _close_store(self) -> None:
        close = getattr(self.store, "close", None)
        if close is not None:
            close()

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """Plugin code run here outside an HTTP request (event functions, module imports at load) uses this app's
        store, as a request's does."""
        token = set_store(self._store_source)
        try:
            yield
        finally:
            reset_store(token)

    def _close_meter(self) -> None:
        if self.meter is not None:
            self.meter.close()  # what is left is written now

    def directory(self, tenant: str | None = None) -> dict[str, Any]:
        return self.docs.directory(tenant)

    def openapi(self, tenant: str | None = None, root_path: str = "") -> dict[str, Any]:
        return self.docs.openapi(tenant, root_path)

    # -- ASGI ---------------------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        # websockets are not served

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def close(self) -> None:
        for hook in self.on_shutdown:
            try:
                hook()
            except Exception:  # shutting down: report, keep closing the rest
                log.exception("shutdown hook failed")

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        if self.changes is not None:
            self.changes.ensure_started()  # a process forked after create_app has no listener thread yet
        headers = scope_get(scope, "dpmsf.headers") or request_headers(scope)  # the Lambda adapter has them decoded
        rid = headers.get("x-request-id")
        if rid is None or not _REQUEST_ID.match(rid):
            ctx = scope_get(scope, "aws.context")
            rid = getattr(ctx, "aws_request_id", None) or os.urandom(12).hex()
        responder = Responder(send, rid, scope["method"], headers.get("origin"), self.settings.cors_origins)
        trace = headers.get("x-cloud-trace-context") or headers.get("traceparent")
        logged = current_request.set(RequestLog(rid, scope, trace, start))  # every log line names this request
        metering = set_meter(self._meter_source)
        storing = set_store(self._store_source)
        try:
            await self._route(scope, receive, responder, headers, rid)
        except DPMSFError as exc:
            if isinstance(exc.extra.get("candidates"), list):  # a 409's qualified URLs resolve where the client is
                root = mount_root(scope, self.settings.base_path)
                exc.extra["candidates"] = [root + c for c in exc.extra["candidates"]]
            await responder.problem(exc, scope.get("root_path", "") + scope.get("path", ""))
        except Exception as exc:  # never a traceback to the caller unless debug
            log.exception("unhandled error serving %s %s (request %s)", scope["method"], scope.get("path"), rid)
            err = FunctionFailed("The server failed to serve this request.", title="Internal Server Error")
            if self.settings.debug:
                err.extra["traceback"] = traceback.format_exception(exc)
            await responder.problem(err, scope.get("root_path", "") + scope.get("path", ""))
        finally:
            if self.usage is not None:
                self.usage.record(scope_get(scope, "dpmsf.endpoint"), responder.status, time.perf_counter() - start)
            billed = scope_get(scope, "dpmsf.tenant")  # set by the dispatcher: the module's owner, else the caller
            if billed:
                self.get_meter().request(billed, responder.status)
            reset_store(storing)
            reset_meter(metering)
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client") or ("-", 0)
                latency = (time.perf_counter() - start) * 1000
                access_log.info(
                    '%s "%s %s" %d %.1fms',
                    client[0],
                    scope["method"],
                    scope.get("path"),
                    responder.status,
                    latency,
                    extra={
                        "status": responder.status,
                        "method": scope["method"],
                        "path": scope.get("path"),
                        "latency_ms": latency,
                    },
                )
            current_request.reset(logged)

    async def _route(
        self, scope: Scope, receive: Receive, responder: Responder, headers: dict[str, str], rid: str
    ) -> None:
        """The route table: probes and services first (every plugin call passes here), then the admin's routes and
        the server's own pages, each its own step."""
        path: str = scope["path"]
        if self.settings.base_path or not path.startswith("/rest/"):  # else nothing to take off: no call
            path = route_path(path, self.settings.base_path)
        if path in _PROBES and scope["method"] in ("GET", "HEAD"):  # the orchestrator's questions (health.py)
            await responder.json(200, {"status": "ok"} if path == "/healthz" else await self._ready())
        elif path.startswith(SERVICES_PREFIX + "/") or path == SERVICES_PREFIX:
            await self.services.serve(scope, receive, responder, headers, rid, path[len(SERVICES_PREFIX) :])
        elif path.startswith(_ADMIN_PREFIX + "/"):
            await self._serve_admin(scope, receive, responder, headers, path)
        else:
            await self._serve_page(scope, responder, headers, path)

    async def _serve_admin(
        self, scope: Scope, receive: Receive, responder: Responder, headers: dict[str, str], path: str
    ) -> None:
        """``/rest/admin/...``: the usage report (with an ADMIN_ID), else plugin uploads, which may be off."""
        if path in (_USAGE_PATH, _USAGE_PATH + "/") and self.settings.admin_id:
            from .metering.admin import usage_report

            await usage_report(self, scope, responder, headers)
            return
        if self.admin is None:
            raise NotFound("Plugin upload is not enabled on this server (set ADMIN_ID).")
        await self.admin.handle(scope, receive, responder, headers, path[len(_ADMIN_PREFIX) :])

    async def _serve_page(self, scope: Scope, responder: Responder, headers: dict[str, str], path: str) -> None:
        """The server's own pages (OpenAPI, metrics, Swagger UI, the index): off the services path, so what they
        import and compute costs a plugin call nothing."""
        if path == "/openapi.json":
            tenant = self.security.tenant_for_read(headers)
            await responder.json(200, self.openapi(tenant, mount_root(scope, self.settings.base_path)))
        elif path == "/metrics" and self.usage is not None and scope["method"] in ("GET", "HEAD"):
            from .metrics import CONTENT_TYPE, metrics_page

            tenant = self.security.tenant_for_read(headers)  # guarded like __dir__
            tenants = None if self.meter is None else self.meter.totals()  # per-tenant usage, tenant label
            page = metrics_page(self.usage, self.registry.refresh(), tenant, self.settings.admin_id, tenants)
            await responder.send(200, page, CONTENT_TYPE.encode())
        elif path in ("/docs", "/docs/"):
            from .openapi import swagger_html

            root = mount_root(scope, self.settings.base_path)
            page = swagger_html(root + "/openapi.json", root + "/docs")
            await responder.send(200, page, b"text/html; charset=utf-8")
        elif path.startswith(DOCS_ASSETS) and path.count("/") == 2:
            from .openapi import swagger_asset

            found = swagger_asset(path[len(DOCS_ASSETS) :])
            if found is None:
                raise NotFound(f"No route for '{scope['path']}'.")
            cache = [(b"cache-control", b"public, max-age=86400")]
            await responder.send(200, found[0], found[1].encode(), cache)
        elif path == "/" and scope["method"] in ("GET", "HEAD"):
            root = mount_root(scope, self.settings.base_path)  # links that resolve on the host the client used
            await responder.json(
                200,
                {
                    "service": "dpmsf",
                    "services": root + SERVICES_PREFIX + "/",
                    "directory": root + SERVICES_PREFIX + "/__dir__/",
                    "docs": root + "/docs",
                    "openapi": root + "/openapi.json",
                },
            )
        else:
            raise NotFound(f"No route for '{scope['path']}': services live under {SERVICES_PREFIX}/.")

    async def _ready(self) -> dict[str, Any]:
        from .health import Readiness, answer_ready

        if self.readiness is None:
            self.readiness = Readiness(self.settings, self.registry)
            self.on_shutdown.append(self.readiness.close)
        return await answer_ready(self.readiness)

    def get_security(self) -> Security:
        """Tokens and tenants, set up on first need."""
        return self.security()


class _SandboxOnDemand:
    """The registry's loader for tenant modules, imported when the first one is read: most deployments have none,
    and a cold start should not pay for the sandbox's imports."""

    def __init__(self, settings: Settings, quotas: QuotaBook) -> None:
        self.settings = settings
        self.quotas = quotas
        self._loader: SandboxedLoader | None = None

    def __call__(self, candidate: Candidate, meta: Metadata) -> LoadedModule:
        if self._loader is None:
            from .sandbox.loader import SandboxedLoader

            self._loader = SandboxedLoader(self.settings, self.quotas)
        return self._loader(candidate, meta)

    def close(self) -> None:
        if self._loader is not None:
            self._loader.close()


def _read_stored_module(name: str, path: str, raw: bytes) -> Any:
    """A stored tenant module the tenant index has no entry for, read in a budgeted child (``upload.reading``)."""
    from .upload.reading import UploadBudget, read_stored_in_child

    return read_stored_in_child(name, path, raw, UploadBudget())


def create_app(settings: Settings | None = None, **overrides: Any) -> DPMSFApp:
    """Build an app from ``settings`` (default: environment and ``.env``); plugins load now, once.

    ``plugins=`` may be one folder (a string or path, ``:``-separated like ``DPMSF_PLUGINS``) or a list of them.
    """
    settings = settings or Settings.from_env()
    if isinstance(overrides.get("plugins"), str | os.PathLike):
        overrides["plugins"] = tuple(p for p in os.fspath(overrides["plugins"]).split(":") if p)
    elif "plugins" in overrides:
        overrides["plugins"] = tuple(os.fspath(p) for p in overrides["plugins"])
    if overrides:
        settings = settings.with_(**overrides)
    from .hardening import make_non_dumpable

    make_non_dumpable()  # same-uid processes cannot read our environment (admin and master keys) or memory
    folders, sources = open_plugin_path(settings, lambda entry: resolve_folder(entry, BUNDLED_PLUGINS))
    target = None
    if settings.admin_id:
        from .upload.handler import plan_upload

        target = plan_upload(settings, folders, sources)
    security = LazySecurity(settings)
    loader = _SandboxOnDemand(settings, security.quotas)  # tenant calls keep each tenant's rate and concurrency
    registry = Registry(
        folders,
        admin_id=settings.admin_id,
        sources=sources,
        reload=settings.reload,
        untrusted_loader=loader,
        owned_folders=[target.folder] if target is not None else [],
        read_stored=_read_stored_module,
    )
    upload = None
    if target is not None:
        from .upload.handler import PluginUpload

        upload = PluginUpload(target, settings, registry, security)
    app = DPMSFApp(settings, registry, security, upload)
    app.on_shutdown.append(loader.close)
    with app.serving():  # a module that stores something as it is imported uses this app's store
        registry.load()
    if sources and settings.reload and not on_lambda():  # replicas hear each other's uploads (sources/changes.py)
        from .sources.changes import listen

        app.changes = listen(settings, registry.load, app.serving, upload)
        if app.changes is not None:
            app.on_shutdown.append(app.changes.close)
    return app
