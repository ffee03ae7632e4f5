"""What an upload must be before it is stored: a valid module name, UTF-8 text that parses, within the size
limit; and stamped with its owner's ``__tenant__``, whatever the source claimed (``stamp_tenant``)."""

from __future__ import annotations

import ast
import bisect
import keyword
import re
from typing import TypeGuard

from ..errors import BadRequest, PayloadTooLarge, UnprocessableArguments

TENANT_NAME = "__tenant__"
_DISCARD_NAME = "_claimed_tenant"  # what a tenant's own binding of __tenant__ is renamed to
_MAX_NAME_LENGTH = 100
_TENANT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_CODING_COOKIE = re.compile(rb"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)")
_LINES = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


# -- validation ----------------------------------------------------------------------------------------------


def check_module_name(name: str) -> str:
    """Refuse a name that is not a plain public Python identifier, so it can never address another path."""
    if not isinstance(name, str) or not name:
        raise BadRequest("Module name is empty. Expected a Python identifier such as 'hello_world'.")
    shown = name[:_MAX_NAME_LENGTH]
    if any(c in name for c in "/\\\x00") or ".." in name:
        raise BadRequest(f"Module name {shown!r} contains a path. Expected a bare Python identifier.")
    if len(name) > _MAX_NAME_LENGTH:
        raise BadRequest(f"Module name {shown!r}... is too long. Expected at most {_MAX_NAME_LENGTH} characters.")
    if not name.isascii() or not name.isidentifier():
        raise BadRequest(
            f"Module name {name!r} is not valid. Expected an ASCII Python identifier ([A-Za-z_][A-Za-z0-9_]*)."
        )
    if keyword.iskeyword(name):
        raise BadRequest(f"Module name {name!r} is a Python keyword. Expected a name that can be imported.")
    if name.startswith("_"):
        raise BadRequest(
            f"Module name {name!r} starts with '_'. Expected a public name (private names are never exposed)."
        )
    return name


def validate_upload(name: str, source: bytes | str, *, max_bytes: int = 256_000, max_nodes: int | None = None) -> str:
    """Accept an uploaded module only if its name, size, encoding and syntax are sound; returns the text.

    ``max_nodes`` bounds its syntax tree: what stamping and reading it will cost grows with it.
    """
    check_module_name(name)
    raw = source.encode("utf-8", "surrogatepass") if isinstance(source, str) else bytes(source)
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"Module {name!r} is {len(raw)} bytes. Expected at most {max_bytes} bytes.")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"Module {name!r} is not valid UTF-8 (byte {exc.start}). Expected UTF-8 source.") from None
    for line in raw.splitlines()[:2]:
        match = _CODING_COOKIE.match(line)
        cookie = match.group(1).decode("ascii", "replace") if match else "utf-8"
        if cookie.lower().replace("_", "-") not in ("utf-8", "utf8", "utf-8-sig"):
            raise UnprocessableArguments(f"Module {name!r} declares coding {cookie!r}. Expected UTF-8 source.")
    tree = _parse(text, name)
    if max_nodes is not None:
        nodes = sum(1 for _ in ast.walk(tree))
        if nodes > max_nodes:
            raise UnprocessableArguments(
                f"Module {name!r} has {nodes} syntax nodes. Expected at most {max_nodes} (the upload reading budget)."
            )
    return text


def _parse(text: str, name: str) -> ast.Module:
    """``ast.parse`` turning syntax errors into a 422 that names the line."""
    try:
        return ast.parse(text, filename=f"{name}.py")
    except SyntaxError as exc:
        line, col = exc.lineno or 0, exc.offset or 0
        raise UnprocessableArguments(
            f"Module {name!r} does not parse: {exc.msg} (line {line}, column {col}).",
            errors=[{"line": line, "column": col, "msg": exc.msg}],
        ) from None
    except (RecursionError, MemoryError):
        raise UnprocessableArguments(f"Module {name!r} is nested too deeply to be read.") from None
    except ValueError as exc:  # e.g. NUL bytes on Python < 3.12
        raise UnprocessableArguments(f"Module {name!r} does not parse: {exc}.") from None


# -- tenant stamping -----------------------------------------------------------------------------------------


def _is_tenant_name(node: ast.AST) -> TypeGuard[ast.Name]:
    return isinstance(node, ast.Name) and node.id == TENANT_NAME


def _is_simple_tenant_statement(stmt: ast.stmt) -> bool:
    """``__tenant__ = ...``, ``__tenant__: str = ...``, ``__tenant__ += ...`` at module level: replaced whole."""
    if any(isinstance(node, ast.NamedExpr) for node in ast.walk(stmt)):
        return False  # ``__tenant__ = (y := 1)`` also binds y: rename the target instead of dropping the statement
    if isinstance(stmt, ast.Assign):
        return all(_is_tenant_name(t) for t in stmt.targets)
    if isinstance(stmt, ast.AnnAssign | ast.AugAssign):
        return _is_tenant_name(stmt.target)
    return False


def _forbidden_binding(node: ast.AST) -> str | None:
    """Ways to bind or delete ``__tenant__`` that cannot be rewritten safely; such uploads are refused."""
    if isinstance(node, ast.Name) and node.id == TENANT_NAME and isinstance(node.ctx, ast.Del):
        return "deletes"
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == TENANT_NAME:
        return "defines"
    if isinstance(node, ast.alias) and (node.asname or node.name.partition(".")[0]) == TENANT_NAME:
        return "imports"
    if isinstance(node, ast.ExceptHandler) and node.name == TENANT_NAME:
        return "catches into"
    if isinstance(node, ast.MatchAs | ast.MatchStar) and node.name == TENANT_NAME:
        return "captures into"
    if isinstance(node, ast.MatchMapping) and node.rest == TENANT_NAME:
        return "captures into"
    return None


def _mentioning_lines(source: str) -> list[int]:
    """1-based lines that may spell ``__tenant__``: literally, or with non-ASCII letters that NFKC folds into it."""
    lines = _LINES.findall(source)  # split as the parser counts lines (not ``splitlines``: it also splits at \f)
    return [i for i, line in enumerate(lines, 1) if TENANT_NAME in line or not line.isascii()]


def _statements_mentioning(tree: ast.Module, source: str) -> list[ast.stmt]:
    """The top-level statements whose lines may bind ``__tenant__``: only these are walked (a walk of every
    statement cost seconds for a module of 64,000 lines)."""
    lines = _mentioning_lines(source)
    found = []
    for stmt in tree.body:
        at = bisect.bisect_left(lines, stmt.lineno)
        if at < len(lines) and lines[at] <= (stmt.end_lineno or stmt.lineno):
            found.append(stmt)
    return found


def _tenant_bindings(tree: ast.Module, source: str) -> tuple[list[ast.stmt], list[ast.Name], list[tuple[int, str]]]:
    """Statements to replace, other ``__tenant__`` store targets to rename, and refused bindings (line, kind)."""
    statements = _statements_mentioning(tree, source)
    simple = [stmt for stmt in statements if _is_simple_tenant_statement(stmt)]
    renames: list[ast.Name] = []
    refused: list[tuple[int, str]] = []
    for stmt in statements:
        if stmt in simple:
            continue
        for node in ast.walk(stmt):
            kind = _forbidden_binding(node)
            if kind:
                refused.append((getattr(node, "lineno", stmt.lineno), kind))
            elif _is_tenant_name(node) and isinstance(node.ctx, ast.Store):
                renames.append(node)
    return simple, renames, refused


class _Text:
    """Source text addressed by ast positions (1-based lines, UTF-8 byte columns)."""

    def __init__(self, source: str) -> None:
        self.lines = _LINES.findall(source)
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))

    def offset(self, lineno: int, byte_col: int) -> int:
        """Absolute character offset of an ast position."""
        line = self.lines[lineno - 1] if lineno <= len(self.lines) else ""
        return self.starts[lineno - 1] + len(line.encode("utf-8")[:byte_col].decode("utf-8", "replace"))

    def line_start(self, lineno: int) -> int:
        return self.starts[min(lineno, len(self.lines) + 1) - 1]


def _insertion_line(tree: ast.Module) -> int:
    """1-based line before which the stamp goes: after the docstring and ``from __future__`` imports."""
    anchor: ast.stmt | None = None
    for i, stmt in enumerate(tree.body):
        is_doc = (
            i == 0
            and isinstance(stmt, ast.Expr)
            and isinstance(stmt.value, ast.Constant)
            and isinstance(stmt.value.value, str)
        )
        if is_doc or (isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__"):
            anchor = stmt
            continue
        break
    if anchor is not None:
        return (anchor.end_lineno or anchor.lineno) + 1
    if tree.body:
        first = tree.body[0]
        decorators: list[ast.expr] = getattr(first, "decorator_list", [])
        return min([first.lineno, *(d.lineno for d in decorators)])
    return 0  # empty module: append


def stamp_tenant(source: str, tenant_id: str) -> str:
    """Force the module's ``__tenant__`` to ``tenant_id`` so an upload cannot claim another tenant's identity."""
    if not isinstance(tenant_id, str) or not _TENANT_ID.fullmatch(tenant_id):
        raise ValueError(f"Tenant id {tenant_id!r} is not valid. Expected letters, digits, '.', '_', ':' or '-'.")
    stamp = f'{TENANT_NAME} = "{tenant_id}"'
    source = source.removeprefix("\ufeff")  # ast.parse refuses a byte-order mark in a str
    tree = _parse(source, "upload")
    simple, renames, refused = _tenant_bindings(tree, source)
    if refused:
        line, kind = refused[0]
        raise UnprocessableArguments(
            f"Line {line} {kind} '{TENANT_NAME}', which the server sets. Remove it: uploads are stamped.",
            errors=[{"line": line, "msg": f"{kind} {TENANT_NAME}"}],
        )
    text = _Text(source)
    edits: list[tuple[int, int, str]] = []
    for stmt in simple:
        start = text.offset(stmt.lineno, stmt.col_offset)
        end = text.offset(stmt.end_lineno or stmt.lineno, stmt.end_col_offset or 0)
        edits.append((start, end, stamp))
    for name in renames:
        start = text.offset(name.lineno, name.col_offset)
        end = text.offset(name.end_lineno or name.lineno, name.end_col_offset or 0)
        if source[start:end] != TENANT_NAME:  # positions we cannot trust: refuse rather than guess
            raise UnprocessableArguments(f"Line {name.lineno} assigns '{TENANT_NAME}' in a way that cannot be stamped.")
        edits.append((start, end, _DISCARD_NAME))
    if not simple:
        line = _insertion_line(tree)
        if line == 0 or line > len(text.lines):
            at = len(source)
            prefix = "" if not source or source.endswith(("\n", "\r")) else "\n"
            edits.append((at, at, prefix + stamp + "\n"))
        else:
            at = text.line_start(line)
            edits.append((at, at, stamp + "\n"))
    out = source
    for start, end, replacement in sorted(edits, key=lambda e: e[0], reverse=True):
        out = out[:start] + replacement + out[end:]
    _check_stamped(out, tenant_id)
    return out


def _check_stamped(source: str, tenant_id: str) -> None:
    """Re-read the result: every binding of ``__tenant__`` is now the stamp, and there is at least one."""
    tree = _parse(source, "stamped")
    simple, renames, refused = _tenant_bindings(tree, source)
    ok = bool(simple) and not renames and not refused
    for stmt in simple:
        ok = (
            ok
            and isinstance(stmt, ast.Assign)
            and len(stmt.targets) == 1
            and isinstance(stmt.value, ast.Constant)
            and stmt.value.value == tenant_id
        )
    if not ok:
        raise UnprocessableArguments(f"The module's '{TENANT_NAME}' could not be stamped. Remove any '{TENANT_NAME}'.")
