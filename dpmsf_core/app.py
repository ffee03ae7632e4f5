"""The ASGI app: one catch-all dispatcher (no per-endpoint routes), so thousands of plugins cost nothing per request.

It is a plain ASGI callable rather than a FastAPI instance on purpose: importing FastAPI and pydantic costs
~150 ms of cold start on Lambda, and the request path needs neither. FastAPI is still used where it shines
(``/docs``), imported on first use, and a DPMSF app mounts into any FastAPI/Starlette app
(``fastapi_app.mount("/", create_app())``).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import re
import time
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .config import BUNDLED_PLUGINS, Settings
from .context import RequestInfo, reset_current, set_current
from .discovery import resolve_folder
from .errors import (
    PROBLEM_CONTENT_TYPE,
    DPMSFError,
    FunctionFailed,
    GatewayTimeout,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
)
from .params import CallPlan, assemble, parse_body, parse_query
from .registry import Endpoint, Registry
from .resolve import SERVICES_PREFIX, resolve, visible_to
from .responses import dumps, encode_results, is_framework_response
from .security import bearer

if TYPE_CHECKING:
    from .security import Security

log = logging.getLogger("dpmsf")
access_log = logging.getLogger("dpmsf.access")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_JSON = b"application/json"
_EXPOSE = b"X-Request-Id, X-DPMSF-Next-Token"
_ADMIN_PREFIX = "/rest/admin"


class DPMSFApp:
    """Dispatches ``/rest/services/...`` to plugin functions; ``/docs``, ``/openapi.json``, ``__dir__`` beside it."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self.parm_names = settings.url_parm_names
        self.executor = ThreadPoolExecutor(max_workers=40, thread_name_prefix="dpmsf-sync")
        self.security: Security | None = None  # built by get_security() on first need
        self.admin: Any = None  # the plugin upload handler, when configured
        self._visible_anon = visible_to(None, settings.admin_id)
        self._openapi_cache: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self.on_shutdown: list[Callable[[], Any]] = []

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
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        headers = _headers(scope)
        rid = headers.get("x-request-id")
        if rid is None or not _REQUEST_ID.match(rid):
            ctx = scope.get("aws.context")
            rid = getattr(ctx, "aws_request_id", None) or os.urandom(12).hex()
        responder = _Responder(send, rid, scope["method"], headers.get("origin"), self.settings.cors_origins)
        try:
            await self._route(scope, receive, responder, headers, rid)
        except DPMSFError as exc:
            await responder.problem(exc, scope.get("root_path", "") + scope.get("path", ""))
        except Exception as exc:  # never a traceback to the caller unless debug
            log.exception("unhandled error serving %s %s (request %s)", scope["method"], scope.get("path"), rid)
            err = FunctionFailed("The server failed to serve this request.", title="Internal Server Error")
            if self.settings.debug:
                err.extra["traceback"] = traceback.format_exception(exc)
            await responder.problem(err, scope.get("root_path", "") + scope.get("path", ""))
        if access_log.isEnabledFor(logging.INFO):
            client = scope.get("client") or ("-", 0)
            access_log.info(
                '%s "%s %s" %d %.1fms rid=%s',
                client[0],
                scope["method"],
                scope.get("path"),
                responder.status,
                (time.perf_counter() - start) * 1000,
                rid,
            )

    async def _route(
        self, scope: Scope, receive: Receive, responder: _Responder, headers: dict[str, str], rid: str
    ) -> None:
        path: str = scope["path"]
        base = self.settings.base_path
        if base and path.startswith(base):
            path = path[len(base) :] or "/"
        if not path.startswith("/rest/") and path not in ("/", "/docs", "/docs/", "/openapi.json"):
            path = _strip_unknown_prefix(path)
        if path.startswith(SERVICES_PREFIX + "/") or path == SERVICES_PREFIX:
            await self._services(scope, receive, responder, headers, rid, path[len(SERVICES_PREFIX) :])
        elif path.startswith(_ADMIN_PREFIX + "/"):
            if self.admin is None:
                raise NotFound("Plugin upload is not enabled on this server (set ADMIN_ID).")
            await self.admin.handle(scope, receive, responder, headers, path[len(_ADMIN_PREFIX) :], self)
        elif path == "/openapi.json":
            tenant = await self._tenant_for_read(headers)
            await responder.json(200, self.openapi(tenant, _root_path(scope, self.settings)))
        elif path in ("/docs", "/docs/"):
            from .openapi import swagger_html

            root = _root_path(scope, self.settings)
            await responder.send(200, swagger_html(root + "/openapi.json"), b"text/html; charset=utf-8")
        elif path == "/" and scope["method"] in ("GET", "HEAD"):
            await responder.json(
                200,
                {
                    "service": "dpmsf",
                    "services": SERVICES_PREFIX + "/",
                    "directory": SERVICES_PREFIX + "/__dir__/",
                    "docs": "/docs",
                    "openapi": "/openapi.json",
                },
            )
        else:
            raise NotFound(f"No route for '{scope['path']}': services live under {SERVICES_PREFIX}/.")

    # -- services ------------------------------------------------------------------------------------------------

    async def _services(
        self, scope: Scope, receive: Receive, responder: _Responder, headers: dict[str, str], rid: str, rest: str
    ) -> None:
        method: str = scope["method"]
        segments = [s for s in rest.split("/") if s]
        snapshot = self.registry.refresh()
        if segments and segments[0] == "__dir__" and len(segments) == 1:
            scope["dpmsf.endpoint"] = "__dir__"
            if method not in ("GET", "HEAD", "OPTIONS"):
                raise MethodNotAllowed("__dir__ answers GET only.", ["GET", "HEAD", "OPTIONS"])
            tenant = await self._tenant_for_read(headers)
            await responder.json(200, self.directory(tenant))
            return

        token = bearer(headers)
        tenant = self.get_security().verify(token) if token is not None else None
        visible = self._visible_anon if tenant is None else visible_to(tenant, self.settings.admin_id)
        endpoint, url_params = resolve(snapshot, segments, max_url_params=self.settings.num_url_parms, visible=visible)
        if method == "OPTIONS" and "OPTIONS" not in endpoint.methods:
            await responder.preflight(endpoint.allow(), headers)
            return
        if method not in endpoint.methods and not (method == "HEAD" and "GET" in endpoint.methods):
            allow = endpoint.allow()
            raise MethodNotAllowed(f"API '{endpoint.api}' answers {', '.join(allow)}; not {method}.", allow)
        if tenant is not None:
            next_token = self.get_security().next_token(tenant)
            if next_token:
                responder.add_header("X-DPMSF-Next-Token", next_token)
        elif endpoint.auth or (endpoint.auth is None and self.settings.require_tokens):
            raise Unauthorized("missing bearer token")
        body = await _read_body(scope, receive, headers, self.settings.max_body)
        plan: CallPlan = endpoint.plan or self._plan(endpoint)
        body_obj = parse_body(body, headers.get("content-type"), raw_ok=plan.accepts_raw_body)
        args, kwargs = assemble(parse_query(scope["query_string"]), url_params, body_obj, self.parm_names)
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
            event=scope.get("aws.event"),
            context=scope.get("aws.context"),
        )
        token = set_current(info)
        try:
            args, kwargs = plan.bind(args, kwargs, info, body_obj)
            result = await self._invoke(endpoint, args, kwargs)
        finally:
            reset_current(token)
        if is_framework_response(result):
            await responder.passthrough(result, scope, receive)
        else:
            await responder.send(200, encode_results(result, endpoint.api), _JSON)

    def _plan(self, endpoint: Endpoint) -> CallPlan:
        plan = CallPlan(endpoint.func)
        endpoint.plan = plan
        return plan

    async def _invoke(self, endpoint: Endpoint, args: list[Any], kwargs: dict[str, Any]) -> Any:
        timeout = self.settings.function_timeout or None
        deadline = asyncio.timeout(timeout)  # None: no limit; ``expired()`` tells our timeout from the plugin's own
        try:
            async with deadline:
                if endpoint.is_async:
                    return await endpoint.func(*args, **kwargs)
                if self.settings.sync_inline:
                    return endpoint.func(*args, **kwargs)
                loop = asyncio.get_running_loop()
                call = functools.partial(contextvars.copy_context().run, endpoint.func, *args, **kwargs)
                return await loop.run_in_executor(self.executor, call)
        except DPMSFError:
            raise
        except TimeoutError as exc:
            if deadline.expired():
                raise GatewayTimeout(f"API '{endpoint.api}' ran past its timeout of {timeout} s.") from None
            raise self._failed(endpoint, exc) from None
        except Exception as exc:
            raise self._failed(endpoint, exc) from None

    def _failed(self, endpoint: Endpoint, exc: Exception) -> FunctionFailed:
        """A function's own exception: logged in full; the caller learns nothing of it unless debug is on."""
        log.exception("API %s/%s raised", endpoint.module, endpoint.api, exc_info=exc)
        err = FunctionFailed(f"API '{endpoint.api}' failed; the server log has the details.")
        if self.settings.debug:
            err.detail = f"API '{endpoint.api}' raised {type(exc).__name__}: {exc}"
            err.extra["traceback"] = traceback.format_exception(exc)
        return err

    async def _tenant_for_read(self, headers: dict[str, str]) -> str | None:
        token = bearer(headers)
        if token is None:
            if self.settings.require_tokens:
                raise Unauthorized("missing bearer token")
            return None
        return self.get_security().verify(token)

    def get_security(self) -> Security:
        """Tokens and tenants are set up on first need (a token arrives, or an endpoint requires one)."""
        if self.security is None:
            from .security import Security

            self.security = Security(self.settings)
        return self.security

    # -- discovery documents ---------------------------------------------------------------------------------------

    def directory(self, tenant: str | None = None) -> dict[str, Any]:
        """``__dir__``: every module with its load status, and every endpoint the caller may call.

        Who asks decides what is shown: the admin sees everything; a tenant sees where its own modules live and
        why they fail; anyone else gets no server paths (file names only) and no plugin-source status.
        """
        from .openapi import describe_endpoint

        snapshot = self.registry.refresh()
        visible = visible_to(tenant, self.settings.admin_id)
        admin = tenant is not None and tenant == self.settings.admin_id
        modules = []
        for report in snapshot.reports:
            if not visible(report.tenant):
                continue
            shown = report.as_dict()
            if not admin and (tenant is None or report.tenant != tenant):
                shown["source"] = os.path.basename(report.source)
                shown["folder"] = None
                shown["error"] = _without_paths(report.error)
            modules.append(shown)
        endpoints = []
        for ep in snapshot.endpoints():
            if not visible(ep.tenant):
                continue
            unique = len([e for e in snapshot.by_api.get(ep.api, ()) if visible(e.tenant)]) == 1
            endpoints.append(describe_endpoint(ep, unique=unique, require_tokens=self.settings.require_tokens))
        if admin:
            problems = list(snapshot.problems)
        else:
            seen = [r.source for r in snapshot.reports if visible(r.tenant)]
            own = [r.source for r in snapshot.reports if tenant is not None and r.tenant == tenant]
            problems = [
                p if any(path in p for path in own) else _without_paths(p) or ""
                for p in snapshot.problems
                if any(path in p for path in seen)
            ]
        return {
            "version": snapshot.version,
            "modules": modules,
            "endpoints": endpoints,
            "problems": problems,
            "sources": self.registry.source_status() if admin else [],
            "url_params": list(self.parm_names),
        }

    def openapi(self, tenant: str | None = None, root_path: str = "") -> dict[str, Any]:
        from .openapi import build_openapi

        snapshot = self.registry.refresh()
        key = (snapshot.version, tenant, root_path)
        if self._openapi_cache is None or self._openapi_cache[0] != key:
            doc = build_openapi(snapshot, visible_to(tenant, self.settings.admin_id), self.settings, root_path)
            self._openapi_cache = (key, doc)
        return self._openapi_cache[1]


class _Responder:
    """Sends one response with the headers every answer carries (request id, CORS, next token)."""

    __slots__ = ("_send", "cors", "extra", "method", "origin", "rid", "status")

    def __init__(self, send: Send, rid: str, method: str, origin: str | None, cors: tuple[str, ...]) -> None:
        self._send = send
        self.rid = rid.encode("latin-1")
        self.method = method
        self.origin = origin
        self.cors = cors
        self.status = 0
        self.extra: list[tuple[bytes, bytes]] = []

    def add_header(self, name: str, value: str) -> None:
        self.extra.append((name.lower().encode("latin-1"), value.encode("latin-1")))

    def _common(self) -> list[tuple[bytes, bytes]]:
        headers = [(b"x-request-id", self.rid), *self.extra]
        if self.origin and ("*" in self.cors or self.origin in self.cors):
            headers.append((b"access-control-allow-origin", b"*" if "*" in self.cors else self.origin.encode()))
            headers.append((b"access-control-expose-headers", _EXPOSE))
            if "*" not in self.cors:
                headers.append((b"vary", b"Origin"))
        return headers

    async def send(
        self, status: int, body: bytes, content_type: bytes, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        self.status = status
        raw = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *self._common()]
        if headers:
            raw.extend(headers)
        await self._send({"type": "http.response.start", "status": status, "headers": raw})
        await self._send({"type": "http.response.body", "body": b"" if self.method == "HEAD" else body})

    async def json(self, status: int, value: Any) -> None:
        await self.send(status, dumps(value), _JSON)

    async def problem(self, exc: DPMSFError, instance: str | None) -> None:
        if self.status:  # the response already started: nothing sensible can be sent, but it must not vanish
            log.error(
                "error after the response started (status %d sent) for %s, request %s: %d %s",
                self.status,
                instance,
                self.rid.decode("latin-1"),
                exc.status,
                exc.detail,
            )
            return
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
        rid = self.rid.decode("latin-1")
        await self.send(exc.status, dumps(exc.problem(rid, instance)), PROBLEM_CONTENT_TYPE.encode(), headers)

    async def preflight(self, allow: list[str], headers: dict[str, str]) -> None:
        extra = [(b"allow", ", ".join(allow).encode())]
        if self.origin and headers.get("access-control-request-method"):
            extra += [
                (b"access-control-allow-methods", ", ".join(allow).encode()),
                (
                    b"access-control-allow-headers",
                    headers.get("access-control-request-headers", "authorization, content-type").encode(),
                ),
                (b"access-control-max-age", b"600"),
            ]
        await self.send(204, b"", b"text/plain", extra)

    async def passthrough(self, response: Any, scope: Scope, receive: Receive) -> None:
        """A Response the function built goes out as built, plus our request id (and CORS/next-token headers)."""
        present = {k for k, _ in response.raw_headers}
        for name, value in self._common():
            if name not in present:
                response.raw_headers.append((name, value))
        self.status = response.status_code
        await response(scope, receive, self._send)


def _headers(scope: Scope) -> dict[str, str]:
    """Lower-cased names (ASGI already lower-cases; comparing case-insensitively costs nothing more)."""
    out: dict[str, str] = {}
    for name, value in scope["headers"]:
        key = name.decode("latin-1").lower()
        val = value.decode("latin-1")
        out[key] = f"{out[key]}, {val}" if key in out else val
    return out


async def _read_body(scope: Scope, receive: Receive, headers: dict[str, str], limit: int) -> bytes:
    declared = headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLarge(f"Body of {declared} bytes is over the limit of {limit} bytes (DPMSF_MAX_BODY).")
        except ValueError:
            pass
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"Body is over the limit of {limit} bytes (DPMSF_MAX_BODY).")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks) if len(chunks) != 1 else chunks[0]


def _strip_unknown_prefix(path: str) -> str:
    """A stage (``/Prod``) or base-path mapping in front of our routes is dropped, whatever it is called."""
    idx = path.find("/rest/")
    if idx > 0:
        return path[idx:]
    for suffix in ("/openapi.json", "/docs", "/docs/"):
        if path.endswith(suffix):
            return suffix
    return path


_PATH_IN_TEXT = re.compile(r"(?:/[^/\s'\",:()]+)+/")


def _without_paths(text: str | None) -> str | None:
    """``/srv/app/plugins/foo.py, line 3: ...`` -> ``foo.py, line 3: ...``: no server layout for strangers."""
    return _PATH_IN_TEXT.sub("", text) if text else text


_SAFE_ROOT = re.compile(r"^(/[A-Za-z0-9._~-]+)*$")


def _root_path(scope: Scope, settings: Settings) -> str:
    """Where the app is mounted, from configuration only: ``DPMSF_BASE_PATH``, or the ASGI ``root_path`` that the
    Lambda adapter sets from API Gateway's stage (or ``uvicorn --root-path``). Never from the request's own path,
    which a caller controls and which would otherwise be reflected into ``/docs``.
    """
    root = (scope.get("root_path") or "").rstrip("/")
    base = settings.base_path
    if base and not root.endswith(base):  # behind uvicorn the base is stripped by us; on Lambda by the adapter
        root += base
    return root if _SAFE_ROOT.match(root) else ""


def create_app(settings: Settings | None = None, **overrides: Any) -> DPMSFApp:
    """Build an app from ``settings`` (default: environment and ``.env``); plugins load now, once."""
    settings = settings or Settings.from_env()
    if overrides:
        settings = settings.with_(**overrides)
    from .hardening import make_non_dumpable

    make_non_dumpable()  # same-uid processes cannot read our environment (admin and master keys) or memory
    folders = []
    sources = []
    for entry in settings.plugins:
        if entry.startswith("s3://"):
            from .s3source import S3PluginSource

            cache = os.path.join(settings.state_dir, "s3-cache", re.sub(r"[^A-Za-z0-9_.-]", "_", entry[5:]))
            source = S3PluginSource(entry, cache, refresh_seconds=settings.s3_refresh)
            sources.append(source)
            folders.append(str(source.cache_dir))
        else:
            folders.append(resolve_folder(entry, BUNDLED_PLUGINS))
    upload = None
    if settings.admin_id:
        from .admin import plan_upload

        upload = plan_upload(settings, folders, sources)
    from .sandbox.loader import SandboxedLoader

    loader = SandboxedLoader(settings)
    registry = Registry(
        folders,
        admin_id=settings.admin_id,
        sources=sources,
        reload=settings.reload,
        untrusted_loader=loader,
        owned_folders=[upload.folder] if upload is not None and upload.folder else [],
    )
    app = DPMSFApp(settings, registry)
    app.admin = upload
    app.on_shutdown.append(loader.close)
    from . import store

    store.configure(settings.store_url)  # a URL only: the backend opens on first use
    registry.load()
    return app
