"""Errors where a newcomer looks (issue 12): a stale module says so on its answers and in ``__dir__``, reloads log
what changed and why, ``__dir__?pretty=1`` indents, ``dpmsf routes`` lists each broken plugin once, the banner
comes after the port is bound; over a real server and the real CLI."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from bundled import bundled
from conftest import ROOT
from ports import free_port

GOOD = """
from dpmsf_core import expose

@expose.endpoint(method="GET", API="live")
def live():
    return {value!r}
"""


def test_a_stale_module_says_so_on_every_answer_and_in_dir(
    plugin_dir: Any, make_app: Callable[..., Any], serve: Callable[[Any], httpx.Client]
) -> None:
    plugin_dir.write("live.py", GOOD.format(value="one"))
    client = serve(make_app(plugin_dir.path))
    assert "dpmsf-stale" not in client.get("/rest/services/live/").headers

    plugin_dir.write("live.py", "from dpmsf_core import expose\n\nraise RuntimeError('half-written')\n")
    r = client.get("/rest/services/live/")
    assert r.json() == {"results": "one"}  # the last good version serves...
    assert r.headers["dpmsf-stale"] == "live.py, line 3: import raised RuntimeError: half-written"  # ...and says so
    listing = client.get("/rest/services/__dir__/").json()
    (module,) = listing["modules"]
    assert (module["status"], module["error"]) == (
        "stale",
        "live.py, line 3: import raised RuntimeError: half-written",
    )
    assert listing["problems"] == ["live.py, line 3: import raised RuntimeError: half-written"]
    assert client.get("/rest/services/live/").headers["x-request-id"]

    plugin_dir.write("live.py", GOOD.format(value="two"))
    r = client.get("/rest/services/live/")
    assert r.json() == {"results": "two"} and "dpmsf-stale" not in r.headers
    assert client.get("/rest/services/__dir__/").json()["problems"] == []


def test_a_module_that_never_loaded_answers_503_with_file_line_and_reason(
    plugin_dir: Any, make_app: Callable[..., Any], serve: Callable[[Any], httpx.Client]
) -> None:
    plugin_dir.write("broken.py", "x = 1\ny = 1 / 0\n")
    r = serve(make_app(plugin_dir.path)).get("/rest/services/broken/anything/")
    assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"] == (
        "Module 'broken' failed to load: broken.py, line 2: import raised ZeroDivisionError: division by zero"
    )


def test_a_reload_logs_which_modules_changed_and_why(
    plugin_dir: Any,
    make_app: Callable[..., Any],
    serve: Callable[[Any], httpx.Client],
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = plugin_dir.write("live.py", GOOD.format(value="one"))
    client = serve(make_app(plugin_dir.path))
    caplog.set_level(logging.INFO, logger="dpmsf.registry")
    caplog.clear()
    size = first.stat().st_size
    plugin_dir.write("live.py", GOOD.format(value="longer"))
    plugin_dir.write("more.py", GOOD.replace('API="live"', 'API="more"').format(value=1))
    client.get("/rest/services/live/")
    plugin_dir.write("live.py", "def broken(:\n")
    client.get("/rest/services/live/")
    plugin_dir.remove("more.py")
    client.get("/rest/services/live/")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("reload:")]
    path = plugin_dir.path / "live.py"
    more = plugin_dir.path / "more.py"
    assert lines == [
        f"reload: {path} edited ({size} -> {size + 3} bytes): loaded; serving live",
        f"reload: {more} added: loaded; serving more",
        f"reload: {path} edited ({size + 3} -> 13 bytes): failed to load, the previous version keeps serving",
        f"reload: {more} removed; no longer served: more",
    ]


def test_dir_pretty_indents(
    plugin_dir: Any, make_app: Callable[..., Any], serve: Callable[[Any], httpx.Client]
) -> None:
    plugin_dir.write("live.py", GOOD.format(value="one"))
    client = serve(make_app(plugin_dir.path))
    compact = client.get("/rest/services/__dir__/")
    pretty = client.get("/rest/services/__dir__/?pretty=1")
    assert pretty.headers["content-type"] == "application/json"
    assert pretty.text == json.dumps(compact.json(), indent=2) + "\n"
    assert "\n" not in compact.text


def _cli(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DPMSF_")}
    return subprocess.run(
        [sys.executable, "-m", "dpmsf_core", *args],
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_routes_prints_each_broken_plugin_once(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import nothing_of_that_name\n", encoding="utf-8")
    (tmp_path / "v1_copy.py").write_text('__alias__ = "v1"\n\ndef f():\n    return 1\n', encoding="utf-8")
    done = _cli("routes", "--plugins", f"{tmp_path}:{bundled()}", env={"DPMSF_STATE_DIR": str(tmp_path / "state")})
    assert done.returncode == 0
    assert done.stderr.splitlines() == [
        "! broken.py: error: broken.py, line 1: import raised ModuleNotFoundError: "
        "No module named 'nothing_of_that_name'",
        "! v1_copy.py: conflict: module name 'v1' of v1_copy.py is already taken by sample_v1.py; "
        "this one is not loaded",
    ]


def test_no_banner_when_the_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = _cli("serve", "--port", str(port), "--plugins", str(tmp_path), env={"DPMSF_STATE_DIR": str(tmp_path)})
    assert done.returncode == 3
    assert "address already in use" in done.stderr and "DPMSF: " not in done.stderr


@pytest.mark.slow
def test_the_banner_comes_once_the_port_answers(tmp_path: Path) -> None:
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("DPMSF_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dpmsf_core", "serve", "--port", str(port), "--plugins", str(tmp_path)],
        cwd=tmp_path,
        env={**base, "DPMSF_STATE_DIR": str(tmp_path / "state")},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        while not line.startswith("DPMSF: "):
            assert line, "the server ended without a banner"
            line = proc.stderr.readline()
        assert line == f"DPMSF: 0 endpoints from {tmp_path}\n"
        # printed after the bind: the port answers at once
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).json()["service"] == "dpmsf"
        assert proc.stderr.readline() == (
            f"DPMSF: http://127.0.0.1:{port}/rest/services/__dir__/  docs: http://127.0.0.1:{port}/docs\n"
        )
    finally:
        proc.terminate()
        proc.wait(15)
        if proc.stderr is not None:
            proc.stderr.close()


ADMIN = "00000000-0000-4000-8000-000000000001"
COPY_OF_README = """
from dpmsf_core import expose

__alias__ = "v1"


@expose.endpoint(method="GET", API="mine")
def mine():
    return 1
"""


def test_an_upload_whose_alias_is_taken_is_told_so(
    make_app: Callable[..., Any], serve: Callable[[Any], httpx.Client]
) -> None:
    from dpmsf_core.tenancy.tokens import mint

    app = make_app(".", env={"ADMIN_ID": ADMIN})  # the bundled plugins: sample_v1.py serves alias v1
    client = serve(app)
    key = app.get_security().tenants.get(ADMIN).key
    r = client.put(
        "/rest/admin/plugins/mine", content=COPY_OF_README, headers={"authorization": f"Bearer {mint(ADMIN, key)}"}
    )
    assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"] == (
        "The __alias__ 'v1' is served by sample_v1.py already; this module would not load. Choose another __alias__."
    )
    assert app.admin.store.list() == []
    r = client.put(
        "/rest/admin/plugins/hello",
        content="def f():\n    return 1\n",
        headers={"authorization": f"Bearer {mint(ADMIN, key)}"},
    )
    assert r.status_code == 409 and "module name 'hello' is served by hello.py" in r.json()["detail"]
    fixed = COPY_OF_README.replace('"v1"', '"mine_v1"')
    r = client.put("/rest/admin/plugins/mine", content=fixed, headers={"authorization": f"Bearer {mint(ADMIN, key)}"})
    assert r.status_code == 201 and r.json()["results"]["status"] == "loaded"


def test_the_readmes_first_plugin_loads_beside_the_bundled_ones(tmp_path: Path) -> None:
    from docsnippets import plugin_file

    from dpmsf_core.testing import http_client, plugin_folder

    name = "welcome.py"
    example = plugin_file(name)
    (tmp_path / name).write_text(example, encoding="utf-8")
    with http_client([plugin_folder(), tmp_path]) as client:
        listing = client.get("/rest/services/__dir__/").json()
        assert [m for m in listing["modules"] if m["status"] != "loaded"] == []
        assert listing["problems"] == []
        assert client.get("/rest/services/welcome/?name=Ada").json()["results"] == {"welcome": "Ada"}
        assert client.get("/rest/services/welcome_v1/welcome/fr/?name=Ada").json()["results"] == {
            "welcome": "Ada",
            "lang": "fr",
        }


@pytest.mark.parametrize(
    ("given", "shape"),
    [
        (
            {"loc": ["arguments", "a"], "msg": "bad", "input": "x"},
            {"loc": ["arguments", "a"], "msg": "bad", "input": "x"},
        ),
        ({"param": "id"}, {"loc": ["id"], "msg": "invalid"}),
        ({"param": "collection", "value": "x y"}, {"loc": ["collection"], "msg": "invalid", "input": "x y"}),
        ({"line": 3, "column": 7, "msg": "invalid syntax"}, {"loc": ["body", 3, 7], "msg": "invalid syntax"}),
        ({"param": "limit", "reason": "not an integer"}, {"loc": ["limit"], "msg": "not an integer"}),
    ],
)
def test_every_422_has_one_errors_shape(given: dict[str, Any], shape: dict[str, Any]) -> None:
    from dpmsf_core import UnprocessableArguments

    assert UnprocessableArguments("bad", errors=[given]).problem()["errors"] == [shape]
    assert UnprocessableArguments("no details").problem()["errors"] == [{"loc": [], "msg": "no details"}]


def test_the_test_client_refuses_a_folder_that_is_not_there(tmp_path: Path) -> None:
    from dpmsf_core.testing import http_client, lambda_invoker

    missing = tmp_path / "plugins-typo"
    with pytest.raises(FileNotFoundError, match="plugins-typo'\\): no such folder|plugins-typo': no such folder"):
        with http_client(missing):
            pass
    with pytest.raises(FileNotFoundError, match="no such folder"):
        with lambda_invoker([tmp_path, missing]):
            pass


def test_routes_names_a_plugin_folder_that_is_not_there(tmp_path: Path) -> None:
    done = _cli("routes", "--plugins", str(tmp_path / "typo"), env={"DPMSF_STATE_DIR": str(tmp_path / "state")})
    assert done.returncode == 2  # not 0: a typo is not an empty project
    assert done.stderr.splitlines() == [
        f"dpmsf: the plugin folder {tmp_path / 'typo'}, from --plugins, does not exist."
    ]


def test_an_api_of_a_module_that_failed_to_load_answers_503_naming_the_module(
    plugin_dir: Any, make_app: Callable[..., Any], serve: Callable[[Any], httpx.Client]
) -> None:
    plugin_dir.write(
        "calc.py",
        """
        from dpmsf_core import expose
        import not_installed_anywhere

        @expose.endpoint(method="GET")
        def divide(a: float, b: float):
            return a / b

        @expose.endpoint(API="square-root")
        def root(x: float):
            return x ** 0.5
        """,
    )
    client = serve(make_app(plugin_dir.path))
    why = "calc.py, line 3: import raised ModuleNotFoundError: No module named 'not_installed_anywhere'"
    for api in ("divide", "square-root"):
        r = client.get(f"/rest/services/{api}/9/3/")
        assert r.status_code == 503
        assert r.json()["detail"] == f"API '{api}' is probably in module 'calc', which failed to load: {why}"
    assert client.get("/rest/services/multiply/").status_code == 404


@pytest.mark.parametrize("command", ["serve", "routes", "openapi", "new", "init"])
def test_help_shows_defaults_that_mean_something(command: str) -> None:
    flat = " ".join(_cli(command, "--help").stdout.split())  # argparse wraps lines
    assert "(default: None)" not in flat and "(default: True)" not in flat and "(default: False)" not in flat
    if command == "serve":
        assert (
            "unset: DPMSF_PLUGINS, else the plugins/ of the project" in flat
            and "no log line per request (default: one per request)" in flat
        )
