"""The wheels a run ships: railcar's own (given, found in the wheelhouse, or built here once
per task run) and the wheelhouse's others, and their upload to a host.

A wheel's identity is its file name and the sha256 of its bytes (`wheel_id`): the server
venv's marker and the app venvs' keys use it, and a host is sent only the wheels whose bytes
it lacks, under temp names renamed into place in one round trip.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import os
import posixpath
from typing import TYPE_CHECKING, Iterator

from . import build
from .paths import Paths
from .remote import Remote
from .settings import DeployConfig

if TYPE_CHECKING:
    from .facts import Facts


def wheel_id(path: str) -> str:
    """A wheel's identity: its name and the sha256 of its bytes (hashed once per run for
    each version of the file: every host and stage of a deploy asks for it)."""
    stat = os.stat(path)
    return f"{os.path.basename(path)} {_sha256(path, stat.st_size, stat.st_mtime_ns, stat.st_ino)}"


@functools.lru_cache(maxsize=256)
def _sha256(path: str, _size: int, _mtime_ns: int, _inode: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe(wheel_id: str) -> str:
    name, _, digest = wheel_id.partition(" ")
    return f"{name} (sha256 {digest[:12]})" if digest else name


@contextlib.contextmanager
def for_run(config: DeployConfig, say=print) -> Iterator[list[str]]:
    """railcar's wheel first (railcar.wheel, else found in the wheelhouse, else built into a
    temp dir that lives as long as this context), then the wheelhouse's other wheels."""
    wheel = build.find_wheel(config.wheel, config.wheelhouse)
    with contextlib.ExitStack() as stack:
        if wheel is None:
            workdir = stack.enter_context(build.local_workdir())
            say(f"building the railcar wheel in {workdir} ...")
            wheel = build.build_wheel(workdir)
        extra = sorted(glob.glob(os.path.join(config.wheelhouse, "*.whl"))) \
            if config.wheelhouse else []
        yield [wheel] + [w for w in extra if os.path.basename(w) != os.path.basename(wheel)]


# $1 the temp suffix; then the wheel paths: rename each WHEEL$1 over WHEEL.
COMMIT_UPLOADS = r'''
suffix=$1
shift
for f in "$@"; do mv -f "$f$suffix" "$f" || exit 1; done
'''


def upload(remote: Remote, paths: Paths, wheels: list[str], known: "Facts") -> list[str]:
    """Upload the wheels the host lacks or has different bytes of (sha256, from `known`),
    under temp names renamed into place in one round trip; idempotent. Returns the names
    sent."""
    uploads = []
    for wheel in wheels:
        target = posixpath.join(paths.wheels, os.path.basename(wheel))
        if known.wheel_hashes.get(target) != wheel_id(wheel).split(" ")[1]:
            uploads.append((wheel, target + ".part"))
    remote.put_all(uploads)
    sent = [target[:-len(".part")] for _, target in uploads]
    if sent:
        remote.script(COMMIT_UPLOADS, ".part", *sent, label="commit-uploads")
    return [posixpath.basename(path) for path in sent]
