"""Command endpoints: real programs (sh, node, java) behind the functions ``expose.command`` builds."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from dpmsf_core.commands import supervision
from dpmsf_core.commands.programs import command_function, run_program, run_program_sync
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


def reaped(pid: int) -> bool:
    """True when ``pid`` is gone for good: neither running nor a zombie (``kill(pid, 0)`` succeeds on a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return not Path(f"/proc/{pid}").exists()
    return False


def wait_gone(pid: int, within: float = 2.0) -> bool:
    """``reaped(pid)`` within a short bounded wait (for the cases where the kill is not awaited by the call)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if reaped(pid):
            return True
        time.sleep(0.02)
    return reaped(pid)


def proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) for every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def zombies_below(root: int) -> list[int]:
    """Zombies anywhere in the process tree below ``root``."""
    table = proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = [], [root]
    while stack:
        for pid in children.get(stack.pop(), []):
            stack.append(pid)
            if table[pid][1] == "Z":
                found.append(pid)
    return found


def no_zombies_left(within: float = 2.0) -> bool:
    """No zombie under this test process (launcher, supervisors and programs included), allowing for the
    launcher to reap a supervisor a moment after its call returned."""
    deadline = time.monotonic() + within
    while zombies_below(os.getpid()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def read_escape(pidfile: Path) -> tuple[int, int, int]:
    """``(escaped pid, its session, the program's session)`` as escape.sh wrote them."""
    bg, bg_sid, program_sid = map(int, pidfile.read_text().split())
    return bg, bg_sid, program_sid


async def wait_for_file(path: Path, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} was never written"
        await asyncio.sleep(0.01)


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
    assert reaped(shell_pid) and reaped(child_pid), "a process of the command outlived its timeout"


def test_background_child_neither_delays_nor_outlives_the_call(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    func = cmd(["sh", "leave_child.sh"], timeout=20, env={"PIDFILE": str(pidfile)})
    started = time.monotonic()
    assert asyncio.run(func()) == {"ok": True}
    assert time.monotonic() - started < 5
    _, child_pid = map(int, pidfile.read_text().split())
    assert reaped(child_pid)


@pytest.mark.parametrize("how", ["setsid", "double"])
@pytest.mark.parametrize("then", ["return", "hang"])
def test_no_process_outlives_its_call_even_after_setsid(tmp_path: Path, how: str, then: str) -> None:
    """``setsid sleep 60 &`` (a new session) and ``setsid sh -c 'sleep 60 &'`` (a double fork: the sleep is
    orphaned) both leave the program's process group, so killing the group misses them. When the call ends,
    by a normal return or by its timeout, they are dead and reaped anyway: no process, no zombie."""
    pidfile = tmp_path / "pids"
    env = {"PIDFILE": str(pidfile), "HOW": how, "THEN": then}
    func = cmd(["sh", "escape.sh"], timeout=1.5 if then == "hang" else 20, env=env)
    started = time.monotonic()
    if then == "hang":
        with pytest.raises(GatewayTimeout, match="ran past its timeout of 1.5 s"):
            asyncio.run(func())
    else:
        assert asyncio.run(func()) == {"ok": True}
    assert time.monotonic() - started < 10
    bg, bg_sid, program_sid = read_escape(pidfile)
    assert bg_sid != program_sid, "the background process did not leave the program's session"
    assert reaped(bg), f"{how} process {bg} outlived its call"  # no wait: the call returns after the kill
    assert no_zombies_left()


def test_orphans_are_reaped_while_the_program_runs(tmp_path: Path) -> None:
    """An orphan reparented to the supervisor leaves no zombie behind, even during a long call."""
    func = cmd(["sh", "reap_orphan.sh"], timeout=20, env={"PIDFILE": str(tmp_path / "orphan")})
    assert asyncio.run(func()) == {"reaped": True}


def test_concurrent_calls_do_not_kill_each_others_processes(tmp_path: Path) -> None:
    """Each call's supervisor kills only its own tree: while one call waits, another returns and a third
    times out; the first one's escaped process is still alive when it checks, and dies with its own call."""
    go = tmp_path / "go"
    waiting_pids, returning_pids, timing_out_pids = (tmp_path / name for name in ("a", "b", "c"))
    waiting = cmd(
        ["sh", "escape.sh"],
        timeout=30,
        env={"PIDFILE": str(waiting_pids), "HOW": "setsid", "THEN": "wait", "GO": str(go)},
    )
    returning = cmd(["sh", "escape.sh"], timeout=30, env={"PIDFILE": str(returning_pids), "HOW": "double"})
    timing_out = cmd(
        ["sh", "escape.sh"], timeout=1, env={"PIDFILE": str(timing_out_pids), "HOW": "setsid", "THEN": "hang"}
    )

    async def scenario() -> Any:
        first = asyncio.ensure_future(waiting())
        await wait_for_file(waiting_pids)
        others = await asyncio.gather(returning(), timing_out(), return_exceptions=True)
        assert others[0] == {"ok": True}
        assert isinstance(others[1], GatewayTimeout)
        for pidfile in (returning_pids, timing_out_pids):
            assert reaped(read_escape(pidfile)[0])
        assert not first.done(), "the waiting call ended with another one"
        os.kill(read_escape(waiting_pids)[0], 0)  # still running
        go.touch()
        return await first

    assert asyncio.run(scenario()) == {"alive": True}
    assert reaped(read_escape(waiting_pids)[0])
    assert no_zombies_left()


def test_a_program_that_kills_its_supervisor_is_still_cleaned_up(tmp_path: Path) -> None:
    """Second line: the launcher is a subreaper too, so what a killed supervisor leaves goes to it, and it
    kills it. The call itself answers 502, since nobody can vouch for its result."""
    pidfile = tmp_path / "pids"
    func = cmd(["sh", "kill_supervisor.sh"], timeout=20, env={"PIDFILE": str(pidfile)})
    with pytest.raises(BadGateway, match="lost its supervisor process"):
        asyncio.run(func())
    program, escaped = map(int, pidfile.read_text().split())
    assert wait_gone(program) and wait_gone(escaped)
    assert no_zombies_left()


def test_server_death_kills_the_program_tree(tmp_path: Path) -> None:
    """A server that dies (SIGKILL: no cleanup code runs) closes its end of each call's control socket, and
    each supervisor then kills its tree."""
    pidfile = tmp_path / "pids"
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from dpmsf_core.commands.programs import run_program_sync;"
        "run_program_sync(['sh', sys.argv[2]], env={'PIDFILE': sys.argv[3], 'HOW': 'double', 'THEN': 'hang'})"
    )
    server = subprocess.Popen([sys.executable, "-c", code, str(ROOT), str(CASE / "escape.sh"), str(pidfile)])
    try:
        asyncio.run(wait_for_file(pidfile))
    finally:
        server.kill()
        server.wait()
    assert wait_gone(read_escape(pidfile)[0])


def test_program_gets_only_its_three_fds() -> None:
    """The control socket, the launcher's pipes and the server's fds never reach the program."""
    assert asyncio.run(run_program(["sh", "-c", "ls /proc/$$/fd"])).stdout.split() == ["0", "1", "2"]


def test_signal_and_permission_failures_are_502(tmp_path: Path) -> None:
    with pytest.raises(BadGateway, match="was killed by signal SIGTERM") as info:
        asyncio.run(run_program(["sh", "-c", "kill -TERM $$"]))
    assert info.value.extra["exit_code"] == -15
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)  # no x bit at all: not even root may execute it
    with pytest.raises(BadGateway, match="is not executable"):
        asyncio.run(run_program([str(script)]))


def test_a_dead_launcher_is_replaced() -> None:
    """The fork server is restarted when it died (killed, say): the next call simply works."""
    assert asyncio.run(run_program(["echo", "one"])).parsed == "one"
    launcher = supervision.LAUNCHER._proc
    assert launcher is not None
    launcher.kill()
    launcher.wait()
    assert asyncio.run(run_program(["echo", "two"])).parsed == "two"


def test_no_supervisor_is_502(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervision, "LAUNCHER", supervision.Launcher())
    monkeypatch.setattr(sys, "executable", "/no/such/python")
    with pytest.raises(BadGateway, match="cannot start: no supervisor process"):
        asyncio.run(run_program(["true"]))


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
    assert reaped(shell_pid) and reaped(child_pid)


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
