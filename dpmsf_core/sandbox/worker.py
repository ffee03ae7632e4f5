"""A sandbox worker process: runs untrusted tenant functions behind rlimits, an audit hook and restricted builtins.

Started by ``dpmsf_core.sandbox`` as ``python -I -S -B <this file> <config JSON>``. It uses the standard library
only and never imports ``dpmsf_core``, so the worker can run from any interpreter without the server's packages.

Protocol: length-prefixed JSON frames (4-byte big-endian length) on the pipes the server gave as stdin/stdout;
those fds are moved aside and 0/1/2 are pointed at /dev/null, so tenant output cannot corrupt the frames.
One frame in -> one frame out. A refused operation writes a ``violation`` frame and ends the process at once
(``os._exit``), so tenant code can neither catch nor undo a refusal.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

ALLOWED_IMPORTS = frozenset(
    {
        "json", "math", "re", "datetime", "decimal", "fractions", "statistics", "random", "string", "itertools",
        "functools", "collections", "dataclasses", "typing", "uuid", "hashlib", "hmac", "base64", "textwrap",
        "enum", "time",
    }
)  # fmt: skip
# Loaded before the hook is installed so tenant imports never touch the file system; the second group are the
# stdlib's own lazy imports (datetime.strptime, codecs) that would otherwise happen mid-call.
_PRELOAD = (*sorted(ALLOWED_IMPORTS), "collections.abc", "_strptime", "calendar", "locale", "unicodedata")
_PRELOAD_ENCODINGS = ("ascii", "latin_1", "utf_8", "utf_16", "utf_32", "cp1252", "idna", "hex_codec", "base64_codec")
# Stdlib modules may still import these lazily after start-up (the hook's own allow-list is by top-level name).
_INTERNAL_IMPORTS = frozenset(
    {"encodings", "_strptime", "calendar", "locale", "_locale", "unicodedata", "stringprep", "copy", "numbers"}
)

_REMOVED_BUILTINS = ("copyright", "credits", "license", "__loader__", "__spec__", "memoryview")
# Present in tenant builtins, but calling one is a violation that names it ("sandbox refused: open('/etc/passwd')").
_REFUSED_BUILTINS = (
    "open", "eval", "exec", "compile", "input", "breakpoint", "globals", "vars", "locals", "help", "exit", "quit",
)  # fmt: skip

# Audit events harmless whatever their caller; everything not named here or handled in _decide is refused.
_HARMLESS_EVENTS = frozenset(
    {
        "builtins.id", "time.sleep", "object.__setattr__", "object.__delattr__", "array.__new__",
        "sys.unraisablehook", "sys.excepthook", "cpython._PySys_ClearAuditHooks",
    }
)  # fmt: skip
# Allowed only when the Python frame that triggered them is stdlib, frozen importlib or this worker.
_TRUSTED_CALLER_EVENTS = frozenset(
    {
        "exec", "compile", "object.__getattr__", "sys._getframe", "sys._getframemodulename", "code.__new__",
        "function.__new__", "marshal.loads",
    }
)  # fmt: skip
REFUSE_EVENT = "dpmsf.sandbox.refuse"
VIOLATION_EXIT = 77
_MODULE_CACHE_SIZE = 64
_CAPTURE_CHARS = 8192


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _frame(obj: object) -> bytes:
    data = json.dumps(obj, separators=(",", ":")).encode("utf-8")
    return len(data).to_bytes(4, "big") + data


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _make_hook(tmpdir: str, stdlib: str, worker_file: str, out_fd: int) -> Callable[[str, tuple], None]:
    """The audit hook; its state lives only in this closure, unreachable from tenant code once installed."""
    import _thread

    busy: set[int] = set()
    get_ident = _thread.get_ident
    getframe = sys._getframe
    realpath = os.path.realpath
    fsdecode = os.fsdecode
    write_all = _write_all
    frame = _frame
    exit_now = os._exit
    denied_reads = (os.path.join(stdlib, "site-packages"), os.path.join(stdlib, "dist-packages"))
    trusted_prefixes = (stdlib + os.sep, "<frozen ")
    import_ok = ALLOWED_IMPORTS | _INTERNAL_IMPORTS
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    harmless = _HARMLESS_EVENTS
    caller_checked = _TRUSTED_CALLER_EVENTS

    def refuse(what: str) -> None:
        try:
            write_all(out_fd, frame({"ok": False, "kind": "violation", "detail": "sandbox refused: " + what[:500]}))
        finally:
            exit_now(VIOLATION_EXIT)

    def trusted_caller() -> bool:
        try:
            filename = getframe(3).f_code.co_filename  # 0 here, 1 _decide, 2 hook, 3 the audited call's caller
        except ValueError:
            return False
        return filename == worker_file or filename.startswith(trusted_prefixes)

    def path_of(raw: object) -> str | None:
        if isinstance(raw, bytes):
            raw = fsdecode(raw)
        return realpath(raw) if isinstance(raw, str) else None

    def readable(path: str) -> bool:
        if _is_under(path, tmpdir):
            return True
        return _is_under(path, stdlib) and not any(_is_under(path, d) for d in denied_reads)

    def decide(event: str, args: tuple) -> str | None:
        if event == "open":
            raw, mode, flags = args
            if isinstance(raw, int):
                return None  # an fd this process already holds
            path = path_of(raw)
            if path is None:
                return f"open() of a {type(raw).__name__}"
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & write_flags)
            if writing and not _is_under(path, tmpdir):
                return f"open({raw!r}, {mode or 'flags=' + str(flags)!r}) for writing outside the sandbox's temp dir"
            if not readable(path):
                return f"open({raw!r})"
            return None
        if event == "import":
            name = args[0]
            return None if name.partition(".")[0] in import_ok else f"import {name!r}"
        if event in ("os.listdir", "os.scandir"):
            path = path_of(args[0] if args[0] is not None else ".")
            return None if path is not None and readable(path) else f"{event}({args[0]!r})"
        if event in caller_checked:
            if trusted_caller():
                return None
            if event == "object.__getattr__":
                return f"access to {type(args[0]).__name__}.{args[1]}"
            return f"{event}()"
        if event == REFUSE_EVENT:
            return str(args[0]) if args else "a forbidden operation"
        return f"{event}{_short_args(args)}"

    def hook(event: str, args: tuple) -> None:
        if event in harmless:
            return
        ident = get_ident()
        if ident in busy:
            return  # events raised by this hook's own work (sys._getframe, f_code)
        busy.add(ident)
        try:
            verdict = decide(event, args)
        except Exception as exc:  # a hook that cannot decide refuses
            verdict = f"{event} (undecidable: {type(exc).__name__})"
        finally:
            busy.discard(ident)
        if verdict is not None:
            refuse(verdict)

    return hook


def _short_args(args: tuple) -> str:
    try:
        text = ", ".join(repr(a) for a in args[:2])
    except Exception:
        text = "..."
    return f"({text[:200]})"


class _Capture:
    """``sys.stdout``/``sys.stderr`` for tenant code: keeps the first few KB so prints reach the server's log."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0

    def write(self, text: str) -> int:
        if self.size < _CAPTURE_CHARS:
            self.parts.append(str(text)[: _CAPTURE_CHARS - self.size])
            self.size += len(self.parts[-1])
        return len(text)

    def flush(self) -> None:
        pass

    def take(self) -> str:
        text = "".join(self.parts)
        self.parts, self.size = [], 0
        return text


def _build_stubs() -> tuple[Any, type[Exception]]:
    """A ``dpmsf_core`` stand-in: the decorators only return the function; HTTPError carries a status back."""
    import types

    class HTTPError(Exception):
        def __init__(self, status: int, detail: str | None = None, headers: dict | None = None) -> None:
            super().__init__(detail)
            self.status, self.detail, self.headers = status, detail, dict(headers or {})

    class Expose:
        def endpoint(self, func: Any = None, **_kw: Any) -> Any:
            return func if func is not None else (lambda f: f)

        def event(self, *_a: Any, **_kw: Any) -> Any:
            return lambda f: f

        def command(self, *_a: Any, **_kw: Any) -> Any:
            sys.audit(REFUSE_EVENT, "expose.command (no subprocesses in the sandbox)")

    expose = Expose()
    expose.expose = expose  # ``from dpmsf_core.expose import expose``
    package = types.ModuleType("dpmsf_core")
    package.expose = expose
    package.HTTPError = HTTPError
    return package, HTTPError


def _make_builtins(package: object) -> dict:
    import builtins

    real_import = builtins.__import__
    audit = sys.audit
    allowed = ALLOWED_IMPORTS

    def sandbox_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
        if level:
            audit(REFUSE_EVENT, f"relative import of {name!r}")
        top = name.partition(".")[0]
        if top == "dpmsf_core":
            if name not in ("dpmsf_core", "dpmsf_core.expose"):
                audit(REFUSE_EVENT, f"import {name!r} (only dpmsf_core.expose is available)")
            return package.expose if (fromlist and name == "dpmsf_core.expose") else package
        if top not in allowed:
            audit(REFUSE_EVENT, f"import {name!r}")
        return real_import(name, globals, locals, fromlist, 0)

    def refusing(name: str) -> Callable[..., Any]:
        def refused(*args: Any, **_kw: Any) -> Any:
            shown = repr(args[0])[:200] if args and name == "open" else ""
            audit(REFUSE_EVENT, f"{name}({shown})")

        refused.__name__ = name
        return refused

    safe = {k: v for k, v in vars(builtins).items() if k not in _REMOVED_BUILTINS}
    safe.update({name: refusing(name) for name in _REFUSED_BUILTINS})
    safe["__import__"] = sandbox_import
    return safe


def _encode_default(value: object) -> object:
    """The standard types ``dpmsf_core.responses`` also encodes, converted here because only JSON crosses over."""
    import base64
    import dataclasses
    import datetime
    import decimal
    import enum
    import uuid

    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"a result of type {type(value).__name__} is not JSON-encodable")


class _Worker:
    """The request loop: load (and cache) a module from source, call one function, answer one frame."""

    def __init__(self, config: dict, in_fd: int, out_fd: int, builtins_: dict, http_error: type) -> None:
        import _thread
        import signal
        import types

        self.config = config
        self.in_fd, self.out_fd = in_fd, out_fd
        self.builtins = builtins_
        self.http_error = http_error
        self.modules: dict[tuple[str, str], object] = {}
        self.capture = _Capture()
        self.setitimer = signal.setitimer
        self.thread_count = _thread._count
        self.itimer = signal.ITIMER_PROF
        self.coroutine = types.CoroutineType
        self.module_type = types.ModuleType
        self.max_output = int(config["max_output_bytes"])
        self.encoder = json.JSONEncoder(default=_encode_default, separators=(",", ":"), allow_nan=False)

    def serve(self) -> None:
        sys.stdout = sys.stderr = self.capture
        while True:
            header = _read_exact(self.in_fd, 4)
            if header is None:
                return
            body = _read_exact(self.in_fd, int.from_bytes(header, "big"))
            if body is None:
                return
            _write_all(self.out_fd, self.handle(json.loads(body)))

    def handle(self, req: dict) -> bytes:
        self.setitimer(self.itimer, float(req.get("cpu") or self.config["cpu_seconds"]))
        try:
            answer = self.run(req)
        finally:
            self.setitimer(self.itimer, 0)
        if self.thread_count():  # no audit event covers _thread.start_new_thread; a thread must not outlive its call
            answer = {"ok": False, "kind": "violation", "detail": "sandbox refused: starting a thread"}
        answer["stdout"] = self.capture.take()
        answer["cpu"] = _cpu_time()
        try:
            data = answer.pop("_encoded", None)
            if data is not None:
                head = json.dumps(answer, separators=(",", ":"))
                payload = (head[:-1] + ',"result":' + data + "}").encode("utf-8")
            else:
                payload = json.dumps(answer, separators=(",", ":")).encode("utf-8")
        except (TypeError, ValueError) as exc:
            payload = json.dumps({"ok": False, "kind": "error", "detail": f"cannot encode the answer: {exc}"}).encode()
        return len(payload).to_bytes(4, "big") + payload

    def run(self, req: dict) -> dict:
        try:
            module = self.module(req["path"], req["sha"], req.get("source"))
        except MemoryError:
            return {"ok": False, "kind": "memory", "detail": "the module ran out of memory while loading"}
        except _LoadError as exc:
            return {"ok": False, "kind": "load", "detail": str(exc)}
        func = getattr(module, req["function"], None) if not req["function"].startswith("__") else None
        if not callable(func):
            return {"ok": False, "kind": "missing", "detail": f"module has no function {req['function']!r}"}
        try:
            result = func(*req.get("args", ()), **req.get("kwargs", {}))
            if isinstance(result, self.coroutine):
                result = _drive(result)
        except MemoryError:
            return {"ok": False, "kind": "memory", "detail": "the function ran out of memory"}
        except self.http_error as exc:
            headers = {str(k): str(v) for k, v in exc.headers.items()}
            return {"ok": False, "kind": "http", "status": exc.status, "detail": _text(exc.detail), "headers": headers}
        except BaseException as exc:  # noqa: B036 - the tenant's SystemExit/KeyboardInterrupt are its failures too
            return {"ok": False, "kind": "error", "type": type(exc).__name__, "detail": _text(exc)}
        try:
            encoded = self.encoder.encode(result)
        except MemoryError:
            return {"ok": False, "kind": "memory", "detail": "the result ran out of memory while being encoded"}
        except BaseException as exc:  # noqa: B036 - encoding may run tenant code (dataclass fields, enums)
            return {"ok": False, "kind": "result", "detail": f"the result is not JSON-encodable: {_text(exc)}"}
        if len(encoded) > self.max_output:
            return {
                "ok": False,
                "kind": "too_large",
                "detail": f"the result is {len(encoded)} bytes, over the sandbox limit of {self.max_output}",
            }
        return {"ok": True, "_encoded": encoded}

    def module(self, path: str, sha: str, source: str | None) -> object:
        key = (path, sha)
        cached = self.modules.get(key)
        if cached is not None:
            return cached
        if source is None:
            raise _LoadError(f"module {path} ({sha[:12]}) was not sent to this worker")
        name = os.path.splitext(os.path.basename(path))[0]
        if name == "__init__":
            name = os.path.basename(os.path.dirname(path)) or "module"
        module = self.module_type(name)
        module.__dict__.update({"__builtins__": self.builtins, "__file__": path})
        try:
            code = compile(source, "<sandbox>" + path, "exec", dont_inherit=True)
            exec(code, module.__dict__)
        except MemoryError:
            raise
        except BaseException as exc:  # noqa: B036 - anything the module raises at import is a load failure
            raise _LoadError(f"the module failed to load: {type(exc).__name__}: {_text(exc)}") from None
        if len(self.modules) >= _MODULE_CACHE_SIZE:
            self.modules.pop(next(iter(self.modules)))
        self.modules[key] = module
        return module


class _LoadError(Exception):
    pass


def _drive(coro: object) -> object:
    """Run an ``async def`` without an event loop: tenant code has no I/O to await, so it must never suspend."""
    try:
        coro.send(None)  # type: ignore[attr-defined]
    except StopIteration as stop:
        return stop.value
    coro.close()  # type: ignore[attr-defined]
    raise RuntimeError("a sandboxed async function awaited something that suspends (no I/O in the sandbox)")


def _text(value: object) -> str:
    try:
        text = str(value)
    except BaseException:  # noqa: B036 - a tenant __str__ may raise anything
        text = "<unprintable>"
    return text[:2000]


def _cpu_time() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _apply_limits(config: dict) -> None:
    import resource

    mem = int(config["memory_mb"]) * 1024 * 1024
    budget = int(_cpu_time()) + int(config["cpu_budget"])
    limits = [
        (resource.RLIMIT_AS, mem, mem),
        (resource.RLIMIT_CPU, budget, budget + 1),  # the per-call limit is an ITIMER_PROF; this caps the worker
        (resource.RLIMIT_FSIZE, int(config["fsize_bytes"]), int(config["fsize_bytes"])),
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_NOFILE, 32, 32),
        (resource.RLIMIT_NPROC, 0, 0),  # no fork, no threads (ignored when running as root)
    ]
    for which, soft, hard in limits:
        resource.setrlimit(which, (soft, hard))


def _disable_threads() -> None:
    """No audit event covers ``_thread.start_new_thread``: replace it where tenant code could find it."""
    import _thread

    def start_new_thread(*_args: Any, **_kw: Any) -> Any:
        sys.audit(REFUSE_EVENT, "starting a thread")

    _thread.start_new_thread = _thread.start_new = start_new_thread


def main() -> None:
    config = json.loads(sys.argv[1])
    in_fd, out_fd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    try:
        import importlib
        import signal

        signal.signal(signal.SIGPROF, signal.SIG_DFL)  # the per-call CPU timer ends the process
        for name in _PRELOAD:
            importlib.import_module(name)
        for name in _PRELOAD_ENCODINGS:
            importlib.import_module("encodings." + name)
        import datetime

        datetime.datetime.strptime("2000-01-02", "%Y-%m-%d")  # warms _strptime's caches
        tmpdir = os.path.realpath(config["tmpdir"])
        os.chdir(tmpdir)
        stdlib = os.path.realpath(os.path.dirname(os.__file__))
        worker_file = os.path.realpath(__file__)
        package, http_error = _build_stubs()
        worker = _Worker(config, in_fd, out_fd, _make_builtins(package), http_error)
        _disable_threads()
        _apply_limits(config)
        sys.modules.pop("__main__", None)  # tenant code reaching sys.modules finds no path to this worker's globals
        sys.addaudithook(_make_hook(tmpdir, stdlib, worker_file, out_fd))
    except BaseException as exc:  # noqa: B036 - report any start-up failure to the server, then stop
        _write_all(out_fd, _frame({"ready": False, "error": f"{type(exc).__name__}: {exc}"}))
        raise SystemExit(1) from None
    _write_all(out_fd, _frame({"ready": True, "pid": os.getpid(), "cpu": _cpu_time()}))
    worker.serve()
    os._exit(0)  # the server closed the pipe; skip interpreter finalization under the hook


if __name__ == "__main__":
    main()
