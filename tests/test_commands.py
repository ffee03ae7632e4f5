"""Command endpoints: real programs (sh, node, java) behind the functions ``expose.command`` builds."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from dpmsf_core.commands import command_function, run_program, run_program_sync
from dpmsf_core.context import RequestInfo, reset_current, set_current
from dpmsf_core.errors import BadGateway, GatewayTimeout
from dpmsf_core.expose import endpoint_spec

ROOT = Path(__file__).resolve().parent.parent
CASE = ROOT / "tests" / "plugins" / "commands_case"
PLUGIN_FILE = str(CASE / "cmds.py")


def load(path: Path, name: str) -> ModuleType:
    """Import a plugin file (module or package ``__init__``) under a private name, as discovery would."""
    locations = [str(path.parent)] if path.name == "__init__.py" else None
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=locations)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cmd(argv: Any, **kw: Any) -> Any:
    return command_function(api=kw.pop("api", "t-cmd"), argv=argv, module_name="cmds", module_file=PLUGIN_FILE, **kw)


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie left to a PID 1 that does not reap counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return True


def wait_gone(pid: int, within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.02)
    return gone(pid)


@pytest.fixture(scope="module")
def cmds() -> ModuleType:
    return load(CASE / "cmds.py", "commands_case_cmds")


def test_function_metadata(cmds: ModuleType) -> None:
    assert cmds.echo.__name__ == "cmd_echo"
    assert cmds.echo.__module__ == "commands_case_cmds"
    assert cmds.echo.__doc__ == "Runs ./echo_input.sh"
    assert asyncio.iscoroutinefunction(cmds.echo)
    spec = endpoint_spec(cmds.fail)
    assert spec is not None and spec.api == "cmd-fail" and spec.methods == ("GET", "POST")
    assert cmd(["x"], doc="Says hi.").__doc__ == "Says hi."


def test_json_stdout_and_stdin_protocol(cmds: ModuleType) -> None:
    result = asyncio.run(cmds.echo(1, "two", name="Ada", nested={"x": [1.5, None]}))
    assert result == {"args": [1, "two"], "kwargs": {"name": "Ada", "nested": {"x": [1.5, None]}}}


def test_text_stdout_is_stripped(cmds: ModuleType) -> None:
    assert asyncio.run(cmds.text()) == "plain text, not JSON"


def test_non_zero_exit_is_502_with_stderr_tail(cmds: ModuleType) -> None:
    with pytest.raises(BadGateway) as info:
        asyncio.run(cmds.fail())
    err = info.value
    assert err.status == 502
    assert "exited with code 3" in err.detail
    assert "THE REAL PROBLEM: disk on fire" in err.detail
    assert "noise line 0 " not in err.detail  # only the tail (~2 KB) is quoted
    assert len(err.detail) < 2400
    assert err.extra["exit_code"] == 3


def test_missing_program_is_502(cmds: ModuleType) -> None:
    with pytest.raises(BadGateway, match="program 'dpmsf-no-such-program-xyz' was not found"):
        asyncio.run(cmds.missing())


def test_missing_working_directory_is_502() -> None:
    with pytest.raises(BadGateway, match="working directory .* does not exist"):
        asyncio.run(cmd(["true"], cwd="no/such/folder")())


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    func = cmd(["sh", "hang.sh"], timeout=0.5, env={"PIDFILE": str(pidfile)})
    started = time.monotonic()
    with pytest.raises(GatewayTimeout, match="ran past its timeout of 0.5 s"):
        asyncio.run(func())
    assert time.monotonic() - started < 5
    shell_pid, child_pid = map(int, pidfile.read_text().split())
    assert wait_gone(shell_pid) and wait_gone(child_pid), "a process of the command outlived its timeout"


def test_background_child_neither_delays_nor_outlives_the_call(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    func = cmd(["sh", "leave_child.sh"], timeout=20, env={"PIDFILE": str(pidfile)})
    started = time.monotonic()
    assert asyncio.run(func()) == {"ok": True}
    assert time.monotonic() - started < 5
    _, child_pid = map(int, pidfile.read_text().split())
    assert wait_gone(child_pid)


def test_cancelled_call_kills_the_program(tmp_path: Path) -> None:
    """The app's own function timeout cancels the coroutine: the program must die with it."""
    pidfile = tmp_path / "pids"
    func = cmd(["sh", "hang.sh"], timeout=30, env={"PIDFILE": str(pidfile)})

    async def call() -> None:
        async with asyncio.timeout(0.5):
            await func()

    with pytest.raises(TimeoutError):
        asyncio.run(call())
    shell_pid, child_pid = map(int, pidfile.read_text().split())
    assert wait_gone(shell_pid) and wait_gone(child_pid)


def test_stdout_flood_is_capped(cmds: ModuleType) -> None:
    func = cmd(["sh", "flood.sh"], max_output=10_000)
    with pytest.raises(BadGateway, match="more than 10000 bytes"):
        asyncio.run(func())


def test_env_does_not_leak_server_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPMSF_CANARY_SECRET", "canary-9f2c")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "canary-aws")
    func = cmd(["sh", "show_env.sh"], env={"GREETING": "hi"})
    token = set_current(RequestInfo(method="PUT", path="/", headers={}, query={}, body=b"", tenant="t-1"))
    try:
        out = asyncio.run(func())
    finally:
        reset_current(token)
    assert "canary" not in out["env"]
    assert "GREETING=hi" in out["env"]
    assert "PATH=" in out["env"]
    assert "DPMSF_METHOD=PUT" in out["env"] and "DPMSF_TENANT=t-1" in out["env"]
    assert out["cwd"] == str(CASE)  # default working directory: the plugin's folder


def test_shell_mode() -> None:
    assert asyncio.run(cmd("echo $((40 + 2))", shell=True)()) == 42


def test_run_program_helpers(tmp_path: Path) -> None:
    result = run_program_sync(["sh", "-c", "cat; echo oops >&2; exit 4"], {"a": 1}, check=False, cwd=tmp_path)
    assert (result.returncode, result.parsed, result.stderr.strip()) == (4, {"a": 1}, "oops")
    with pytest.raises(BadGateway, match="exited with code 4"):
        run_program_sync(["sh", "-c", "exit 4"])
    ok = asyncio.run(run_program(["sh", "-c", "printf hi"], timeout=5))
    assert (ok.returncode, ok.stdout, ok.parsed) == (0, "hi", "hi")

    async def inside_loop() -> None:
        run_program_sync(["true"])

    with pytest.raises(RuntimeError, match="await run_program"):
        asyncio.run(inside_loop())


@pytest.fixture(scope="module")
def polyglot() -> ModuleType:
    return load(ROOT / "plugins" / "polyglot" / "__init__.py", "polyglot_under_test")


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_node_example(polyglot: ModuleType) -> None:
    assert endpoint_spec(polyglot.hello_node).methods == ("GET", "POST")
    assert asyncio.run(polyglot.hello_node(1, name="Ada")) == {
        "hello": "Ada",
        "args": [1],
        "lang": "node",
        "method": None,
    }


def test_shell_example(polyglot: ModuleType) -> None:
    assert asyncio.run(polyglot.hello_shell("x", 2, name="Bob")) == {"hello": "Bob", "args": ["x", 2], "lang": "shell"}
    assert asyncio.run(polyglot.hello_shell()) == {"hello": "world", "args": [], "lang": "shell"}


def test_java_example(polyglot: ModuleType) -> None:
    if shutil.which("javac") is None or shutil.which("java") is None:
        print("skipping: no JDK (javac/java) on PATH")
        pytest.skip("no JDK (javac/java) on PATH")
    out = asyncio.run(polyglot.hello_java([1, {"a": "b"}], name="Ada", other={"name": "not me"}))
    assert {k: out[k] for k in ("hello", "args", "lang")} == {"hello": "Ada", "args": [[1, {"a": "b"}]], "lang": "java"}


def test_java_example_without_jdk_is_502(polyglot: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # no class cached from an earlier test
    with pytest.raises(BadGateway, match="needs a JDK"):
        asyncio.run(polyglot.hello_java(name="Ada"))
