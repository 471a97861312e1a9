"""The server's virtualenv on a host (DEPLOY_TO/railcar): this exact railcar wheel with its
server extra, plus what the server needs to build the app venvs (virtualenv). Built as the
deploy account by `fab setup`; a deploy only checks it (facts.installed), never changes it."""

from __future__ import annotations

import os
import posixpath

from .facts import Facts
from .paths import Paths
from .remote import Remote
from .settings import DeployConfig
from .wheels import wheel_id

SERVER_PACKAGES = ("virtualenv",)   # the server venv builds the app venvs with it
# The server venv runs the master: railcar with its `server` extra (click, psutil, jinja2,
# prometheus-client). App venvs (venvs.py) get plain railcar, which is all a worker imports.
SERVER_EXTRA = "[server]"

# $1 host python, $2 server venv, $3 marker, $4 marker text, $5 the railcar wheel; then the
# `pip install` arguments (the wheel with its server extra among them). The railcar wheel is
# reinstalled even at the same version, since its bytes changed.
SERVER_VENV = r'''
set -e
python=$1 venv=$2 marker=$3 text=$4 wheel=$5
shift 5
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
rm -f "$marker"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "$@"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall "$wheel"
printf '%s\n' "$text" > "$marker"
'''


def ensure(remote: Remote, paths: Paths, config: DeployConfig, wheel: str, known: Facts) -> bool:
    """The server's virtualenv with this railcar wheel (already uploaded to the host's
    wheels/); returns whether it changed. Idempotent: nothing runs when `known` says the
    host has these bytes installed."""
    wanted = wheel_id(wheel)
    if known.installed == wanted:
        return False
    target = posixpath.join(paths.wheels, os.path.basename(wheel))
    remote.script(SERVER_VENV, config.python, paths.server_venv, paths.server_marker, wanted,
                  target, *config.pip_args, "--find-links", paths.wheels,
                  target + SERVER_EXTRA, *SERVER_PACKAGES, label="server-venv")
    return True
