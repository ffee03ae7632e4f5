"""OpenAPI 3.1 for dynamic endpoints, built from signatures and docstrings; pydantic loads only for typed ones."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .config import Settings
from .registry import Endpoint, Snapshot
from .resolve import SERVICES_PREFIX

_PROBLEM = {
    "description": "Problem (RFC 9457)",
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
}


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
    qualified = f"{SERVICES_PREFIX}/{ep.module}/{ep.api}/"
    return {
        "api": ep.api,
        "module": ep.module,
        "methods": list(ep.methods),
        "url": f"{SERVICES_PREFIX}/{ep.api}/" if unique else qualified,
        "qualified_url": qualified,
        "parameters": parameters_of(ep),
        "doc": ep.doc,
        "async": ep.is_async,
        "auth": require_tokens if ep.auth is None else ep.auth,
        "tenant": ep.tenant,
        "sandboxed": not ep.trusted,
    }


def _schemas_for(ep: Endpoint) -> tuple[dict[str, dict[str, Any]], set[str], bool]:
    """JSON schema per named parameter (pydantic for typed ones), required names, and whether it takes **kwargs."""
    try:
        sig = inspect.signature(ep.func)
    except (TypeError, ValueError):
        return {}, set(), True
    hints: dict[str, Any] = {}
    if any(p.annotation is not inspect.Parameter.empty for p in sig.parameters.values()):
        from .params import type_hints

        hints = type_hints(ep.func)
    props: dict[str, dict[str, Any]] = {}
    required: set[str] = set()
    var_kw = False
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            var_kw = True
            continue
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        hint = hints.get(p.name)
        if getattr(hint, "__name__", None) == "RequestInfo":
            continue
        schema: dict[str, Any] = {}
        if hint is not None and hint is not Any:
            try:
                from pydantic import TypeAdapter

                schema = TypeAdapter(hint).json_schema()
            except Exception:  # a type pydantic cannot describe is documented as "any"
                schema = {}
        if p.default is not inspect.Parameter.empty:
            try:
                from .responses import dumps

                dumps(p.default)
                schema["default"] = p.default
            except (TypeError, ValueError):
                pass
        else:
            required.add(p.name)
        props[p.name] = schema
    return props, required, var_kw


def build_openapi(
    snapshot: Snapshot, visible: Callable[[str | None], bool], settings: Settings, root_path: str = ""
) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for ep in snapshot.endpoints():
        if not visible(ep.tenant):
            continue
        props, required, var_kw = _schemas_for(ep)
        doc = ep.doc or ""
        summary = ep.summary or (doc.splitlines()[0] if doc else ep.api)
        unique = len([e for e in snapshot.by_api.get(ep.api, ()) if visible(e.tenant)]) == 1
        url_note = (
            f"URL parameters after the API name arrive as {', '.join(settings.url_parm_names[:3])}, ... "
            f"(at most {settings.num_url_parms})."
        )
        ops: dict[str, Any] = {}
        for method in ep.methods:
            op: dict[str, Any] = {
                "operationId": f"{ep.module}.{ep.api}.{method.lower()}",
                "summary": summary,
                "description": (doc + "\n\n" if doc else "") + url_note,
                "tags": [ep.module],
                "responses": {
                    "200": {
                        "description": '`{"results": <return value>}`',
                        "content": {"application/json": {"schema": {"type": "object", "properties": {"results": {}}}}},
                    },
                    "422": _PROBLEM,
                    "500": _PROBLEM,
                },
            }
            if settings.require_tokens if ep.auth is None else ep.auth:
                op["security"] = [{"dpmsfToken": []}]
            if method in ("GET", "HEAD", "DELETE", "OPTIONS"):
                op["parameters"] = [
                    {"name": name, "in": "query", "required": name in required, "schema": schema}
                    for name, schema in props.items()
                ]
            else:
                body_props: dict[str, Any] = {"args": {"type": "array", "description": "positional arguments"}}
                body_props.update(props)
                op["requestBody"] = {
                    "required": bool(required),
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": body_props,
                                "required": sorted(required),
                                "additionalProperties": var_kw,
                            }
                        }
                    },
                }
            ops[method.lower()] = op
        paths[f"{SERVICES_PREFIX}/{ep.module}/{ep.api}/"] = ops
        if unique and ep.module != ep.api:
            paths.setdefault(
                f"{SERVICES_PREFIX}/{ep.api}/",
                {m: {**o, "operationId": o["operationId"] + ".short"} for m, o in ops.items()},
            )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "DPMSF services",
            "version": str(snapshot.version),
            "description": "Every plugin function exposed by this DPMSF server.",
        },
        "servers": [{"url": root_path or "/"}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "dpmsfToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Single-use DPMSF token (`dpmsf token`)",
                }
            },
            "schemas": {
                "Problem": {
                    "type": "object",
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "request_id": {"type": "string"},
                    },
                }
            },
        },
    }


SWAGGER_ASSETS = {
    "swagger-ui-bundle.min.js": "application/javascript; charset=utf-8",
    "swagger-ui.min.css": "text/css; charset=utf-8",
}


def swagger_html(openapi_url: str = "/openapi.json", assets: str = "/docs") -> bytes:
    """Swagger UI that works offline: its script and style come from us (``swagger_asset``), not from a CDN.

    ``openapi_url`` and ``assets`` are built from configuration only (never from the request), and are checked
    again here: they go into a page.
    """
    import html
    import json

    for url in (openapi_url, assets):
        if not url.startswith("/") or any(c in url for c in "\"'<>&\\ "):
            raise ValueError(f"unsafe URL for the docs page: {url!r}")
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>DPMSF services</title>
<link rel="stylesheet" href="{html.escape(assets)}/swagger-ui.min.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{html.escape(assets)}/swagger-ui-bundle.min.js"></script>
<script>
window.ui = SwaggerUIBundle({{url: {json.dumps(openapi_url)}, dom_id: "#swagger-ui", deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  layout: "BaseLayout"}});
</script>
</body>
</html>
"""
    return page.encode("utf-8")


def swagger_asset(name: str) -> tuple[bytes, str] | None:
    """Swagger UI's script or style, from the copy aws-lambda-powertools ships (a dependency already)."""
    content_type = SWAGGER_ASSETS.get(name)
    if content_type is None:
        return None
    from importlib.resources import files

    data = files("aws_lambda_powertools.event_handler.openapi.swagger_ui").joinpath(name).read_bytes()
    return data, content_type
