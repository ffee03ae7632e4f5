"""What one sandboxed call may spend: the limits (``SandboxLimits``), and the count of what the current call has
sent and cost so far (``CallOutput``), checked before the server reads any more of a guest's frames."""

from __future__ import annotations

from dataclasses import dataclass

MIN_CPU_SECONDS = 0.01
_ENVELOPE_BYTES = 64 * 1024  # room around a result for captured output and the answer's fields
STORE_FRAMES_PER_CALL = 4  # full-size store requests an honest call's byte budget has room for, beside its answer


@dataclass(frozen=True)
class SandboxLimits:
    """Per-call limits for sandboxed functions; a guest that breaks one is replaced."""

    cpu_seconds: float = 2  # the worker's CPU time during one call, whatever the guest does meanwhile
    memory_mb: int = 256  # the guest's linear memory
    wall_seconds: float = 5  # the call as a whole; the worker process is killed past it
    max_output_bytes: int = 1_000_000  # the result, JSON-encoded
    worker_cpu_seconds: float = 600  # a worker's lifetime CPU (RLIMIT_CPU); it is retired before reaching this
    start_cpu_seconds: float = 5  # the worker's CPU time to start its guest (about 0.3 s)
    worker_overhead_mb: int = 128  # the worker's own memory beside the guest's (RLIMIT_DATA; it uses ~45); 0: none
    max_store_frame_bytes: int = 512 * 1024  # one store request of the guest (a document is at most 350 kB)
    max_call_frames: int = 1000  # frames a guest may send in one call: store requests and its answer
    max_call_bytes: int = 0  # bytes a guest may send in one call, all frames; 0: its answer + a few store requests
    # server CPU a second that one tenant's frames (decoding, store requests) may take on average: a tenth of a core,
    # so an honest tenant writing large documents is not throttled while a flood of costly frames is
    host_cpu_share: float = 0.1
    host_cpu_burst: float = 0.2  # server CPU seconds a tenant's frames may take at once before that share applies

    def __post_init__(self) -> None:
        if self.cpu_seconds < MIN_CPU_SECONDS:
            raise ValueError(f"SandboxLimits cpu_seconds={self.cpu_seconds}: at least {MIN_CPU_SECONDS} s")
        if not self.max_call_bytes:  # what an honest call needs: its result, and a few one-document store requests
            honest = self.max_answer_bytes + STORE_FRAMES_PER_CALL * self.max_store_frame_bytes
            object.__setattr__(self, "max_call_bytes", honest)

    @property
    def max_answer_bytes(self) -> int:
        return self.max_output_bytes + _ENVELOPE_BYTES


class BadFrame(Exception):
    """The guest sent something that is not a frame of the protocol."""


class OutputOverBudget(BadFrame):
    """The guest sent more in one call than it may (frames or bytes); its text says which."""


class CpuOverBudget(Exception):
    """The call's CPU (its worker's, plus the server's own spent on its frames) went past its budget."""


class CallOutput:
    """What a guest has sent in the current call, counted before any of it is read: frames and bytes; and the CPU the
    call has cost so far, its worker's (from the frames' stamps) plus the server's own decoding and serving them
    (``host``), which together must stay within the call's CPU budget."""

    def __init__(self, limits: SandboxLimits, cpu_before: float = 0.0, budget: float | None = None) -> None:
        self.limits = limits
        self.budget = limits.cpu_seconds if budget is None else budget
        self.frames = self.bytes = 0
        self.cpu_before = cpu_before  # the worker's CPU stamp before the call
        self.worker = 0.0  # the worker's CPU time in this call, as its latest frame said
        self.host = 0.0  # the server's own CPU time spent on this call's frames: decoding, store requests

    @property
    def cpu_seconds(self) -> float:
        return self.worker + self.host

    def charge(self, seconds: float) -> None:
        """Server CPU spent for this call; past the call's budget the guest is ended (504)."""
        self.host += max(0.0, seconds)
        self._check_cpu()

    def stamped(self, stamp: float) -> None:
        self.worker = max(self.worker, stamp - self.cpu_before)
        self._check_cpu()

    def _check_cpu(self) -> None:
        if self.host and self.worker + self.host > self.budget:
            raise CpuOverBudget()

    def admit(self, size: int, last: bool) -> None:
        limits = self.limits
        self.frames, self.bytes = self.frames + 1, self.bytes + size
        if size > (limits.max_answer_bytes if last else limits.max_store_frame_bytes):
            raise BadFrame()  # larger than any honest frame of its kind
        if self.frames > limits.max_call_frames:
            raise OutputOverBudget(f"more than {limits.max_call_frames} frames in one call")
        if self.bytes > limits.max_call_bytes:
            raise OutputOverBudget(f"more than {limits.max_call_bytes} bytes in one call")
