"""Name a full disk as the cause of a failed deploy step: which host, which path, how full.

Tools report a full disk in many ways: tar and pip say "No space left on device", dash's
printf says only "I/O error", SFTP says "Failure". When a stage fails, `explain` looks at
its output and at the free space of the filesystem that holds the path the stage wrote
(`df`, one round trip, only on failure) and returns a message naming the host, the path and
the free space, or None when the disk is not the cause.
"""

from __future__ import annotations

import re

from .remote import Remote, RemoteError

NO_SPACE = re.compile(r"No space left on device|Disk quota exceeded|Errno 28\b|Errno 122\b")
ABSOLUTE_PATH = re.compile(r"(/[^\s'\":,]+)")
NEARLY_FULL_KIB = 1024      # below this much free space a vague write error means a full disk

# $1 path (or its nearest existing parent): "AVAILABLE_KIB SIZE_KIB MOUNT".
FREE_SPACE = r'''
p=$1
while [ ! -e "$p" ] && [ "$p" != / ]; do p=$(dirname "$p"); done
df -Pk -- "$p" | awk 'NR == 2 { print $4, $2, $6 }'
'''


def free_space(remote: Remote, path: str) -> tuple[int, int, str] | None:
    """(available KiB, size KiB, mount point) of the filesystem holding `path`, or None."""
    try:
        out = remote.script(FREE_SPACE, path, label="free-space", timeout=30).stdout.split()
        return int(out[0]), int(out[1]), out[2]
    except (RemoteError, OSError, ValueError, IndexError):
        return None


def explain(remote: Remote, output: str, path: str, stage: str) -> str | None:
    """Why a stage that wrote under `path` failed, if a full disk is the cause."""
    line = next((text.strip() for text in output.splitlines() if NO_SPACE.search(text)), None)
    named = ABSOLUTE_PATH.search(line or "")
    where = named.group(1) if named else path
    space = free_space(remote, where)
    if line is None and (space is None or space[0] >= NEARLY_FULL_KIB):
        return None
    fs = (f" (filesystem {space[2]}: {space[0]} KiB free of {space[1]} KiB)"
          if space else "")
    return (f"[{remote.name}] no space left on device: {where}{fs}, in the {stage} stage"
            + (f": {line}" if line else ""))
