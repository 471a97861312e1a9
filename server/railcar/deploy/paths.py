"""Every path of a host's deploy layout, derived in one place from `deploy_to`.

    DEPLOY_TO/releases/20261123T101500Z-abc1234/   one dir per release (REVISION inside)
    DEPLOY_TO/shared/                              dirs and files linked into every release
    DEPLOY_TO/current -> releases/...              swapped atomically
    DEPLOY_TO/venvs/HASH/                          app virtualenvs keyed by requirements
    DEPLOY_TO/railcar/                             the server's own virtualenv
    DEPLOY_TO/wheels/                              uploaded railcar wheel (+ wheelhouse)
    DEPLOY_TO/railcar/no-release/                  what `current` serves before a release
    DEPLOY_TO/run/  DEPLOY_TO/log/  DEPLOY_TO/tmp/ sockets and pid, logs, uploads
    DEPLOY_TO/shared/railcar.env                   the app's env and secrets (0600, app's)

Owners (set by `fab setup`): the deploy account owns DEPLOY_TO and everything in it but
shared/, run/ and log/, which are the app account's (group: the app account's group, of
which the deploy account is a member), so the app can write only there.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

STATE_FILE = ".railcar-state"       # in a release: "good", "failed" or "publishing";
                                    # absent = incomplete
PUBLISH_LOG = ".railcar-publish.log"  # in a release: the host-side publish's progress
VENV_LINK = ".venv"                 # in a release: -> venvs/HASH (railcar runs its python)
VENV_DONE = ".railcar-complete"     # in a venv: written last, so a half-built venv is redone
NO_RELEASE = "no-release"           # the name `current` has before the first release


@dataclass(frozen=True)
class Paths:
    root: str

    def _join(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    @property
    def releases(self) -> str:
        return self._join("releases")

    @property
    def shared(self) -> str:
        return self._join("shared")

    @property
    def current(self) -> str:
        return self._join("current")

    @property
    def venvs(self) -> str:
        return self._join("venvs")

    @property
    def server_venv(self) -> str:
        return self._join("railcar")

    @property
    def railcar(self) -> str:
        return posixpath.join(self.server_venv, "bin", "railcar")

    @property
    def server_python(self) -> str:
        return posixpath.join(self.server_venv, "bin", "python")

    @property
    def server_marker(self) -> str:
        """The wheel_id of the railcar installed in the server venv."""
        return posixpath.join(self.server_venv, ".railcar-wheel")

    @property
    def wheels(self) -> str:
        return self._join("wheels")

    @property
    def run(self) -> str:
        return self._join("run")

    @property
    def log(self) -> str:
        return self._join("log")

    @property
    def tmp(self) -> str:
        return self._join("tmp")

    @property
    def lock(self) -> str:
        return self._join("deploy.lock")

    @property
    def revisions_log(self) -> str:
        return self._join("revisions.log")

    @property
    def admin_socket(self) -> str:
        return self._join("run", "admin.sock")

    @property
    def app_socket(self) -> str:
        return self._join("run", "app.sock")

    @property
    def pid_file(self) -> str:
        return self._join("run", "railcar.pid")

    @property
    def server_log(self) -> str:
        return self._join("log", "railcar.log")

    def layout(self) -> list[str]:
        """The directories setup creates."""
        return [self.root, self.releases, self.shared, self.venvs, self.wheels, self.run,
                self.log, self.tmp]

    @property
    def placeholder(self) -> str:
        """The app `current` points to before the first release: it answers 503."""
        return posixpath.join(self.server_venv, NO_RELEASE)

    @property
    def env_file(self) -> str:
        return posixpath.join(self.shared, "railcar.env")

    @property
    def env_sum(self) -> str:
        return self._join(".railcar-env.sum")

    def release(self, name: str) -> str:
        if name == NO_RELEASE:
            return self.placeholder
        return self.inside(self._join("releases", name))

    def venv(self, key: str) -> str:
        return self.inside(self._join("venvs", key))

    def inside(self, path: str) -> str:
        """`path` itself if it lies strictly below `root` (after normalizing), else ValueError.
        Every path that cleanup or a failed deploy removes is built through this check."""
        normal = posixpath.normpath(path)
        if normal != path.rstrip("/") or not normal.startswith(self.root.rstrip("/") + "/"):
            raise ValueError(f"refusing {path!r}: not a path under the deploy root {self.root}")
        return path
