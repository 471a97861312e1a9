"""Every path of a host's deploy layout, derived in one place from `deploy_to`.

    DEPLOY_TO/releases/20261123T101500Z-abc1234/   one dir per release (REVISION inside)
    DEPLOY_TO/shared/                              dirs and files linked into every release
    DEPLOY_TO/current -> releases/...              swapped atomically
    DEPLOY_TO/venvs/HASH/                          app virtualenvs keyed by requirements
    DEPLOY_TO/railcar/                             the server's own virtualenv
    DEPLOY_TO/wheels/                              uploaded railcar wheel (+ wheelhouse)
    DEPLOY_TO/run/  DEPLOY_TO/log/  DEPLOY_TO/tmp/ sockets and pid, logs, uploads
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

STATE_FILE = ".railcar-state"       # in a release: "good" or "failed"; absent = incomplete
VENV_LINK = ".venv"                 # in a release: -> venvs/HASH (railcar runs its python)
VENV_DONE = ".railcar-complete"     # in a venv: written last, so a half-built venv is redone


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
        return self._join("railcar", "bin", "railcar")

    @property
    def server_python(self) -> str:
        return self._join("railcar", "bin", "python")

    @property
    def server_marker(self) -> str:
        """The wheel_id of the railcar installed in the server venv."""
        return self._join("railcar", ".railcar-wheel")

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

    def release(self, name: str) -> str:
        return self._join("releases", name)

    def venv(self, key: str) -> str:
        return self._join("venvs", key)
