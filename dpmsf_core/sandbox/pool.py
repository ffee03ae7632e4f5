"""The pool of warm guests: one worker process per guest, each bound to one tenant, reused for its calls.

A call is planned (``_Call``), given a guest of its tenant by ``guests.py`` (warm if one is idle, else a fresh
one, else another tenant's least recently used one is recycled), exchanged here (store requests served on the
way) and mapped by ``answers.py`` to a result or the DPMSFError to answer with. ``process.py`` is one worker
process as the server sees it. It is over 400 lines because one call's exchange comes twice (in a thread and on
the event loop) and must stay beside what it charges: the call's CPU, the tenant's share of the server, its meter.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import functools
import logging
import marshal
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import (
    DPMSFError,
    UnprocessableArguments,
)
from ..tenancy.quotas import QuotaBook, QuotaExceeded, Quotas
from . import runtime
from .admission import FairGate, TenantGate
from .answers import breach, outcome
from .guests import Guests, NoGuestInTime
from .hostshare import HostShare
from .launch import guests_within_fds
from .memory import MemoryBudget, private_mb, pss_mb, rss_mb
from .process import (
    UNPRIVILEGED,
    BadFrame,
    CallOutput,
    CpuOverBudget,
    SandboxLimits,
    StartOutOfTime,
    WorkerDied,
    WorkerProcess,
    WorkerTimedOut,
    unprivileged_python,
)
from .restarts import Restarts
from .template import TemplateFailed, Templates
from .usage import CallUsage

log = logging.getLogger("dpmsf.sandbox")

_GUEST_MODULES = 32  # modules a guest keeps compiled, oldest forgotten first (guest_main._MODULE_CACHE)
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
        on_call: Callable[[CallUsage], None] | None = None,
        quotas: QuotaBook | None = None,
        free_restarts: int = 10,
        template: bool = True,
        memory_mb_total: float | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"SandboxPool size={size!r}: need at least one worker")
        size = guests_within_fds(size)
        self.size = size
        self.limits = limits or SandboxLimits()
        self.python = python
        self.store = store
        self.on_call = on_call  # told what each call cost (usage.py), ok or not: for metering
        self.cache_dir = cache_dir or default_cache_dir()
        self.compiled = runtime.compiled_module(self.cache_dir).path  # verified; compiled at most once per machine
        self.run_as: int | None = None
        if run_as is not None or os.geteuid() == 0:
            self.python, self.run_as = unprivileged_python(python, run_as or UNPRIVILEGED, self.compiled)
        self.templates = Templates(self.python, self.run_as) if template else None  # guests forked, not started
        # all guests together (and their template) within memory_mb_total, measured (memory.py); None: by count only
        self.memory = None
        if memory_mb_total:
            guest, template_mb = (private_mb, rss_mb) if self.templates is not None else (pss_mb, pss_mb)
            self.memory = MemoryBudget(memory_mb_total, self._template_pids, guest, measure_others=template_mb)
        # a large pool keeps one guest forked ahead (while one more fits): a newcomer's call does not wait for it
        spares = 1 if size >= 8 and self.templates is not None else 0
        self.guests = Guests(size, self._start_worker, self._bill_spare, self.memory, spares)
        self.restarts = Restarts(free_restarts)  # a tenant whose guests keep ending waits (restarts.py)
        self.host_share = HostShare(self.limits.host_cpu_share, self.limits.host_cpu_burst)
        # Each tenant's rate and concurrency quotas (admission.py) bound what its flood can take: it waits in its
        # own short queue, then gets 429s. Calls that wait for a guest hold a thread: their own pool (not asyncio's
        # small default one), entered round robin across tenants.
        self.quotas = quotas or QuotaBook(Quotas())
        self._tenants = TenantGate()
        threads = 4 * min(size, 32) + 8  # calls waiting for a guest beyond these wait for a thread too
        self._threads = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="dpmsf-sandbox")
        self._gate = FairGate(threads)

    def _template_pids(self) -> list[int]:
        pid = self.templates.pid if self.templates is not None else None
        return [] if pid is None else [pid]

    def _start_worker(self) -> WorkerProcess:
        """A fresh worker: forked from the pool's template when there is one, else started from nothing. Should its
        start run out of its own CPU budget (no tenant code has run yet), it gets one more try."""
        self.compiled = runtime.compiled_module(self.cache_dir).path  # its folder and file checked at every use
        try:
            return self._new_worker()
        except StartOutOfTime as exc:
            log.warning("sandbox worker start ran out of time, starting another: %s", str(exc)[:200])
            return self._new_worker()

    def _new_worker(self) -> WorkerProcess:
        """Forked from the template (a fresh one if it failed), else started from nothing."""
        for _ in range(2):
            template = self.templates.get(self.limits, self.compiled) if self.templates is not None else None
            if template is None:
                break
            try:
                return WorkerProcess(self.python, self.limits, self.compiled, self.run_as, template)
            except TemplateFailed as exc:
                assert self.templates is not None
                log.warning("sandbox: %s; starting another template", str(exc)[:300])
                self.templates.drop(template)
        return WorkerProcess(self.python, self.limits, self.compiled, self.run_as)

    def _bill_spare(self, ended: WorkerProcess, spare: WorkerProcess) -> None:
        """A guest ended during a call of ``ended.tenant``, and ``spare`` replaced it: that tenant pays the start."""
        if ended.tenant is None or spare.start_billed:
            return
        spare.start_billed = True
        self._report(self._start_usage(ended.tenant, spare))

    def _start_usage(self, tenant: str | None, worker: WorkerProcess) -> CallUsage:
        """What starting ``worker`` cost, as a usage of function ``<start>`` (its memory held for the start's wall)."""
        return CallUsage(tenant, "<start>", worker.start_cpu, worker.start_wall, self.limits.memory_mb, True)

    def _report(self, usage: CallUsage) -> None:
        if self.on_call is not None:
            try:
                self.on_call(usage)
            except Exception:
                log.exception("sandbox: the on_call hook failed for %s", usage.function)

    # -- public -------------------------------------------------------------------------------------------------

    async def call(self, **kwargs: Any) -> Any:
        """``call_sync`` without blocking the event loop, within the tenant's rate and concurrency quotas.

        The quotas are checked first (QuotaExceeded, 429, before any guest work). Then, with a warm guest of the
        tenant idle and no other call waiting for a guest or a thread, the call is written and awaited on the event
        loop itself (the answer's pipe is watched by the loop): no thread hop, which costs more than the guest's
        own work. Else it takes its turn in a thread like ``call_sync``. Writes never block: a guest that stops
        reading times out.
        """
        plan = self._plan(**kwargs)
        self.restarts.check(plan.owner)
        pause = self._pause(plan)
        if pause:
            await asyncio.sleep(pause)
        quotas = self.quotas.for_tenant(plan.tenant)
        self._tenants.charge(plan.owner, quotas.rate)
        crowd = sum(self._tenants.load(plan.owner))  # its calls already in flight: is it flooding?
        concurrency = min(quotas.concurrency, self.guests.cap)  # never every guest: another tenant finds one
        backlog = await self._tenants.enter(
            plan.owner, concurrency, plan.deadline - time.monotonic(), quota=quotas.concurrency
        )
        try:
            worker = None if self._gate.waiting() else self.guests.take_warm(plan.owner)
            if worker is None:
                return await self._in_thread(plan, backlog)
            return await self._on_loop(worker, plan)
        except NoGuestInTime:
            running, waiting = self._tenants.load(plan.owner)
            if not crowd and running + waiting <= 1:
                raise  # the pool is saturated by others: 503
            raise QuotaExceeded(  # its own parallel calls are part of the crowd: slow down
                "concurrency",
                f"This call waited {2 * plan.wall + 1:.0f} s for a sandbox guest while {running - 1} more of the "
                f"tenant's calls ran and {waiting} waited (its concurrency quota); try again shortly.",
                retry_after=plan.wall,
            ) from None
        finally:
            self._tenants.leave(plan.owner)

    async def _on_loop(self, worker: WorkerProcess, plan: _Call) -> Any:
        plan = plan.started()
        worker.tenant = plan.tenant
        keep, result, error = False, None, None
        try:
            payload = self._payload(worker, plan)
            keep, result, error = await self._exchange_async(worker, payload, plan)
            keep = keep and self._finished(worker, plan)
        finally:
            self.guests.release(worker, keep)
        if error is not None:
            raise error
        return result

    async def _in_thread(self, plan: _Call, backlog: bool) -> Any:
        owner = plan.owner
        await self._gate.enter(owner, backlog)
        call = functools.partial(contextvars.copy_context().run, self._call_planned, plan, backlog)
        running = self._threads.submit(call)
        running.add_done_callback(lambda _: self._gate.leave(owner))  # when the thread is done, even if we are not
        return await asyncio.wrap_future(running)

    def call_sync(self, **kwargs: Any) -> Any:
        """``function(*args, **kwargs)`` from the module ``source`` in a guest; raises the DPMSFError to answer.

        Keywords: ``source``, ``path``, ``function``, ``args``, ``kwargs``, and optionally ``timeout``, ``tenant``
        (the guest's owner; default the path), ``sha256`` of the source, ``request`` (what ``RequestInfo`` holds)
        and ``inject`` (parameters that receive it: names, or positions in ``args``).
        """
        plan = self._plan(**kwargs)
        self.restarts.check(plan.owner)
        time.sleep(self._pause(plan))
        self._tenants.charge(plan.owner, self.quotas.for_tenant(plan.tenant).rate)
        return self._call_planned(plan)

    def _pause(self, plan: _Call) -> float:
        """How long the call waits because its tenant's guests died lately (``restarts.py``); 429 if past its wait."""
        pause = self.restarts.pause(plan.owner)
        if pause and pause >= plan.deadline - time.monotonic():
            raise QuotaExceeded(
                "guest_restarts",
                f"This tenant's sandbox guests ended often lately; its next call may run in {pause:.1f} s.",
                retry_after=pause,
            )
        return pause

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
        inject: list[str | int] | None = None,
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

    def _call_planned(self, plan: _Call, backlog: bool = False) -> Any:
        worker = self.guests.acquire(plan.owner, plan.deadline, backlog)
        plan = plan.started()
        worker.tenant = plan.tenant
        keep, result, error = False, None, None
        try:
            keep, result, error = self._exchange(worker, self._payload(worker, plan), plan)
            keep = keep and self._finished(worker, plan)
        finally:
            self.guests.release(worker, keep)
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
        """After an answer: keep the guest unless it is worn out."""
        worker.calls += 1
        return not self._worn_out(worker)

    def close(self) -> None:
        """Kill idle guests now; busy ones are killed when their call ends."""
        self.guests.close()
        if self.templates is not None:
            self.templates.close()
        self._threads.shutdown(wait=False)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def workers(self) -> list[int]:
        """Pids of the idle guests' worker processes (for tests and diagnostics)."""
        return self.guests.workers()

    @property
    def replaced(self) -> int:
        """Guests ended after a breach, a timeout, a crash or memory exhaustion."""
        return self.guests.replaced

    # -- one call -----------------------------------------------------------------------------------------------

    def _exchange(self, worker: WorkerProcess, payload: bytes, plan: _Call) -> tuple[bool, Any, DPMSFError | None]:
        """Send one call, serve its store requests, and map the answer to (keep the guest, result, error).

        The server's own CPU on the call's frames (decoding them, serving the store) is the call's: charged to its
        budget and its meter, and to its tenant's share of the server (``hostshare.py``), which it waits for."""
        output = CallOutput(self.limits, worker.cpu_stamp)
        began = time.thread_time()  # this thread's CPU on the call is all the call's: reading, decoding, the store
        answer: dict[str, Any] = {}
        try:
            worker.send_bytes(payload, plan.deadline, call=True)
            while True:
                time.sleep(self._share_wait(plan))
                host = output.host
                try:
                    answer = self._checked(worker.receive(plan.deadline, output), plan)
                finally:
                    self.host_share.spend(plan.owner, output.host - host)  # what decoding it cost the server
                if answer.get("op") != "store":
                    break
                reply, seconds = self._timed_store(plan.tenant, answer)
                self.host_share.spend(plan.owner, seconds)
                output.charge(seconds)
                worker.send(reply, plan.deadline)
            if not worker.quiet():
                raise BadFrame()
        except (WorkerTimedOut, WorkerDied, BadFrame, CpuOverBudget) as exc:
            done = self._breach(worker, plan, exc, output)
        else:
            done = self._answered(worker, plan, answer)
        del answer  # freed here, counted: a guest's frame of many small containers costs as much to free as to decode
        output.host = max(output.host, time.thread_time() - began)
        return self._metered(worker, plan, output, done)

    async def _exchange_async(
        self, worker: WorkerProcess, payload: bytes, plan: _Call
    ) -> tuple[bool, Any, DPMSFError | None]:
        """``_exchange`` on the event loop: small writes, the answer's pipe watched by the loop, large frames
        decoded in a thread."""
        output = CallOutput(self.limits, worker.cpu_stamp)
        try:
            await worker.send_bytes_async(payload, plan.deadline, call=True)
            while True:
                wait = self._share_wait(plan)
                if wait:
                    await asyncio.sleep(wait)
                host = output.host
                try:
                    answer = self._checked(await worker.receive_async(plan.deadline, output), plan)
                finally:
                    self.host_share.spend(plan.owner, output.host - host)
                if answer.get("op") != "store":
                    break
                reply, seconds = await asyncio.to_thread(self._timed_store, plan.tenant, answer)  # a backend may block
                self.host_share.spend(plan.owner, seconds)
                output.charge(seconds)
                await worker.send_bytes_async(marshal.dumps(reply), plan.deadline)
            if not worker.quiet():
                raise BadFrame()
        except (WorkerTimedOut, WorkerDied, BadFrame, CpuOverBudget) as exc:
            return self._metered(worker, plan, output, self._breach(worker, plan, exc, output))
        return self._metered(worker, plan, output, self._answered(worker, plan, answer))

    def _share_wait(self, plan: _Call) -> float:
        """How long the call waits for its tenant's share of the server's CPU (``hostshare.py``), at most until its
        deadline; past the deadline the call has run out of time."""
        left = plan.deadline - time.monotonic()
        if left <= 0:
            raise WorkerTimedOut()
        wait = self.host_share.wait(plan.owner)
        if wait >= left:
            raise WorkerTimedOut()
        return wait

    def _timed_store(self, tenant: str | None, request: dict[str, Any]) -> tuple[dict[str, Any], float]:
        """``_serve_store`` and the CPU time this thread spent on it, freeing the request's arguments here too (a
        guest's frame of many small containers costs the server as much to free as to decode)."""
        began = time.thread_time()
        reply = self._serve_store(tenant, request)
        request.clear()
        return reply, time.thread_time() - began

    def _breach(
        self, worker: WorkerProcess, plan: _Call, exc: Exception, output: CallOutput
    ) -> tuple[bool, Any, DPMSFError | None]:
        """The guest is ended; its CPU time is read (from ``/proc``) before it is reaped, for the meter."""
        used = worker.cpu_seconds()
        if used is not None:
            worker.cpu_stamp = max(worker.cpu_stamp, used)
            output.worker = max(output.worker, worker.cpu_stamp - output.cpu_before)
        self.restarts.died(plan.owner)
        return False, None, breach(worker, plan.function, plan.wall, exc, self.limits)

    def _answered(
        self, worker: WorkerProcess, plan: _Call, answer: dict[str, Any]
    ) -> tuple[bool, Any, DPMSFError | None]:
        """The guest's answer; whether it now holds the module (a module that failed to load is sent again)."""
        known = worker.known
        if answer.get("ok") is True or answer.get("loaded") is True:
            if plan.key not in known:
                if len(known) >= _GUEST_MODULES:  # the guest forgets its oldest module the same way
                    known.pop(next(iter(known)))
                known[plan.key] = None
        else:
            known.pop(plan.key, None)
        return outcome(worker, answer, plan.function, self.limits)

    def _metered(
        self, worker: WorkerProcess, plan: _Call, output: CallOutput, done: tuple[bool, Any, DPMSFError | None]
    ) -> tuple[bool, Any, DPMSFError | None]:
        """Tell ``on_call`` what the call cost: the worker's CPU time between its last frame before the call and
        its last frame of it (what it did after its previous answer is this call's too), plus the server's own CPU
        on the call's frames; and before it, as function ``<start>``, the guest's start if it was started for this call;
        never fails the call."""
        if not worker.start_billed:  # the guest was started for this call: its tenant pays the start, apart
            worker.start_billed = True
            self._report(self._start_usage(plan.tenant, worker))
        self._report(
            CallUsage(
                tenant=plan.tenant,
                function=plan.function,
                cpu_seconds=max(0.0, worker.cpu_stamp - output.cpu_before) + output.host,
                wall_seconds=max(0.0, time.monotonic() - (plan.deadline - plan.wall)),
                memory_mb=self.limits.memory_mb,
                ok=done[2] is None,
            )
        )
        return done

    @staticmethod
    def _checked(frame: dict[str, Any], plan: _Call) -> dict[str, Any]:
        """A frame of this call: it carries the call's nonce, which a guest cannot know before the call."""
        if frame.get("nonce") != plan.frame["nonce"]:
            raise BadFrame()
        return frame

    def _worn_out(self, worker: WorkerProcess) -> bool:
        """Retire a guest before its lifetime RLIMIT_CPU could end a call that kept within its own budget."""
        if worker.calls % 64:
            return False
        used = worker.cpu_seconds()
        if used is None:
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


def _sha256(source: str) -> str:
    import hashlib

    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def default_cache_dir() -> str:
    """Where the compiled interpreter is kept: a folder of ours only that the workers (maybe another uid) may enter;
    ``runtime.compiled_module`` checks it (``private_dir.PrivateDir``) and uses a fresh one if it is not."""
    import tempfile

    return os.environ.get("DPMSF_SANDBOX_CACHE") or os.path.join(tempfile.gettempdir(), f"dpmsf-sandbox-{os.geteuid()}")
