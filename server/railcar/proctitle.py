"""Process titles: what `ps` and `top` show for railcar's processes.

    railcar: master
    railcar: preloader APP RELEASE
    railcar: worker APP RELEASE

APP is the app's name, RELEASE the name of the release directory it runs (for a deploy,
`20261129T101500.123456Z-abc1234`). Set through setproctitle when it can be imported (the
`titles` extra: `pip install 'railcar[titles]'`, into the server's venv for the master and
into the app's for its preloader and workers); without it a process keeps its command line
and nothing is said. Runs in whichever process names itself; standard library otherwise.
"""

from __future__ import annotations

import os

try:
    from setproctitle import setproctitle
except ImportError:     # optional: titles are a convenience, never a requirement
    setproctitle = None


def title(role: str, app: str | None = None, release: str | None = None) -> str:
    """The title of a process of `role` (master, preloader, worker)."""
    words = ["railcar:", role]
    if app:
        words.append(app)
    if release:
        words.append(os.path.basename(release.rstrip("/")) or release)
    return " ".join(words)


def set_title(role: str, app: str | None = None, release: str | None = None) -> bool:
    """Name this process; returns whether it could (setproctitle is importable)."""
    if setproctitle is None:
        return False
    setproctitle(title(role, app, release))
    return True
