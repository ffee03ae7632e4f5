"""What a guest's last frame, or its end, means for the caller: the result, or the problem to answer with.

A guest is hostile: every field of its answer is bounded and checked here, and only our own wording of a
breach (time, memory, protocol) reaches the caller. The tenant's own exception keeps its text for the log.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

from ..errors import (
    DPMSFError,
    Forbidden,
    FunctionFailed,
    GatewayTimeout,
    HTTPError,
    PayloadTooLarge,
    TenantFunctionError,
)
from . import channel
from .budget import CpuOverBudget, OutputOverBudget, SandboxLimits
from .headers import tenant_headers
from .process import WorkerDied, WorkerProcess, WorkerTimedOut

log = logging.getLogger("dpmsf.sandbox")

# Every ``kind`` of failed answer a guest sends (guest_main.py), each mapped by ``outcome`` (the last three to a 500
# with the guest's words); tests/test_rules_once.py checks that the guest sends no other.
ANSWER_KINDS = frozenset({"violation", "memory", "too_large", "http", "error", "result", "load", "missing"})


def breach(worker: WorkerProcess, function: str, wall: float, exc: Exception, limits: SandboxLimits) -> DPMSFError:
    """The error for a guest that died, timed out or broke the protocol; the guest is gone either way."""
    if isinstance(exc, WorkerDied):
        return death(worker, function, limits)
    worker.kill()
    if isinstance(exc, OutputOverBudget):
        return too_much_output(function, str(exc))
    if isinstance(exc, CpuOverBudget):  # with what the server spent on its frames
        cpu = limits.cpu_seconds
        return GatewayTimeout(f"sandboxed function '{function}' used more than its CPU time limit of {cpu:g} s")
    if isinstance(exc, WorkerTimedOut):
        return GatewayTimeout(f"sandboxed function '{function}' ran past its time limit of {wall:g} s")
    return FunctionFailed(f"sandboxed function '{function}' broke the sandbox protocol")


def outcome(
    worker: WorkerProcess, answer: dict[str, Any], function: str, limits: SandboxLimits
) -> tuple[bool, Any, DPMSFError | None]:
    """The guest's last frame as (keep the guest, result, error to raise)."""
    if answer.get("op") != "answer":
        worker.kill()
        return False, None, FunctionFailed(f"sandboxed function '{function}' broke the sandbox protocol")
    if answer.get("stdout"):
        log.info("sandbox %s output: %s", function, str(answer["stdout"]).rstrip()[:2000])
    if answer.get("ok") is True:
        return True, answer.get("result"), None
    kind = answer.get("kind")
    detail = str(answer.get("detail", ""))[:2000]
    if kind == "violation":
        log.warning("sandbox policy refusal in %s (worker %d): %s", function, worker.pid, detail)
        return True, None, Forbidden(detail)
    if kind == "memory":
        mb = limits.memory_mb
        return False, None, FunctionFailed(f"sandboxed function '{function}' exceeded the memory limit of {mb} MB")
    if kind == "too_large":
        return True, None, PayloadTooLarge(f"sandboxed function '{function}': {detail}", title="Result Too Large")
    if kind == "http":
        status = answer.get("status")
        headers = tenant_headers(answer.get("headers"))  # an allow-list, bounded: never X-Accel-Redirect & co
        if isinstance(status, int) and 400 <= status <= 599:
            return True, None, HTTPError(status, detail or None, headers=headers or None)
        error = FunctionFailed(f"sandboxed function '{function}' raised HTTPError with invalid status {status!r}")
        return True, None, error
    if kind == "error":
        return True, None, TenantFunctionError(f"{str(answer.get('type', 'Exception'))[:100]}: {detail}")
    # result not encodable, module failed to load, no such function
    return True, None, FunctionFailed(f"sandboxed function '{function}': {detail}")


def death(worker: WorkerProcess, function: str, limits: SandboxLimits) -> DPMSFError:
    """Why a guest ended by itself: its exit status (and a crash report on its stderr) tells."""
    code = worker.exit_status()
    why = worker.stderr_tail()
    worker.kill()
    cpu = limits.cpu_seconds
    if code == channel.EXIT_CPU or (code is not None and -code == signal.SIGXCPU):
        return GatewayTimeout(f"sandboxed function '{function}' used more than its CPU time limit of {cpu:g} s")
    log.warning("sandbox guest running %s ended (status %s): %s", function, code, why)
    if code == channel.EXIT_FRAME:
        return FunctionFailed(f"sandboxed function '{function}' broke the sandbox protocol")
    if code == channel.EXIT_OUTPUT:
        return too_much_output(function, why.rpartition("over its limit: ")[2] or "over its limit")
    if code == channel.EXIT_TRAP:
        return FunctionFailed(
            f"sandboxed function '{function}' crashed its sandbox (possibly its memory limit of {limits.memory_mb} MB)"
        )
    return FunctionFailed(f"sandboxed function '{function}' ended its sandbox (status {code})")


def too_much_output(function: str, why: str) -> DPMSFError:
    """A guest that sent the server more in one call than any honest call needs (its guest is gone)."""
    return PayloadTooLarge(
        f"sandboxed function '{function}' sent more than a call may send to the server: {why[:200]}",
        title="Output Too Large",
    )
