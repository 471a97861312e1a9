"""Process titles: what `ps` and `top` show for railcar's processes.

    railcar: master [ARGS]
    railcar: preloader APP RELEASE
    railcar: worker APP RELEASE

ARGS are the master's command-line arguments (`start /srv/shop/current --env-file ...`),
shell-quoted, so `ps` still shows what ops started it with (options such as --allow-root,
--env-file, the app dir); nothing secret is ever on a command line, so showing them is safe.
APP is the app's name, RELEASE the name of the release directory it runs (for a deploy,
`20261129T101500.123456Z-abc1234`). Set through setproctitle when it can be imported (the
`titles` extra: `pip install 'railcar[titles]'`, into the server's venv for the master and
into the app's for its preloader and workers); without it a process keeps its command line
and nothing is said. Runs in whichever process names itself; standard library otherwise.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence

try:
    from setproctitle import setproctitle
except ImportError:     # optional: titles are a convenience, never a requirement
    setproctitle = None


def title(role: str, app: str | None = None, release: str | None = None,
          args: Sequence[str] = ()) -> str:
    """The title of a process of `role` (master, preloader, worker); `args`, its command-line
    arguments, are appended in brackets (the master's)."""
    words = ["railcar:", role]
    if app:
        words.append(app)
    if release:
        words.append(os.path.basename(release.rstrip("/")) or release)
    if args:
        words.append(f"[{shlex.join(args)}]")
    return " ".join(words)


def set_title(role: str, app: str | None = None, release: str | None = None,
              args: Sequence[str] = ()) -> bool:
    """Name this process; returns whether it could (setproctitle is importable)."""
    if setproctitle is None:
        return False
    setproctitle(title(role, app, release, args))
    return True
