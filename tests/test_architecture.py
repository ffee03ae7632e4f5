"""The house rules of ``dpmsf_core``, checked on the source so that they keep holding as the code grows."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from bundled import bundled

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dpmsf_core"
MAX_LINES = 400


def modules() -> dict[str, Path]:
    """``dpmsf_core.x.y`` -> its file, for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if path.name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str, path: Path, *, top_level_only: bool) -> list[tuple[str, list[str], int]]:
    """(imported module, names, line) for the imports of ``module`` inside the package."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes: list[ast.AST] = []
    if top_level_only:
        for stmt in tree.body:
            if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test):
                continue  # for type checkers only: never executed
            nodes.extend(ast.walk(stmt) if isinstance(stmt, ast.If | ast.Try) else [stmt])
    else:
        nodes = list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            target = _absolute(module, path, node)
            if target.startswith("dpmsf_core"):
                out.append((target, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out.extend((a.name, [], node.lineno) for a in node.names if a.name.startswith("dpmsf_core"))
    return out


def test_no_import_cycle_at_import_time() -> None:
    known = modules()
    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        edges = set()
        for target, names, _ in imports(module, path, top_level_only=True):
            for candidate in [f"{target}.{n}" for n in names] + [target]:
                if candidate in known and candidate != module:
                    edges.add(candidate)
                    break
        graph[module] = edges
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(trail[trail.index(nxt) :] + [nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    # a package importing its own submodules is how packages work, not a cycle
    cycles = [c for c in cycles if not all(m.startswith(c[0] + ".") or m == c[0] for m in c)]
    assert cycles == []


def test_no_private_name_is_imported_across_modules() -> None:
    known = modules()
    offenders = []
    for module, path in known.items():
        for target, names, line in imports(module, path, top_level_only=False):
            for name in names:
                if name.startswith("_") and not name.startswith("__") and target != module:
                    offenders.append(f"{path.relative_to(ROOT)}:{line} imports {target}.{name}")
    assert offenders == []


def test_the_guest_program_imports_nothing_of_ours() -> None:
    tree = ast.parse((PACKAGE / "sandbox" / "guest_main.py").read_text(encoding="utf-8"))
    ours = [
        ast.unparse(node)
        for node in ast.walk(tree)
        if (isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("dpmsf_core")))
        or (isinstance(node, ast.Import) and any(a.name.startswith("dpmsf_core") for a in node.names))
    ]
    assert ours == []  # it runs inside the WebAssembly guest, where none of our files exist


def test_the_lambda_handler_loads_no_cli_and_no_packaging() -> None:
    code = (
        "import json, sys; import handler.aws_lambda;"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('dpmsf_core'))))"
    )
    env = {"AWS_LAMBDA_FUNCTION_NAME": "arch-test", "DPMSF_PLUGINS": str(bundled()), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=60
    ).stdout
    loaded = json.loads(out.strip().splitlines()[-1])
    assert not [m for m in loaded if m.startswith("dpmsf_core.cli") or m == "dpmsf_core.packaging"]
    assert "dpmsf_core.sandbox.pool" not in loaded  # no tenant module bundled: the sandbox stays unloaded


@pytest.mark.parametrize("module", sorted(modules()))
def test_modules_stay_small_or_say_why(module: str) -> None:
    path = modules()[module]
    lines = len(path.read_text(encoding="utf-8").splitlines())
    if lines > MAX_LINES:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        assert "over 400 lines" in doc, f"{path.relative_to(ROOT)} has {lines} lines; split it or say why"


def test_the_public_surface_is_declared_and_importable() -> None:
    import dpmsf_core

    for name in dpmsf_core.__all__:
        assert getattr(dpmsf_core, name) is not None, name
    assert {"expose", "HTTPError", "RequestInfo", "current", "store", "run_program", "create_app"} <= set(
        dpmsf_core.__all__
    )
