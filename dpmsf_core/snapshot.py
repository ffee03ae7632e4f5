"""What the registry publishes: the endpoints of each module, the report of every module found, and the frozen
snapshot a request resolves against (``resolve.py``), so a request never sees half a reload."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .expose import EndpointSpec, EventSpec
from .params import CallPlan


class Endpoint:
    """One callable API of one module; its ``plan`` (how arguments bind) is built when the module loads."""

    __slots__ = ("api", "auth", "doc", "func", "is_async", "methods", "module", "plan", "summary", "tenant", "trusted")

    def __init__(
        self,
        spec: EndpointSpec,
        func: Callable[..., Any],
        module: str,
        tenant: str | None,
        trusted: bool = True,
        doc: str | None = None,
    ) -> None:
        self.api = spec.api
        self.methods = spec.methods
        self.auth = spec.auth
        self.summary = spec.summary
        self.func = func
        self.module = module
        self.tenant = tenant
        self.trusted = trusted
        self.is_async = inspect.iscoroutinefunction(func)
        self.doc = doc if doc is not None else inspect.getdoc(func)
        self.plan = CallPlan(func)

    def allow(self) -> list[str]:
        allowed = list(self.methods)
        if "GET" in allowed and "HEAD" not in allowed:
            allowed.append("HEAD")
        if "OPTIONS" not in allowed:
            allowed.append("OPTIONS")
        return allowed

    def __repr__(self) -> str:
        return f"<Endpoint {self.module}/{self.api} {'|'.join(self.methods)}>"


@dataclass
class ModuleEntry:
    """A module that serves: its public name (alias or real name) and its endpoints by API name."""

    name: str
    real_name: str
    alias: str | None
    path: str
    folder: str
    tenant: str | None
    trusted: bool
    endpoints: dict[str, Endpoint]
    events: list[tuple[EventSpec, Callable[..., Any]]]
    loaded_at: float


@dataclass
class ModuleReport:
    """One line of ``__dir__``: every module found, whether it serves, and why not."""

    name: str
    real_name: str
    alias: str | None
    source: str
    folder: str
    tenant: str | None
    trusted: bool
    status: str  # loaded | error | stale (error, previous version serving) | conflict
    error: str | None = None
    endpoints: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.real_name,
            "alias": self.alias,
            "source": self.source,
            "folder": self.folder,
            "tenant": self.tenant,
            "trusted": self.trusted,
            "status": self.status,
            "error": self.error,
            "endpoints": self.endpoints,
            "events": self.events,
        }


@dataclass(frozen=True)
class Snapshot:
    """Everything a request needs to resolve a URL, frozen at one moment."""

    modules: dict[str, ModuleEntry]
    by_api: dict[str, tuple[Endpoint, ...]]
    reports: tuple[ModuleReport, ...]
    version: int
    problems: tuple[str, ...] = ()

    def endpoints(self) -> Iterable[Endpoint]:
        for entry in self.modules.values():
            yield from entry.endpoints.values()

    def events(self) -> list[tuple[EventSpec, Callable[..., Any]]]:
        return [ev for entry in self.modules.values() for ev in entry.events]


EMPTY = Snapshot(modules={}, by_api={}, reports=(), version=0)
