"""Type annotations of a tenant's function, read from source text into real types without ``eval``.

Only builtin scalars and containers (``int``, ``list[str]``, ``dict[str, int] | None``...) and ``RequestInfo``
become types, so the server can convert and validate arguments (422) before a call reaches the guest; anything
else stays text, and the argument passes through unconverted.
"""

from __future__ import annotations

import ast
import typing
from typing import Any

from ..context import RequestInfo

# Annotations the server can turn into real types for argument conversion; anything else stays a string.
_SAFE_TYPES: dict[str, Any] = {
    "int": int,
    "float": float,
    "bool": bool,
    "str": str,
    "bytes": bytes,
    "list": list,
    "dict": dict,
    "tuple": tuple,
    "set": set,
    "None": None,
    "Any": typing.Any,
    "Optional": typing.Optional,
    "Union": typing.Union,
    "List": list,
    "Dict": dict,
    "Tuple": tuple,
    "Set": set,
    "RequestInfo": RequestInfo,  # injected by the host's call plan, rebuilt inside the guest
}


def resolve_annotation(text: str) -> Any:
    """``'list[int]'`` -> ``list[int]`` without ``eval``: only builtin scalars and containers; others stay text."""
    try:
        node = ast.parse(text, mode="eval").body
        return build_type(node)
    except (SyntaxError, ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError):
        return text  # an annotation we cannot turn into a type is only text: the argument passes unconverted


def build_type(node: ast.expr) -> Any:
    if isinstance(node, ast.Constant) and node.value is None:
        return None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return build_type(ast.parse(node.value, mode="eval").body)
    if isinstance(node, ast.Name):
        return _SAFE_TYPES[node.id]
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "dpmsf_core":
        return {"RequestInfo": RequestInfo}[node.attr]
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ("typing", "t"):
        return _SAFE_TYPES[node.attr]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return typing.Union[build_type(node.left), build_type(node.right)]  # noqa: UP007 - built at runtime
    if isinstance(node, ast.Subscript):
        base = build_type(node.value)
        inner = node.slice
        args = tuple(build_type(e) for e in inner.elts) if isinstance(inner, ast.Tuple) else (build_type(inner),)
        if base is typing.Optional:
            return typing.Optional[args[0]]  # noqa: UP045 - built at runtime from a parsed annotation
        if base is typing.Union:
            return typing.Union[args]  # noqa: UP007 - built at runtime
        if base in (list, set, tuple, dict):
            return base[args if len(args) > 1 else args[0]]
    raise ValueError(f"unsupported annotation {ast.unparse(node)}")
