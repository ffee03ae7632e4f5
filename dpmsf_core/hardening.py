"""Process-level defence in depth for the server itself (Linux; a no-op elsewhere).

A non-dumpable process cannot be ptraced, and its ``/proc/<pid>/environ``, ``mem`` and ``fd/`` cannot be read, by
other processes of the same uid that lack CAP_SYS_PTRACE: the admin key and the master key in the server's
environment stay out of reach of anything else running as the same user (a plugin's child program, say).
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("dpmsf")

_PR_SET_DUMPABLE = 4
_PR_GET_DUMPABLE = 3


def make_non_dumpable() -> bool:
    """Mark this process non-dumpable; True if it is now (also when it already was)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
        return bool(libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0) == 0)
    except (OSError, AttributeError):  # not Linux, or no prctl: nothing to do
        log.debug("prctl is not available; the server stays dumpable")
        return False
