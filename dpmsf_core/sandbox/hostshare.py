"""Each tenant's share of the server's own CPU: what decoding its guests' frames and serving their store requests
cost the server process, which the guest's cheap writes can make costly (a frame of empty lists takes the server
~40 ns a byte to decode, with the interpreter lock held: every other request waits meanwhile).

A call is charged that CPU against its own budget (``budget.CallOutput``); across calls, each tenant may use on
average ``share`` of one core for it, with ``burst`` seconds at once. A tenant past its share waits before its next
frame is decoded (its call's wall time runs meanwhile), so a flood of costly frames slows its sender, not the server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

_FORGET_AFTER = 4096  # owners remembered; those whose debt is paid are pruned beyond this


class HostShare:
    """Server CPU spent per owner, as a debt repaid at ``share`` seconds a second; thread-safe."""

    def __init__(self, share: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.share, self.burst = share, burst
        self._clock = clock
        self._lock = threading.Lock()
        self._debt: dict[str, tuple[float, float]] = {}  # owner -> (seconds owed, when counted)

    def _owed(self, owner: str, now: float) -> float:
        debt, when = self._debt.get(owner, (0.0, now))
        return max(0.0, debt - (now - when) * self.share)

    def spend(self, owner: str, seconds: float) -> None:
        """``owner``'s call made the server spend ``seconds`` of its CPU."""
        if seconds <= 0 or self.share <= 0:
            return
        now = self._clock()
        with self._lock:
            self._debt[owner] = (self._owed(owner, now) + seconds, now)
            if len(self._debt) > _FORGET_AFTER:
                self._debt = {o: d for o, d in self._debt.items() if self._owed(o, now) > 0}

    def wait(self, owner: str) -> float:
        """Seconds ``owner`` must wait before the server decodes more of its frames (0: none)."""
        if self.share <= 0:
            return 0.0
        with self._lock:
            owed = self._owed(owner, self._clock())
        return max(0.0, owed - self.burst) / self.share
