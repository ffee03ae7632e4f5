"""Tenant modules are read with ``ast`` and served by proxies that run each call in the sandbox pool."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ..config import Settings
from ..discovery import Candidate, LoadedModule, Metadata


class SandboxedLoader:
    """The Registry's ``untrusted_loader``: never imports tenant code; the worker pool starts on first call."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: Any = None
        self._lock = threading.Lock()

    def pool(self) -> Any:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    from . import SandboxLimits, SandboxPool

                    limits = SandboxLimits(
                        wall_seconds=self.settings.sandbox_timeout, memory_mb=self.settings.sandbox_memory_mb
                    )
                    self._pool = SandboxPool(size=self.settings.sandbox_workers, limits=limits)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def __call__(self, candidate: Candidate, meta: Metadata) -> LoadedModule:
        from .reader import inspect_source

        source = meta.source
        if not source:
            with open(candidate.path, encoding="utf-8") as fh:
                source = fh.read()
        module = inspect_source(source, candidate.path)
        endpoints = [(ep.spec, self._proxy(module, ep)) for ep in module.endpoints]
        return LoadedModule(module=None, endpoints=endpoints, events=[])

    def _proxy(self, module: Any, endpoint: Any) -> Callable[..., Any]:
        loader = self

        async def call_in_sandbox(*args: Any, **kwargs: Any) -> Any:
            return await loader.pool().call(
                source=module.source,
                path=module.filename,
                function=endpoint.function,
                args=list(args),
                kwargs=kwargs,
                tenant=module.tenant,
                sha256=module.sha256,
            )

        call_in_sandbox.__name__ = endpoint.function
        call_in_sandbox.__qualname__ = endpoint.function
        call_in_sandbox.__doc__ = endpoint.doc
        signature = endpoint.signature()
        call_in_sandbox.__signature__ = signature  # type: ignore[attr-defined]
        call_in_sandbox.__annotations__ = {  # real types where the source's annotation was simple: validated here
            p.name: p.annotation
            for p in signature.parameters.values()
            if p.annotation is not p.empty and not isinstance(p.annotation, str)
        }
        call_in_sandbox.__dpmsf_params__ = [  # type: ignore[attr-defined]
            {
                "name": p.name,
                "kind": {"VAR_POSITIONAL": "args", "VAR_KEYWORD": "kwargs"}.get(p.kind.name, "named"),
                "type": p.annotation,
                "required": p.required,
            }
            for p in endpoint.params
        ]
        return call_in_sandbox
