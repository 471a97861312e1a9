"""What a host has, read in one round trip: the server venv and its railcar, where `current`
points, the env file's sum, whether the server answers, the hashes of the wheels a run would
upload and which required files are missing. Read-only: `check`, `upload` and `fab setup`
decide from it."""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field

from .paths import Paths
from .remote import Remote

# $1 server venv, $2 its railcar marker, $3 current, $4 admin socket, $5 the env file's sum,
# $6 "running" to ask the server whether it answers (an interpreter start: only when asked);
# then "w:PATH" for each wheel to hash and "f:PATH" for each file that must exist. A wheel's
# sum is kept in WHEEL.sha256 and trusted while that file is newer than the wheel (uploads
# rename a new wheel over the old one, which makes it newer), so a repeat deploy hashes
# nothing.
FACTS = r'''
venv=$1 marker=$2 current=$3 admin=$4 envsum=$5 ask=$6
shift 6
if [ -x "$venv/bin/python" ]; then echo "python yes"; else echo "python no"; fi
printf 'installed %s\n' "$(head -n 1 "$marker" 2>/dev/null)"
printf 'current %s\n' "$(readlink "$current" 2>/dev/null)"
printf 'envsum %s\n' "$(cat "$envsum" 2>/dev/null)"
if [ "$ask" = running ] && [ -x "$venv/bin/railcar" ] && "$venv/bin/railcar" status --json --admin-socket "$admin" >/dev/null 2>&1; then echo "running yes"; fi
for item in "$@"; do
  f=${item#?:}
  case $item in
    w:*) [ -f "$f" ] || continue
         if ! { [ "$f.sha256" -nt "$f" ] && read -r sum < "$f.sha256" && [ -n "$sum" ]; }; then
           sum=$(sha256sum "$f") && sum=${sum%% *} || continue
           printf '%s\n' "$sum" 2>/dev/null > "$f.sha256.tmp" && mv -f "$f.sha256.tmp" "$f.sha256" 2>/dev/null
         fi
         printf 'sha256 %s  %s\n' "$sum" "$f" ;;
    f:*) [ -e "$f" ] || printf 'missing %s\n' "$f" ;;
  esac
done
true
'''


@dataclass
class Facts:
    """What a host has (`read`)."""

    server_python: bool = False     # the server venv exists
    installed: str = ""             # wheels.wheel_id of the railcar in it ("" if none)
    current: str | None = None      # release `current` points to
    wheel_hashes: dict[str, str] = field(default_factory=dict)  # remote path -> sha256
    missing: list[str] = field(default_factory=list)  # of the files asked about, the absent
    running: bool | None = None     # the server answers on its admin socket (None: not asked)
    env_sum: str = ""               # DEPLOY_TO/.railcar-env.sum (envfile), if readable


def read(remote: Remote, paths: Paths, wheels: list[str], files: list[str] = (),
         running: bool = False) -> Facts:
    """The host's facts; `wheels` (local paths) are hashed where the host keeps them,
    `files` (remote paths) are checked to exist; with `running`, whether the server answers
    on its admin socket (`railcar status`: one more interpreter start on the host)."""
    items = [f"w:{posixpath.join(paths.wheels, os.path.basename(w))}" for w in wheels]
    items += [f"f:{path}" for path in files]
    out = remote.script(FACTS, paths.server_venv, paths.server_marker, paths.current,
                        paths.admin_socket, paths.env_sum, "running" if running else "", *items,
                        label="host-facts").stdout
    found = Facts(running=False if running else None)
    for line in out.splitlines():
        word, _, rest = line.partition(" ")
        if word == "python":
            found.server_python = rest == "yes"
        elif word == "installed":
            found.installed = rest.strip()
        elif word == "current":
            found.current = posixpath.basename(rest.strip().rstrip("/")) or None
        elif word == "envsum":
            found.env_sum = rest.strip()
        elif word == "running":
            found.running = True
        elif word == "sha256":
            digest, _, path = rest.partition("  ")
            found.wheel_hashes[path.strip()] = digest
        elif word == "missing":
            found.missing.append(rest)
    return found
