"""A tenant module for the CPU, output and memory tests: honest work of a known size, and noisy neighbours."""

import json
import time
import uuid

from dpmsf_core import RequestInfo, expose, store

__tenant__ = "7b0c3f52-2f4e-4a8e-9a3c-5d1e2f3a4b5c"

os = uuid.os  # WASI's os, reached around the import allow-list


@expose.endpoint
def work(n: int):
    """A fixed amount of computing: its CPU time does not depend on how busy the host is."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


@expose.endpoint
def spin():
    while True:
        pass


@expose.endpoint
def spin_reading_nothing(seconds: float = 10):
    """Each read of fd 0 used to restart the CPU budget, even one of zero bytes."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        for _ in range(20000):
            pass
        os.read(0, 0)
    return "computed past the budget"


@expose.endpoint
def spin_between_store_calls(seconds: float = 10):
    """Each store reply used to restart the CPU budget: compute a little, ask the store, again and again."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        for _ in range(50000):
            pass
        store.collection("notes").get("k")
    return "computed past the budget"


@expose.endpoint
def stderr_flood(mb: int = 100):
    """Sixteen views of one large buffer in one write: the worker used to join them into one copy."""
    buf = bytearray(mb * 1024 * 1024)
    return os.writev(2, [buf] * 16)


@expose.endpoint
def stdout_flood(mb: int = 100):
    """The same to the server's pipe: zero bytes read as empty frames, thousands of them."""
    buf = bytearray(mb * 1024 * 1024)
    return os.writev(1, [buf] * 16)


def _guest_program():
    try:
        raise RuntimeError
    except RuntimeError as exc:
        frame = exc.__traceback__.tb_frame
    while frame.f_back is not None:
        frame = frame.f_back
    return frame.f_globals


@expose.endpoint
def frame_flood(size: int = 1_000_000, rounds: int = 200):
    """Pre-encoded store requests of ``size`` bytes, written again and again with the call's nonce."""
    program = _guest_program()
    request = {"op": "store", "nonce": program["_state"]["nonce"], "method": "get", "collection": "c"}
    data = json.dumps({**request, "args": ["x" * size]}).encode()
    for _ in range(rounds):
        try:
            program["_send_bytes"](data, False)
        except TypeError:  # the guest program before store requests were flagged
            program["_send_bytes"](data)
        program["_receive"]()
    return "flooded"


@expose.endpoint
def method_of(request: RequestInfo):
    return request.method


@expose.endpoint
def hello():
    return "hello"
