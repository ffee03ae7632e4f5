"""Find plugin modules in folders, read their metadata cheaply, and import trusted ones."""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import inspect
import os
import re
import sys
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..errors import PluginError
from ..expose import ENDPOINT_ATTR, EVENT_ATTR, Definition, EndpointSpec, EventSpec, exposure, first_doc_line

PLUGIN_PACKAGE = "dpmsf_plugins"


class Candidate(NamedTuple):
    """A module file found in a plugin folder, with what changes when it is edited."""

    name: str  # real module name
    path: str  # the .py file (``__init__.py`` for a package)
    folder: str
    folder_index: int
    is_package: bool
    signature: tuple[int, ...]  # (mtime_ns, size, inode) of every file that matters


class Metadata(NamedTuple):
    """Module-level ``__alias__``/``__tenant__`` read with ``ast``, before anything is imported."""

    alias: str | None = None
    tenant: str | None = None
    source: str = ""
    indexed: Any = None  # a tenant module's verified entry of the tenant index (``tenant_index.Indexed``)


@dataclass
class LoadedModule:
    """What one import of a trusted module yielded; immutable once built."""

    module: types.ModuleType | None
    endpoints: list[tuple[EndpointSpec, Callable[..., Any]]] = field(default_factory=list)
    events: list[tuple[EventSpec, Callable[..., Any]]] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    # a tenant module read from its source: (source, description) for the tenant index, so it is not read again
    index_entry: tuple[str, dict[str, Any]] | None = None


def _is_identifier(name: str) -> bool:
    return name.isidentifier() and not name.startswith("_")


def _file_sig(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def package_signature(pkg: str) -> tuple[int, ...]:
    sig: list[int] = []
    for root, dirs, files in os.walk(pkg):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        for f in sorted(files):
            if f.endswith(".py"):
                try:
                    sig.extend(_file_sig(os.stat(os.path.join(root, f))))
                except OSError:
                    continue
    return tuple(sig)


def scan_folder(folder: str, index: int) -> Iterator[Candidate]:
    """Every module (``name.py``) and package (``name/__init__.py``) directly in ``folder``, sorted by name."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        name = entry.name
        try:
            if entry.is_file() and name.endswith(".py"):
                mod = name[:-3]
                if _is_identifier(mod):
                    yield Candidate(mod, entry.path, folder, index, False, _file_sig(entry.stat()))
            elif entry.is_dir() and _is_identifier(name):
                init = os.path.join(entry.path, "__init__.py")
                if os.path.isfile(init):
                    yield Candidate(name, init, folder, index, True, package_signature(entry.path))
        except OSError:
            continue


def change_reason(old: Candidate | None, new: Candidate) -> str:
    """Why a module is loaded again, for the reload log: ``added``, ``edited (120 -> 134 bytes)``..."""
    if old is None:
        return "added"
    if new.is_package:
        return "changed (a file of the package)"
    if old.signature[1] != new.signature[1]:
        return f"edited ({old.signature[1]} -> {new.signature[1]} bytes)"
    return "edited (same size, newer)" if old.signature[0] != new.signature[0] else "replaced (same size and time)"


_STAMP = re.compile(rb'^__tenant__ = "([A-Za-z0-9._:-]{1,128})"$', re.MULTILINE)
UNKNOWN_OWNER = "?"  # owner of an unreadable upload without our stamp: visible to the admin only


def stamped_owner(path: str) -> str:
    """The tenant line the upload endpoint writes (``__tenant__ = "<id>"``), read without parsing the module."""
    try:
        with open(path, "rb") as fh:
            return stamped_owner_of(fh.read(1 << 20))
    except OSError:
        return UNKNOWN_OWNER


def stamped_owner_of(raw: bytes) -> str:
    """``stamped_owner`` for a module's bytes (an object store's copy, not mirrored here)."""
    found = _STAMP.search(raw[: 1 << 20])
    return found.group(1).decode() if found else UNKNOWN_OWNER


def read_metadata(path: str) -> Metadata:
    """``__alias__`` and ``__tenant__`` as literals; the source is parsed only when it mentions them."""
    with open(path, "rb") as fh:
        raw = fh.read()
    if b"__alias__" not in raw and b"__tenant__" not in raw:
        return Metadata()
    return metadata_from_source(raw.decode("utf-8", errors="replace"), path)


def metadata_from_source(source: str, path: str = "<upload>") -> Metadata:
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as exc:
        raise PluginError.syntax(path, exc) from None
    except (RecursionError, MemoryError):
        raise PluginError("nested too deeply to be read", path) from None
    found: dict[str, str | None] = {}
    for node in tree.body:
        targets: list[ast.expr] = []
        value: ast.expr | None = None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        for target in targets:
            if isinstance(target, ast.Name) and target.id in ("__alias__", "__tenant__"):
                if not (isinstance(value, ast.Constant) and isinstance(value.value, str | type(None))):
                    raise PluginError(f"{target.id} must be a string literal", path, node.lineno)
                found[target.id] = value.value
    alias = found.get("__alias__")
    if alias is not None and not (alias.replace("-", "_").isidentifier() or alias.replace(".", "_").isidentifier()):
        raise PluginError(f"{path}: __alias__ = {alias!r} is not a valid URL segment name")
    return Metadata(alias=alias or None, tenant=(found.get("__tenant__") or None), source=source)


def module_name_for(candidate: Candidate) -> str:
    suffix = "" if candidate.folder_index == 0 else f"_{candidate.folder_index}"
    return f"{PLUGIN_PACKAGE}.{candidate.name}{suffix}"


def _ensure_parent_package() -> None:
    if PLUGIN_PACKAGE not in sys.modules:
        pkg = types.ModuleType(PLUGIN_PACKAGE, "Namespace that holds every imported DPMSF plugin.")
        pkg.__path__ = []
        sys.modules[PLUGIN_PACKAGE] = pkg


class _FreshSourceLoader(importlib.machinery.SourceFileLoader):
    """Bytecode caches are keyed by whole-second mtime and size, so a same-size edit within a second would reuse
    stale bytecode: a file changed in the last few seconds is compiled from source, the rest use the cache."""

    def get_code(self, fullname: str) -> types.CodeType | None:
        path = self.get_filename(fullname)
        try:
            recent = time.time() - os.stat(path).st_mtime < _RECENT_SECONDS
        except OSError:
            recent = False
        if recent:
            return self.source_to_code(self.get_data(path), path)
        return super().get_code(fullname)


_RECENT_SECONDS = 3.0


def import_module(candidate: Candidate) -> types.ModuleType:
    """Import a fresh copy; ``sys.modules`` is restored if the import fails, so the old version keeps serving."""
    _ensure_parent_package()
    qualname = module_name_for(candidate)
    spec = importlib.util.spec_from_file_location(
        qualname,
        candidate.path,
        loader=_FreshSourceLoader(qualname, candidate.path),
        submodule_search_locations=[os.path.dirname(candidate.path)] if candidate.is_package else None,
    )
    if spec is None or spec.loader is None:
        raise PluginError(f"{candidate.path}: cannot be imported")
    if candidate.is_package:
        _drop_recent_bytecode(os.path.dirname(candidate.path))
    module = importlib.util.module_from_spec(spec)
    saved = {k: v for k, v in sys.modules.items() if k == qualname or k.startswith(qualname + ".")}
    for key in saved:
        del sys.modules[key]
    sys.modules[qualname] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # a plugin calling sys.exit() at import must not stop the server
        for key in [k for k in sys.modules if k == qualname or k.startswith(qualname + ".")]:
            del sys.modules[key]
        sys.modules.update(saved)
        raise PluginError(_describe_import_error(candidate.path, exc)) from exc
    return module


def _drop_recent_bytecode(package_dir: str) -> None:
    """Submodules load through the standard finder, so remove cached bytecode of their recently edited sources."""
    now = time.time()
    for root, dirs, files in os.walk(package_dir):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            try:
                if now - os.stat(path).st_mtime < _RECENT_SECONDS:
                    os.unlink(importlib.util.cache_from_source(path))
            except (OSError, NotImplementedError, ValueError):
                continue


def _describe_import_error(path: str, exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return str(PluginError.syntax(path, exc))
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == path:
            line = tb.tb_lineno  # the last frame in the plugin's own file: the decorator or statement that failed
        tb = tb.tb_next
    if isinstance(exc, PluginError):
        return str(PluginError(exc.reason, path, exc.line or line))
    return str(PluginError(f"import raised {type(exc).__name__}: {exc}", path, line))


def collect(module: types.ModuleType) -> LoadedModule:
    """What an imported module exposes, by the one rule of ``expose.exposure``."""
    own = module.__name__
    definitions: list[Definition] = []
    functions: dict[str, Callable[..., Any]] = {}
    for name, value in list(vars(module).items()):
        if not callable(value) or isinstance(value, type) or getattr(value, "__module__", None) != own:
            continue  # imported from elsewhere (or a class): never exposed here
        spec = getattr(value, ENDPOINT_ATTR, None)
        event = getattr(value, EVENT_ATTR, None)
        own_function = inspect.isfunction(value) and value.__name__ == name  # a ``def``: not a lambda or an alias
        definitions.append(
            Definition(
                name,
                spec if isinstance(spec, EndpointSpec) else None,
                (event,) if isinstance(event, EventSpec) else (),
                own_function,
                first_doc_line(inspect.getdoc(value)) if own_function else None,
            )
        )
        functions[name] = value
    found = exposure(definitions)
    return LoadedModule(
        module=module,
        endpoints=[(spec, functions[name]) for name, spec in found.endpoints],
        events=[(spec, functions[name]) for name, spec in found.events],
        duplicates=list(found.duplicates),
    )


def resolve_folder(entry: str, bundled: str | os.PathLike[str]) -> str:
    """``.`` is the bundled ``plugins/`` folder; anything else is a path (relative to the working directory)."""
    return os.fspath(bundled) if entry == "." else os.path.realpath(os.path.expanduser(entry))
