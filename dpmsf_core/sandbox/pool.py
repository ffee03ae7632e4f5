"""The pool of warm guests: one worker process per guest, each bound to one tenant, reused for its calls.

A call is planned (``_Call``), given a guest of its tenant (warm if one is idle, else a fresh one, else another
tenant's least recently used one is recycled), exchanged (store requests served on the way) and mapped to a
result or the DPMSFError to answer with. ``process.py`` is one worker process as the server sees it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import marshal
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import (
    DPMSFError,
    Forbidden,
    FunctionFailed,
    GatewayTimeout,
    HTTPError,
    PayloadTooLarge,
    ServiceUnavailable,
    TenantFunctionError,
    UnprocessableArguments,
)
from . import runtime
from . import worker as worker_module
from .process import (
    UNPRIVILEGED,
    BadFrame,
    SandboxLimits,
    WorkerDied,
    WorkerProcess,
    WorkerTimedOut,
    unprivileged_python,
)

log = logging.getLogger("dpmsf.sandbox")

_ENVELOPE_BYTES = 64 * 1024  # room around the result for captured output and the answer's fields
_AFFINITY_WAIT = 0.5  # how long another owner's worker must sit idle before a busy owner may recycle it
StoreHandler = Callable[[str, str, str, list[Any]], Any]


@dataclass(frozen=True)
class _Call:
    """One call, planned: the frame (without the source), who owns the guest, and its deadline."""

    frame: dict[str, Any]
    source: str
    owner: str
    tenant: str | None
    wall: float
    deadline: float

    @property
    def function(self) -> str:
        return str(self.frame["function"])

    def started(self) -> _Call:
        """The same call once it has its guest: waiting in the queue does not count against its wall time."""
        return dataclasses.replace(self, deadline=time.monotonic() + self.wall)

    @property
    def key(self) -> tuple[str, str]:
        return (self.frame["path"], self.frame["sha"])


class SandboxPool:
    """Warm guests, one call per guest at a time, each guest bound to one owner (tenant) for its whole life.

    ``store`` serves the guests' document-store requests: ``store(tenant, method, collection, args)``, with the
    tenant taken from the call, never from the guest.
    """

    def __init__(
        self,
        size: int = 2,
        limits: SandboxLimits | None = None,
        python: str = sys.executable,
        *,
        cache_dir: str | None = None,
        store: StoreHandler | None = None,
        run_as: int | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"SandboxPool size={size!r}: need at least one worker")
        self.size = size
        self.limits = limits or SandboxLimits()
        self.python = python
        self.store = store
        cache = cache_dir or default_cache_dir()
        self.compiled = runtime.compiled_module(cache).path  # verified; compiled here at most once per machine
        self.run_as: int | None = None
        if run_as is not None or os.geteuid() == 0:
            self.python, self.run_as = unprivileged_python(python, run_as or UNPRIVILEGED, self.compiled)
        self._cond = threading.Condition()
        self._idle: list[WorkerProcess] = []  # least recently used first
        self._count = 0  # idle + busy + starting
        self._closed = False
        self._busy: dict[str, int] = {}  # owner -> workers running its calls
        self._starting = 0  # spares being started in the background
        self._queue: list[tuple[int, str]] = []  # (ticket, owner) of the calls waiting for a guest, in order
        self._tickets = itertools.count()
        self.replaced = 0  # guests ended after a breach, a timeout, a crash or memory exhaustion

    # -- public -------------------------------------------------------------------------------------------------

    async def call(self, **kwargs: Any) -> Any:
        """``call_sync`` without blocking the event loop.

        With a warm guest of the tenant idle, the call is written and awaited on the event loop itself (the
        answer's pipe is watched by the loop): no thread hop, which costs more than the guest's own work. Else,
        it runs in a thread like ``call_sync``. Writes never block: a guest that stops reading times out.
        """
        plan = self._plan(**kwargs)
        worker = self._take_warm(plan.owner)
        if worker is None:
            return await asyncio.to_thread(self._call_planned, plan)
        plan = plan.started()
        keep, result, error = False, None, None
        try:
            payload = self._payload(worker, plan)
            keep, result, error = await self._exchange_async(worker, payload, plan)
            keep = keep and self._finished(worker, plan)
        finally:
            self._release(worker, keep)
        if error is not None:
            raise error
        return result

    def call_sync(self, **kwargs: Any) -> Any:
        """``function(*args, **kwargs)`` from the module ``source`` in a guest; raises the DPMSFError to answer.

        Keywords: ``source``, ``path``, ``function``, ``args``, ``kwargs``, and optionally ``timeout``, ``tenant``
        (the guest's owner; default the path), ``sha256`` of the source, ``request`` (what ``RequestInfo`` holds)
        and ``inject`` (parameters that receive it).
        """
        return self._call_planned(self._plan(**kwargs))

    def _plan(
        self,
        *,
        source: str,
        path: str,
        function: str,
        args: list[Any],
        kwargs: dict[str, Any],
        timeout: float | None = None,
        tenant: str | None = None,
        sha256: str | None = None,
        request: dict[str, Any] | None = None,
        inject: list[str] | None = None,
    ) -> _Call:
        wall = self.limits.wall_seconds if timeout is None else min(timeout, self.limits.wall_seconds)
        queue_deadline = time.monotonic() + 2 * wall + 1  # time to wait for a guest; the call's own starts after
        frame: dict[str, Any] = {
            "op": "call",
            "nonce": os.urandom(8).hex(),  # answers written ahead of the call, to be read later, are refused
            "path": path,
            "sha": sha256 or _sha256(source),
            "function": function,
        }
        if request:
            frame["request"] = request
        if inject:
            frame["inject"] = list(inject)
        frame["args"], frame["kwargs"] = list(args), dict(kwargs)
        return _Call(frame, source, tenant or path, tenant, wall, queue_deadline)

    def _call_planned(self, plan: _Call) -> Any:
        worker = self._acquire(plan.owner, plan.deadline)
        plan = plan.started()
        keep, result, error = False, None, None
        try:
            keep, result, error = self._exchange(worker, self._payload(worker, plan), plan)
            keep = keep and self._finished(worker, plan)
        finally:
            self._release(worker, keep)
        if error is not None:
            raise error
        return result

    def _payload(self, worker: WorkerProcess, plan: _Call) -> bytes:
        frame = plan.frame
        try:
            return marshal.dumps(frame if plan.key in worker.known else {**frame, "source": plan.source})
        except ValueError as exc:  # only plain data (what JSON and query strings give) crosses into a guest
            raise UnprocessableArguments(
                f"arguments for sandboxed '{plan.function}' are not plain data: {exc}"
            ) from None

    def _finished(self, worker: WorkerProcess, plan: _Call) -> bool:
        """After a good answer: the guest knows the module now; keep it unless it is worn out."""
        worker.known.add(plan.key)
        worker.calls += 1
        return not self._worn_out(worker)

    def close(self) -> None:
        """Kill idle workers now; busy ones are killed when their call ends."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._count -= len(idle)
            self._cond.notify_all()
        for worker in idle:
            worker.kill()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def workers(self) -> list[int]:
        """Pids of the idle workers (for tests and diagnostics)."""
        with self._cond:
            return [w.pid for w in self._idle]

    # -- one call -----------------------------------------------------------------------------------------------

    def _exchange(self, worker: WorkerProcess, payload: bytes, plan: _Call) -> tuple[bool, Any, DPMSFError | None]:
        """Send one call, serve its store requests, and map the answer to (keep the guest, result, error)."""
        limit = self.limits.max_output_bytes + _ENVELOPE_BYTES
        try:
            worker.send_bytes(payload, plan.deadline)
            while True:
                answer = self._checked(worker.receive(plan.deadline, limit), plan)
                if answer.get("op") != "store":
                    break
                worker.send(self._serve_store(plan.tenant, answer), plan.deadline)
            if not worker.quiet():
                raise BadFrame()
        except (WorkerTimedOut, WorkerDied, BadFrame) as exc:
            return False, None, self._broken(worker, plan, exc)
        return self._outcome(worker, answer, plan.function)

    async def _exchange_async(
        self, worker: WorkerProcess, payload: bytes, plan: _Call
    ) -> tuple[bool, Any, DPMSFError | None]:
        """``_exchange`` on the event loop: small writes, the answer's pipe watched by the loop."""
        limit = self.limits.max_output_bytes + _ENVELOPE_BYTES
        try:
            await worker.send_bytes_async(payload, plan.deadline)
            while True:
                answer = self._checked(await worker.receive_async(plan.deadline, limit), plan)
                if answer.get("op") != "store":
                    break
                reply = await asyncio.to_thread(self._serve_store, plan.tenant, answer)  # a backend may block
                await worker.send_bytes_async(marshal.dumps(reply), plan.deadline)
            if not worker.quiet():
                raise BadFrame()
        except (WorkerTimedOut, WorkerDied, BadFrame) as exc:
            return False, None, self._broken(worker, plan, exc)
        return self._outcome(worker, answer, plan.function)

    @staticmethod
    def _checked(frame: dict[str, Any], plan: _Call) -> dict[str, Any]:
        """A frame of this call: it carries the call's nonce, which a guest cannot know before the call."""
        if frame.get("nonce") != plan.frame["nonce"]:
            raise BadFrame()
        return frame

    def _broken(self, worker: WorkerProcess, plan: _Call, exc: Exception) -> DPMSFError:
        function = plan.function
        if isinstance(exc, WorkerDied):
            return self._death(worker, function)
        worker.kill()
        if isinstance(exc, WorkerTimedOut):
            return GatewayTimeout(f"sandboxed function '{function}' ran past its time limit of {plan.wall:g} s")
        return FunctionFailed(f"sandboxed function '{function}' broke the sandbox protocol")

    def _outcome(
        self, worker: WorkerProcess, answer: dict[str, Any], function: str
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
            mb = self.limits.memory_mb
            return False, None, FunctionFailed(f"sandboxed function '{function}' exceeded the memory limit of {mb} MB")
        if kind == "too_large":
            return True, None, PayloadTooLarge(f"sandboxed function '{function}': {detail}", title="Result Too Large")
        if kind == "http":
            status = answer.get("status")
            headers = answer.get("headers")
            headers = {str(k)[:100]: str(v)[:1000] for k, v in headers.items()} if isinstance(headers, dict) else {}
            headers = {k: v for k, v in headers.items() if _header_safe(k) and _header_safe(v)}
            if isinstance(status, int) and 400 <= status <= 599:
                return True, None, HTTPError(status, detail or None, headers=headers or None)
            error = FunctionFailed(f"sandboxed function '{function}' raised HTTPError with invalid status {status!r}")
            return True, None, error
        if kind == "error":
            return True, None, TenantFunctionError(f"{str(answer.get('type', 'Exception'))[:100]}: {detail}")
        # result not encodable, module failed to load, no such function
        return True, None, FunctionFailed(f"sandboxed function '{function}': {detail}")

    def _worn_out(self, worker: WorkerProcess) -> bool:
        """Retire a guest before its lifetime RLIMIT_CPU could end a call that kept within its own budget."""
        if worker.calls % 64:
            return False
        try:
            with open(f"/proc/{worker.pid}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            used = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return worker.calls >= 4096
        return used + 64 * self.limits.cpu_seconds + 1 >= self.limits.worker_cpu_seconds

    def _serve_store(self, tenant: str | None, request: dict[str, Any]) -> dict[str, Any]:
        """One document-store request of a guest, for the call's tenant; the guest chooses nothing else."""
        method, collection, args = request.get("method"), request.get("collection"), request.get("args")
        if self.store is None:
            return {"ok": False, "status": 503, "detail": "The document store is not available to sandboxed code."}
        if not isinstance(method, str) or not isinstance(collection, str) or not isinstance(args, list):
            return {"ok": False, "status": 422, "detail": "Malformed store request."}
        try:
            return {"ok": True, "value": self.store(tenant or "_", method, collection, args)}
        except DPMSFError as exc:
            return {"ok": False, "status": exc.status, "detail": exc.detail, "errors": exc.extra.get("errors")}

    def _death(self, worker: WorkerProcess, function: str) -> DPMSFError:
        code = worker.exit_status()
        why = worker.stderr_tail()
        worker.kill()
        cpu = self.limits.cpu_seconds
        if code == worker_module.EXIT_CPU or (code is not None and -code == signal.SIGXCPU):
            return GatewayTimeout(f"sandboxed function '{function}' used more than its CPU time limit of {cpu:g} s")
        log.warning("sandbox guest running %s ended (status %s): %s", function, code, why)
        if code == worker_module.EXIT_TRAP:
            return FunctionFailed(
                f"sandboxed function '{function}' crashed its sandbox (possibly its memory limit of "
                f"{self.limits.memory_mb} MB)"
            )
        return FunctionFailed(f"sandboxed function '{function}' ended its sandbox (status {code})")

    # -- the pool -----------------------------------------------------------------------------------------------

    def _acquire(self, owner: str, deadline: float) -> WorkerProcess:
        """An idle worker of ``owner``, else a fresh one, else recycle another owner's idle worker, else wait.

        An owner that already has a busy worker only recycles another owner's worker once it has sat idle for
        ``_AFFINITY_WAIT``: concurrent calls of one tenant queue for its warm workers instead of evicting the
        other tenants' (a fresh guest costs ~0.2 s); an owner with no worker at all recycles at once. While other
        owners wait, an owner holding its fair share of the pool (its size over the owners busy or waiting) takes
        nothing more, not even its own idle guest: one tenant's flood of calls cannot starve the others.
        """
        victim: WorkerProcess | None = None
        with self._cond:
            ticket = (next(self._tickets), owner)
            self._queue.append(ticket)
            try:
                while True:
                    if self._closed:
                        raise ServiceUnavailable("the sandbox pool is closed")
                    now = time.monotonic()
                    wake = deadline
                    if self._my_turn(ticket):
                        worker = _pick(self._idle, owner)
                        if worker is not None:
                            worker.owner = owner
                            break
                        if self._count < self.size:
                            self._count += 1
                            break
                        if self._idle and not self._starting:  # a spare on its way beats evicting a warm guest
                            settle = _AFFINITY_WAIT if self._busy.get(owner) else 0.0
                            oldest = self._idle[0]  # least recently used, bound to another owner
                            if now - oldest.idle_since >= settle:
                                victim = self._idle.pop(0)
                                break
                            wake = min(deadline, oldest.idle_since + settle)
                    if now >= deadline:
                        raise ServiceUnavailable(f"all {self.size} sandbox workers stayed busy; try again")
                    self._cond.wait(wake - now)
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()  # the next in the queue may take its turn now
            self._busy[owner] = self._busy.get(owner, 0) + 1
        if worker is not None:
            return worker
        if victim is not None:
            victim.kill()
        try:
            worker = WorkerProcess(self.python, self.limits, self.compiled, self.run_as)
        except BaseException:
            with self._cond:
                self._count -= 1
                self._unbusy(owner)
                self._cond.notify_all()
            raise
        worker.owner = owner
        return worker

    def _over_share(self, owner: str) -> bool:
        """``owner`` holds its fair share of guests while another owner waits for one (called under the lock)."""
        held = self._busy.get(owner, 0)
        waiting = {o for _, o in self._queue}
        if not held or not waiting - {owner}:
            return False
        return held >= max(1, self.size // len(set(self._busy) | waiting))

    def _my_turn(self, ticket: tuple[int, str]) -> bool:
        """First come, first served across owners; an owner at its fair share waits until the others are served."""
        number, owner = ticket
        if self._over_share(owner):
            return False
        return not any(n < number and o != owner and not self._over_share(o) for n, o in self._queue)

    def _take_warm(self, owner: str) -> WorkerProcess | None:
        """An idle guest already bound to ``owner``, without waiting; None if there is none right now."""
        with self._cond:
            if self._closed:
                raise ServiceUnavailable("the sandbox pool is closed")
            if self._queue:  # others are waiting: take a turn like everybody else
                return None
            for worker in self._idle:
                if worker.owner == owner:
                    self._idle.remove(worker)
                    self._busy[owner] = self._busy.get(owner, 0) + 1
                    return worker
        return None

    def _unbusy(self, owner: str | None) -> None:
        if owner is not None and self._busy.get(owner):
            self._busy[owner] -= 1
            if not self._busy[owner]:
                del self._busy[owner]

    def _release(self, worker: WorkerProcess, keep: bool) -> None:
        if keep and worker.proc.poll() is None:
            with self._cond:
                self._unbusy(worker.owner)
                if not self._closed:
                    worker.idle_since = time.monotonic()
                    self._idle.append(worker)
                    self._cond.notify_all()
                    return
                self._count -= 1
            worker.kill()
            return
        worker.kill()
        with self._cond:
            self._unbusy(worker.owner)
            self._count -= 1
            self.replaced += 1
            closed = self._closed
            self._cond.notify_all()
        if not closed:
            threading.Thread(target=self._spare, name="dpmsf-sandbox-spare", daemon=True).start()

    def _spare(self) -> None:
        """Start a replacement in the background so the next call finds a warm worker."""
        with self._cond:
            if self._closed or self._count >= self.size:
                return
            self._count += 1
            self._starting += 1
        try:
            worker = WorkerProcess(self.python, self.limits, self.compiled, self.run_as)
        except DPMSFError as exc:
            log.warning("sandbox spare worker failed to start: %s", exc)
            with self._cond:
                self._count -= 1
                self._starting -= 1
                self._cond.notify_all()
            return
        with self._cond:
            self._starting -= 1
            if not self._closed:
                worker.idle_since = time.monotonic()
                self._idle.append(worker)
                self._cond.notify_all()
                return
            self._count -= 1
        worker.kill()


def _header_safe(text: str) -> bool:
    """A header a guest asks for must be latin-1 without line breaks (else it is dropped, not answered)."""
    return text.isprintable() and all(ord(c) < 256 for c in text)


def _pick(idle: list[WorkerProcess], owner: str) -> WorkerProcess | None:
    for candidates in ((w for w in idle if w.owner == owner), (w for w in idle if w.owner is None)):
        for worker in candidates:
            idle.remove(worker)
            return worker
    return None


def _sha256(source: str) -> str:
    import hashlib

    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def default_cache_dir() -> str:
    """Where the compiled interpreter is kept: readable by the workers (they may run as another uid), ours only."""
    import tempfile

    return os.environ.get("DPMSF_SANDBOX_CACHE") or os.path.join(tempfile.gettempdir(), f"dpmsf-sandbox-{os.geteuid()}")
