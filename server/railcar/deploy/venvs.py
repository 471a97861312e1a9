"""Virtualenvs on a host, keyed by what goes into them, so unchanged requirements reuse one.

venvs/KEY/ where KEY hashes the requirements file's content, the railcar wheel, the host
interpreter and the pip arguments. A venv is built in place by `virtualenv` (from the
server's own virtualenv) and marked complete last: a half-built one is rebuilt, a complete
one is reused without running pip.
"""

from __future__ import annotations

import hashlib
import posixpath

from .paths import VENV_DONE, VENV_LINK, Paths
from .remote import Remote
from .settings import DeployConfig


def key(requirements: str, wheel_name: str, config: DeployConfig) -> str:
    digest = hashlib.sha256()
    for part in (requirements, wheel_name, config.python, "\0".join(config.pip_args)):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def pip_install(remote: Remote, python: str, paths: Paths, config: DeployConfig,
                *targets: str) -> None:
    remote.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                *config.pip_args, "--find-links", paths.wheels, *targets])


def ensure(remote: Remote, paths: Paths, config: DeployConfig, release_dir: str,
           wheel_name: str) -> tuple[str, bool]:
    """Build or reuse the venv for the release and link release/.venv to it.
    Returns (key, reused). Idempotent."""
    requirements_path = posixpath.join(release_dir, config.requirements)
    requirements = remote.read(requirements_path, default="") or ""
    venv_key = key(requirements, wheel_name, config)
    venv = paths.venv(venv_key)
    reused = remote.exists(posixpath.join(venv, VENV_DONE))
    if not reused:
        remote.run(["rm", "-rf", venv])
        remote.run([paths.server_python, "-m", "virtualenv", "-q", "--no-download",
                    "--python", config.python, venv])
        targets = [posixpath.join(paths.wheels, wheel_name)]
        if requirements.strip():
            targets += ["-r", requirements_path]
        pip_install(remote, posixpath.join(venv, "bin", "python"), paths, config, *targets)
        remote.write(posixpath.join(venv, VENV_DONE), wheel_name + "\n")
    link = posixpath.join(release_dir, VENV_LINK)
    remote.run(["rm", "-rf", link])
    remote.run(["ln", "-s", venv, link])
    return venv_key, reused


def in_use(remote: Remote, paths: Paths, release_names: list[str]) -> set[str]:
    """Keys of the venvs the given releases link to."""
    if not release_names:
        return set()
    links = [posixpath.join(paths.release(name), VENV_LINK) for name in release_names]
    # one round trip: readlink of every link (missing ones print nothing)
    out = remote.run(["sh", "-c", 'for l in "$@"; do readlink "$l"; done; true', "sh", *links])
    return {posixpath.basename(line.strip().rstrip("/")) for line in out.stdout.splitlines()
            if line.strip()}


def cleanup(remote: Remote, paths: Paths, keep_keys: set[str]) -> list[str]:
    """Remove venvs no kept release uses; returns the keys removed."""
    listing = remote.run(["ls", "-1", paths.venvs], check=False).stdout.split()
    removed = [name for name in listing if name not in keep_keys]
    if removed:
        remote.run(["rm", "-rf", *(paths.venv(name) for name in removed)])
    return removed
