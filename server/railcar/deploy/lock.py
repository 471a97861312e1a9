"""The per-host deploy lock: a directory created atomically, with its holder inside.

The lock is DEPLOY_TO/deploy.lock/holder ("user@machine pid N since TIME: WHAT"). It is
taken by building the directory under a temporary name and renaming it into place, which
fails if a lock exists, so the holder is never missing. A lock is stale when its holder ran
on this machine and that process is gone, or when it is older than lock_timeout.

A host-side publish (publish.py) holds an flock on the holder file while it runs, even after
the `fab` that took the lock died. A stale lock is taken over only once that flock is free:
the next deploy waits for the publish in progress to end (up to lock_timeout), so it never
swaps `current` under a publish and never needs a manual `fab unlock`.
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


# $1 temp dir, $2 lock, $3 holder line, $4 "take over" flag, $5 the stale holder to take
# over, $6 seconds to wait for a host-side publish of that holder to end. One round trip:
# prints "taken", "held" and the holder's line, or "publishing" and the holder's line.
ACQUIRE = r'''
rm -rf "$1" && mkdir -p "$1" && printf '%s\n' "$3" > "$1/holder" || exit 1
if [ -n "$4" ] && [ "$(cat "$2/holder" 2>/dev/null)" = "$5" ]; then
  if ! flock -n "$2/holder" true 2>/dev/null && ! flock -w "$6" "$2/holder" true 2>/dev/null; then
    rm -rf "$1"; echo publishing; cat "$2/holder"; exit 0
  fi
  rm -rf "$2"
fi
if mv -T "$1" "$2" 2>/dev/null; then echo taken; exit 0; fi
rm -rf "$1"
echo held
cat "$2/holder" 2>/dev/null
[ -e "$2" ] || echo gone
'''

# $1 lock, $2 what the holder line of this process contains: drop the lock if it is ours.
RELEASE = r'''
case "$(cat "$1/holder" 2>/dev/null)" in *"$2"*) rm -rf "$1" ;; esac
'''

# $1 lock: print its holder and remove it, unless a host-side publish holds it (exit 3).
FORCE_RELEASE = r'''
if [ -e "$1/holder" ] && ! flock -n "$1/holder" true 2>/dev/null; then
  echo "a host-side publish is still running under the lock of $(cat "$1/holder"): it ends on its own" >&2
  exit 3
fi
cat "$1/holder" 2>/dev/null
rm -rf "$1"
'''


def _ours() -> str:
    return f"@{socket.gethostname()} pid {os.getpid()} "


def acquire(remote: Remote, paths: Paths, what: str, lock_timeout: float, say) -> None:
    """Take the lock or raise LockError naming the holder; a stale lock is taken over.
    One round trip when the lock is free."""
    temp = f"{paths.lock}.{socket.gethostname()}.{os.getpid()}"
    line = holder_line(what)
    take_over, stale, wait = "", "", "0"
    for _attempt in range(4):
        out = remote.script(ACQUIRE, temp, paths.lock, line, take_over, stale, wait,
                            label="take-lock").stdout.splitlines()
        if out and out[0] == "taken":
            return
        if out and out[0] == "publishing":
            if wait != "0":
                raise LockError(f"[{remote.name}] a host-side publish under the lock of "
                                f"{stale} still runs after {wait} s ({paths.lock})")
            say(f"a host-side publish of the deploy of {stale} still runs: waiting for it "
                f"(up to {lock_timeout:g} s)")
            wait = f"{lock_timeout:g}"
            continue
        holder = out[1].strip() if len(out) > 1 and out[1] != "gone" else ""
        if out[-1:] == ["gone"]:
            take_over, stale = "", ""
            continue  # released meanwhile
        reason = stale_reason(holder, lock_timeout)
        if reason is None:
            raise LockError(f"[{remote.name}] deploy locked by {holder or 'an unknown holder'} "
                            f"({paths.lock}); if that deploy is gone, run `fab unlock`")
        say(f"stale lock of {holder} ({reason}): taking it over")
        take_over, stale = "1", holder
    raise LockError(f"[{remote.name}] could not take the deploy lock {paths.lock}")


def release(remote: Remote, paths: Paths) -> None:
    """Drop the lock if this process holds it (idempotent)."""
    remote.script(RELEASE, paths.lock, _ours(), label="drop-lock")


def force_release(remote: Remote, paths: Paths) -> str | None:
    """Remove the lock whoever holds it; returns the holder it had."""
    holder = remote.script(FORCE_RELEASE, paths.lock, label="remove-lock").stdout.strip()
    return holder or None
