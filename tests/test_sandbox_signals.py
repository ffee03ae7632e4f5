"""The worker's seccomp filter denies every call that sends a signal: a same-uid victim survives each one.

``rt_sigqueueinfo`` was allowed and SIGKILLed a same-uid process. A guest cannot make raw system calls (that is
what the WebAssembly boundary is for), so the attacker here is a process under the worker's own filter, as
native code would be if a wasmtime bug handed it to a tenant; without the filter, the same attack kills.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from dpmsf_core.sandbox import seccomp

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="Linux x86_64/aarch64")

ATTACKER = """
import ctypes, json, os, sys
sys.path.insert(0, sys.argv[1])
from dpmsf_core.sandbox import seccomp
victim, which, filtered = int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
numbers = seccomp._TABLES[seccomp.platform.machine()][2]
libc = ctypes.CDLL(None, use_errno=True)
pidfd = libc.syscall(numbers["pidfd_open"], victim, 0)
info = (ctypes.c_int * 32)()
info[0], info[1], info[2] = 9, 0, -1  # si_signo SIGKILL, si_errno, si_code SI_QUEUE (allowed to another process)
if filtered:
    assert seccomp.install()
calls = {
    "kill": (victim, 9),
    "tkill": (victim, 9),
    "tgkill": (victim, victim, 9),
    "rt_sigqueueinfo": (victim, 9, ctypes.byref(info)),
    "rt_tgsigqueueinfo": (victim, victim, 9, ctypes.byref(info)),
    "pidfd_send_signal": (pidfd, 9, None, 0),
}
result = libc.syscall(numbers[which], *calls[which])
print(json.dumps([result, ctypes.get_errno()]))
"""

SIGNALLING = ["kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_send_signal"]


def attack(which: str, *, filtered: bool) -> tuple[str, bool]:
    """Run the attacker against a fresh victim; its output, and whether the victim survived."""
    victim = subprocess.Popen(["sleep", "30"])
    try:
        root = str(Path(__file__).resolve().parent.parent)
        out = subprocess.run(
            [sys.executable, "-I", "-c", ATTACKER, root, str(victim.pid), which, "1" if filtered else "0"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        try:
            victim.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
        return out, victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


@pytest.mark.parametrize("which", SIGNALLING)
def test_every_signal_sending_call_is_denied(which: str) -> None:
    out, survived = attack(which, filtered=True)
    assert out == "[-1, 1]"  # EPERM
    assert survived


@pytest.mark.parametrize("which", ["rt_sigqueueinfo", "pidfd_send_signal"])
def test_the_same_attack_kills_without_the_filter(which: str) -> None:
    """The attack is real: it is the filter that stops it."""
    out, survived = attack(which, filtered=False)
    assert out == "[0, 0]"
    assert not survived


def test_the_filter_names_every_signal_sending_call() -> None:
    assert set(SIGNALLING) <= set(seccomp._DENIED_NAMES)
