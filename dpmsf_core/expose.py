"""The ``expose`` decorators only *mark* functions with a frozen spec; discovery collects them."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import PluginError

F = TypeVar("F", bound=Callable[..., Any])

ALLOWED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
DEFAULT_METHODS = ("GET", "POST")
EVENT_SOURCES = ("sqs", "sns", "s3", "eventbridge", "schedule", "dynamodb", "any")
_API_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.~-]*$")

ENDPOINT_ATTR = "__dpmsf_endpoint__"
EVENT_ATTR = "__dpmsf_event__"


@dataclass(frozen=True)
class EndpointSpec:
    """How one function is reachable over HTTP."""

    api: str
    methods: tuple[str, ...]
    auth: bool | None = None  # None: follow DPMSF_REQUIRE_TOKENS
    summary: str | None = None


@dataclass(frozen=True)
class EventSpec:
    """Which non-HTTP events (SQS, SNS, S3, EventBridge, schedules) a function takes."""

    source: str
    match: str | None = None  # queue/topic/bucket name, detail-type or rule name; None takes all of the source
    name: str = ""


@dataclass(frozen=True)
class Definition:
    """One module-level name as a loader found it: imported modules (``discovery.collect``) and tenant modules
    read with ``ast`` (``sandbox.reader``) both describe what they see this way, and ``exposure`` decides."""

    name: str
    endpoint: EndpointSpec | None = None  # from the outermost @expose.endpoint, if any
    events: tuple[EventSpec, ...] = ()
    own_function: bool = False  # a ``def`` of this module under its own name (not a lambda, class or import)
    summary: str | None = None  # the first line of its docstring


@dataclass(frozen=True)
class Exposure:
    """What a module exposes: endpoints and events by name, in module order, and the duplicates it dropped."""

    endpoints: tuple[tuple[str, EndpointSpec], ...]
    events: tuple[tuple[str, EventSpec], ...]
    duplicates: tuple[str, ...]
    introspection: bool


def exposure(definitions: Iterable[Definition]) -> Exposure:
    """The one rule of what a module exposes, whichever loader read it.

    With any ``expose`` mark in the module, only marked functions; without one (introspection mode), every own
    public ``def`` for GET and POST under its name. Two endpoints with one API name: the first in module order is
    served, the other is reported.
    """
    found = list(definitions)
    marked = any(d.endpoint is not None or d.events for d in found)
    if marked:
        candidates = [(d.name, d.endpoint) for d in found if d.endpoint is not None]
    else:
        candidates = [
            (d.name, EndpointSpec(api=d.name, methods=DEFAULT_METHODS, summary=d.summary))
            for d in found
            if d.own_function and not d.name.startswith("_")
        ]
    seen: dict[str, str] = {}
    endpoints: list[tuple[str, EndpointSpec]] = []
    duplicates: list[str] = []
    for name, spec in candidates:
        if spec.api in seen:
            duplicates.append(
                f"API {spec.api!r} is declared by both {seen[spec.api]}() and {name}(); {seen[spec.api]}() is kept"
            )
            continue
        seen[spec.api] = name
        endpoints.append((name, spec))
    events = tuple((d.name, ev) for d in found for ev in d.events)
    return Exposure(tuple(endpoints), events, tuple(duplicates), introspection=not marked)


def first_doc_line(doc: str | None) -> str | None:
    """A docstring's summary line: what OpenAPI, ``__dir__`` and Swagger show."""
    doc = (doc or "").strip()
    return doc.splitlines()[0].strip() if doc else None


def parse_methods(method: str | Iterable[str] | None) -> tuple[str, ...]:
    """``'GET|PUT'``, ``'GET,PUT'``, ``['GET', 'PUT']`` or ``None`` (GET and POST) -> ``('GET', 'PUT')``."""
    if method is None:
        return DEFAULT_METHODS
    if isinstance(method, str):
        parts: Sequence[Any] = re.split(r"[|,\s]+", method.strip())
    elif isinstance(method, Iterable):
        parts = list(method)
    else:
        raise PluginError(
            f"method={method!r} is not a string or a list of strings. Allowed: {'|'.join(ALLOWED_METHODS)}"
        )
    out: list[str] = []
    for part in parts:
        if not isinstance(part, str):
            raise PluginError(f"method={method!r} holds {part!r}, not a string")
        name = part.strip().upper()
        if not name:
            continue
        if name not in ALLOWED_METHODS:
            raise PluginError(
                f"method={method!r} names {part!r}, not an HTTP method. Allowed: {'|'.join(ALLOWED_METHODS)}"
            )
        if name not in out:
            out.append(name)
    if not out:
        raise PluginError(f"method={method!r} names no HTTP method. Allowed: {'|'.join(ALLOWED_METHODS)}")
    return tuple(out)


def check_api_name(api: str) -> str:
    if not isinstance(api, str) or not _API_NAME.match(api) or api.startswith("__"):
        raise PluginError(f"API={api!r} is not a valid API name: use letters, digits, '-', '_', '.', '~'")
    return api


class Expose:
    """``expose.endpoint``, ``expose.event`` and ``expose.command``: the whole plugin-facing vocabulary."""

    def endpoint(
        self,
        func: F | None = None,
        *,
        method: str | Iterable[str] | None = None,
        API: str | None = None,
        auth: bool | None = None,
    ) -> Any:
        """Mark ``func`` as an HTTP endpoint; usable bare (``@expose.endpoint``) or called."""
        methods = parse_methods(method)
        if auth is not None and not isinstance(auth, bool):
            raise PluginError(f"auth={auth!r} must be True, False or omitted")

        def mark(f: F) -> F:
            if not callable(f):
                raise PluginError(f"@expose.endpoint applied to {f!r}, which is not a function")
            spec = EndpointSpec(
                api=check_api_name(API or f.__name__), methods=methods, auth=auth, summary=first_doc_line(f.__doc__)
            )
            setattr(f, ENDPOINT_ATTR, spec)
            return f

        return mark(func) if func is not None else mark

    def event(self, source: str, *, match: str | None = None, name: str | None = None) -> Callable[[F], F]:
        """Mark ``func`` as a handler of non-HTTP events from ``source`` (sqs, sns, s3, eventbridge, schedule)."""
        src = (source or "").lower()
        if src not in EVENT_SOURCES:
            raise PluginError(f"source={source!r} is not an event source. Choices are: {'|'.join(EVENT_SOURCES)}")

        def mark(f: F) -> F:
            setattr(f, EVENT_ATTR, EventSpec(source=src, match=match, name=name or f.__name__))
            return f

        return mark

    def command(
        self,
        API: str,
        argv: Sequence[str] | str,
        *,
        method: str | Iterable[str] | None = None,
        timeout: float = 30.0,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        shell: bool = False,
        auth: bool | None = None,
        doc: str | None = None,
    ) -> Callable[..., Any]:
        """An endpoint backed by a program: ``hello = expose.command(API="hello-node", argv=["node", "hello.js"])``."""
        from .commands import command_function  # the subprocess machinery loads only for plugins that use it

        module_name = sys._getframe(1).f_globals.get("__name__", "__main__")
        module_file = sys._getframe(1).f_globals.get("__file__")
        func = command_function(
            api=check_api_name(API),
            argv=argv,
            timeout=timeout,
            cwd=cwd,
            env=env,
            shell=shell,
            module_name=module_name,
            module_file=module_file,
            doc=doc,
        )
        return self.endpoint(func, method=method, API=API, auth=auth)


expose = Expose()


def endpoint_spec(obj: Any) -> EndpointSpec | None:
    return getattr(obj, ENDPOINT_ATTR, None) if callable(obj) else None


def event_spec(obj: Any) -> EventSpec | None:
    return getattr(obj, EVENT_ATTR, None) if callable(obj) else None
