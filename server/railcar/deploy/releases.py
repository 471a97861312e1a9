"""Releases on a host: list them with their state, mark them, pick rollback targets.

A release's state is the file releases/NAME/.railcar-state: "good" once it served after a
deploy, "failed" when its deploy failed; no file means incomplete (a deploy in progress, or
debris of one that was killed). Only good releases are rollback targets or count against
keep_releases. The read-only `inventory` feeds the `releases` task, rollback and cleanup.
"""

from __future__ import annotations

import posixpath
import time
from dataclasses import dataclass

from .paths import STATE_FILE, Paths
from .remote import Remote

GOOD, FAILED, INCOMPLETE = "good", "failed", "incomplete"

# One remote round trip lists every release with its state and REVISION.
LIST_SCRIPT = r'''
cd "$1" 2>/dev/null || exit 0
for d in */; do
  d=${d%/}; [ -d "$d" ] || continue
  s=$(cat "$d/.railcar-state" 2>/dev/null || echo incomplete)
  r=$(head -c 200 "$d/REVISION" 2>/dev/null | head -n 1)
  m=$(stat -c %Y "$d")
  printf '%s\t%s\t%s\t%s\n' "$d" "$s" "$m" "$r"
done
'''


@dataclass(frozen=True)
class Release:
    name: str
    state: str
    mtime: int
    revision: str
    current: bool

    def age(self, now: float | None = None) -> str:
        seconds = int((now or time.time()) - self.mtime)
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if seconds >= size:
                return f"{seconds // size}{unit}"
        return f"{seconds}s"


def current_name(remote: Remote, paths: Paths) -> str | None:
    """The release `current` points to, or None."""
    result = remote.run(["readlink", paths.current], check=False)
    return posixpath.basename(result.stdout.strip().rstrip("/")) if result.ok else None


def inventory(remote: Remote, paths: Paths) -> list[Release]:
    """Every release, oldest first (names start with a UTC timestamp)."""
    current = current_name(remote, paths)
    out = remote.run(["sh", "-c", LIST_SCRIPT, "sh", paths.releases]).stdout
    releases = []
    for line in out.splitlines():
        name, state, mtime, revision = (line.split("\t") + ["", "", "", ""])[:4]
        state = state.strip() if state.strip() in (GOOD, FAILED) else INCOMPLETE
        releases.append(Release(name, state, int(mtime or 0), revision.strip(),
                                name == current))
    return sorted(releases, key=lambda r: r.name)


def mark(remote: Remote, paths: Paths, name: str, state: str) -> None:
    """Record a release's state (idempotent); a missing release is left alone."""
    release = paths.release(name)
    if remote.exists(release):
        remote.write(posixpath.join(release, STATE_FILE), state + "\n")


def previous_good(releases: list[Release], before: str | None = None) -> Release | None:
    """The newest good release older than `before` (default: the current one), not current."""
    current = next((r.name for r in releases if r.current), None)
    limit = before or current
    candidates = [r for r in releases if r.state == GOOD and not r.current
                  and (limit is None or r.name < limit)]
    return candidates[-1] if candidates else None


def to_remove(releases: list[Release], keep: int, protect: set[str]) -> list[Release]:
    """Cleanup's choice: failed and incomplete releases, and good ones beyond the newest
    `keep`; never the current one, the previous good one, or those in `protect`."""
    current = next((r for r in releases if r.current), None)
    previous = previous_good(releases)
    keep_names = {r.name for r in [current, previous] if r} | protect
    good = [r for r in releases if r.state == GOOD]
    keep_names |= {r.name for r in good[-keep:]}
    return [r for r in releases if r.name not in keep_names]


def render(host: str, releases: list[Release]) -> str:
    lines = [f"[{host}] {len(releases)} release(s) (* = current)"]
    now = time.time()
    for r in reversed(releases):
        mark_ = "*" if r.current else " "
        lines.append(f"  {mark_} {r.name:<32} {r.state:<10} {r.age(now):>5} ago  {r.revision}")
    return "\n".join(lines)
