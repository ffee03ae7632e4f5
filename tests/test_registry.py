"""Discovery and the registry without a server: what is exposed, conflicts, broken plugins, path order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dpmsf_core.loading.registry import Registry


def registry(*folders: Path, **kw: Any) -> Registry:
    reg = Registry([str(f) for f in folders], **kw)
    reg.load()
    return reg


def test_introspection_mode_exposes_own_public_functions_only(plugin_dir: Any) -> None:
    plugin_dir.write(
        "mod.py",
        """
from os.path import join
from json import dumps as _dumps

CONSTANT = 3
def public(a, b=1):
    return a
async def also_public():
    return 1
def _private():
    pass
class Thing:
    def method(self):
        pass
thing = Thing()
lam = lambda: 1
""",
    )
    snap = registry(plugin_dir.path).snapshot
    # a lambda is not a function defined under its own name (its name is "<lambda>"): the ast reader agrees
    assert sorted(snap.modules["mod"].endpoints) == ["also_public", "public"]
    ep = snap.modules["mod"].endpoints["public"]
    assert ep.methods == ("GET", "POST") and not ep.is_async
    assert snap.modules["mod"].endpoints["also_public"].is_async


def test_decorated_module_exposes_only_decorated(plugin_dir: Any) -> None:
    plugin_dir.write(
        "mod.py",
        """
from dpmsf_core import expose
@expose.endpoint(API="a")
def one(): ...
def helper(): ...
""",
    )
    assert list(registry(plugin_dir.path).snapshot.modules["mod"].endpoints) == ["a"]


def test_imported_decorated_function_is_not_reexposed(plugin_dir: Any) -> None:
    plugin_dir.write(
        "base.py",
        """
from dpmsf_core import expose
@expose.endpoint(API="base-api")
def f(): ...
""",
    )
    plugin_dir.write(
        "user.py",
        """
from dpmsf_core import expose
from dpmsf_plugins.base import f
@expose.endpoint(API="own")
def g(): ...
""",
    )
    snap = registry(plugin_dir.path).snapshot
    assert list(snap.modules["user"].endpoints) == ["own"]
    assert [ep.module for ep in snap.by_api["base-api"]] == ["base"]


def test_same_alias_twice_first_in_path_order_wins(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "one.py").write_text('__alias__ = "v1"\ndef hello():\n    return "first"\n')
    (second / "two.py").write_text(
        '__alias__ = "v1"\nimport sys\nsys.modules["__imported_two__"] = 1\ndef hello():\n    return "second"\n'
    )
    reg = registry(first, second)
    snap = reg.snapshot
    assert snap.modules["v1"].path == str(first / "one.py")
    conflict = next(r for r in snap.reports if r.real_name == "two")
    assert conflict.status == "conflict" and "already taken" in conflict.error
    assert any("already taken" in p for p in snap.problems)
    import sys

    assert "__imported_two__" not in sys.modules  # the loser is never imported


def test_same_module_name_in_two_folders(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "mod.py").write_text("def f():\n    return 1\n")
    (second / "mod.py").write_text("def f():\n    return 2\n")
    snap = registry(first, second).snapshot
    assert snap.modules["mod"].endpoints["f"].func() == 1
    assert [r.status for r in snap.reports] == ["loaded", "conflict"]


def test_same_api_twice_in_one_module(plugin_dir: Any) -> None:
    plugin_dir.write(
        "dup.py",
        """
from dpmsf_core import expose
@expose.endpoint(API="x")
def first(): return 1
@expose.endpoint(API="x")
def second(): return 2
""",
    )
    snap = registry(plugin_dir.path).snapshot
    assert snap.modules["dup"].endpoints["x"].func() == 1
    report = next(r for r in snap.reports if r.real_name == "dup")
    assert "declared by both first() and second()" in report.error


def test_broken_plugins_do_not_take_others_down(plugin_dir: Any) -> None:
    plugin_dir.write("good.py", "def ok():\n    return 1\n")
    plugin_dir.write("raises.py", "raise RuntimeError('boom at import')\n")
    plugin_dir.write("missing_dep.py", "import not_a_real_module_xyz\n")
    plugin_dir.write("exits.py", "import sys\nsys.exit(3)\n")
    plugin_dir.write("bad_method.py", 'from dpmsf_core import expose\n@expose.endpoint(method="FETCH")\ndef f(): ...\n')
    snap = registry(plugin_dir.path).snapshot
    assert list(snap.modules) == ["good"]
    errors = {r.real_name: r.error for r in snap.reports if r.status == "error"}
    assert "raises.py, line 1: import raised RuntimeError: boom at import" in errors["raises"]
    assert "ModuleNotFoundError" in errors["missing_dep"]
    assert "SystemExit" in errors["exits"]
    assert "'FETCH', not an HTTP method" in errors["bad_method"]


def test_files_that_are_not_modules_are_ignored(plugin_dir: Any) -> None:
    plugin_dir.write("_private.py", "def f(): ...\n")
    plugin_dir.write("notes.txt", "hello")
    plugin_dir.write("has-dash.py", "def f(): ...\n")
    plugin_dir.write("folder/readme.md", "no __init__")
    assert registry(plugin_dir.path).snapshot.modules == {}


def test_refresh_is_a_noop_when_nothing_changed(plugin_dir: Any) -> None:
    plugin_dir.write("m.py", "def f(): ...\n")
    import os
    import time

    old = time.time() - 60
    os.utime(plugin_dir.path, (old, old))
    reg = registry(plugin_dir.path)
    snap = reg.snapshot
    assert reg.refresh() is snap


def test_create_app_takes_one_folder_as_a_string_or_a_path(plugin_dir: Any, make_app: Any) -> None:
    plugin_dir.write("solo.py", "def solo():\n    return 1\n")
    for given in (str(plugin_dir.path), plugin_dir.path, [plugin_dir.path]):
        app = make_app(plugins=given)
        assert "solo" in app.registry.snapshot.modules, given
