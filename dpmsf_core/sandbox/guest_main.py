"""The program inside the WebAssembly guest: CPython 3.12 for WASI runs this, and tenant modules beside it.

It uses the standard library only and imports nothing of ours (the guest has no host files to import from): the
``dpmsf_core`` that tenant modules import is the small stand-in built by ``_build_package`` below, whose store
calls travel to the host over the same channel as everything else.

Protocol, one request at a time: 4-byte big-endian length + payload, fd 0 in and fd 1 out (the host's pipes).
The top bit of a length this program writes marks the last frame of a call (its answer, or ``ready``); the
worker between it and the server checks every frame's size by that kind before it leaves.
The host writes ``marshal`` (its own data; decoding JSON costs several times more in this interpreter), the guest
writes JSON, which is all the host ever parses from a guest.

- host -> guest ``{"op": "call", "nonce", "path", "sha", "source"?, "function", "args", "kwargs", "request",
  "inject"}``; every frame the guest sends back carries the call's ``nonce``;
  the source is sent once per (path, sha) and cached here.
- guest -> host, any number of ``{"op": "store", "method", "collection", "args"}``, each answered by the host
  with ``{"ok": true, "value": ...}`` or ``{"ok": false, "status", "detail", "errors"}``;
- guest -> host, last, ``{"op": "answer", "ok": true, "result": ...}`` or
  ``{"op": "answer", "ok": false, "kind": "error|http|violation|memory|too_large|result|load|missing", ...}``,
  with ``"loaded": true`` when the module is compiled here all the same (else the host sends its source again).
  ``inject`` names parameters, or gives positions in ``args``, that receive the ``RequestInfo``.

It is one file, over 400 lines, because the guest runs it as one program text (``python -c``) with no files of
ours beside it. Nothing here is a security boundary: the boundary is the WebAssembly instance, which has no
files, sockets, processes, threads or environment. The import allow-list and the hidden builtins are policy,
so that tenant code looks like what the README promises; a tenant that works around them (``uuid.os``) finds a
WASI ``os`` with nothing to reach.
"""

import json
import marshal
import os
import sys

ALLOWED_IMPORTS = frozenset(
    {
        "json", "math", "re", "datetime", "decimal", "fractions", "statistics", "random", "string", "itertools",
        "functools", "collections", "dataclasses", "typing", "uuid", "hashlib", "hmac", "base64", "textwrap",
        "enum", "time", "operator", "copy", "bisect", "heapq", "zoneinfo", "abc",
    }
)  # fmt: skip
_HIDDEN_BUILTINS = ("open", "input", "breakpoint", "help", "exit", "quit", "copyright", "credits", "license")
_MODULE_CACHE = 32
_PRINT_CAPTURE = 8192


_pending = bytearray()


def _read_exact(n):
    """``n`` bytes from fd 0, reading ahead: a request usually arrives whole in one read."""
    while len(_pending) < n:
        chunk = os.read(0, max(n - len(_pending), 1 << 16))
        if not chunk:
            raise SystemExit(0)  # the host closed the channel: this guest is finished
        _pending.extend(chunk)
    data = bytes(_pending[:n])
    del _pending[:n]
    return data


def _receive():
    """The host's frames are ``marshal`` (the host's own data, and the fastest decoder in a slow interpreter)."""
    return marshal.loads(_read_exact(int.from_bytes(_read_exact(4), "big")))


_LAST = 0x80000000  # top bit of a header: the last frame of a call (the worker and the server size it as an answer)


def _send_bytes(data, last=True):
    data = (len(data) | (_LAST if last else 0)).to_bytes(4, "big") + data
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


def _send(obj, last=True):
    """Not ASCII-escaped: a document's frame is as large as the store will count it, not up to six times more.
    Text UTF-8 cannot carry (a lone surrogate) goes escaped, so the server can refuse it with its own 422."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        data = json.dumps(obj, separators=(",", ":")).encode("ascii")
    _send_bytes(data, last)


class _Capture:
    """``sys.stdout``/``sys.stderr`` for tenant code: the first few KB reach the server's log with the answer."""

    def __init__(self):
        self.parts, self.size = [], 0

    def write(self, text):
        text = str(text)
        if self.size < _PRINT_CAPTURE:
            self.parts.append(text[: _PRINT_CAPTURE - self.size])
            self.size += len(self.parts[-1])
        return len(text)

    def flush(self):
        pass

    def take(self):
        text, self.parts, self.size = "".join(self.parts), [], 0
        return text


class HTTPError(Exception):
    """Raise ``HTTPError(404, "no such task")`` to answer with that status, as in trusted modules."""

    def __init__(self, status, detail=None, headers=None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, dict(headers or {})


class SandboxRefused(ImportError):
    """An import outside the allow-list; uncaught, the call answers 403."""


class RequestInfo:
    """The request being served, as trusted modules see it (``request: RequestInfo`` or ``current()``)."""

    def __init__(self, info):
        info = info or {}
        self.method = info.get("method", "")
        self.path = info.get("path", "")
        self.headers = dict(info.get("headers") or {})
        self.query = dict(info.get("query") or {})
        self.body = (info.get("body") or "").encode("latin-1")
        self.tenant = info.get("tenant")
        self.request_id = info.get("request_id", "")
        self.api = info.get("api", "")
        self.module = info.get("module", "")
        self.event = None
        self.context = None
        self.extra = {}

    def header(self, name, default=None):
        return self.headers.get(name.lower(), default)

    def __repr__(self):
        return f"RequestInfo(method={self.method!r}, path={self.path!r}, request_id={self.request_id!r})"


class _Collection:
    """``store.collection(name)``: every method is a request to the host, which picks the tenant itself."""

    def __init__(self, name):
        self.name = name

    def _ask(self, method, *args):
        request = {"op": "store", "nonce": _state["nonce"], "method": method, "collection": self.name}
        _send({**request, "args": list(args)}, last=False)
        reply = _receive()
        if reply.get("ok"):
            return reply.get("value")
        raise HTTPError(int(reply.get("status", 500)), reply.get("detail"))

    def get(self, id):
        return self._ask("get", id)

    def put(self, id, doc):
        return self._ask("put", id, doc)

    def create(self, doc, id=None):
        return self._ask("create", doc, id)

    def update(self, id, changes):
        return self._ask("update", id, changes)

    def delete(self, id):
        return self._ask("delete", id)

    def list(self, limit=100, cursor=None):
        page, next_cursor = self._ask("list", limit, cursor)
        return page, next_cursor


class _Expose:
    """The decorators only mark; the host already read them from the source with ``ast``."""

    def endpoint(self, func=None, **_kw):
        return func if func is not None else (lambda f: f)

    def event(self, *_a, **_kw):
        return lambda f: f


_state = {"request": None, "info": None, "nonce": None}


def _current():
    """``current()``: the request being served, built on first use (most calls never ask)."""
    if _state["request"] is None and _state["info"] is not None:
        _state["request"] = RequestInfo(_state["info"])
    return _state["request"]


def _build_package():
    import types

    expose = _Expose()
    expose.expose = expose  # ``from dpmsf_core.expose import expose``
    store = types.ModuleType("dpmsf_core.store")
    store.collection = _Collection
    store.Collection = _Collection
    package = types.ModuleType("dpmsf_core")
    package.__path__ = []
    package.expose = expose
    package.HTTPError = HTTPError
    package.RequestInfo = RequestInfo
    package.current = _current
    package.store = store
    return {"dpmsf_core": package, "dpmsf_core.expose": expose, "dpmsf_core.store": store}


def _make_builtins(ours):
    import builtins

    real_import = builtins.__import__

    def tenant_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level:
            raise SandboxRefused(f"sandbox refused: relative import of {name!r}")
        if name in ours:
            if fromlist or name == "dpmsf_core":
                return ours[name]
            return ours["dpmsf_core"]  # ``import dpmsf_core.store`` binds the package name
        if name.partition(".")[0] not in ALLOWED_IMPORTS:
            raise SandboxRefused(f"sandbox refused: import {name!r} (not in the sandbox's import allow-list)")
        return real_import(name, globals, locals, fromlist, 0)

    def hidden(name):
        def refused(*_a, **_kw):
            raise SandboxRefused(f"sandbox refused: {name}() is not available to tenant code")

        refused.__name__ = name
        return refused

    safe = dict(vars(builtins))
    for name in _HIDDEN_BUILTINS:
        safe[name] = hidden(name)
    safe["__import__"] = tenant_import
    return safe


def _encode_default(value):
    """The standard types the host's JSON encoder also accepts, converted here since only JSON crosses over."""
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


class _LoadError(Exception):
    pass


class Guest:
    """Loads tenant modules from source (cached by path and hash) and runs one call per request."""

    def __init__(self, max_output):
        import types

        self.max_output = max_output
        self.ours = _build_package()
        self.builtins = _make_builtins(self.ours)
        self.modules = {}
        self.capture = _Capture()
        self.module_type = types.ModuleType
        self.coroutine = types.CoroutineType
        self.encoder = json.JSONEncoder(default=_encode_default, separators=(",", ":"), allow_nan=False)

    def serve(self):
        sys.stdout = sys.stderr = self.capture
        request = _receive()  # a guest forked from a template starts here, a copy of every other: it reseeds
        sys.modules["random"].seed()
        while True:
            self.reply(request)
            request = _receive()

    def reply(self, request):
        nonce = _state["nonce"] = str(request.get("nonce", ""))
        answer = self.handle(request)
        if not answer.get("ok") and (request.get("path"), request.get("sha")) in self.modules:
            answer["loaded"] = True  # the host need not send this module's source again
        printed = self.capture.take() if self.capture.size else ""
        data = answer.pop("_encoded", None)
        if data is not None and not printed:
            head = '{"op":"answer","nonce":"' + nonce + '","ok":true,"result":'
            _send_bytes(head.encode("ascii") + data.encode("utf-8") + b"}")
            return
        answer["op"] = "answer"
        answer["nonce"] = nonce
        answer["stdout"] = printed
        head = json.dumps(answer, separators=(",", ":"))
        if data is not None:
            head = head[:-1] + ',"result":' + data + "}"
        _send_bytes(head.encode("utf-8"))

    def handle(self, req):
        _state["info"] = req.get("request")
        try:
            return self.run(req)
        finally:
            _state["request"] = _state["info"] = None

    def run(self, req):
        """One call: load its module, find its function, call it, encode the result; any failure is the answer."""
        module, failed = self._load(req)
        if failed is not None:
            return failed
        name = req["function"]
        func = getattr(module, name, None) if not name.startswith("__") else None
        if not callable(func):
            return {"ok": False, "kind": "missing", "detail": f"module has no function {name!r}"}
        result, failed = self._call(func, req)
        if failed is not None:
            return failed
        return self._encoded(result)

    def _load(self, req):
        """The module a call names, or the answer saying why it could not be loaded."""
        try:
            return self.module(req["path"], req["sha"], req.get("source")), None
        except MemoryError:
            return None, {"ok": False, "kind": "memory", "detail": "the module ran out of memory while loading"}
        except SandboxRefused as exc:
            return None, {"ok": False, "kind": "violation", "detail": _text(exc)}
        except _LoadError as exc:
            return None, {"ok": False, "kind": "load", "detail": str(exc)}

    def _call(self, func, req):
        """The function's result (an ``async def`` driven to its end), or the answer saying how it failed."""
        args, kwargs = _arguments(req)
        try:
            result = func(*args, **kwargs)
            if isinstance(result, self.coroutine):
                result = _drive(result)
        except MemoryError:
            return None, {"ok": False, "kind": "memory", "detail": "the function ran out of memory"}
        except SandboxRefused as exc:
            return None, {"ok": False, "kind": "violation", "detail": _text(exc)}
        except HTTPError as exc:
            headers = {str(k): str(v) for k, v in exc.headers.items()}
            failed = {
                "ok": False,
                "kind": "http",
                "status": exc.status,
                "detail": _text(exc.detail),
                "headers": headers,
            }
            return None, failed
        except RecursionError:
            return None, {"ok": False, "kind": "error", "type": "RecursionError", "detail": "maximum recursion depth"}
        except BaseException as exc:  # noqa: B036 - the tenant's SystemExit is its failure too
            return None, {"ok": False, "kind": "error", "type": type(exc).__name__, "detail": _text(exc)}
        return result, None

    def _encoded(self, result):
        """The result as JSON within the output limit, or the answer saying why it cannot be sent."""
        try:
            encoded = self.encoder.encode(result)
        except MemoryError:
            return {"ok": False, "kind": "memory", "detail": "the result ran out of memory while being encoded"}
        except BaseException as exc:  # noqa: B036 - encoding may run tenant code (dataclass fields, enums)
            return {"ok": False, "kind": "result", "detail": f"the result is not JSON-encodable: {_text(exc)}"}
        if len(encoded) > self.max_output:
            detail = f"the result is {len(encoded)} bytes, over the sandbox limit of {self.max_output}"
            return {"ok": False, "kind": "too_large", "detail": detail}
        return {"ok": True, "_encoded": encoded}

    def module(self, path, sha, source):
        key = (path, sha)
        cached = self.modules.get(key)
        if cached is not None:
            return cached
        if source is None:
            raise _LoadError(f"module {path} ({sha[:12]}) was not sent to this guest")
        name = path.rsplit("/", 1)[-1].removesuffix(".py")
        module = self.module_type(name)
        module.__dict__.update({"__builtins__": self.builtins, "__file__": path})
        try:
            exec(compile(source, path, "exec", dont_inherit=True), module.__dict__)
        except (MemoryError, SandboxRefused):
            raise
        except BaseException as exc:  # noqa: B036 - anything the module raises at import is a load failure
            raise _LoadError(f"the module failed to load: {type(exc).__name__}: {_text(exc)}") from None
        if len(self.modules) >= _MODULE_CACHE:
            self.modules.pop(next(iter(self.modules)))
        self.modules[key] = module
        return module


def _arguments(req):
    """The call's arguments, with the request's ``RequestInfo`` put where the function asked for it: a parameter's
    name, or the position of a positional argument."""
    args, kwargs = list(req.get("args") or ()), dict(req.get("kwargs") or {})
    for param in req.get("inject") or ():
        if isinstance(param, int) and 0 <= param < len(args):
            args[param] = _current()
        elif isinstance(param, str):
            kwargs[param] = _current()
    return args, kwargs


def _drive(coro):
    """Run an ``async def`` without an event loop: tenant code has no I/O to await, so it must never suspend."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("a sandboxed async function awaited something that suspends (no I/O in the sandbox)")


def _text(value):
    try:
        text = str(value)
    except BaseException:  # noqa: B036 - a tenant __str__ may raise anything
        text = "<unprintable>"
    return text[:2000]


def main():
    config = json.loads(sys.argv[1])
    for name in sorted(ALLOWED_IMPORTS):  # imported once here, so tenant imports cost nothing per call
        __import__(name)
    import _strptime  # noqa: F401 - datetime.strptime's lazy import, paid before the first call
    import importlib

    real_import_module = importlib.import_module

    def import_module(name, package=None):
        if name.partition(".")[0] not in ALLOWED_IMPORTS:
            raise SandboxRefused(f"sandbox refused: import {name!r} (not in the sandbox's import allow-list)")
        return real_import_module(name, package)

    importlib.import_module = import_module  # the allow-list holds for importlib too, once start-up is done

    guest = Guest(int(config["max_output_bytes"]))
    sys.modules.pop("__main__", None)  # tenant code finds no path to this program's globals through sys.modules
    import gc

    gc.freeze()  # what start-up built is never scanned again: forked guests keep sharing its pages
    _send({"op": "ready"})
    guest.serve()


if __name__ == "__main__":
    main()
