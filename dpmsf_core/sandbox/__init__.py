"""Tenant code runs in CPython compiled to WebAssembly (WASI) under wasmtime: what that guarantees, and what not.

The parts: ``reader`` learns a tenant module's endpoints from its source with ``ast`` (the server never imports
tenant code); ``loader`` turns them into endpoints that call into the pool; ``pool`` keeps warm guests, one worker
process per guest (``worker``), each running ``guest_main`` inside the pinned interpreter (``runtime``).

Guaranteed, against a tenant who uploads any Python source it likes:

- The boundary is the WebAssembly instance. The guest gets no host files (no preopened directory at all: the
  interpreter's standard library is embedded in the binary), no sockets, no processes, no threads and an empty
  environment. What it can reach of the host is its channel to the server: one request in, store requests and one
  answer out, every frame bounded in size and parsed as JSON by the server.
- Limits are enforced by the host: computing time per call by epoch interruption (``cpu_seconds``), the whole
  call by killing the worker process (``wall_seconds``), linear memory by the store's limits (``memory_mb``), the
  result's size (``max_output_bytes``). A breach answers 504, 500 or 413 problem+json and that guest is replaced;
  other guests are untouched.
- A guest is bound to one tenant for its whole life and never serves another: module state, monkeypatching and
  leftovers cannot cross tenants. Store requests are served for the tenant of the call, chosen by the server.
- Guests are forked (``template``, ``forking``) from a template worker whose guest has started but never taken a
  call; they share its pages copy-on-write, so what a call writes is its guest's own copy. A template handed a
  call is never forked again. Random numbers and clocks come from the worker, not from state copied at the fork.
- The interpreter is the pinned file whose SHA-256 is checked on every read; its compiled form is checked
  against its own recorded hash before every load, and never loaded from a file or folder others can write.
- Defence in depth, where the platform allows it: each worker process is non-dumpable, has ``no_new_privs``,
  rlimits on CPU, file size, open files and core dumps, an empty environment, and runs as ``nobody`` when the
  server runs as root.

Not guaranteed: a bug in wasmtime or in the kernel is outside what this design can stop (the worker process is
the second wall there); the import allow-list and hidden builtins inside the guest are policy, not a boundary
(a tenant that reaches ``os`` through another module finds a WASI ``os`` with nothing behind it); a tenant can
spend its own CPU and memory up to the limits, and can forge its own answers, nobody else's.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SandboxLimits", "SandboxPool", "SandboxUnavailable"]


def __getattr__(name: str) -> Any:
    """Imported on first use: a server without tenants never loads the pool (cold start on Lambda)."""
    if name in ("SandboxLimits", "SandboxPool"):
        from . import pool

        return getattr(pool, name)
    if name == "SandboxUnavailable":
        from .runtime import SandboxUnavailable

        return SandboxUnavailable
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
