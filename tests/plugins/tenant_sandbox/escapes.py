"""A tenant module for the sandbox tests: ordinary functions, and one function per escape attempt."""

import dataclasses
import datetime
import decimal
import json
import random
import time
import uuid

from dpmsf_core import HTTPError, expose

__tenant__ = "7b0c3f52-2f4e-4a8e-9a3c-5d1e2f3a4b5c"
__alias__ = "sandboxed"

_calls = {"n": 0}


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
def pid():
    return random._os.getpid()


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


# -- escape attempts: each must be refused ------------------------------------------------------------------------


@expose.endpoint
def read_passwd():
    return open("/etc/passwd").read()


@expose.endpoint
def os_system():
    import os

    return os.system("id")


@expose.endpoint
def dunder_import():
    return __import__("subprocess").run(["id"])


@expose.endpoint
def connect(port):
    import socket

    return socket.create_connection(("127.0.0.1", port)).recv(10)


@expose.endpoint
def subclasses_system():
    for cls in ().__class__.__mro__[1].__subclasses__():
        if cls.__name__ == "_wrap_close":
            return cls.__init__.__globals__["system"]("id")
    return "no _wrap_close"


@expose.endpoint
def module_attr_system():
    return random._os.system("id")


@expose.endpoint
def module_attr_fork():
    return random._os.fork()


@expose.endpoint
def write_outside():
    os = random._os
    fd = os.open("/tmp/dpmsf-sandbox-escaped", os.O_WRONLY | os.O_CREAT)
    return os.write(fd, b"escaped")


@expose.endpoint
def write_inside():
    os = random._os
    fd = os.open("scratch.txt", os.O_WRONLY | os.O_CREAT)
    os.write(fd, b"ok")
    os.close(fd)
    return os.path.getsize("scratch.txt")


@expose.endpoint
def frame_walk():
    try:
        raise RuntimeError
    except RuntimeError as exc:
        return str(exc.__traceback__.tb_frame.f_back.f_globals)


@expose.endpoint
def code_object():
    return add.__code__.co_code.hex()


@expose.endpoint
def background_thread():
    return random._os.sys.modules["_thread"].start_new_thread(time.sleep, (30,))


@expose.endpoint
def real_eval():
    return eval("1 + 1")


@expose.endpoint
def environment():
    return dict(random._os.environ)


@expose.endpoint
def spin():
    while True:
        pass


@expose.endpoint
def nap(seconds):
    time.sleep(seconds)
    return "rested"


@expose.endpoint
def ten_gigabytes():
    return len(b"x" * 10**10)


@expose.endpoint
def swallow_refusal():
    try:
        import os  # noqa: F401
    except BaseException:
        pass
    return "escaped"
