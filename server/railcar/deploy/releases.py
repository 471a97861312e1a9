"""Releases on a host: list them with their state, mark them, pick rollback targets.

A release's state is the file releases/NAME/.railcar-state: "good" once it served after a
deploy, "failed" when its deploy failed, "publishing" while the host-side publish runs
(publish.py); no file means incomplete (a deploy in progress, or debris of one that was
killed before its publish). A release whose file says "publishing" while no publish holds
the deploy lock's flock (publish.py holds it as long as it lives; a reboot or a SIGKILL of
the publisher frees it) is shown as "interrupted": nothing will finish that publish. The next
publish on the host (a deploy or a rollback) resolves it before it starts: "good" when it is
`current` and the workers serve it healthy, "failed" otherwise (publish.py). Only good
releases are rollback targets or count against keep_releases. The read-only inventory
(read_inventory) feeds the `releases` and `status` tasks, rollback and cleanup.
"""

from __future__ import annotations

import posixpath
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .paths import NO_RELEASE, PUBLISH_LOG, STATE_FILE, Paths

if TYPE_CHECKING:    # not at run time: this module also runs on hosts (publish.py)
    from .remote import Remote

__all__ = ["PUBLISH_LOG", "STATE_FILE"]

GOOD, FAILED, INCOMPLETE, PUBLISHING = "good", "failed", "incomplete", "publishing"
INTERRUPTED = "interrupted"     # read as "publishing", but no publish runs: see the module doc


def known_state(text: str) -> str:
    """A state file's first line as a state: anything but good/failed/publishing (absent,
    empty, garbled) is incomplete; "interrupted" is what LIST_SCRIPT reads for a publishing
    release that no publish works on."""
    return text if text in (GOOD, FAILED, PUBLISHING, INTERRUPTED) else INCOMPLETE


# One remote round trip: where `current` points, every release with its state, REVISION and
# venv link, and the venvs present. $1 current, $2 releases dir, $3 venvs dir, $4 the deploy
# lock's holder file: a publish runs while it is flocked (a shared lock taken for an instant
# fails then); "publishing" without one is "interrupted".
LIST_SCRIPT = r'''
running=no
[ -e "$4" ] && ! flock -s -n "$4" true 2>/dev/null && running=yes
printf 'current\t%s\n' "$(readlink "$1" 2>/dev/null)"
if cd "$2" 2>/dev/null; then
  for d in */; do
    d=${d%/}; [ -d "$d" ] || continue
    s=$(head -n 1 "$d/.railcar-state" 2>/dev/null || echo incomplete)
    [ "$s" = publishing ] && [ $running = no ] && s=interrupted
    r=$(head -c 200 "$d/REVISION" 2>/dev/null | head -n 1)
    m=$(stat -c %Y "$d")
    v=$(readlink "$d/.venv" 2>/dev/null)
    printf 'release\t%s\t%s\t%s\t%s\t%s\n' "$d" "$s" "$m" "${v##*/}" "$r"
  done
fi
for v in "$3"/*/; do [ -d "$v" ] && v=${v%/} && printf 'venv\t%s\n' "${v##*/}"; done
true
'''


@dataclass(frozen=True)
class Release:
    name: str
    state: str
    mtime: int
    revision: str
    current: bool
    venv: str = ""          # the key of the venv it links to


    def age(self, now: float | None = None) -> str:
        seconds = int((now or time.time()) - self.mtime)
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if seconds >= size:
                return f"{seconds // size}{unit}"
        return f"{seconds}s"


@dataclass(frozen=True)
class Inventory:
    """What is on a host, read in one round trip."""

    current: str | None             # release name `current` points to
    releases: list[Release]         # oldest first (names start with a UTC timestamp)
    venvs: list[str]                # keys of the venvs present


def read_inventory(remote: Remote, paths: Paths) -> Inventory:
    """What is on the host (LIST_SCRIPT), in one round trip."""
    return parse_inventory(remote.script(LIST_SCRIPT, *list_args(paths),
                                         label="list-releases").stdout)


def list_args(paths: Paths) -> list[str]:
    """LIST_SCRIPT's arguments ($1-$4)."""
    return [paths.current, paths.releases, paths.venvs, posixpath.join(paths.lock, "holder")]


def parse_inventory(out: str) -> Inventory:
    """LIST_SCRIPT's output read; other lines are ignored."""
    current, rows, venvs = None, [], []
    for line in out.splitlines():
        kind, _, rest = line.partition("\t")
        if kind == "current":
            current = posixpath.basename(rest.strip().rstrip("/")) or None
        elif kind == "venv":
            venvs.append(rest.strip())
        elif kind == "release":
            name, state, mtime, venv, revision = (rest.split("\t", 4) + [""] * 5)[:5]
            rows.append((name, state.strip(), int(mtime or 0), venv.strip(), revision.strip()))
    releases = [Release(name, known_state(state), mtime, revision, name == current, venv)
                for name, state, mtime, venv, revision in rows]
    return Inventory(current, sorted(releases, key=lambda r: r.name), sorted(venvs))


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


def summary(found: Inventory) -> str:
    """One line for `fab status`: where `current` points, its state, a publish running."""
    by_name = {r.name: r for r in found.releases}
    current = by_name.get(found.current or "")
    if found.current == NO_RELEASE:
        line = "current: no release yet (the placeholder answers 503)"
    elif found.current:
        line = f"current -> releases/{found.current} ({current.state if current else 'missing'})"
    else:
        line = "current: none"
    running = [r.name for r in found.releases if r.state == PUBLISHING]
    dead = [r.name for r in found.releases if r.state == INTERRUPTED]
    return line + (f"; publishing on the host: {', '.join(running)}" if running else "") \
        + (f"; publish interrupted (no publish runs; the next deploy or rollback marks it "
           f"good if current and healthy, else failed): {', '.join(dead)}" if dead else "")


def render(host: str, releases: list[Release]) -> str:
    lines = [f"[{host}] {len(releases)} release(s) (* = current)"]
    now = time.time()
    for r in reversed(releases):
        mark_ = "*" if r.current else " "
        lines.append(f"  {mark_} {r.name:<32} {r.state:<10} {r.age(now):>5} ago  {r.revision}")
    return "\n".join(lines)
