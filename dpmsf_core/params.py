"""Pure argument assembly: query + URL params + body + ``__map__`` -> ``(args, kwargs)``, then signature binding."""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable, Sequence
from typing import Any

from .context import RequestInfo
from .errors import BadRequest, UnprocessableArguments, UnsupportedMediaType

RESERVED_BODY_KEYS = ("args", "__map__")


def _plain_pairs(raw: str) -> list[tuple[str, str]]:
    """``parse_qsl(raw, keep_blank_values=True)`` for a query with nothing to decode (no ``%``, no ``+``), which
    most are: the same pairs, without its per-pair unquoting (a good part of a warm Lambda invoke)."""
    pairs = []
    for part in raw.split("&"):
        if part:
            key, _, value = part.partition("=")
            pairs.append((key, value))
    return pairs


def _decoded_pairs(raw: str) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl  # here: a cold start whose query has nothing to decode never imports it

    return parse_qsl(raw, keep_blank_values=True)


def parse_query(raw: str | bytes) -> dict[str, Any]:
    """``a=1&a=2&b=3`` -> ``{"a": ["1", "2"], "b": "3"}``: a repeated key becomes a list."""
    if isinstance(raw, bytes):
        raw = raw.decode("latin-1")
    out: dict[str, Any] = {}
    if not raw:
        return out
    for key, value in _plain_pairs(raw) if "%" not in raw and "+" not in raw else _decoded_pairs(raw):
        if key in out:
            prev = out[key]
            if isinstance(prev, list):
                prev.append(value)
            else:
                out[key] = [prev, value]
        else:
            out[key] = value
    return out


def parse_body(body: bytes, content_type: str | None, *, raw_ok: bool = False) -> dict[str, Any] | None:
    """JSON objects and urlencoded forms become kwargs; other types need a function that reads the raw body."""
    if not body:
        return None
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    if ctype in ("", "application/json", "text/json") or ctype.endswith("+json"):
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            if not ctype and raw_ok:
                return None
            raise BadRequest(f"Malformed JSON body: {exc}") from None
        except RecursionError:
            raise BadRequest("The JSON body is nested too deeply.") from None
        if not isinstance(data, dict):
            if raw_ok:
                return None
            raise BadRequest(
                f"The JSON body must be an object (got {type(data).__name__}); "
                'put positional arguments in {"args": [...]}.'
            )
        return data
    if ctype == "application/x-www-form-urlencoded":
        try:
            return parse_query(body.decode("utf-8"))
        except UnicodeDecodeError:
            raise BadRequest("Form body is not valid UTF-8.") from None
    if raw_ok:
        return None
    raise UnsupportedMediaType(
        f"Content-Type '{ctype}' is not accepted: send application/json or application/x-www-form-urlencoded "
        "(a function that takes a RequestInfo parameter may read any body raw)."
    )


def assemble(
    query: dict[str, Any],
    url_params: Sequence[str],
    body: dict[str, Any] | None,
    parm_names: Sequence[str],
) -> tuple[list[Any], dict[str, Any]]:
    """kwargs from query < URL params < body keys (later wins); ``args`` from the body; ``__map__`` renames."""
    args: list[Any] = []
    names = list(parm_names[: len(url_params)])
    kwargs: dict[str, Any] = dict(query)
    if body:
        mapping = body.get("__map__")
        if mapping is not None:
            if not isinstance(mapping, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and v.isidentifier() for k, v in mapping.items()
            ):
                raise UnprocessableArguments(
                    '"__map__" must be an object of strings, e.g. {"parm_1": "p1"}, each value a valid name.',
                    errors=[{"loc": ["body", "__map__"], "msg": "not an object of identifier strings"}],
                )
            names = [mapping.get(n, n) for n in names]
        raw_args = body.get("args")
        if raw_args is not None:
            if not isinstance(raw_args, list):
                raise UnprocessableArguments(
                    f'"args" must be a JSON array, got {type(raw_args).__name__}.',
                    errors=[{"loc": ["body", "args"], "msg": "not an array"}],
                )
            args = raw_args
    for name, value in zip(names, url_params, strict=False):
        kwargs[name] = value
    if body:
        for key, value in body.items():
            if key not in RESERVED_BODY_KEYS:
                kwargs[key] = value
    return args, kwargs


_SIMPLE_KINDS = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


class CallPlan:
    """How to call one function: pass everything through, or bind and validate against its signature."""

    __slots__ = (
        "_adapters",
        "_hints",
        "accepts_raw_body",
        "free",
        "func",
        "inject",
        "model_param",
        "names",
        "nothing",
        "positional",
        "signature",
        "var_kw",
    )

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        try:
            self.signature: inspect.Signature | None = inspect.signature(func)
        except (TypeError, ValueError):
            self.signature = None
        params = list(self.signature.parameters.values()) if self.signature else []
        self._hints = type_hints(func) if any(p.annotation is not inspect.Parameter.empty for p in params) else {}
        self.inject = next((p.name for p in params if _is_request_type(self._hints.get(p.name))), None)
        self.var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        self.names = {p.name for p in params if p.kind not in _SIMPLE_KINDS and p.name != self.inject}
        self.positional = [
            p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != self.inject
        ]
        annotated = {n for n in self.names if _needs_validation(self._hints.get(n))}
        self.free = self.signature is None or (
            self.var_kw and all(p.kind in _SIMPLE_KINDS for p in params) and not self.inject
        )
        self.accepts_raw_body = self.inject is not None
        self.nothing = self.signature is not None and not params
        self.model_param = _single_model_param(params, self._hints, self.inject)
        self._adapters: dict[str, Any] = dict.fromkeys(annotated)

    def bind(
        self,
        args: list[Any],
        kwargs: dict[str, Any],
        request: RequestInfo | None,
        body: dict[str, Any] | None,
        url_params: Sequence[tuple[str, str]] = (),
    ) -> tuple[list[Any], dict[str, Any]]:
        """Keep only declared names (unless ``**kwargs``), inject the request, validate by annotation (422).

        ``url_params`` are the URL's segments as (name, value), e.g. ``("parm_1", "9")``: a function that does not
        take those names gets them in order on its own parameters not given otherwise, so ``divide(a: float,
        b: float)`` answers ``/divide/9/3/`` (converted and validated like any argument).
        """
        if self.free:
            return args, kwargs
        if self.nothing:
            return [], {}  # a function without parameters ignores what the request carries
        call_kwargs = kwargs if self.var_kw else {k: v for k, v in kwargs.items() if k in self.names}
        unnamed = [value for name, value in url_params if name not in self.names]
        if unnamed and not self.var_kw:
            free = [name for name in self.positional if name not in call_kwargs][len(args) :]
            call_kwargs.update(zip(free, unnamed, strict=False))
        if self.model_param and self.model_param not in call_kwargs and body is not None:
            call_kwargs[self.model_param] = {k: v for k, v in body.items() if k not in RESERVED_BODY_KEYS}
        if self.inject:
            call_kwargs = {**call_kwargs, self.inject: request}
        assert self.signature is not None
        try:
            bound = self.signature.bind(*args, **call_kwargs)
        except TypeError as exc:
            missing = _missing_name(str(exc))
            raise UnprocessableArguments(
                f"Bad arguments for '{getattr(self.func, '__name__', 'function')}': {exc}",
                errors=[{"loc": ["arguments", missing] if missing else ["arguments"], "msg": str(exc)}],
            ) from None
        if self._adapters:
            self._validate_bound(bound, request, body)
        return list(bound.args), dict(bound.kwargs)

    def _validate_bound(
        self, bound: inspect.BoundArguments, request: RequestInfo | None, body: dict[str, Any] | None
    ) -> None:
        """Every annotated argument converted and checked in place; all that fail are one 422 naming each."""
        errors: list[dict[str, Any]] = []
        sent: dict[str, Any] = {}  # a JSON body's values are checked as JSON; the rest is text to convert
        if body is not None and request is not None and _is_json(request.header("content-type")):
            sent = body
        for name, value in list(bound.arguments.items()):
            if name not in self._adapters:
                continue
            from_json = bool(sent) and (
                (name in sent and sent[name] is value) or (name == self.model_param and name not in sent)
            )
            try:
                bound.arguments[name] = self._validate(name, value, from_json=from_json)
            except _Invalid as exc:
                errors.extend(
                    {"loc": ["arguments", name, *loc], "msg": msg, "input": _short(bad)} for loc, msg, bad in exc.found
                )
        if errors:
            names = ", ".join(f"'{'.'.join(str(p) for p in e['loc'][1:])}'" for e in errors)
            first = errors[0]["msg"]
            raise UnprocessableArguments(f"Invalid value for {names}: {first}", errors=errors)

    def _validate(self, name: str, value: Any, *, from_json: bool = False) -> Any:
        """Query, URL and form values are text, converted by the annotation ("3" is an int); a JSON body's values
        are checked as JSON, strictly (``false`` is not an int, ``"3"`` is not one either), as OpenAPI says."""
        adapter = self._adapters[name]
        if adapter is None:
            from pydantic import TypeAdapter  # only functions with typed signatures pay for pydantic

            adapter = self._adapters[name] = TypeAdapter(self._hints[name])
        hint = self._hints[name]
        if isinstance(value, str) and _is_collection_hint(hint) and not from_json:
            value = [value]  # one query value for a list parameter
        from pydantic import ValidationError

        try:
            if from_json:
                return adapter.validate_json(json.dumps(_integral(value)), strict=True)
            return adapter.validate_python(value)
        except ValidationError as exc:  # every error, with the field path inside the value (a model's field)
            found = [
                (list(e.get("loc", ())), str(e.get("msg", "invalid")), e.get("input", value)) for e in exc.errors()
            ]
            raise _Invalid(found or [([], "invalid", value)]) from None


class _Invalid(Exception):
    def __init__(self, found: list[tuple[list[Any], str, Any]]) -> None:
        self.found = found


def _short(value: Any) -> Any:
    text = repr(value)
    return value if len(text) <= 200 and isinstance(value, str | int | float | bool | None) else text[:200]


def _missing_name(message: str) -> str | None:
    if "'" in message:
        parts = message.split("'")
        if len(parts) >= 2:
            return parts[1]
    return None


def type_hints(func: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(func, include_extras=True)  # Annotated[int, Field(le=100)] keeps its bounds
    except Exception:  # unresolvable string annotations: treat as untyped rather than refuse to serve
        sig = inspect.signature(func)
        return {
            n: p.annotation
            for n, p in sig.parameters.items()
            if not isinstance(p.annotation, str) and p.annotation is not inspect.Parameter.empty
        }


def _is_collection_hint(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (list, set, tuple, frozenset):
        return True
    if origin is typing.Union or type(hint).__name__ == "UnionType":
        return any(_is_collection_hint(arg) for arg in typing.get_args(hint))
    return False


def _integral(value: Any) -> Any:
    """``463.0`` -> ``463``, at any depth: JSON (and JSON Schema's ``integer``) does not tell them apart."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral(v) for v in value]
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    return value


def _is_json(content_type: str | None) -> bool:
    """The body was parsed as JSON (``parse_body``): no content type, ``application/json`` or ``*+json``."""
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    return ctype in ("", "application/json", "text/json") or ctype.endswith("+json")


def _is_request_type(hint: Any) -> bool:
    return hint is RequestInfo


def _needs_validation(hint: Any) -> bool:
    return hint is not None and hint is not Any and hint is not inspect.Parameter.empty and hint is not object


def _single_model_param(params: list[inspect.Parameter], hints: dict[str, Any], inject: str | None) -> str | None:
    models = [p.name for p in params if p.name != inject and hasattr(hints.get(p.name), "model_validate")]
    return models[0] if len(models) == 1 else None
