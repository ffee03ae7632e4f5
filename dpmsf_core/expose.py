"""The ``expose`` decorators only *mark* functions with a frozen spec; discovery collects them."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, TypeVar, overload

from .errors import PluginError

F = TypeVar("F", bound=Callable[..., Any])

ALLOWED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
DEFAULT_METHODS = ("GET", "POST")
EVENT_SOURCES = ("sqs", "sns", "s3", "eventbridge", "schedule", "dynamodb", "any")
_API_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.~-]*$")
_PLACEHOLDER = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")

ENDPOINT_ATTR = "__dpmsf_endpoint__"
EVENT_ATTR = "__dpmsf_event__"


def allowed_methods(methods: Iterable[str]) -> list[str]:
    """What ``Allow`` lists for an endpoint declaring ``methods``: those, HEAD wherever GET is (RFC 9110 9.3.2: a GET
    answered without its body) and OPTIONS always (the CORS preflight). The one copy of the rule."""
    allowed = list(dict.fromkeys(methods))
    if "GET" in allowed and "HEAD" not in allowed:
        allowed.append("HEAD")
    if "OPTIONS" not in allowed:
        allowed.append("OPTIONS")
    return allowed


def runs_for(methods: Iterable[str], method: str) -> bool:
    """Whether an endpoint declaring ``methods`` runs for a ``method`` request: declared, or HEAD where GET is (an
    undeclared OPTIONS is the preflight, answered without running it)."""
    declared = tuple(methods)
    return method in declared or (method == "HEAD" and "GET" in declared)


# The specs are NamedTuples, not frozen dataclasses: as immutable, and 0.1 ms to define instead of 0.8 ms, which
# every Lambda cold start pays for each of them (discovery, resolve and logconfig do the same).
class EndpointSpec(NamedTuple):
    """How one function is reachable over HTTP."""

    api: str
    methods: tuple[str, ...]
    auth: bool | None = None  # None: follow DPMSF_REQUIRE_TOKENS
    summary: str | None = None
    # path="tasks/{task_id}": the URL segments after the API name, literals and {name} placeholders; None takes
    # any segments (parm_1, parm_2, ... or, for a typed function, its parameters in order)
    template: tuple[str, ...] | None = None

    @property
    def path_params(self) -> tuple[str, ...]:
        """The names of the template's placeholders, in URL order: what OpenAPI documents as ``in: path``."""
        return tuple(seg[1:-1] for seg in self.template or () if is_placeholder(seg))

    def route(self) -> str:
        """``tasks/{task_id}`` (with a template) or ``tasks``: the URL after the module, for docs and messages."""
        return "/".join((self.api, *(self.template or ())))


class EventSpec(NamedTuple):
    """Which non-HTTP events (SQS, SNS, S3, EventBridge, schedules) a function takes."""

    source: str
    match: str | None = None  # queue/topic/bucket name, detail-type or rule name; None takes all of the source
    name: str = ""


class Definition(NamedTuple):
    """One module-level name as a loader found it: imported modules (``discovery.collect``) and tenant modules
    read with ``ast`` (``sandbox.reader``) both describe what they see this way, and ``exposure`` decides."""

    name: str
    endpoint: EndpointSpec | None = None  # from the outermost @expose.endpoint, if any
    events: tuple[EventSpec, ...] = ()
    own_function: bool = False  # a ``def`` of this module under its own name (not a lambda, class or import)
    summary: str | None = None  # the first line of its docstring


class Exposure(NamedTuple):
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
    kept: list[tuple[str, EndpointSpec]] = []
    endpoints: list[tuple[str, EndpointSpec]] = []
    duplicates: list[str] = []
    for name, spec in candidates:
        clash = next((other for other, known in kept if _overlaps(known, spec)), None)
        if clash is not None:
            where = f"API {spec.route()!r}" + (f" ({'|'.join(spec.methods)})" if spec.template is not None else "")
            duplicates.append(f"{where} is declared by both {clash}() and {name}(); {clash}() is kept")
            continue
        kept.append((name, spec))
        endpoints.append((name, spec))
    events = tuple((d.name, ev) for d in found for ev in d.events)
    return Exposure(tuple(endpoints), events, tuple(duplicates), introspection=not marked)


def _overlaps(a: EndpointSpec, b: EndpointSpec) -> bool:
    """Two endpoints of one API may share a module when a request can tell them apart: by their templates'
    shape (``tasks`` and ``tasks/{task_id}``), or by method (GET and POST ``tasks``). Without a template, one per API.
    """
    if a.api != b.api:
        return False
    if a.template is None or b.template is None:
        return a.template is None and b.template is None
    shape_a = [None if is_placeholder(seg) else seg for seg in a.template]
    shape_b = [None if is_placeholder(seg) else seg for seg in b.template]
    return shape_a == shape_b and bool(set(a.methods) & set(b.methods))


def is_placeholder(segment: str) -> bool:
    return _PLACEHOLDER.match(segment) is not None


def parse_path(
    path: str,
    api: str | None,
    func: Callable[..., Any] | None = None,
    *,
    takes: set[str] | None = None,
    fname: str = "the function",
) -> tuple[str, tuple[str, ...]]:
    """``path="tasks/{task_id}"`` -> ``("tasks", ("{task_id}",))``: the API name, then the segments after it.

    Checked when the plugin loads: the first segment is the API name (the same as ``API=`` if both are given),
    placeholders are ``{identifier}``, each once, and each a parameter of ``func`` (unless it takes ``**kwargs``).
    """
    if not isinstance(path, str):
        raise PluginError(f"path={path!r} must be a string such as 'tasks/{{task_id}}'")
    segments = [s for s in path.strip().strip("/").split("/")]
    if not segments or not segments[0] or any(not s for s in segments):
        raise PluginError(f"path={path!r} is not a URL template such as 'tasks/{{task_id}}' (no empty segments)")
    head, rest = segments[0], tuple(segments[1:])
    if is_placeholder(head):
        raise PluginError(f"path={path!r} must start with the API name, e.g. 'tasks/{{task_id}}'")
    check_api_name(head)
    if api is not None and api != head:
        raise PluginError(f"path={path!r} starts with {head!r} but API={api!r}: give one of them, or the same name")
    names: list[str] = []
    for seg in rest:
        if is_placeholder(seg):
            names.append(seg[1:-1])
        elif "{" in seg or "}" in seg:
            raise PluginError(f"path={path!r}: {seg!r} is neither a literal nor a whole '{{name}}' placeholder")
        elif not _API_NAME.match(seg):
            raise PluginError(f"path={path!r}: {seg!r} is not a valid URL segment (letters, digits, '-_.~')")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise PluginError(f"path={path!r} names {{{repeated[0]}}} twice")
    if func is not None and names:
        _check_placeholders(path, names, func)
    elif takes is not None and names:  # a tenant module, read without running it: its parameters from the AST
        check_placeholders(path, names, takes, fname)
    return head, rest


def _check_placeholders(path: str, names: list[str], func: Callable[..., Any]) -> None:
    import inspect

    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    takes = {n for n, p in params.items() if p.kind is not inspect.Parameter.POSITIONAL_ONLY}
    check_placeholders(path, names, takes, getattr(func, "__name__", "the function"))


def check_placeholders(path: str, names: Sequence[str], takes: set[str], fname: str) -> None:
    """Every placeholder of ``path`` is one of the parameters ``fname`` takes by name (a load error if not)."""
    missing = [n for n in names if n not in takes]
    if missing:
        raise PluginError(f"path={path!r} names {{{missing[0]}}}, which {fname}() does not take as a parameter")


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

    @overload
    def endpoint(
        self,
        func: F,
        *,
        method: str | Iterable[str] | None = None,
        API: str | None = None,
        auth: bool | None = None,
        path: str | None = None,
    ) -> F: ...

    @overload
    def endpoint(
        self,
        func: None = None,
        *,
        method: str | Iterable[str] | None = None,
        API: str | None = None,
        auth: bool | None = None,
        path: str | None = None,
    ) -> Callable[[F], F]: ...

    def endpoint(
        self,
        func: F | None = None,
        *,
        method: str | Iterable[str] | None = None,
        API: str | None = None,
        auth: bool | None = None,
        path: str | None = None,
    ) -> F | Callable[[F], F]:
        """Mark ``func`` as an HTTP endpoint; usable bare (``@expose.endpoint``) or called.

        ``path="tasks/{task_id}"`` names the API (``tasks``) and the URL segments after it: ``{task_id}`` binds
        to the parameter of that name, converted and validated by its annotation. Endpoints of one API with
        templates may share it by method or by shape (``tasks`` for GET and POST, ``tasks/{task_id}`` for PUT).
        """
        methods = parse_methods(method)
        if auth is not None and not isinstance(auth, bool):
            raise PluginError(f"auth={auth!r} must be True, False or omitted")

        def mark(f: F) -> F:
            if not callable(f):
                raise PluginError(f"@expose.endpoint applied to {f!r}, which is not a function")
            api, template = (API or f.__name__, None) if path is None else parse_path(path, API, f)
            spec = EndpointSpec(
                api=check_api_name(api),
                methods=methods,
                auth=auth,
                summary=first_doc_line(f.__doc__),
                template=template,
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
        from .commands.programs import command_function  # the subprocess machinery loads only for plugins that use it

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
