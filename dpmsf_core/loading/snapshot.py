"""What the registry publishes: the endpoints of each module, the report of every module found, and the frozen
snapshot a request resolves against (``resolve.py``), so a request never sees half a reload."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..expose import EndpointSpec, EventSpec, allowed_methods
from ..params import CallPlan


class Endpoint:
    """One callable API of one module; its ``plan`` (how arguments bind) is built when the module loads.

    A ``deferred`` endpoint (``routing_only``) comes from the packaged manifest: it resolves URLs like the real
    one but has no function, plan or doc until ``Registry.materialize`` imports its module (reading them before
    raises AttributeError rather than calling something else).
    """

    __slots__ = (
        "api",
        "auth",
        "deferred",
        "doc",
        "func",
        "is_async",
        "methods",
        "module",
        "path_params",
        "plan",
        "summary",
        "template",
        "tenant",
        "trusted",
    )

    def __init__(
        self,
        spec: EndpointSpec,
        func: Callable[..., Any],
        module: str,
        tenant: str | None,
        trusted: bool = True,
        doc: str | None = None,
    ) -> None:
        self._route(spec, module, tenant, trusted)
        self.func = func
        self.is_async = inspect.iscoroutinefunction(func)
        self.doc = doc if doc is not None else inspect.getdoc(func)
        self.plan = CallPlan(func)
        self.deferred = False

    @classmethod
    def routing_only(cls, spec: EndpointSpec, module: str, tenant: str | None, trusted: bool = True) -> Endpoint:
        """The routing data of an endpoint whose module is not imported yet."""
        ep = cls.__new__(cls)
        ep._route(spec, module, tenant, trusted)
        ep.deferred = True
        return ep

    def _route(self, spec: EndpointSpec, module: str, tenant: str | None, trusted: bool) -> None:
        """What resolving a URL needs, the same for an imported endpoint and a deferred one."""
        self.api = spec.api
        self.methods = spec.methods
        self.auth = spec.auth
        self.summary = spec.summary
        self.template = spec.template  # None: any URL segments; else exactly these (literals and {name})
        self.path_params = spec.path_params  # placeholder names in URL order (OpenAPI ``in: path``)
        self.module = module
        self.tenant = tenant
        self.trusted = trusted

    def allow(self) -> list[str]:
        return allowed_methods(self.methods)

    def match(self, segments: list[str]) -> dict[str, str] | None:
        """The template's values for the URL segments after the API name, or None when they do not fit it.

        Without a template every list fits (with no values: they arrive as ``parm_1``... or positionally).
        """
        if self.template is None:
            return {}
        if len(segments) != len(self.template):
            return None
        values: dict[str, str] = {}
        for pattern, segment in zip(self.template, segments, strict=True):
            if pattern.startswith("{") and pattern.endswith("}"):
                values[pattern[1:-1]] = segment
            elif pattern != segment:
                return None
        return values

    def route(self) -> str:
        """``tasks/{task_id}``: the URL after the module name, as declared (the API name alone without a template)."""
        return "/".join((self.api, *(self.template or ())))

    def __repr__(self) -> str:
        return f"<Endpoint {self.module}/{self.route()} {'|'.join(self.methods)}>"


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
    # every endpoint of each API, in module order: more than one when templates or methods tell them apart
    # (``tasks`` GET and POST, ``tasks/{task_id}``); ``endpoints`` holds the first of each
    routes: dict[str, tuple[Endpoint, ...]] = field(default_factory=dict)
    deferred: bool = False  # from the manifest: imported on its first call (its events hold no functions yet)
    version: str = ""  # manifest.content_version of the code serving: each answer names it (DPMSF-Plugin-Version)

    def __post_init__(self) -> None:
        if not self.routes:
            self.routes = {api: (ep,) for api, ep in self.endpoints.items()}


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
    """Everything a request needs to resolve a URL, frozen at one moment.

    ``by_api`` maps an API name to the first endpoint of it in each module that has it (one per module, so its
    length tells an ambiguous unqualified name); the module's ``routes`` hold the others.
    """

    modules: dict[str, ModuleEntry]
    by_api: dict[str, tuple[Endpoint, ...]]
    reports: tuple[ModuleReport, ...]
    version: int
    problems: tuple[str, ...] = ()
    stale: dict[str, str] = field(default_factory=dict)  # public module name -> why its newer file did not load
    deferred: frozenset[str] = frozenset()  # public names of modules served from the manifest, not imported yet

    def endpoints(self) -> Iterable[Endpoint]:
        """Every endpoint of every module, each route of an API on its own."""
        for entry in self.modules.values():
            for routes in entry.routes.values():
                yield from routes

    def events(self) -> list[tuple[EventSpec, Callable[..., Any]]]:
        return [ev for entry in self.modules.values() for ev in entry.events]


EMPTY = Snapshot(modules={}, by_api={}, reports=(), version=0)


def endpoints_by_api(modules: dict[str, ModuleEntry], reserved: set[str]) -> dict[str, tuple[Endpoint, ...]]:
    """Endpoints by API name, for resolving an unqualified URL; a tenant's endpoint under a name reserved for the
    admin is left out."""
    by_api: dict[str, list[Endpoint]] = {}
    for entry in modules.values():
        for ep in entry.endpoints.values():
            if entry.trusted or ep.api not in reserved:
                by_api.setdefault(ep.api, []).append(ep)
    return {k: tuple(v) for k, v in by_api.items()}
