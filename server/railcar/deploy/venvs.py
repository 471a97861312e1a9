"""Virtualenvs on a host, keyed by what goes into them, so unchanged requirements reuse one.

venvs/KEY/ where KEY hashes the requirements file's content, the railcar wheel (name and
sha256), the host interpreter and the pip arguments. The requirements are read from the
release tarball on this machine, so deciding costs no round trip. A venv is built in place
by `virtualenv` (from the server's own virtualenv) and marked complete last: a half-built
one is rebuilt, a complete one is reused without running pip.
"""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING

from .paths import VENV_DONE, VENV_LINK, Paths

if TYPE_CHECKING:    # not at run time: this module also runs on hosts (publish.py)
    from .remote import Remote
    from .settings import DeployConfig

# $1 venv, $2 its completion marker, $3 the release's link: link a complete venv (one round
# trip); print "reused", or "missing" when it must be built.
REUSE = r'''
if [ -e "$2" ]; then rm -rf "$3" && ln -s "$1" "$3" && echo reused; else echo missing; fi
'''

# $1 server python, $2 host python, $3 venv, $4 completion marker, $5 marker text,
# $6 release link; then the `pip install` arguments. Builds, marks complete last, links.
BUILD = r'''
set -e
server_python=$1 python=$2 venv=$3 done=$4 text=$5 link=$6
shift 6
rm -rf "$venv"
"$server_python" -m virtualenv -q --no-download --python "$python" "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "$@"
printf '%s\n' "$text" > "$done"
rm -rf "$link"
ln -s "$venv" "$link"
'''


def key(requirements: str, wheel_id: str, config: DeployConfig) -> str:
    import hashlib      # here and below: the host-side publish imports this module for
    #                     `unused` alone, on every host of every deploy
    digest = hashlib.sha256()
    for part in (requirements, wheel_id, config.python, "\0".join(config.pip_args)):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def requirements_in(archive_path: str, requirements: str) -> str:
    """The requirements file's text inside the release tarball ("" when it has none)."""
    import tarfile

    wanted = posixpath.normpath(requirements)
    with tarfile.open(archive_path, "r:gz") as tar:
        for member in tar.getmembers():
            if posixpath.normpath(member.name) == wanted:
                handle = tar.extractfile(member)
                return handle.read().decode("utf-8", "replace") if handle else ""
    return ""


def ensure(remote: Remote, paths: Paths, config: DeployConfig, release_dir: str,
           archive_path: str, wheel_name: str, wheel_id: str) -> tuple[str, bool]:
    """Build or reuse the venv for the release and link release/.venv to it.
    Returns (key, reused). Idempotent; one round trip when reused."""
    requirements = requirements_in(archive_path, config.requirements)
    venv_key = key(requirements, wheel_id, config)
    venv = paths.venv(venv_key)
    done = posixpath.join(venv, VENV_DONE)
    link = posixpath.join(release_dir, VENV_LINK)
    state = remote.script(REUSE, venv, done, link, label="reuse-venv").stdout.strip()
    if state == "reused":
        return venv_key, True
    targets = [posixpath.join(paths.wheels, wheel_name)]
    if requirements.strip():
        targets += ["-r", posixpath.join(release_dir, config.requirements)]
    remote.script(BUILD, paths.server_python, config.python, venv, done, wheel_id, link,
                  *config.pip_args, "--find-links", paths.wheels, *targets, label="build-venv")
    return venv_key, False


def unused(venvs: list[str], kept_links: set[str]) -> list[str]:
    """Keys of the venvs that no kept release links to."""
    return [name for name in venvs if name not in kept_links]
