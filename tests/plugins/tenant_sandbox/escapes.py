"""A tenant module for the sandbox tests: ordinary functions, and one function per way out a hostile tenant tried."""

import dataclasses
import datetime
import decimal
import json
import random
import time
import uuid

from dpmsf_core import HTTPError, RequestInfo, current, expose, store

__tenant__ = "7b0c3f52-2f4e-4a8e-9a3c-5d1e2f3a4b5c"
__alias__ = "sandboxed"

_calls = {"n": 0}
os = uuid.os  # what a tenant gets by walking around the import allow-list: WASI's os, with nothing behind it


@dataclasses.dataclass
class Point:
    x: int
    when: datetime.date


@expose.endpoint(method="GET|POST", API="add")
def add(a, b=0):
    """Add two numbers."""
    return a + b


@expose.endpoint
def rich():
    return {
        "point": Point(1, datetime.date(2024, 5, 6)),
        "price": decimal.Decimal("2.50"),
        "id": uuid.UUID(int=1),
        "doc": json.loads('{"k": [1, 2]}'),
        "pick": random.Random(4).randint(1, 6),
    }


@expose.endpoint
async def async_add(a, b):
    return a + b


@expose.endpoint
def counter():
    _calls["n"] += 1
    return _calls["n"]


@expose.endpoint
def identity():
    """A value unique to this guest instance: two guests never answer the same."""
    if "id" not in _calls:
        _calls["id"] = uuid.uuid4().hex
    return _calls["id"]


@expose.endpoint
def fail():
    raise ValueError("bad input: 42")


@expose.endpoint
def not_found():
    raise HTTPError(404, "no such task")


@expose.endpoint
def not_json():
    return object()


@expose.endpoint
def huge_result():
    return "x" * 2_000_000


@expose.endpoint
def talk():
    print("hello from the sandbox")
    return "said"


@expose.endpoint
def whoami(request: RequestInfo):
    seen = current()
    return {"method": request.method, "same": seen is request, "auth": request.header("authorization")}


@expose.endpoint
def remember(key, value):
    return store.collection("notes").put(key, {"value": value})


@expose.endpoint
def recall(key):
    return store.collection("notes").get(key)


# -- ways out: each must find nothing -----------------------------------------------------------------------------


@expose.endpoint
def read_passwd():
    return open("/etc/passwd").read()


@expose.endpoint
def read_passwd_os():
    fd = os.open("/etc/passwd", os.O_RDONLY)
    return os.read(fd, 1000).decode()


@expose.endpoint
def list_root():
    return os.listdir("/")


@expose.endpoint
def read_server_environ(pid):
    fd = os.open(f"/proc/{pid}/environ", os.O_RDONLY)
    return os.read(fd, 100000).decode("latin-1")


@expose.endpoint
def import_os():
    import os as real_os  # noqa: F401

    return "imported"


@expose.endpoint
def dunder_import():
    return __import__("subprocess").run(["id"])


@expose.endpoint
def importlib_import():
    return dataclasses.inspect.importlib.import_module("subprocess").run(["id"])


@expose.endpoint
def shell(command):
    return os.system(command)


@expose.endpoint
def signal_process(pid):
    for name in ("kill", "killpg", "pidfd_open"):
        if hasattr(os, name):
            return getattr(os, name)(pid, 9)
    return "no way to signal a process"


@expose.endpoint
def privileged_calls():
    """Calls the audit hook never saw; in WASI none of them exists."""
    names = ("setpriority", "sched_setaffinity", "chroot", "setuid", "fork", "execv", "posix_spawn", "pidfd_open")
    return [name for name in names if hasattr(os, name)]


@expose.endpoint
def fresh_posix():
    posix = dataclasses.inspect.importlib._bootstrap._imp.create_builtin(
        dataclasses.inspect.importlib.machinery.ModuleSpec("posix", None)
    )
    return posix.listdir("/")


@expose.endpoint
def write_outside(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    return os.write(fd, b"escaped")


@expose.endpoint
def fill_disk():
    fd = os.open("big.bin", os.O_WRONLY | os.O_CREAT)
    return os.write(fd, b"x" * 10_000_000)


@expose.endpoint
def connect(port):
    import socket

    return socket.create_connection(("127.0.0.1", port)).recv(10)


@expose.endpoint
def connect_raw(port):
    sock = dataclasses.inspect.importlib.import_module("_socket")
    return sock.socket().connect(("127.0.0.1", port))


@expose.endpoint
def background_thread():
    return uuid.os.sys.modules["_thread"].start_new_thread(time.sleep, (30,))


@expose.endpoint
def environment():
    return dict(os.environ)


@expose.endpoint
def frame_walk():
    """Reach the guest program's own globals through a traceback, and break them (for this guest only)."""
    try:
        raise RuntimeError
    except RuntimeError as exc:
        frame = exc.__traceback__.tb_frame
        while frame.f_back is not None:
            frame = frame.f_back
        frame.f_globals["_send_bytes"] = None
        return "tampered"


@expose.endpoint
def forge_frame():
    os.write(1, b"\xff\xff\xff\xff")
    return "forged"


@expose.endpoint
def spin():
    while True:
        pass


@expose.endpoint
def spin_between_store_calls(rounds: int = 20):
    """Each store reply used to restart the CPU budget: compute 0.3 s, ask the store, again and again."""
    for _ in range(rounds):
        until = time.monotonic() + 0.3
        while time.monotonic() < until:
            pass
        store.collection("notes").get("k")
    return "computed past the budget"


@expose.endpoint
def nap(seconds):
    time.sleep(seconds)
    return "rested"


@expose.endpoint
def gigabytes():
    return len([bytearray(10**7) for _ in range(1000)])


@expose.endpoint
def deep_recursion():
    def down(n):
        return down(n + 1)

    return down(0)
