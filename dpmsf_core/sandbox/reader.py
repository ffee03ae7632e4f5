"""Read an untrusted tenant module with ``ast`` only: the server learns its endpoints without ever importing it."""

from __future__ import annotations

import ast
import hashlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import PluginError
from ..expose import (
    EVENT_SOURCES,
    Definition,
    EndpointSpec,
    EventSpec,
    check_api_name,
    exposure,
    first_doc_line,
    parse_methods,
    parse_path,
)
from .annotations import resolve_annotation

_PKG = "dpmsf_core"
_ENDPOINT_KEYWORDS = ("method", "API", "auth", "path")
_EVENT_KEYWORDS = ("source", "match", "name")


class Unparsed:
    """A default value that is not a literal: the server cannot know it, only that the parameter is optional."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


@dataclass(frozen=True)
class ParamInfo:
    """One parameter as written in the source; ``default`` is the literal value, or ``Unparsed`` text."""

    name: str
    kind: inspect._ParameterKind
    default: Any = inspect.Parameter.empty
    annotation: str | None = None  # the annotation's source text

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty and self.kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        )


@dataclass(frozen=True)
class UntrustedEndpoint:
    """What ``@expose.endpoint`` would have attached to ``function`` at import, plus its signature and doc."""

    function: str
    spec: EndpointSpec
    params: tuple[ParamInfo, ...]
    doc: str | None
    is_async: bool
    lineno: int

    def signature(self) -> inspect.Signature:
        """An ``inspect.Signature`` for argument binding; simple annotations (int, list[str]...) become real types."""
        return _signature(self.params)


@dataclass(frozen=True)
class UntrustedEvent:
    """What ``@expose.event`` would have attached to ``function`` at import."""

    function: str
    spec: EventSpec
    params: tuple[ParamInfo, ...]
    is_async: bool
    lineno: int


@dataclass(frozen=True)
class UntrustedModule:
    """A tenant module as the server knows it: metadata, endpoints and events, all read from the source text."""

    filename: str
    tenant: str | None
    alias: str | None
    endpoints: tuple[UntrustedEndpoint, ...]
    events: tuple[UntrustedEvent, ...] = ()
    introspection: bool = False  # True: no @expose anywhere, every public function is exposed for GET and POST
    duplicates: tuple[str, ...] = ()  # endpoints dropped because an earlier function has their API name
    sha256: str = ""
    doc: str | None = None
    source: str = field(default="", repr=False, compare=False)


def inspect_file(path: str) -> UntrustedModule:
    """Read ``path`` (as text, never as code) and inspect it."""
    try:
        with open(path, encoding="utf-8") as fh:
            source = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise PluginError(f"cannot read the module: {exc}", path) from None
    return inspect_source(source, path)


def inspect_source(source: str, filename: str) -> UntrustedModule:
    """Parse ``source`` and mirror what importing it with the real ``expose`` decorators would produce."""
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as exc:
        raise PluginError.syntax(filename, exc) from None
    except ValueError as exc:  # null bytes
        raise PluginError(f"cannot parse the module: {exc}", filename) from None
    except (RecursionError, MemoryError):
        raise PluginError("nested too deeply to be read", filename) from None
    try:
        compile(tree, filename, "exec", dont_inherit=True)  # what the parser lets through (``def f(a, a)``)
        module = _Inspector(filename).run(tree, source)
        for endpoint in module.endpoints:
            endpoint.signature()  # the server builds it for every call: it must build now, or the module fails
    except SyntaxError as exc:
        raise PluginError.syntax(filename, exc) from None
    except RecursionError:
        raise PluginError("nested too deeply to be read", filename) from None
    except (ValueError, TypeError) as exc:
        raise PluginError(f"a function signature cannot be read: {exc}", filename) from None
    return module


class _Inspector:
    """One pass over a module's top level; names bound to ``expose`` are tracked so aliases work."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.expose_names: set[str] = {"expose"}  # names bound to the Expose object
        self.package_names: set[str] = {_PKG}  # names bound to the dpmsf_core package

    def run(self, tree: ast.Module, source: str) -> UntrustedModule:
        metadata: dict[str, str | None] = {"__tenant__": None, "__alias__": None}
        functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        for node in _top_level(tree.body):
            if isinstance(node, ast.Import | ast.ImportFrom):
                self._track_import(node)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                functions[node.name] = node  # a later def rebinds the name where it was first bound
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                self._read_metadata(node, metadata)
        self._refuse_commands(tree)

        definitions: list[Definition] = []
        for name, func in functions.items():
            spec: EndpointSpec | None = None
            events: list[EventSpec] = []
            for kind, call in self._expose_decorators(func):
                if kind == "endpoint":
                    spec = spec or self._endpoint_spec(func, call)  # the outermost @expose.endpoint wins
                else:
                    events.append(self._event_spec(func, call))
            definitions.append(Definition(name, spec, tuple(events), True, first_doc_line(ast.get_docstring(func))))
        found = exposure(definitions)
        endpoints = tuple(
            UntrustedEndpoint(
                name, spec, _params(functions[name]), ast.get_docstring(functions[name]),
                _is_async(functions[name]), functions[name].lineno,
            )
            for name, spec in found.endpoints
        )  # fmt: skip
        events_found = tuple(
            UntrustedEvent(name, ev, _params(functions[name]), _is_async(functions[name]), functions[name].lineno)
            for name, ev in found.events
        )
        return UntrustedModule(
            filename=self.filename,
            tenant=metadata["__tenant__"],
            alias=metadata["__alias__"],
            endpoints=endpoints,
            events=events_found,
            introspection=found.introspection,
            duplicates=found.duplicates,
            sha256=hashlib.sha256(source.encode("utf-8")).hexdigest(),
            doc=ast.get_docstring(tree),
            source=source,
        )

    # -- module level -------------------------------------------------------------------------------------------

    def _track_import(self, node: ast.Import | ast.ImportFrom) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == _PKG or alias.name.startswith(_PKG + "."):
                    if alias.asname is None:
                        self.package_names.add(_PKG)
                    elif alias.name == _PKG:
                        self.package_names.add(alias.asname)
                    elif alias.name == _PKG + ".expose":
                        self.expose_names.add(alias.asname)  # ``import dpmsf_core.expose as e``: the Expose object
            return
        if node.level == 0 and node.module in (_PKG, _PKG + ".expose"):
            for alias in node.names:
                if alias.name == "expose":
                    self.expose_names.add(alias.asname or "expose")

    def _read_metadata(self, node: ast.Assign | ast.AnnAssign, metadata: dict[str, str | None]) -> None:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for target in targets:
            if isinstance(target, ast.Name) and target.id in metadata:
                value = node.value
                if not (isinstance(value, ast.Constant) and isinstance(value.value, str)):
                    got = _text(value) if value is not None else "no value"
                    raise PluginError(f"{target.id} must be a string literal, got {got}", self.filename, node.lineno)
                metadata[target.id] = value.value

    def _refuse_commands(self, tree: ast.Module) -> None:
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "command" and self._is_expose(node.value):
                raise PluginError(
                    "expose.command is not available to tenant modules (they run sandboxed, without subprocesses)",
                    self.filename,
                    node.lineno,
                )

    # -- decorators ---------------------------------------------------------------------------------------------

    def _is_expose(self, node: ast.expr) -> bool:
        if isinstance(node, ast.Name):
            return node.id in self.expose_names
        return (
            isinstance(node, ast.Attribute)
            and node.attr == "expose"
            and isinstance(node.value, ast.Name)
            and node.value.id in self.package_names
        )

    def _expose_decorators(self, func: ast.FunctionDef | ast.AsyncFunctionDef) -> Iterator[tuple[str, ast.Call | None]]:
        """``(kind, call)`` for each ``@expose.endpoint``/``@expose.event`` on ``func``, outermost first."""
        for deco in func.decorator_list:
            call = deco if isinstance(deco, ast.Call) else None
            target = deco.func if isinstance(deco, ast.Call) else deco
            if (
                isinstance(target, ast.Attribute)
                and target.attr in ("endpoint", "event")
                and self._is_expose(target.value)
            ):
                yield target.attr, call

    def _endpoint_spec(self, func: ast.FunctionDef | ast.AsyncFunctionDef, call: ast.Call | None) -> EndpointSpec:
        values: dict[str, Any] = {"method": None, "API": None, "auth": None, "path": None}
        if call is not None:
            values.update(self._keywords(func, call, "endpoint", _ENDPOINT_KEYWORDS))
        try:
            methods = parse_methods(values["method"])
            auth = values["auth"]
            if auth is not None and not isinstance(auth, bool):
                raise PluginError(f"auth={auth!r} must be True, False or omitted")
            api = values["API"] if values["API"] is not None else func.name
            template: tuple[str, ...] | None = None
            if values["path"] is not None:  # a trusted module's rules, the parameters read from the AST
                takes = None if func.args.kwarg else {a.arg for a in [*func.args.args, *func.args.kwonlyargs]}
                api, template = parse_path(values["path"], values["API"], takes=takes, fname=func.name)
            doc = first_doc_line(ast.get_docstring(func))
            spec = EndpointSpec(api=check_api_name(api), methods=methods, auth=auth, summary=doc, template=template)
        except PluginError as exc:
            raise self._error(func, str(exc)) from None
        return spec

    def _event_spec(self, func: ast.FunctionDef | ast.AsyncFunctionDef, call: ast.Call | None) -> EventSpec:
        if call is None:
            raise self._error(func, "@expose.event needs a source, e.g. @expose.event(source='sqs')")
        values: dict[str, Any] = {"source": None, "match": None, "name": None}
        if call.args:
            if len(call.args) > 1:
                raise self._error(func, "@expose.event takes one positional argument (source)")
            values["source"] = self._literal(func, call.args[0], "source")
        values.update(self._keywords(func, call, "event", _EVENT_KEYWORDS))
        src = values["source"]
        if not isinstance(src, str) or src.lower() not in EVENT_SOURCES:
            raise self._error(func, f"source={src!r} is not an event source. Choices are: {'|'.join(EVENT_SOURCES)}")
        for key in ("match", "name"):
            if values[key] is not None and not isinstance(values[key], str):
                raise self._error(func, f"{key}={values[key]!r} must be a string")
        return EventSpec(source=src.lower(), match=values["match"], name=values["name"] or func.name)

    def _keywords(
        self, func: ast.FunctionDef | ast.AsyncFunctionDef, call: ast.Call, what: str, allowed: tuple[str, ...]
    ) -> dict[str, Any]:
        if what == "endpoint" and call.args:
            raise self._error(func, "@expose.endpoint(...) takes keyword arguments only: method=, API=, auth=, path=")
        out: dict[str, Any] = {}
        for kw in call.keywords:
            if kw.arg is None:
                raise self._error(func, f"@expose.{what}(**{_text(kw.value)}) cannot be read without running the code")
            if kw.arg not in allowed:
                raise self._error(
                    func, f"@expose.{what}() got an unexpected keyword {kw.arg!r}. Allowed: {', '.join(allowed)}"
                )
            out[kw.arg] = (
                self._method_value(func, kw.value) if kw.arg == "method" else self._literal(func, kw.value, kw.arg)
            )
        return out

    def _method_value(self, func: ast.FunctionDef | ast.AsyncFunctionDef, node: ast.expr) -> Any:
        """A literal, or the ``'GET|PUT'.split('|')`` idiom of the original framework."""
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "split"
            and isinstance(node.func.value, ast.Constant)
            and isinstance(node.func.value.value, str)
            and not node.keywords
            and len(node.args) <= 1
            and all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in node.args)
        ):
            sep = node.args[0].value if node.args else None  # type: ignore[attr-defined]  # checked: a str Constant
            return node.func.value.value.split(sep)
        return self._literal(func, node, "method")

    def _literal(self, func: ast.FunctionDef | ast.AsyncFunctionDef, node: ast.expr, key: str) -> Any:
        try:
            return ast.literal_eval(node)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise self._error(
                func, f"{key}={_text(node)} must be a literal (a string, list, True/False or None)"
            ) from None

    def _error(self, func: ast.FunctionDef | ast.AsyncFunctionDef, reason: str) -> PluginError:
        return PluginError(f"function {func.name!r}: {reason}", self.filename, func.lineno)


def _top_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements that run at import and bind module globals, including those inside ``if``/``try``/``with``."""
    for node in body:
        yield node
        if isinstance(node, ast.If):
            yield from _top_level(node.body)
            yield from _top_level(node.orelse)
        elif isinstance(node, ast.Try | ast.TryStar):
            yield from _top_level(node.body)
            for handler in node.handlers:
                yield from _top_level(handler.body)
            yield from _top_level(node.orelse)
            yield from _top_level(node.finalbody)
        elif isinstance(node, ast.With):
            yield from _top_level(node.body)


def _params(func: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[ParamInfo, ...]:
    a = func.args
    P = inspect.Parameter
    out: list[ParamInfo] = []
    positional = [(arg, P.POSITIONAL_ONLY) for arg in a.posonlyargs] + [
        (arg, P.POSITIONAL_OR_KEYWORD) for arg in a.args
    ]
    first_default = len(positional) - len(a.defaults)
    for i, (arg, kind) in enumerate(positional):
        default = _default(a.defaults[i - first_default]) if i >= first_default else P.empty
        out.append(ParamInfo(arg.arg, kind, default, _annotation(arg)))
    if a.vararg is not None:
        out.append(ParamInfo(a.vararg.arg, P.VAR_POSITIONAL, P.empty, _annotation(a.vararg)))
    for arg, kw_default in zip(a.kwonlyargs, a.kw_defaults, strict=True):
        default = _default(kw_default) if kw_default is not None else P.empty
        out.append(ParamInfo(arg.arg, P.KEYWORD_ONLY, default, _annotation(arg)))
    if a.kwarg is not None:
        out.append(ParamInfo(a.kwarg.arg, P.VAR_KEYWORD, P.empty, _annotation(a.kwarg)))
    return tuple(out)


def _default(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return Unparsed(_text(node))


def _annotation(arg: ast.arg) -> str | None:
    return _text(arg.annotation) if arg.annotation is not None else None


def _signature(params: tuple[ParamInfo, ...]) -> inspect.Signature:
    out = []
    for p in params:
        ann: Any = inspect.Parameter.empty
        if p.annotation is not None:
            ann = resolve_annotation(p.annotation)
        out.append(inspect.Parameter(p.name, p.kind, default=p.default, annotation=ann))
    return inspect.Signature(out)


def _is_async(func: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return isinstance(func, ast.AsyncFunctionDef)


def _text(node: ast.AST) -> str:
    text = ast.unparse(node)
    return text if len(text) <= 80 else text[:77] + "..."
