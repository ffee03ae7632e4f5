"""What a request may carry, per endpoint and method, as the server binds it (``params.py``): path, query, body.

The schemas promise no more and no less than the server enforces, so a request valid by the document is
accepted and an invalid one is refused: unknown body keys are dropped by the server (not refused), so no
``additionalProperties: false`` is declared unless a pydantic model forbids extras itself; ``"args"`` may be
``null`` (the server reads it as "no positional arguments").
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from ..loading.registry import Endpoint
from ..params import type_hints

BODY_METHODS = ("POST", "PUT", "PATCH")  # GET, HEAD, DELETE and OPTIONS take their arguments from the query

# What the server accepts as "args" and "__map__" (``params.assemble``): an array or null; an object of identifiers.
ARGS_SCHEMA: dict[str, Any] = {"type": ["array", "null"], "description": "positional arguments, in order"}
MAP_SCHEMA: dict[str, Any] = {
    "type": ["object", "null"],
    "additionalProperties": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
    "description": 'renames URL parameters for this call, e.g. {"parm_1": "p1"}',
}


@dataclass
class Components:
    """Schemas shared by the whole document (pydantic models' ``$defs``), hoisted to ``components/schemas``."""

    schemas: dict[str, Any] = field(default_factory=dict)
    _hints: dict[int, dict[str, Any]] = field(default_factory=dict)

    def hints(self, ep: Endpoint) -> dict[str, Any]:
        """The annotations the server validates ``ep``'s arguments with (``params.type_hints``), resolved once."""
        found = self._hints.get(id(ep))
        if found is None:
            signature = ep.plan.signature
            typed = signature is not None and any(p.annotation is not p.empty for p in signature.parameters.values())
            found = self._hints[id(ep)] = type_hints(ep.func) if typed else {}
        return found

    def schema_of(self, hint: Any, module: str) -> dict[str, Any]:
        """The JSON schema pydantic validates ``hint`` with; ``{}`` (anything) for what it cannot describe."""
        if hint is None or hint is Any or hint is inspect.Parameter.empty or hint is object:
            return {}
        try:
            from pydantic import TypeAdapter

            adapter = TypeAdapter(hint)
            schema = adapter.json_schema(ref_template="#/components/schemas/{model}")
            defs = schema.pop("$defs", {})
            if any(name in self.schemas and self.schemas[name] != d for name, d in defs.items()):
                schema = adapter.json_schema(ref_template=f"#/components/schemas/{module}.{{model}}")
                defs = {f"{module}.{name}": d for name, d in schema.pop("$defs", {}).items()}
        except Exception:  # a type pydantic cannot describe is documented as "any"
            return {}
        self.schemas.update(defs)
        return schema


@dataclass
class RequestShape:
    """One operation's inputs: ``parameters`` (path and query) and the ``requestBody``, or None."""

    parameters: list[dict[str, Any]]
    body: dict[str, Any] | None
    validates: bool  # the server may answer 422 (typed parameters, or "args"/"__map__" in a body)


def request_shape(ep: Endpoint, method: str, components: Components) -> RequestShape:
    """The inputs of ``ep`` called with ``method``, from its signature and annotations (as ``CallPlan`` binds)."""
    plan = ep.plan
    in_path = ep.path_params
    named, required, var_positional = _named(ep, components, exclude={*in_path, plan.inject or ""})
    path_schemas = {name: _named_schema(ep, name, components) for name in in_path}
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": _path_schema(path_schemas[name])} for name in in_path
    ]
    if method not in BODY_METHODS:
        parameters += [
            {"name": name, "in": "query", "required": name in required, "schema": schema}
            for name, schema in named.items()
        ]
        return RequestShape(parameters, None, validates=not plan.free and not plan.nothing)
    if plan.accepts_raw_body and not named:
        # a function that reads the raw body (RequestInfo) takes any bytes of any type
        return RequestShape(parameters, {"required": False, "content": {"*/*": {"schema": {}}}}, validates=False)
    model = plan.model_param
    if model is not None and list(named) == [model]:
        schema = named[model]  # a single pydantic model takes the whole body (or the body's key of its name)
        body: dict[str, Any] = {"required": True, "content": {"application/json": {"schema": schema}}}
        return RequestShape(parameters, body, validates=True)
    properties: dict[str, Any] = {}
    if var_positional or plan.free:
        properties["args"] = ARGS_SCHEMA
    if plan.var_kw:
        properties["__map__"] = MAP_SCHEMA
    properties.update(named)
    schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = sorted(required)
    body = {"required": bool(required), "content": {"application/json": {"schema": schema}}}
    return RequestShape(parameters, body, validates=True)


def _named(
    ep: Endpoint, components: Components, *, exclude: set[str]
) -> tuple[dict[str, dict[str, Any]], set[str], bool]:
    """Schema per named parameter, the required names, and whether ``*args`` may be given in the body.

    ``*args`` is offered only when no named positional parameter comes before it: otherwise ``"args"`` and
    those names would fill the same parameters, and the server refuses the pair (422).
    """
    signature = ep.plan.signature
    if signature is None:
        return {}, set(), True
    props: dict[str, dict[str, Any]] = {}
    required: set[str] = set()
    var_positional = False
    positional_before = False
    for p in signature.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            var_positional = not positional_before
            continue
        if p.kind is p.VAR_KEYWORD or p.name in exclude:
            continue
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional_before = True
        schema = _named_schema(ep, p.name, components)
        if p.default is inspect.Parameter.empty:
            required.add(p.name)
        elif _json_safe(p.default):
            schema = {**schema, "default": p.default}
        props[p.name] = schema
    return props, required, var_positional


def _named_schema(ep: Endpoint, name: str, components: Components) -> dict[str, Any]:
    return components.schema_of(components.hints(ep).get(name), ep.module)


def _path_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A path segment is one non-empty segment: strings say so (a ``/`` would make another URL)."""
    if schema.get("type") == "string" or not schema:
        out = {"type": "string", **schema}
        out.setdefault("minLength", 1)
        out.setdefault("pattern", "^[^/]+$")
        return out
    return schema


def _json_safe(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)
