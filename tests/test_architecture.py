"""The house rules of ``dpmsf_core``, checked on the source so that they keep holding as the code grows."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from bundled import bundled

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dpmsf_core"
MAX_LINES = 400


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """``dpmsf_core.x.y`` -> its file, for every module of the package."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
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


def imports(
    module: str, path: Path, *, top_level_only: bool, executed_only: bool = False, package: str = "dpmsf_core"
) -> list[tuple[str, list[str], int]]:
    """(imported module, names, line) for the imports of ``module`` inside the package: those run when it is
    imported (``top_level_only``), or all of them, inside functions too (``executed_only`` leaves out the ones under
    ``if TYPE_CHECKING:``, which never run)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes: list[ast.AST] = []
    if top_level_only:
        for stmt in tree.body:
            if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test):
                continue  # for type checkers only: never executed
            nodes.extend(ast.walk(stmt) if isinstance(stmt, ast.If | ast.Try) else [stmt])
    else:
        typing_only = {
            id(inner)
            for node in ast.walk(tree)
            if executed_only and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for stmt in node.body
            for inner in ast.walk(stmt)
        }
        nodes = [node for node in ast.walk(tree) if id(node) not in typing_only]
    out = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            target = _absolute(module, path, node)
            if target.startswith(package):
                out.append((target, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out.extend((a.name, [], node.lineno) for a in node.names if a.name.startswith(package))
    return out


def import_graph(known: dict[str, Path], *, inside_functions: bool, package: str = "dpmsf_core") -> dict[str, set[str]]:
    """module -> the modules it imports (``from . import a, b`` imports both submodules; ``from .x import f`` x)."""
    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        edges = set()
        found = imports(
            module, path, top_level_only=not inside_functions, executed_only=inside_functions, package=package
        )
        for target, names, _ in found:
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
            edges.update(m for m in submodules or [target] if m in known and m != module)
        graph[module] = edges
    return graph


def cycles_in(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of ``graph``, each as the path that closes it; a package importing its own submodules is
    how packages work, not a circle."""
    found = []
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append(trail[trail.index(nxt) :] + [nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return [c for c in found if not all(m.startswith(c[0] + ".") or m == c[0] for m in c)]


def test_no_import_cycle_at_import_time() -> None:
    assert cycles_in(import_graph(modules(), inside_functions=False)) == []


def test_no_import_cycle_counting_imports_inside_functions() -> None:
    """A circle closed by an import inside a function still ties the two modules together: neither can be read,
    moved or tested without the other."""
    assert cycles_in(import_graph(modules(), inside_functions=True)) == []


def test_the_cycle_check_sees_a_circle_through_a_function_and_forgives_a_package(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from . import a\n")
    (package / "a.py").write_text("from .b import helper\n")
    (package / "b.py").write_text("def helper():\n    from . import a\n    return a\n")
    (package / "sub" / "__init__.py").write_text("from .c import thing\nfrom . import d\n")  # its own modules
    typing_only = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import x\n"
    (package / "sub" / "c.py").write_text(typing_only)
    (package / "sub" / "d.py").write_text("from pkg import sub\n")
    known = modules(package)
    assert cycles_in(import_graph(known, inside_functions=False, package="pkg")) == []
    found = cycles_in(import_graph(known, inside_functions=True, package="pkg"))
    assert found == [["pkg.a", "pkg.b", "pkg.a"]]  # not pkg.sub <-> its modules, not the TYPE_CHECKING import


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


_SERVE_ONE = """
import asyncio, json, sys

import handler.gae
import dpmsf_core.asgi

try:
    import dpmsf_core.gunicorn_worker  # App Engine's worker class (app.yaml), when gunicorn is installed
except ImportError:
    pass


async def serve(app, method, path, query=b"", body=b""):
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "root_path": "", "query_string": query,
        "headers": [(b"host", b"localhost"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8080),
    }
    await app(scope, receive, send)
    return sent[0]["status"], json.loads(b"".join(m.get("body", b"") for m in sent[1:]))


hello = asyncio.run(serve(handler.gae.app, "GET", "/rest/services/hello-world/", b"name=Ada"))
task = asyncio.run(serve(dpmsf_core.asgi.create(), "POST", "/rest/services/todo/tasks/", body=b'{"title": "t"}'))
print(json.dumps({"answers": [hello, task], "modules": sorted(m for m in sys.modules if m.startswith("dpmsf_core"))}))
"""


def test_the_uvicorn_and_app_engine_path_loads_nothing_of_aws(tmp_path: Path) -> None:
    """App Engine's entry (``handler.gae``) and uvicorn's (``dpmsf_core.asgi``) serve a request, the store's
    included, with Cloud Logging's format on: none of the Lambda runtime (``dpmsf_core.aws``) is loaded for it."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "GAE_SERVICE": "default",  # App Engine: Cloud Logging's JSON lines (gcp/cloudlogging.py)
        "GOOGLE_CLOUD_PROJECT": "arch-test",
        "DPMSF_PLUGINS": ".",
        "DPMSF_STATE_DIR": str(tmp_path / "state"),
    }
    out = subprocess.run(
        [sys.executable, "-c", _SERVE_ONE], cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=60
    ).stdout
    found = json.loads(out.strip().splitlines()[-1])
    hello, task = found["answers"]
    assert hello == [200, {"results": {"hello": "Ada", "args": [], "kwargs": {"name": "Ada"}}}]
    assert task[0] == 201 and task[1]["results"]["title"] == "t"
    loaded = found["modules"]
    assert {"dpmsf_core.app", "dpmsf_core.store.sqlite", "dpmsf_core.gcp.cloudlogging"} <= set(loaded)  # it did run
    assert [m for m in loaded if m == "dpmsf_core.aws" or m.startswith("dpmsf_core.aws.")] == []


_SCHEME_TEXT = re.compile(r"^(s3|gs)://")


def _scheme_switches(tree: ast.AST) -> list[tuple[int, str]]:
    """Where code decides on a plugin URL's scheme: compares with ``"s3://..."``/``"gs://..."``, ``startswith`` one,
    matches one in a ``case``, or compares a ``.scheme`` with a name."""

    def texts(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            return [t for e in node.elts for t in texts(e)]
        return []

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
            words = [t for part in parts for t in texts(part)]
            by_scheme = any(isinstance(p, ast.Attribute) and p.attr == "scheme" for p in parts)
            found += [(node.lineno, w) for w in words if _SCHEME_TEXT.match(w) or (by_scheme and w in ("s3", "gs"))]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("startswith", "removeprefix"):
                found += [(node.lineno, w) for a in node.args for w in texts(a) if _SCHEME_TEXT.match(w)]
        elif isinstance(node, ast.match_case) and isinstance(node.pattern, ast.MatchValue):
            found += [(node.pattern.lineno, w) for w in texts(node.pattern.value) if _SCHEME_TEXT.match(w)]
    return found


def test_only_sources_switches_on_a_plugin_url_scheme() -> None:
    """``sources.SCHEMES`` is the one table of plugin URL schemes: a new object store is a row there, not a hunt
    for every ``startswith("s3://")`` in the house."""
    offenders = [
        f"{path.relative_to(ROOT)}:{line} decides on {word!r}"
        for module, path in modules().items()
        if not module.startswith("dpmsf_core.sources")
        for line, word in _scheme_switches(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert offenders == []


def test_the_scheme_check_sees_each_kind_of_switch() -> None:
    code = """
if url.startswith("s3://"): pass
if entry.partition("://")[0] + "://" in ("gs://", "file://"): pass
if parsed.scheme == "s3": pass
match prefix:
    case "gs://": pass
if record["source"] == "s3": pass  # an AWS event source, not a URL scheme
"""
    assert [line for line, _ in _scheme_switches(ast.parse(code))] == [2, 3, 4, 6]
