"""The CPU priority of an app's boot: a preloader (or a directly spawned worker) imports the
app at a lower priority, so that during a rolling restart the workers still serving keep the
CPU, then returns to its own priority before it forks or serves.

Runs in the preloader and in a direct worker, first thing (before gevent and the app are
imported, which is most of a boot's CPU). The amount is the app's `boot_nice` (spec
"boot_nice"), added to the nice value the process started with.

Lowering the priority is always allowed; raising it back is not, without CAP_SYS_NICE or an
RLIMIT_NICE that allows it (a process may lower its nice value down to 20 - RLIMIT_NICE,
setrlimit(2)), and the workers a preloader forks inherit its priority. So the boot is niced
only when the priority can be restored: as root (CAP_SYS_NICE), or when RLIMIT_NICE's hard
limit allows it (systemd: `LimitNICE=+0`); otherwise it runs at the normal priority, as it did
without this. Linux keeps a nice value per thread: restoring goes over every thread of the
process (threads an app starts while it is imported would otherwise keep the lower one).
Standard library only.
"""

from __future__ import annotations

import json
import os
import resource
import sys

CAP_SYS_NICE = 23       # linux/capability.h
MAX_NICE = 19

_restore_to: int | None = None      # the nice value to go back to, while the boot is niced


def lower(amount: int) -> bool:
    """Add `amount` to this process's nice value for its boot, if it can be restored
    (`restore`). True if it was lowered. Does nothing the second time (a preloader lowers
    its priority before it imports railcar.worker, which would do it again)."""
    global _restore_to
    if _restore_to is not None or amount <= 0:
        return False
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if current >= MAX_NICE or not _may_return_to(current):
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, 0, min(current + amount, MAX_NICE))
    except OSError:
        return False
    _restore_to = current
    return True


def lower_from_spec(variable: str = "RAILCAR_WORKER") -> bool:
    """`lower` by the spec's "boot_nice" (the JSON spec in environment `variable`, left
    there for the process to read), 0 if the spec has none or cannot be read."""
    try:
        amount = json.loads(os.environ.get(variable, "{}")).get("boot_nice", 0)
    except (ValueError, AttributeError):
        return False
    return lower(amount) if type(amount) is int else False


def restore() -> None:
    """Back to the nice value of before `lower`, for every thread; nothing if not lowered."""
    global _restore_to
    if _restore_to is None:
        return
    value, _restore_to = _restore_to, None
    for tid in _threads():
        try:
            os.setpriority(os.PRIO_PROCESS, tid, value)
        except ProcessLookupError:
            pass                    # a thread that ended meanwhile
        except OSError as exc:      # not expected: the check in `lower` said it may
            sys.stderr.write(f"railcar: cannot restore the priority of thread {tid} "
                             f"to nice {value}: {exc}\n")


def _threads() -> list[int]:
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return [0]                  # no /proc: the calling thread


def _may_return_to(nice: int) -> bool:
    """Whether this process may set its nice value back to `nice` later: with CAP_SYS_NICE,
    or with RLIMIT_NICE at least 20 - nice (its soft limit raised to the hard one if need
    be, which needs no privilege)."""
    if _has_capability(CAP_SYS_NICE):
        return True
    needed = 20 - nice
    soft, hard = resource.getrlimit(resource.RLIMIT_NICE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return True
    if hard != resource.RLIM_INFINITY and hard < needed:
        return False
    try:
        resource.setrlimit(resource.RLIMIT_NICE, (needed, hard))
    except (ValueError, OSError):
        return False
    return True


def _has_capability(bit: int) -> bool:
    """Whether the effective capability set holds capability `bit` (/proc/self/status)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False
