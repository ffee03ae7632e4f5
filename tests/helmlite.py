"""Render the DPMSF Helm chart without helm (no binary here, none on PyPI): the small subset of Go templates and
Sprig the chart uses, and nothing else, so a template that strays from it fails loudly instead of rendering wrong.

Supported: ``{{ .Values.a.b }}``, ``.Release.Name``/``.Namespace``, ``.Chart.Name``/``.Version``/``.AppVersion``;
pipes to ``quote``, ``default X``, ``add N``, ``nindent N``; ``toYaml X``; ``{{- if [not] X }} ... {{- end }}``;
``{{-``/``-}}`` whitespace trimming as in Go templates.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.DOTALL)


class TemplateError(ValueError):
    """A template uses something this renderer does not know: extend it, or keep the chart simple."""


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``helm --set``: ``override`` laid over ``base``, maps merged key by key."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _truthy(value: Any) -> bool:
    return value not in (None, False, 0, "", [], {})


def _lookup(path: str, scope: dict[str, Any]) -> Any:
    if not path.startswith("."):
        raise TemplateError(f"unsupported term {path!r}")
    value: Any = scope
    for part in path[1:].split("."):
        if not isinstance(value, dict):
            raise TemplateError(f"{path}: {part!r} of a non-map")
        value = value.get(part)
    return value


def _term(text: str, scope: dict[str, Any]) -> Any:
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if text.startswith('"') and text.endswith('"'):
        return text[1:-1]
    return _lookup(text, scope)


def _to_yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=False).rstrip("\n")


def _pipeline(expr: str, scope: dict[str, Any]) -> Any:
    stages = [s.strip() for s in expr.split("|")]
    first = stages[0].split()
    if first[0] == "toYaml" and len(first) == 2:
        value: Any = _to_yaml(_term(first[1], scope))
    elif len(first) == 1:
        value = _term(first[0], scope)
    else:
        raise TemplateError(f"unsupported expression {stages[0]!r}")
    for stage in stages[1:]:
        name, *args = stage.split()
        if name == "quote" and not args:
            value = '"' + str("" if value is None else value).replace("\\", "\\\\").replace('"', '\\"') + '"'
        elif name == "default" and len(args) == 1:
            value = value if _truthy(value) else _term(args[0], scope)
        elif name == "add" and len(args) == 1:
            value = int(_term(args[0], scope)) + int(value)
        elif name == "nindent" and len(args) == 1:
            pad = " " * int(args[0])
            value = "\n" + "\n".join(pad + line if line else line for line in str(value).split("\n"))
        else:
            raise TemplateError(f"unsupported function {stage!r}")
    return value


def render_text(template: str, scope: dict[str, Any]) -> str:
    """One template file, rendered."""
    pieces: list[tuple[str, str]] = []  # ("text", ...) or ("action", ...)
    pos = 0
    for match in _ACTION.finditer(template):
        text = template[pos : match.start()]
        if match.group(1):
            text = text.rstrip()
        pieces.append(("text", text))
        pieces.append(("action", match.group(2)))
        pos = match.end()
        if match.group(3):
            rest = template[pos:]
            pos += len(rest) - len(rest.lstrip())
    pieces.append(("text", template[pos:]))
    out: list[str] = []
    shown = [True]  # a stack: whether the enclosing blocks render
    for kind, value in pieces:
        if kind == "text":
            if all(shown):
                out.append(value)
            continue
        if value.startswith("if "):
            condition = value[3:].strip()
            negate = condition.startswith("not ")
            result = _truthy(_pipeline(condition[4:] if negate else condition, scope))
            shown.append(result != negate)
        elif value == "end":
            if len(shown) == 1:
                raise TemplateError("'end' without 'if'")
            shown.pop()
        elif all(shown):
            rendered = _pipeline(value, scope)
            out.append("" if rendered is None else str(rendered))
    if len(shown) != 1:
        raise TemplateError("'if' without 'end'")
    return "".join(out)


def render_chart(
    chart: Path, values: dict[str, Any] | None = None, release: str = "dpmsf", namespace: str = "dpmsf"
) -> list[dict[str, Any]]:
    """Every object the chart's ``templates/*.yaml`` render to, with ``values`` over ``values.yaml``."""
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    scope = {
        "Values": merge(yaml.safe_load((chart / "values.yaml").read_text()) or {}, values or {}),
        "Release": {"Name": release, "Namespace": namespace},
        "Chart": {"Name": meta["name"], "Version": meta["version"], "AppVersion": meta["appVersion"]},
    }
    objects: list[dict[str, Any]] = []
    for template in sorted((chart / "templates").glob("*.yaml")):
        text = render_text(template.read_text(), scope)
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            raise TemplateError(f"{template.name} does not render to YAML: {exc}\n{text}") from None
        objects += [doc for doc in docs if doc]
    return objects
