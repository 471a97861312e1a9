"""The per-host deploy lock: a directory created atomically, with its holder inside.

The lock is DEPLOY_TO/deploy.lock/holder ("user@machine pid N since TIME: WHAT"). It is
taken by building the directory under a temporary name and renaming it into place, which
fails if a lock exists, so the holder is never missing. A lock is stale when its holder ran
on this machine and that process is gone, or when it is older than lock_timeout.
"""

from __future__ import annotations

import getpass
import os
import socket
import time

from .paths import Paths
from .remote import Remote


class LockError(Exception):
    """Another deploy holds the lock; the message names the holder."""


def holder_line(what: str) -> str:
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return (f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()} "
            f"since {when} epoch {int(time.time())}: {what}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_reason(holder: str, lock_timeout: float) -> str | None:
    """Why a lock is stale, or None if its holder may still be running."""
    words = holder.split()
    try:
        who, pid = words[0], int(words[2])
        epoch = int(words[words.index("epoch") + 1].rstrip(":"))
    except (IndexError, ValueError):
        return "its holder file is unreadable"
    if who.endswith("@" + socket.gethostname()) and not _pid_alive(pid):
        return f"process {pid} on this machine is gone"
    if time.time() - epoch > lock_timeout:
        return f"it is older than lock_timeout ({lock_timeout:g} s)"
    return None


def acquire(remote: Remote, paths: Paths, what: str, lock_timeout: float, say) -> None:
    """Take the lock or raise LockError naming the holder; a stale lock is taken over."""
    temp = f"{paths.lock}.{socket.gethostname()}.{os.getpid()}"
    remote.run(["rm", "-rf", temp])
    remote.run(["mkdir", "-p", temp])
    remote.write(f"{temp}/holder", holder_line(what) + "\n")
    for _attempt in range(2):
        if remote.test(["mv", "-T", temp, paths.lock]):
            return
        holder = (remote.read(f"{paths.lock}/holder") or "").strip()
        if not holder and not remote.exists(paths.lock):
            continue  # released meanwhile
        reason = stale_reason(holder, lock_timeout)
        if reason is None:
            remote.run(["rm", "-rf", temp])
            raise LockError(f"[{remote.name}] deploy locked by {holder or 'an unknown holder'} "
                            f"({paths.lock}); if that deploy is gone, run `fab unlock`")
        say(f"stale lock of {holder} ({reason}): taking it over")
        remote.run(["rm", "-rf", paths.lock])
    remote.run(["rm", "-rf", temp])
    raise LockError(f"[{remote.name}] could not take the deploy lock {paths.lock}")


def release(remote: Remote, paths: Paths) -> None:
    """Drop the lock if this process holds it (idempotent)."""
    holder = remote.read(f"{paths.lock}/holder") or ""
    if f"pid {os.getpid()} " in holder and f"@{socket.gethostname()} " in holder:
        remote.run(["rm", "-rf", paths.lock])


def force_release(remote: Remote, paths: Paths) -> str | None:
    """Remove the lock whoever holds it; returns the holder it had."""
    holder = remote.read(f"{paths.lock}/holder")
    remote.run(["rm", "-rf", paths.lock])
    return holder and holder.strip()
