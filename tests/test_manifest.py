"""The packaged routing manifest: a cold start imports only the plugin its request calls, and answers exactly as
an artefact without a manifest would; an edited plugin or an unusable manifest falls back to importing."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
from bundled import bundled
from childproc import run_for_result

from dpmsf_core.loading.manifest import MANIFEST_NAME, read_manifest
from dpmsf_core.loading.registry import Registry
from dpmsf_core.packaging.manifest import write_manifest
from dpmsf_core.testing import lambda_invoker

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import json, sys
from handler.aws_lambda import handler
sys.path.insert(0, "tests")
from eventdata import lambda_context, load_event
method, path, query = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
out = handler(load_event("apigw_v1", method=method, path=path, query=query), lambda_context())
plugins = sorted(m for m in sys.modules if m.startswith("dpmsf_plugins."))
heavy = [m for m in ("pydantic", "starlette.responses") if m in sys.modules]
print("RESULT " + json.dumps({"out": out, "plugins": plugins, "heavy": heavy}))
"""


def bundle(tmp_path: Path, name: str = "art") -> Path:
    """A copy of the bundled plugins, as ``dpmsf package`` lays them out."""
    folder = tmp_path / name / "plugins"
    shutil.copytree(bundled(), folder, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def package(folder: Path) -> int | None:
    """The manifest as ``dpmsf package`` writes it, with this checkout's core and this environment's packages."""
    return write_manifest(folder, sys.executable, [ROOT, sysconfig.get_paths()["purelib"]], log=lambda _: None)


def cold(
    tmp_path: Path, folder: Path, path: str, query: dict[str, str] | None = None, method: str = "GET", **env: str
) -> dict[str, Any]:
    """One request through the Lambda handler in a fresh interpreter, as a cold start serves it."""
    clean = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "AWS_LAMBDA_FUNCTION_NAME": "dpmsf-manifest",
        "AWS_REGION": "us-east-1",
        "DPMSF_STATE_DIR": str(tmp_path / "state"),
        "DPMSF_PLUGINS": str(folder),
        **env,
    }
    return run_for_result([sys.executable, "-c", CHILD, method, path, json.dumps(query or {})], cwd=ROOT, env=clean)


def test_a_cold_get_imports_only_the_plugin_it_calls(tmp_path: Path) -> None:
    packaged, plain = bundle(tmp_path, "packaged"), bundle(tmp_path, "plain")
    assert package(packaged) == len(read_manifest(str(packaged)) or {}) >= 8
    lazy = cold(tmp_path, packaged, "/rest/services/hello-world/", {"name": "cold"})
    eager = cold(tmp_path, plain, "/rest/services/hello-world/", {"name": "cold"})
    assert lazy["out"] == eager["out"]
    assert json.loads(lazy["out"]["body"])["results"]["hello"] == "cold"
    assert lazy["plugins"] == ["dpmsf_plugins.hello"] and lazy["heavy"] == []
    assert {"dpmsf_plugins.showcase", "dpmsf_plugins.todo"} <= set(eager["plugins"]) and "pydantic" in eager["heavy"]


def test_a_plugin_edited_after_packaging_is_imported_and_serves_its_new_code(tmp_path: Path) -> None:
    folder = bundle(tmp_path)
    package(folder)
    hello = folder / "hello.py"
    hello.write_text(hello.read_text().replace('{"hello":', '{"hi":'))
    result = cold(tmp_path, folder, "/rest/services/hello-world/", {"name": "edited"})
    assert json.loads(result["out"]["body"])["results"]["hi"] == "edited"
    snapshot = Registry([str(folder)]).load()
    assert "hello" not in snapshot.deferred and "showcase" in snapshot.deferred
    assert snapshot.modules["hello"].endpoints["hello-world"].plan is not None


def test_a_call_imports_one_module_and_publishes_a_new_snapshot(tmp_path: Path) -> None:
    folder = bundle(tmp_path)
    package(folder)
    registry = Registry([str(folder)], reload=False)
    first = registry.load()
    assert first.deferred == frozenset(first.modules)
    assert first.modules["hello"].endpoints["hello-world"].deferred
    second = registry.materialize("hello")
    assert second.version == first.version + 1 and second.deferred == first.deferred - {"hello"}
    endpoint = second.modules["hello"].endpoints["hello-world"]
    assert not endpoint.deferred and endpoint.func(name="x")["hello"] == "x"
    assert registry.materialize("hello") is second  # already imported: nothing to publish
    full = registry.refresh()
    assert full.deferred == frozenset() and full.version == second.version + 1
    assert all(not ep.deferred for ep in full.endpoints()) and all(fn is not None for _, fn in full.events())


def test_routes_that_differ_from_the_manifest_are_served_as_the_module_declares(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "cond.py").write_text(
        "import os\nfrom dpmsf_core import expose\n"
        "@expose.endpoint(API=os.environ.get('COND_API', 'packaged'))\ndef f():\n    return 1\n"
    )
    shutil.copy(ROOT / "plugins" / "hello.py", folder / "hello.py")
    package(folder)
    monkeypatch.setenv("COND_API", "running")
    registry = Registry([str(folder)], reload=False)
    assert list(registry.load().modules["cond"].endpoints) == ["packaged"]
    with caplog.at_level(logging.WARNING, "dpmsf.registry"):
        snapshot = registry.materialize("cond")
    assert list(snapshot.modules["cond"].endpoints) == ["running"]
    assert snapshot.deferred == frozenset()  # a manifest that was wrong once is not trusted for the others
    assert any("other routes than the manifest" in r.getMessage() for r in caplog.records)


def _hostile(folder: Path) -> dict[str, Any]:
    return json.loads((folder / MANIFEST_NAME).read_text())


def _entry(data: dict[str, Any], file: str) -> dict[str, Any]:
    return next(m for m in data["modules"] if m["file"] == file)


BREAKAGES = {
    "not json": lambda folder: (folder / MANIFEST_NAME).write_text("{not json"),
    "a list": lambda folder: (folder / MANIFEST_NAME).write_text("[]"),
    "too big": lambda folder: (folder / MANIFEST_NAME).write_text(" " * (5 << 20) + "{}"),
    "a path outside the folder": lambda folder: _rewrite(folder, file="../hello.py"),
    "an absolute path": lambda folder: _rewrite(folder, file="/etc/passwd"),
    "a tenant": lambda folder: _rewrite(folder, tenant="t-1"),
    "a size of the wrong type": lambda folder: _rewrite(folder, size="513"),
    "an unknown method": lambda folder: _rewrite_endpoint(folder, methods=["FETCH"]),
    "endpoints not a list": lambda folder: _rewrite(folder, endpoints={"api": "x"}),
    "a template with a slash": lambda folder: _rewrite_endpoint(folder, template=["a/b"], path_params=[]),
}


def _rewrite(folder: Path, **fields: Any) -> None:
    data = _hostile(folder)
    _entry(data, "hello.py").update(fields)
    (folder / MANIFEST_NAME).write_text(json.dumps(data))


def _rewrite_endpoint(folder: Path, **fields: Any) -> None:
    data = _hostile(folder)
    _entry(data, "hello.py")["endpoints"][0].update(fields)
    (folder / MANIFEST_NAME).write_text(json.dumps(data))


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_an_unusable_manifest_is_ignored_with_one_warning(
    breakage: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "plugins"
    folder.mkdir()
    for name in ("hello.py", "introspected.py"):
        shutil.copy(ROOT / "plugins" / name, folder / name)
    package(folder)
    BREAKAGES[breakage](folder)
    with caplog.at_level(logging.WARNING, "dpmsf.registry"):
        snapshot = Registry([str(folder)]).load()
    assert snapshot.deferred == frozenset() and sorted(snapshot.modules) == ["hello", "introspected"]
    assert snapshot.modules["hello"].endpoints["hello-world"].func(name="x")["hello"] == "x"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "manifest" in warnings[0] and "is not used" in warnings[0], warnings


def test_a_tenant_module_is_never_deferred_even_if_the_manifest_matches(tmp_path: Path) -> None:
    """Trust comes from the source's ``__tenant__``, not from the manifest."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    source = (ROOT / "plugins" / "hello.py").read_text()
    (folder / "hello.py").write_text(source)
    package(folder)
    (folder / "hello.py").write_text(source + '\n__tenant__ = "t-1"\n')
    data = _hostile(folder)
    entry = _entry(data, "hello.py")
    from dpmsf_core.loading.manifest import content_signature

    entry["size"], entry["crc32"] = content_signature(str(folder / "hello.py"), False)  # a forged match
    (folder / MANIFEST_NAME).write_text(json.dumps(data))
    snapshot = Registry([str(folder)]).load()
    assert snapshot.deferred == frozenset() and "hello" not in snapshot.modules
    assert [r.status for r in snapshot.reports] == ["error"]  # a tenant's, and no sandbox: as without a manifest


def test_dir_docs_openapi_and_events_are_those_of_an_eager_start(tmp_path: Path) -> None:
    folder = bundle(tmp_path)

    deferred: list[frozenset[str]] = []

    def describe() -> dict[str, Any]:
        env = {"DPMSF_STATE_DIR": str(tmp_path / "state"), "DPMSF_REQUIRE_TOKENS": "0"}
        with lambda_invoker(folder, **env) as invoke:  # one call imports its module, the listing all the others
            deferred.append(invoke.handler.app.registry.snapshot.deferred)
            served = json.loads(invoke.rest("GET", "/rest/services/add/", query={"a": "1", "b": "2"})["body"])
            listing = json.loads(invoke.rest("GET", "/rest/services/__dir__/")["body"])
            openapi = json.loads(invoke.rest("GET", "/openapi.json")["body"])
            docs = invoke.rest("GET", "/docs")["body"]
        with lambda_invoker(folder, **env) as invoke:  # an event first: every module is imported for it
            events = invoke.sqs({"n": 1}), invoke.schedule()
        listing.pop("version")
        openapi["info"].pop("version")  # a snapshot counter: each import on first call publishes one more
        return {"dir": listing, "openapi": openapi, "docs": docs, "events": events, "served": served}

    eager = describe()
    package(folder)
    assert describe() == eager
    assert deferred[0] == frozenset() and {"introspected", "showcase", "todo"} <= deferred[1]
    assert eager["served"] == {"results": 3} and eager["events"][1]["handled"] == 1
    assert len(eager["dir"]["modules"]) >= 8 and len(eager["openapi"]["paths"]) >= 8


def test_a_plugin_that_fails_on_its_first_call_answers_as_at_an_eager_start(tmp_path: Path) -> None:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "flaky.py").write_text(
        "import os\nfrom dpmsf_core import expose\n"
        "if os.environ.get('FLAKY_BREAK'):\n    raise RuntimeError('no database here')\n"
        "@expose.endpoint(API='ping')\ndef ping():\n    return 'pong'\n"
    )
    shutil.copy(ROOT / "plugins" / "hello.py", folder / "hello.py")
    package(folder)
    for path in ("/rest/services/flaky/ping/", "/rest/services/ping/"):
        lazy = cold(tmp_path, folder, path, FLAKY_BREAK="1")
        (folder / MANIFEST_NAME).rename(tmp_path / "aside.json")
        eager = cold(tmp_path, folder, path, FLAKY_BREAK="1")
        (tmp_path / "aside.json").rename(folder / MANIFEST_NAME)
        assert lazy["out"] == eager["out"]
        assert lazy["out"]["statusCode"] == 503 and "failed to load" in lazy["out"]["body"]
        assert lazy["plugins"] == []


def test_one_api_in_two_modules_answers_409_without_importing_either(tmp_path: Path) -> None:
    folder = tmp_path / "plugins"
    folder.mkdir()
    for name in ("left", "right"):
        (folder / f"{name}.py").write_text(
            f"from dpmsf_core import expose\n@expose.endpoint(API='same')\ndef f():\n    return {name!r}\n"
        )
    package(folder)
    lazy = cold(tmp_path, folder, "/rest/services/same/")
    assert lazy["out"]["statusCode"] == 409 and lazy["plugins"] == []
    qualified = cold(tmp_path, folder, "/rest/services/right/same/")
    assert json.loads(qualified["out"]["body"]) == {"results": "right"}
    assert qualified["plugins"] == ["dpmsf_plugins.right"]
    (folder / MANIFEST_NAME).unlink()
    assert cold(tmp_path, folder, "/rest/services/same/")["out"] == lazy["out"]


def test_a_package_plugin_is_deferred_and_its_signature_covers_every_file(tmp_path: Path) -> None:
    folder = tmp_path / "plugins"
    (folder / "pkg").mkdir(parents=True)
    (folder / "pkg" / "__init__.py").write_text(
        "from dpmsf_core import expose\nfrom .impl import value\n\n"
        "@expose.endpoint(API='v')\ndef v():\n    return value\n"
    )
    (folder / "pkg" / "impl.py").write_text("value = 1\n")
    assert package(folder) == 1
    assert "pkg" in Registry([str(folder)]).load().deferred
    (folder / "pkg" / "impl.py").write_text("value = 2\n")
    snapshot = Registry([str(folder)]).load()
    assert snapshot.deferred == frozenset() and snapshot.modules["pkg"].endpoints["v"].func() == 2


def test_a_plugin_that_does_not_import_at_package_time_is_left_out(tmp_path: Path) -> None:
    folder = tmp_path / "plugins"
    folder.mkdir()
    shutil.copy(ROOT / "plugins" / "hello.py", folder / "hello.py")
    (folder / "needs_env.py").write_text(
        "import os\nKEY = os.environ['ONLY_AT_RUN_TIME']\ndef get():\n    return KEY\n"
    )
    lines: list[str] = []
    assert write_manifest(folder, sys.executable, [ROOT], log=lines.append) == 1
    assert "imported at start-up: needs_env" in lines[-1]
    assert list(read_manifest(str(folder)) or {}) == ["hello.py"]


def test_no_manifest_when_the_plugins_cannot_be_imported_at_all(tmp_path: Path) -> None:
    folder = tmp_path / "plugins"
    folder.mkdir()
    shutil.copy(ROOT / "plugins" / "hello.py", folder / "hello.py")
    lines: list[str] = []
    assert write_manifest(folder, sys.executable, [tmp_path], log=lines.append) is None  # no dpmsf_core there
    assert not (folder / MANIFEST_NAME).exists()
    assert len(lines) == 1 and lines[0].startswith("dpmsf package: no plugin manifest")
