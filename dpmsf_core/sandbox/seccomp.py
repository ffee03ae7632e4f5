"""A seccomp filter for sandbox worker processes: the system calls a guest's host never needs answer EPERM.

Defence in depth only (the WebAssembly instance is the boundary): should a wasmtime bug ever hand a tenant native
code, that code still cannot start programs, open sockets, signal other processes (none of the six calls that
send a signal: kill, tkill, tgkill, rt_sigqueueinfo, rt_tgsigqueueinfo, pidfd_send_signal) or trace them, change its
identity or namespaces, or load kernel code. A deny list, not an allow list: the worker's own needs (Python,
wasmtime, its watchdog thread) stay unaffected across library versions. Standard library only; x86_64 and aarch64
Linux; elsewhere ``install`` returns False and nothing changes.
"""

from __future__ import annotations

import ctypes
import platform
import struct

_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_EPERM, _ENOSYS = 1, 38
_CLONE_THREAD = 0x00010000
_X32_BIT = 0x40000000
_SET_MODE_FILTER, _FLAG_TSYNC = 1, 1
_PR_SET_NO_NEW_PRIVS = 38

# BPF opcodes: load word at absolute offset, jump if equal / greater-or-equal / bits set, return.
_LD_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06

# (audit arch, seccomp syscall number, clone, clone3, denied syscalls)
_DENIED_NAMES = (
    "execve execveat fork vfork socket socketpair connect bind listen accept accept4 sendto sendmsg ptrace "
    "process_vm_readv process_vm_writev kill tkill tgkill rt_sigqueueinfo rt_tgsigqueueinfo pidfd_open "
    "pidfd_send_signal pidfd_getfd setuid setgid "
    "setreuid setresuid setgroups setpriority sched_setaffinity chroot pivot_root mount umount2 unshare setns "
    "personality init_module finit_module kexec_load bpf perf_event_open keyctl userfaultfd io_uring_setup"
).split()
_TABLES = {
    "x86_64": (
        0xC000003E,
        317,
        {
            "execve": 59, "execveat": 322, "fork": 57, "vfork": 58, "socket": 41, "socketpair": 53, "connect": 42,
            "bind": 49, "listen": 50, "accept": 43, "accept4": 288, "sendto": 44, "sendmsg": 46, "ptrace": 101,
            "process_vm_readv": 310, "process_vm_writev": 311, "kill": 62, "tkill": 200, "tgkill": 234,
            "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297,
            "pidfd_open": 434, "pidfd_send_signal": 424, "pidfd_getfd": 438, "setuid": 105, "setgid": 106,
            "setreuid": 113, "setresuid": 117, "setgroups": 116, "setpriority": 141, "sched_setaffinity": 203,
            "chroot": 161, "pivot_root": 155, "mount": 165, "umount2": 166, "unshare": 272, "setns": 308,
            "personality": 135, "init_module": 175, "finit_module": 313, "kexec_load": 246, "bpf": 321,
            "perf_event_open": 298, "keyctl": 250, "userfaultfd": 323, "io_uring_setup": 425,
            "clone": 56, "clone3": 435,
        },
    ),
    "aarch64": (
        0xC00000B7,
        277,
        {
            "execve": 221, "execveat": 281, "socket": 198, "socketpair": 199, "connect": 203, "bind": 200,
            "listen": 201, "accept": 202, "accept4": 242, "sendto": 206, "sendmsg": 211, "ptrace": 117,
            "process_vm_readv": 270, "process_vm_writev": 271, "kill": 129, "tkill": 130, "tgkill": 131,
            "rt_sigqueueinfo": 138, "rt_tgsigqueueinfo": 240,
            "pidfd_open": 434, "pidfd_send_signal": 424, "pidfd_getfd": 438, "setuid": 146, "setgid": 144,
            "setreuid": 145, "setresuid": 147, "setgroups": 159, "setpriority": 140, "sched_setaffinity": 122,
            "chroot": 51, "pivot_root": 41, "mount": 40, "umount2": 39, "unshare": 97, "setns": 268,
            "personality": 92, "init_module": 105, "finit_module": 273, "kexec_load": 104, "bpf": 280,
            "perf_event_open": 241, "keyctl": 219, "userfaultfd": 282, "io_uring_setup": 425,
            "clone": 220, "clone3": 435,
        },
    ),
}  # fmt: skip


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def program(machine: str | None = None) -> bytes | None:
    """The filter for ``machine`` (default: this one) as packed ``sock_filter`` structs, or None if unknown."""
    table = _TABLES.get(machine or platform.machine())
    if table is None:
        return None
    audit_arch, _, numbers = table
    denied = [numbers[name] for name in _DENIED_NAMES if name in numbers]
    code = [_insn(_LD_ABS, 4), _insn(_JEQ, audit_arch, 1, 0), _insn(_RET, _RET_ERRNO | _EPERM), _insn(_LD_ABS, 0)]
    # after the deny list: clone3 -> ENOSYS (libc falls back to clone), clone only for threads, the rest allowed
    tail_len = 7
    deny_at = len(code) + 1 + len(denied) + tail_len - 1  # index of the final "return EPERM"
    code.append(_insn(_JGE, _X32_BIT, deny_at - len(code) - 1, 0))  # x32 system calls on x86_64
    for number in denied:
        code.append(_insn(_JEQ, number, deny_at - len(code) - 1, 0))
    code += [
        _insn(_JEQ, numbers["clone3"], 0, 1),
        _insn(_RET, _RET_ERRNO | _ENOSYS),
        _insn(_JEQ, numbers["clone"], 0, 2),
        _insn(_LD_ABS, 16),  # the low word of clone's first argument: its flags
        _insn(_JSET, _CLONE_THREAD, 0, 1),
        _insn(_RET, _RET_ALLOW),
        _insn(_RET, _RET_ERRNO | _EPERM),
    ]
    assert len(code) == deny_at + 1
    return b"".join(code)


def install() -> bool:
    """Apply the filter to every thread of this process (``no_new_privs`` first, as the kernel requires)."""
    machine = platform.machine()
    filters = program(machine)
    if filters is None:
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    count = len(filters) // 8

    class FProg(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    prog = FProg(count, filters)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return False
    seccomp_nr = _TABLES[machine][1]
    result = libc.syscall(seccomp_nr, _SET_MODE_FILTER, _FLAG_TSYNC, ctypes.byref(prog))
    return bool(result == 0)
