"""`python seccomp_deny.py SYSCALL_NR[,NR...] -- COMMAND...`: run COMMAND with those system
calls failing with EPERM, as under a container runtime's or systemd's SystemCallFilter.

A seccomp filter (prctl PR_SET_SECCOMP, SECCOMP_MODE_FILTER) installed in this process and
inherited by everything COMMAND starts (across fork and exec); PR_SET_NO_NEW_PRIVS first, so
no privilege is needed. x86-64 only (the filter checks the architecture and lets every
call of another through unchanged, which makes it a no-op there). Standard library only.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
AUDIT_ARCH_X86_64 = 0xC000003E
BPF_LD_W_ABS = 0x20     # BPF_LD | BPF_W | BPF_ABS
BPF_JEQ_K = 0x15        # BPF_JMP | BPF_JEQ | BPF_K
BPF_RET_K = 0x06        # BPF_RET | BPF_K
IO_URING_SETUP = 425


def instruction(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def program(numbers: list[int]) -> list[bytes]:
    """Allow everything but `numbers` on x86-64, which fail with EPERM."""
    prog = [instruction(BPF_LD_W_ABS, 0, 0, 4),                 # seccomp_data.arch
            instruction(BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
            instruction(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
            instruction(BPF_LD_W_ABS, 0, 0, 0)]                 # seccomp_data.nr
    for index, nr in enumerate(numbers):    # a match jumps to the ERRNO at the end
        to_deny = len(numbers) - index      # instructions to skip to reach the ERRNO
        prog.append(instruction(BPF_JEQ_K, to_deny, 0, nr))
    prog.append(instruction(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    prog.append(instruction(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.EPERM))
    return prog


def install(numbers: list[int]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    code = b"".join(program(numbers))
    buffer = ctypes.create_string_buffer(code, len(code))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(code) // 8, ctypes.addressof(buffer))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def main() -> None:
    numbers = [int(n) for n in sys.argv[1].split(",")]
    if sys.argv[2] != "--":
        raise SystemExit("usage: seccomp_deny.py NR[,NR...] -- COMMAND...")
    install(numbers)
    os.execvp(sys.argv[3], sys.argv[3:])


if __name__ == "__main__":
    main()
