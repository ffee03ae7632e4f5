"""OpenAPI 3.1 for dynamic endpoints, built from signatures and docstrings; pydantic loads only for typed ones.

One operation per endpoint and method, at the URL its author declared (``/rest/services/<api>/``, with the path
template's ``{placeholders}`` as path parameters), or at its qualified URL (``/rest/services/<module>/<api>/``)
when several modules define the API; the other URL is noted in the description. Each module
is a tag, described by its docstring. ``requests.py`` says what a call may carry, ``answers.py`` what it may get
back, ``swagger.py`` serves ``/docs``; ``tests/test_schemathesis.py`` checks the document against the server.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable
from typing import Any

from ..config import Settings
from ..loading.registry import Endpoint, Snapshot
from ..resolve import SERVICES_PREFIX
from .answers import PROBLEM_SCHEMA, responses
from .requests import Components, request_shape
from .swagger import SWAGGER_ASSETS, swagger_asset, swagger_html

__all__ = ["SWAGGER_ASSETS", "build_openapi", "describe_endpoint", "parameters_of", "swagger_asset", "swagger_html"]


def parameters_of(ep: Endpoint) -> list[dict[str, Any]]:
    """Named parameters as ``__dir__`` lists them (no pydantic: annotations are shown as written)."""
    declared = getattr(ep.func, "__dpmsf_params__", None)
    if declared is not None:
        return list(declared)
    try:
        sig = inspect.signature(ep.func)
    except (TypeError, ValueError):
        return []
    out = []
    for p in sig.parameters.values():
        kinds: dict[inspect._ParameterKind, str] = {p.VAR_POSITIONAL: "args", p.VAR_KEYWORD: "kwargs"}
        kind = kinds.get(p.kind, "named")
        ann = p.annotation
        type_name = (
            None
            if ann is inspect.Parameter.empty
            else (ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann)))
        )
        if type_name == "RequestInfo":
            continue
        item: dict[str, Any] = {
            "name": p.name,
            "kind": kind,
            "type": type_name,
            "required": kind == "named" and p.default is inspect.Parameter.empty,
        }
        if p.default is not inspect.Parameter.empty and isinstance(p.default, str | int | float | bool | None):
            item["default"] = p.default
        out.append(item)
    return out


def describe_endpoint(ep: Endpoint, *, unique: bool, require_tokens: bool) -> dict[str, Any]:
    """One endpoint as ``__dir__`` lists it; ``path_params`` only for an endpoint with a path template."""
    qualified = f"{SERVICES_PREFIX}/{ep.module}/{ep.route()}/"
    out: dict[str, Any] = {
        "api": ep.api,
        "module": ep.module,
        "methods": list(ep.methods),
        "url": f"{SERVICES_PREFIX}/{ep.route()}/" if unique else qualified,
        "qualified_url": qualified,
        "parameters": parameters_of(ep),
        "doc": ep.doc,
        "async": ep.is_async,
        "auth": require_tokens if ep.auth is None else ep.auth,
        "tenant": ep.tenant,
        "sandboxed": not ep.trusted,
    }
    if ep.template is not None:
        out["path_params"] = list(ep.path_params)
    return out


def build_openapi(
    snapshot: Snapshot, visible: Callable[[str | None], bool], settings: Settings, root_path: str = ""
) -> dict[str, Any]:
    """The document for one caller (``visible`` says whose modules they see) at one snapshot."""
    components = Components()
    paths: dict[str, dict[str, Any]] = {}
    tags: dict[str, dict[str, Any]] = {}
    for ep in snapshot.endpoints():
        if not visible(ep.tenant):
            continue
        unique = len([e for e in snapshot.by_api.get(ep.api, ()) if visible(e.tenant)]) == 1
        # The URL the author declared (``path="notes"`` is /rest/services/notes/, as ``__dir__``'s url), unless
        # several modules define the API (then only the qualified URL answers).
        declared = unique
        beside_templates = any(e.template is not None for e in snapshot.modules[ep.module].routes.get(ep.api, ()))
        tags.setdefault(ep.module, _tag(ep, snapshot))
        ops = paths.setdefault(_url(ep, qualified=not declared), {})
        for method in ep.methods:
            ops[method.lower()] = _operation(ep, method, declared, beside_templates, settings, components)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "DPMSF services",
            "version": str(snapshot.version),
            "description": "Every plugin function exposed by this DPMSF server, one operation per endpoint and "
            "method at its URL (qualified by module where an API name is shared). Errors are RFC 9457 "
            "`application/problem+json`.",
        },
        "servers": [{"url": root_path or "/"}],
        "tags": list(tags.values()),
        "paths": paths,
        "components": {
            "securitySchemes": {
                "dpmsfToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Single-use DPMSF token (`dpmsf token`)",
                }
            },
            "schemas": {"Problem": PROBLEM_SCHEMA, **components.schemas},
        },
    }


def _literal(text: str) -> str:
    """A tenant's text as text: Swagger UI renders descriptions as Markdown (remote images, links, HTML) in the
    admin's browser too, so it goes in a fenced block longer than any run of tildes in it: nothing inside renders."""
    longest = max((len(run) for run in re.findall(r"~+", text)), default=0)
    fence = "~" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def _url(ep: Endpoint, *, qualified: bool) -> str:
    """``/rest/services/[<module>/]<api>[/<template>]/``."""
    return f"{SERVICES_PREFIX}/{ep.module}/{ep.route()}/" if qualified else f"{SERVICES_PREFIX}/{ep.route()}/"


def _operation(
    ep: Endpoint, method: str, declared: bool, beside_templates: bool, settings: Settings, components: Components
) -> dict[str, Any]:
    """``declared``: documented at its unqualified URL; ``beside_templates``: its API also has path templates, so
    an endpoint without one takes no URL segments."""
    shape = request_shape(ep, method, components)
    doc = ep.doc or ""
    if doc and not ep.trusted:
        doc = _literal(doc)
    elif doc:
        doc = _hard_breaks(doc)
    notes = []
    if declared:
        notes.append(f"Also served qualified by its module: `{method} {_url(ep, qualified=True)}`.")
    if ep.template is None and ep.plan.var_kw and not beside_templates:
        names = ", ".join(settings.url_parm_names[:3])
        notes.append(f"URL segments after the API name arrive as {names}, ... (at most {settings.num_url_parms}).")
    elif ep.template is None and ep.plan.positional and not ep.plan.free and not beside_templates:
        fill = "/".join("{" + name + "}" for name in ep.plan.positional)
        notes.append(f"URL segments fill the parameters in order: `{_url(ep, qualified=not declared)}{fill}/`.")
    op: dict[str, Any] = {
        "operationId": ".".join((ep.module, *ep.route().replace("{", "").replace("}", "").split("/"), method.lower())),
        "summary": _summary(ep),
        "description": "\n\n".join([doc, *notes]) if doc else "\n\n".join(notes),
        "tags": [ep.module],
        "parameters": shape.parameters,
        "responses": responses(ep, shape, timeout=bool(settings.function_timeout)),
    }
    if shape.body is not None:
        op["requestBody"] = shape.body
    if settings.require_tokens if ep.auth is None else ep.auth:
        op["security"] = [{"dpmsfToken": []}]
    return op


def _summary(ep: Endpoint) -> str:
    """One line: the endpoint's summary, else its docstring's first line (Swagger UI shows it as plain text)."""
    line = ep.summary or (ep.doc.splitlines()[0] if ep.doc else ep.api)
    return line if ep.trusted else " ".join(line.split())[:200]


def _tag(ep: Endpoint, snapshot: Snapshot) -> dict[str, Any]:
    """A module's tag: its docstring (what ``dpmsf new`` tells authors to write), else where it comes from."""
    tag: dict[str, Any] = {"name": ep.module}
    doc = _module_doc(ep)
    if doc:
        tag["description"] = doc
    return tag


def _module_doc(ep: Endpoint) -> str | None:
    if not ep.trusted:
        return None  # a sandboxed module is never imported here: its functions are proxies of ours
    module = sys.modules.get(getattr(ep.func, "__module__", "") or "")
    if module is None or module.__name__.startswith("dpmsf_core"):
        return None
    return _hard_breaks(inspect.cleandoc(module.__doc__)) if module.__doc__ else None


def _hard_breaks(text: str) -> str:
    """A trusted docstring as its author wrapped it: Swagger UI renders descriptions as Markdown, which joins the
    lines of a paragraph, so each line break inside one becomes a Markdown hard break (two trailing spaces)."""
    lines = text.splitlines()
    return "\n".join(
        line + "  " if line.strip() and i + 1 < len(lines) and lines[i + 1].strip() else line
        for i, line in enumerate(lines)
    )
