"""Whole-app memory: the proportional set size (PSS) of a server's whole process tree.

PSS counts every private page of a process in full and every shared page divided by the
number of processes sharing it, so the sum over a tree is the memory the tree costs the
machine: a preloader's pages that its forked workers still share are counted once in total,
not once per worker as RSS would. `tree_pss(pid)` reads it for a master and every process
under it (preloader, workers; for a peer its whole tree).
"""

from __future__ import annotations

import psutil

MB = 1_000_000


def process_pss(pid: int) -> int:
    """PID's PSS in bytes, from /proc/PID/smaps_rollup (else /proc/PID/smaps, summed).

    Raises OSError (FileNotFoundError, ProcessLookupError, PermissionError) if the process is
    gone or not readable by this user.
    """
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
            return _sum_pss(rollup)
    except FileNotFoundError:
        if not psutil.pid_exists(pid):
            raise
    # Kernels before 4.14 have no smaps_rollup: the same figure from every mapping.
    with open(f"/proc/{pid}/smaps", encoding="ascii", errors="replace") as smaps:
        return _sum_pss(smaps)


def _sum_pss(lines) -> int:
    total_kb = 0
    for line in lines:
        if line.startswith("Pss:"):
            total_kb += int(line.split()[1])
    return total_kb * 1024


def tree_pids(pid: int) -> list[int]:
    """PID and every process under it (children, their children, ...), PID first."""
    root = psutil.Process(pid)
    return [pid] + [child.pid for child in root.children(recursive=True)]


def tree_pss(pid: int) -> int:
    """The summed PSS in bytes of PID and every process under it.

    A process that exits between the listing and the read is left out (it no longer costs
    anything); PID itself must exist (psutil.NoSuchProcess otherwise) and be readable.
    """
    total = 0
    for number in tree_pids(pid):
        try:
            total += process_pss(number)
        except (FileNotFoundError, ProcessLookupError):
            if number == pid:
                raise psutil.NoSuchProcess(pid) from None
    return total
