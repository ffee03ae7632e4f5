"""Endpoints backed by any program: the call goes to its stdin as JSON, its stdout is the result.

``expose.command(API="hello-node", argv=["node", "hello.js"])`` builds its function with
``command_function``. Rules shared with ``run_program`` (for Python plugins that call programs themselves):

- no shell unless ``shell=True``; relative program/script paths and the default working directory
  resolve against the plugin file's folder;
- the program sees only ``PATH``, ``LANG`` and ``HOME`` of the server's environment (plus ``env=``),
  so the server's secrets do not leak into it;
- no process it starts outlives the call, not even one that left its process group or session (``setsid``,
  double fork): on Linux each program runs under its own supervisor (``subreaper.py``), a child subreaper that,
  when the program exits, times out or floods stdout, SIGKILLs and reaps every process still below it before
  the call returns. Without ``/proc`` and ``prctl`` (macOS), only the program's process group is killed;
- non-zero exit -> 502 with the exit code and the end of stderr; timeout -> 504; program not found -> 502.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import shlex
import shutil
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..context import current
from ..errors import BadGateway, GatewayTimeout
from ..private_dir import PrivateDir
from .supervision import OutputTooLarge, Supervised

log = logging.getLogger("dpmsf.commands")
_warned_no_subreaper = False

__all__ = ["ProgramResult", "build_cache", "command_function", "minimal_env", "run_program", "run_program_sync"]

DEFAULT_TIMEOUT = 30.0
MAX_STDOUT = 6 * 1024 * 1024  # API Gateway's payload limit: a larger answer could not be sent anyway
STDERR_KEEP = 64 * 1024  # the tail of stderr kept in ProgramResult
STDERR_DETAIL = 2048  # the tail of stderr quoted in a 502's detail
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
_READ_CHUNK = 65536
_GRACE = 1.0  # once the tree is dead, how long to wait for pipes that a process outside it might still hold
_KILL_WAIT = 5.0  # how long a call waits for its supervisor to confirm that the tree is dead


@dataclass(frozen=True)
class ProgramResult:
    """What a program answered: ``parsed`` is stdout as JSON if it parses, else the stripped text (None if empty)."""

    returncode: int
    stdout: str
    stderr: str
    parsed: Any


def parse_output(stdout: str) -> Any:
    """JSON when stdout is JSON, else the stripped text; None for no output at all."""
    text = stdout.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def minimal_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """PATH, LANG and HOME of this process, overlaid with ``extra``: nothing else (no credentials) leaks."""
    env = {
        "PATH": os.environ.get("PATH") or _DEFAULT_PATH,
        "LANG": os.environ.get("LANG") or "C.UTF-8",
        "HOME": os.environ.get("HOME") or "/tmp",
    }
    for key, value in (extra or {}).items():
        env[str(key)] = str(value)
    return env


def build_cache(name: str) -> PrivateDir:
    """A folder under the temp folder for what a program builds once and then runs (``javac`` classes): only this
    server may write it, checked on every ``get()``; one planted by another user is refused (``PrivateDir``)."""
    import tempfile

    return PrivateDir(Path(tempfile.gettempdir()) / name, purpose=f"build cache {name}")


def _display(argv: Sequence[str] | str) -> str:
    return argv if isinstance(argv, str) else shlex.join(argv)


def _resolve_argv(argv: Sequence[str], base: Path | None, path_env: str) -> list[str]:
    """Relative program and script paths mean "next to the plugin file"; bare names are looked up in PATH first."""
    out = [str(a) for a in argv]
    if base is None or not out:
        return out
    program = out[0]
    if os.sep in program or (os.altsep and os.altsep in program):
        if not os.path.isabs(program):
            out[0] = str(base / program)
    elif shutil.which(program, path=path_env) is None and (base / program).is_file():
        out[0] = str(base / program)
    for i, arg in enumerate(out[1:], start=1):
        if arg and not arg.startswith("-") and not os.path.isabs(arg) and (base / arg).is_file():
            out[i] = str(base / arg)
    return out


async def _read_capped(stream: asyncio.StreamReader, buf: bytearray, cap: int, kill: Callable[[], None]) -> None:
    while chunk := await stream.read(_READ_CHUNK):
        buf += chunk
        if len(buf) > cap:
            kill()  # stop the flood now rather than at the timeout
            raise OutputTooLarge


async def _read_tail(stream: asyncio.StreamReader, buf: bytearray, keep: int) -> None:
    while chunk := await stream.read(_READ_CHUNK):
        buf += chunk
        if len(buf) > 2 * keep:
            del buf[:-keep]


async def _drain_pipes(readers: set[asyncio.Task[Any]]) -> None:
    """Once the supervisor has reported, the tree is dead and its pipes are at EOF at once; only a process
    outside the tree that was handed a pipe (over a unix socket, say) could hold one open: stop listening then."""
    _, pending = await asyncio.wait(readers, timeout=_GRACE)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


async def _feed(stream: asyncio.StreamWriter | None, data: bytes | None) -> None:
    """Write stdin and close it; a program that never reads its input is not an error."""
    if stream is None:
        return
    try:
        if data:
            stream.write(data)
            await stream.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        stream.close()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await stream.wait_closed()


def _encode_input(data: Any) -> bytes | None:
    if data is None:
        return None
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode()
    return json.dumps(data, default=str).encode()


async def run_program(
    argv: Sequence[str] | str,
    input: Any = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    shell: bool = False,
    check: bool = True,
    max_output: int = MAX_STDOUT,
    name: str | None = None,
) -> ProgramResult:
    """Run a program under the command rules: ``input`` (JSON-encoded unless str/bytes) goes to its stdin.

    ``check=True`` raises BadGateway (502) on a non-zero exit; a timeout raises GatewayTimeout (504). When it
    returns or raises, the program and every process it started are dead and reaped (see ``subreaper.py``).
    """
    what = f"Command '{name}'" if name else "Program"
    shown = _display(argv)
    full_env = minimal_env(env)
    if isinstance(argv, str) and not shell:
        argv = shlex.split(argv)
    if not shell and not argv:
        raise BadGateway(f"{what} has an empty argv.")
    if cwd is not None and not os.path.isdir(cwd):
        raise BadGateway(f"{what} ({shown}) cannot start: working directory '{cwd}' does not exist.")
    data = _encode_input(input)
    if shell:
        program = ["/bin/sh", "-c", argv if isinstance(argv, str) else shlex.join(argv)]
    else:
        program = [str(a) for a in argv]
    workdir = os.path.abspath(cwd) if cwd is not None else os.getcwd()
    try:
        call = await Supervised.start(program, full_env, workdir, data)
    except OSError as exc:
        log.error("%s: no supervisor process could be started: %s", what, exc)
        raise BadGateway(f"{what} ({shown}) cannot start: no supervisor process ({exc.strerror or exc}).") from None

    out, err = bytearray(), bytearray()
    tasks: list[asyncio.Task[Any]] = []
    report = asyncio.ensure_future(call.report())
    try:
        feeder = asyncio.ensure_future(_feed(call.stdin, data))
        reader = asyncio.ensure_future(_read_capped(call.stdout, out, max_output, call.kill))
        err_reader = asyncio.ensure_future(_read_tail(call.stderr, err, STDERR_KEEP))
        tasks = [feeder, reader, err_reader]
        try:
            async with asyncio.timeout(timeout):
                # The program has exited and its whole tree is dead and reaped. Shielded: a timeout or a
                # cancellation must not cancel the report too, since _finish waits on it for the kill's end.
                reports = await asyncio.shield(report)
                await _drain_pipes({reader, err_reader})
                if not reader.cancelled() and isinstance(reader.exception(), OutputTooLarge):
                    raise OutputTooLarge
                await feeder
        except TimeoutError:
            raise GatewayTimeout(f"{what} ({shown}) ran past its timeout of {timeout:g} s and was killed.") from None
        except OutputTooLarge:
            raise BadGateway(f"{what} ({shown}) wrote more than {max_output} bytes to stdout and was killed.") from None
    finally:
        call.kill()  # a no-op for the supervisor when it has already reported
        await asyncio.shield(_finish(call, report, tasks, what))

    returncode = _returncode(reports, what, shown, program[0], full_env["PATH"], workdir)
    stdout = out.decode("utf-8", errors="replace")
    stderr = err[-STDERR_KEEP:].decode("utf-8", errors="replace")
    if check and returncode != 0:
        raise BadGateway(_failure_detail(what, shown, returncode, stderr), extra={"exit_code": returncode})
    return ProgramResult(returncode=returncode, stdout=stdout, stderr=stderr, parsed=parse_output(stdout))


async def _finish(
    call: Supervised, report: asyncio.Future[dict[str, str]], tasks: list[asyncio.Task[Any]], what: str
) -> None:
    """Wait (bounded) for the supervisor to confirm the tree is dead, then release our tasks, pipes and socket."""
    if not report.done():
        await asyncio.wait({report}, timeout=_KILL_WAIT)
        if not report.done():
            log.error("%s: its supervisor did not confirm the kill within %g s", what, _KILL_WAIT)
    for task in [*tasks, report]:
        task.cancel()
    await asyncio.gather(*tasks, report, return_exceptions=True)
    call.close()


def _returncode(reports: dict[str, str], what: str, shown: str, program: str, path: str, cwd: str) -> int:
    """The program's exit code (negative: killed by that signal) from the supervisor's reports, or the 502 why not."""
    global _warned_no_subreaper
    if "E" in reports:
        number, _, step = reports["E"].partition(" ")
        code = int(number or 0)
        if step == "cwd":
            raise BadGateway(f"{what} ({shown}) cannot start: working directory '{cwd}': {os.strerror(code)}.")
        if code == errno.ENOENT:
            log.warning("%s: %r not found (PATH=%r, cwd=%r)", what, program, path, cwd)
            raise BadGateway(
                f"{what} ({shown}) cannot start: program '{program}' was not found on PATH or next to the plugin."
            )
        if code == errno.EACCES:
            raise BadGateway(f"{what} ({shown}) cannot start: '{program}' is not executable.")
        raise BadGateway(f"{what} ({shown}) cannot start: {os.strerror(code)}.")
    if reports.get("S", "").endswith(" 0") and not _warned_no_subreaper:
        _warned_no_subreaper = True
        log.warning("no PR_SET_CHILD_SUBREAPER here: a program's children that leave its process group can outlive it")
    if "X" not in reports:
        log.error("%s: its supervisor ended without a report (%s)", what, reports.get("F", "killed?"))
        raise BadGateway(f"{what} ({shown}) lost its supervisor process before it ended (was it killed?).")
    return os.waitstatus_to_exitcode(int(reports["X"]))


def _failure_detail(what: str, shown: str, returncode: int, stderr: str) -> str:
    if returncode < 0:
        try:
            how = f"was killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"was killed by signal {-returncode}"
    else:
        how = f"exited with code {returncode}"
    tail = stderr[-STDERR_DETAIL:].strip()
    return f"{what} ({shown}) {how}." + (f" stderr (last {STDERR_DETAIL} bytes): {tail}" if tail else " No stderr.")


def run_program_sync(
    argv: Sequence[str] | str,
    input: Any = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    shell: bool = False,
    check: bool = True,
    max_output: int = MAX_STDOUT,
) -> ProgramResult:
    """``run_program`` for sync plugin functions (they run in worker threads, where no event loop is running)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("run_program_sync() was called inside a running event loop; use 'await run_program()'.")
    return asyncio.run(
        run_program(argv, input, timeout=timeout, cwd=cwd, env=env, shell=shell, check=check, max_output=max_output)
    )


def _request_env(api: str) -> dict[str, str]:
    """What the program may want to know about the call, beyond its args: method, tenant, request id."""
    info = current()
    env = {"DPMSF_API": api}
    if info is not None:
        env["DPMSF_METHOD"] = info.method
        env["DPMSF_REQUEST_ID"] = info.request_id
        if info.tenant:
            env["DPMSF_TENANT"] = info.tenant
    return env


def command_function(
    *,
    api: str,
    argv: Sequence[str] | str,
    timeout: float = DEFAULT_TIMEOUT,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    shell: bool = False,
    module_name: str = "__main__",
    module_file: str | None = None,
    doc: str | None = None,
    max_output: int = MAX_STDOUT,
) -> Callable[..., Any]:
    """An ``async def f(*args, **kwargs)`` that runs ``argv`` with ``{"args": [...], "kwargs": {...}}`` on stdin."""
    if not isinstance(timeout, int | float) or timeout <= 0:
        raise ValueError(f"timeout={timeout!r} for command '{api}' is not a positive number of seconds.")
    base = Path(module_file).resolve().parent if module_file else None
    workdir: str | None
    if cwd is None:
        workdir = str(base) if base else None
    elif base is not None and not os.path.isabs(cwd):
        workdir = str(base / cwd)
    else:
        workdir = cwd
    fixed_env = dict(env or {})
    if shell:
        program: Sequence[str] | str = argv if isinstance(argv, str) else shlex.join(argv)
    else:
        parts = shlex.split(argv) if isinstance(argv, str) else list(argv)
        if not parts:
            raise ValueError(f"argv for command '{api}' is empty.")
        program = parts

    async def command(*args: Any, **kwargs: Any) -> Any:
        run_env = {**_request_env(api), **fixed_env}
        resolved = program if shell else _resolve_argv(program, base, minimal_env(run_env)["PATH"])
        result = await run_program(
            resolved,
            {"args": list(args), "kwargs": kwargs},
            timeout=timeout,
            cwd=workdir,
            env=run_env,
            shell=shell,
            max_output=max_output,
            name=api,
        )
        return result.parsed

    command.__name__ = command.__qualname__ = api.replace("-", "_").replace(".", "_").replace("~", "_")
    command.__module__ = module_name
    command.__doc__ = doc or f"Runs {_display(argv)}"
    # read by openapi.py and __dir__: what the endpoint runs (an attribute of the function: no type declares it)
    command.__dpmsf_command__ = {"argv": argv, "timeout": timeout, "cwd": workdir, "shell": shell}  # type: ignore[attr-defined]
    return command
