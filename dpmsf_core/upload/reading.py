"""Reading an upload (validate, stamp, read its endpoints) in a child process, within a budget.

CPython's parser holds the GIL, so a thread would still stall the event loop: a 256 kB module of 64,000
``x=1`` lines kept every other request waiting for seconds, refused or not. The child gets the upload on stdin,
a CPU limit (``RLIMIT_CPU``), an address-space limit and a wall-clock deadline; before it parses anything the
server refuses a module of too many lines, and the child refuses a syntax tree of too many nodes before the
costlier steps. Whatever the child cannot finish within its budget is a 422 saying which budget it exceeded.
The child inherits no environment: it only parses text, and never holds a secret of the server.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Any

from ..errors import BadRequest, DPMSFError, PayloadTooLarge, PluginError, UnprocessableArguments
from ..tenancy.quotas import QuotaExceeded


@dataclass(frozen=True)
class UploadBudget:
    """What reading one upload may cost the host; ``wall`` also covers the child's start (about 0.15 s)."""

    cpu_seconds: float = 2.0
    wall_seconds: float = 8.0
    max_lines: int = 20_000
    max_nodes: int = 100_000
    memory_mb: int = 512


@dataclass(frozen=True)
class ReadUpload:
    """An upload as it will be stored (stamped), its alias, and (a tenant's) description for the tenant index."""

    source: str
    alias: str | None
    description: dict[str, Any] | None
    tenant: str | None = None


def read_upload(name: str, body: bytes, tenant: str, admin: bool, max_bytes: int, max_nodes: int) -> ReadUpload:
    """Validate, stamp and read an upload; raises the DPMSFError its answer is. Runs in the child."""
    from ..loading.discovery import metadata_from_source
    from .validation import stamp_tenant, validate_upload

    try:
        source = validate_upload(name, body, max_bytes=max_bytes, max_nodes=max_nodes)
        source = stamp_tenant(source, tenant)  # the admin's uploads carry its id too: none is ownerless
        meta = metadata_from_source(source, f"{name}.py")
        description = None
        if not admin:
            from ..sandbox.described import describe
            from ..sandbox.loader import read_tenant_module

            description = describe(read_tenant_module(source, f"{name}.py"))
    except PluginError as exc:
        raise UnprocessableArguments(str(exc)) from None
    except (RecursionError, MemoryError):
        raise UnprocessableArguments(f"Module {name!r} is nested too deeply to be read.") from None
    return ReadUpload(source, meta.alias, description)


def read_stored(name: str, path: str, body: bytes, max_nodes: int) -> ReadUpload:
    """A stored tenant module (no tenant index entry for it), read as at load time: its owner, alias and
    description, or the error a load would report (naming ``path``). Runs in the child."""
    from ..loading.discovery import metadata_from_source
    from ..sandbox.described import describe
    from ..sandbox.loader import read_tenant_module
    from .validation import validate_upload

    try:
        meta = metadata_from_source(body.decode("utf-8", errors="replace"), path)
        if meta.tenant is None:
            raise PluginError("an uploaded module without an owner (__tenant__) is not loaded", path)
        source = validate_upload(name, body, max_bytes=len(body), max_nodes=max_nodes)
        description = describe(read_tenant_module(source, path))
    except PluginError as exc:
        raise UnprocessableArguments(str(exc)) from None
    except (RecursionError, MemoryError):
        raise UnprocessableArguments(f"Module {name!r} is nested too deeply to be read.") from None
    return ReadUpload(source, meta.alias, description, meta.tenant)


_STATUS = {400: BadRequest, 413: PayloadTooLarge}


def _child_main() -> None:
    """``python -c ...``: one upload on stdin (a JSON line, then the bytes), the answer as JSON on stdout."""
    import resource

    os.nice(10)  # the server's own requests come first on a busy host
    header = json.loads(sys.stdin.buffer.readline())
    cpu = max(1, int(header["cpu_seconds"] + 0.999))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    memory = header["memory_mb"] << 20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    body = sys.stdin.buffer.read()
    try:
        if header.get("job") == "stored":
            read = read_stored(header["name"], header["path"], body, header["max_nodes"])
        else:
            read = read_upload(
                header["name"], body, header["tenant"], header["admin"], header["max_bytes"], header["max_nodes"]
            )
        answer: dict[str, Any] = {
            "source": read.source,
            "alias": read.alias,
            "description": read.description,
            "tenant": read.tenant,
        }
    except DPMSFError as exc:
        answer = {"error": {"status": exc.status, "detail": exc.detail, "errors": exc.extra.get("errors")}}
    except MemoryError:
        answer = {"error": {"status": 422, "detail": "memory", "errors": None}}
    sys.stdout.write(json.dumps(answer))


def read_in_child(name: str, body: bytes, tenant: str, admin: bool, max_bytes: int, budget: UploadBudget) -> ReadUpload:
    """``read_upload`` in a fresh child process within ``budget``; blocks (call it from a thread)."""
    lines = body.count(b"\n") + 1
    if lines > budget.max_lines:
        raise UnprocessableArguments(
            f"Module {name!r} has {lines} lines. Expected at most {budget.max_lines} (the upload reading budget)."
        )
    header = {"name": name, "tenant": tenant, "admin": admin, "max_bytes": max_bytes}
    return _run_child(name, header, body, budget)


def read_stored_in_child(name: str, path: str, body: bytes, budget: UploadBudget) -> ReadUpload:
    """``read_stored`` in a fresh child process within ``budget``; blocks (call it from a thread)."""
    lines = body.count(b"\n") + 1
    if lines > budget.max_lines:
        raise UnprocessableArguments(f"Module {name!r} has {lines} lines. Expected at most {budget.max_lines}.")
    return _run_child(name, {"job": "stored", "name": name, "path": path}, body, budget)


def _run_child(name: str, job: dict[str, Any], body: bytes, budget: UploadBudget) -> ReadUpload:
    import subprocess

    header = {**job, "max_nodes": budget.max_nodes, "cpu_seconds": budget.cpu_seconds, "memory_mb": budget.memory_mb}

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = f"import sys; sys.path.insert(0, {root!r}); from dpmsf_core.upload.reading import _child_main; _child_main()"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps(header).encode() + b"\n" + body,
            capture_output=True,
            timeout=budget.wall_seconds,
            env={"PYTHONDONTWRITEBYTECODE": "1"},
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise _over_budget(name, f"{budget.wall_seconds:g} s of wall time") from None
    if done.returncode != 0 or not done.stdout:
        raise _over_budget(name, f"{budget.cpu_seconds:g} s of CPU time or {budget.memory_mb} MB of memory")
    answer = json.loads(done.stdout)
    error = answer.get("error")
    if error is not None:
        if error["detail"] == "memory":
            raise _over_budget(name, f"{budget.memory_mb} MB of memory")
        cls = _STATUS.get(error["status"])
        if cls is not None:
            raise cls(error["detail"])
        raise UnprocessableArguments(error["detail"], errors=error.get("errors"))
    return ReadUpload(answer["source"], answer["alias"], answer["description"], answer.get("tenant"))


def _over_budget(name: str, what: str) -> UnprocessableArguments:
    return UnprocessableArguments(
        f"Module {name!r} could not be read within its budget of {what}; the server reads uploads within a "
        "budget. Upload a smaller module (fewer lines and statements)."
    )


class UploadReader:
    """Reads uploads off the event loop, ``concurrency`` at a time, fairly between tenants: each tenant has at
    most ``per_tenant`` uploads being read or waiting (one being read and one waiting), any further is its own
    429; a free slot goes to the tenants waiting in turn (round-robin), so one tenant's flood of slow uploads
    never keeps another's out. At most ``waiting`` uploads wait in all (each holds its body in memory)."""

    def __init__(
        self, budget: UploadBudget, max_bytes: int, concurrency: int = 1, per_tenant: int = 2, waiting: int = 64
    ) -> None:
        self.budget = budget
        self.max_bytes = max_bytes
        self.concurrency = concurrency
        self.per_tenant = per_tenant
        self.waiting = waiting
        self._active = 0  # being read
        self._pending: dict[str, int] = {}  # tenant -> its uploads being read or waiting
        self._queues: dict[str, Any] = {}  # tenant -> deque of futures waiting for a slot, in tenant arrival order

    def _refuse(self, detail: str) -> QuotaExceeded:
        return QuotaExceeded(
            "uploads", detail + " Try again shortly; nothing was stored.", retry_after=self.budget.cpu_seconds
        )

    async def read(self, name: str, body: bytes, tenant: str, admin: bool) -> ReadUpload:
        import asyncio
        from collections import deque

        if self._pending.get(tenant, 0) >= self.per_tenant:
            raise self._refuse(f"This tenant has {self.per_tenant} uploads being read or waiting to be.")
        if sum(len(q) for q in self._queues.values()) >= self.waiting:
            raise self._refuse(f"{self.waiting} uploads are waiting to be read.")
        self._pending[tenant] = self._pending.get(tenant, 0) + 1
        try:
            if self._active >= self.concurrency:
                turn = asyncio.get_running_loop().create_future()
                self._queues.setdefault(tenant, deque()).append(turn)
                try:
                    await turn  # the slot is handed over to us (``_active`` stays counted)
                except BaseException:
                    if turn.done() and not turn.cancelled():
                        self._release()  # handed over as we were cancelled: pass it on
                    else:
                        self._forget(tenant, turn)
                    raise
            else:
                self._active += 1
            try:
                return await asyncio.to_thread(read_in_child, name, body, tenant, admin, self.max_bytes, self.budget)
            finally:
                self._release()
        finally:
            left = self._pending[tenant] - 1
            if left:
                self._pending[tenant] = left
            else:
                del self._pending[tenant]

    def _forget(self, tenant: str, turn: Any) -> None:
        queue = self._queues.get(tenant)
        if queue is not None and turn in queue:
            queue.remove(turn)
            if not queue:
                del self._queues[tenant]

    def _release(self) -> None:
        """A slot is free: hand it to the first waiter of the next tenant in turn, else free it."""
        while self._queues:
            tenant = next(iter(self._queues))
            queue = self._queues.pop(tenant)
            turn = queue.popleft()
            if queue:
                self._queues[tenant] = queue  # to the back: the other tenants come first
            if not turn.done():
                turn.set_result(None)
                return
        self._active -= 1
