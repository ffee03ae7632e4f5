"""A tenant module's reading (``UntrustedModule``) as plain JSON data and back, for the tenant index.

The reader parses the whole module to learn its endpoints; the index keeps what it learnt, so a start-up or a
rebuild needs only the module's bytes (to check their hash) instead of another parse. Restoring checks every
field's type: a bad description raises ``ValueError`` and the module is read again, never trusted as it is.
Default values travel as their ``repr`` and come back through ``ast.literal_eval`` (no code runs).
"""

from __future__ import annotations

import ast
import inspect
from typing import Any, NoReturn

from ..expose import EndpointSpec
from .reader import ParamInfo, Unparsed, UntrustedEndpoint, UntrustedModule

_P = inspect.Parameter
_KINDS = {
    k.value: k
    for k in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD, _P.VAR_POSITIONAL, _P.KEYWORD_ONLY, _P.VAR_KEYWORD)
}
_MAX_TEXT = 64 * 1024
DOC_CHARS = 4096  # a docstring kept in the index: what ``__dir__`` and OpenAPI show needs no more


def describe(module: UntrustedModule) -> dict[str, Any]:
    """What the server knows of ``module`` without its source: JSON-ready, its docstrings bounded (``DOC_CHARS``:
    a 200 kB docstring of control characters once took 2.4 MB of the shared index, escaped twice over)."""
    return {
        "tenant": module.tenant,
        "alias": module.alias,
        "doc": _bounded(module.doc),
        "introspection": module.introspection,
        "duplicates": list(module.duplicates),
        "endpoints": [_endpoint(ep) for ep in module.endpoints],
    }


def _endpoint(ep: UntrustedEndpoint) -> dict[str, Any]:
    spec = ep.spec
    return {
        "function": ep.function,
        "api": spec.api,
        "methods": list(spec.methods),
        "auth": spec.auth,
        "summary": _bounded(spec.summary),
        "template": None if spec.template is None else list(spec.template),
        "doc": _bounded(ep.doc),
        "is_async": ep.is_async,
        "lineno": ep.lineno,
        "params": [_param(p) for p in ep.params],
    }


def _bounded(text: str | None) -> str | None:
    """``text`` cut to ``DOC_CHARS`` characters (marked with an ellipsis)."""
    return text if text is None or len(text) <= DOC_CHARS else text[: DOC_CHARS - 1] + "\u2026"


def _param(p: ParamInfo) -> dict[str, Any]:
    out: dict[str, Any] = {"name": p.name, "kind": p.kind.value, "annotation": p.annotation}
    if p.default is not inspect.Parameter.empty:
        unparsed = getattr(p.default, "text", None)
        out["default"] = {"unparsed": unparsed} if unparsed is not None else {"literal": repr(p.default)}
    return out


def restore(data: Any, source: str, filename: str, sha256: str) -> UntrustedModule:
    """The module ``describe`` wrote, with its (verified) ``source``; ValueError if anything is not as written."""
    try:
        endpoints = tuple(_restore_endpoint(e) for e in _list(data, "endpoints"))
        module = UntrustedModule(
            filename=filename,
            tenant=_text(data, "tenant"),
            alias=_text(data, "alias", optional=True),
            endpoints=endpoints,
            introspection=_flag(data, "introspection"),
            duplicates=tuple(_text({"d": d}, "d") for d in _list(data, "duplicates")),
            sha256=sha256,
            doc=_text(data, "doc", optional=True),
            source=source,
        )
        for ep in module.endpoints:
            ep.signature()  # built for every call: it must build now
    except (KeyError, TypeError, AttributeError, SyntaxError, RecursionError, MemoryError) as exc:
        raise ValueError(f"not a module description: {type(exc).__name__}: {exc}") from None
    return module


def _restore_endpoint(item: Any) -> UntrustedEndpoint:
    template = item["template"]
    spec = EndpointSpec(
        _text(item, "api"),
        tuple(_text({"m": m}, "m") for m in _list(item, "methods")),
        item["auth"] if item["auth"] is None or isinstance(item["auth"], bool) else _bad("auth"),
        _text(item, "summary", optional=True),
        None if template is None else tuple(_text({"s": s}, "s") for s in _list(item, "template")),
    )
    lineno = item["lineno"]
    if not isinstance(lineno, int) or isinstance(lineno, bool):
        _bad("lineno")
    return UntrustedEndpoint(
        function=_text(item, "function"),
        spec=spec,
        params=tuple(_restore_param(p) for p in _list(item, "params")),
        doc=_text(item, "doc", optional=True),
        is_async=_flag(item, "is_async"),
        lineno=lineno,
    )


def _restore_param(item: Any) -> ParamInfo:
    kind = _KINDS.get(item["kind"]) if isinstance(item["kind"], int) else None
    if kind is None:
        raise ValueError("'kind' has the wrong type")
    default: Any = inspect.Parameter.empty
    if "default" in item:
        found = item["default"]
        if "unparsed" in found:
            default = Unparsed(_text(found, "unparsed"))
        else:
            default = ast.literal_eval(_text(found, "literal"))
    return ParamInfo(_text(item, "name"), kind, default, _text(item, "annotation", optional=True))


def _text(item: Any, key: str, optional: bool = False) -> Any:
    value = item[key]
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        _bad(key)
    return value


def _flag(item: Any, key: str) -> bool:
    value = item[key]
    if not isinstance(value, bool):
        _bad(key)
    return value


def _list(item: Any, key: str) -> list[Any]:
    value = item[key]
    if not isinstance(value, list):
        _bad(key)
    return value


def _bad(key: str) -> NoReturn:
    raise ValueError(f"{key!r} has the wrong type")
