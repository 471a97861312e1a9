"""Build what a deploy uploads, on the local machine: the release tarball and railcar's wheel.

A git source ships `git archive` of the ref (so uncommitted files never ship); a plain
directory ships its files as they are (without .git and virtualenvs). Nothing here touches a
host.
"""

from __future__ import annotations

import glob
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .. import __version__

SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", ".tox", ".mypy_cache", ".pytest_cache"}


class BuildError(Exception):
    """The release or the wheel could not be built; the message says what to fix."""


@dataclass(frozen=True)
class Archive:
    path: str           # local .tar.gz
    revision: str       # full git sha, or "dir-<content hash>"
    short: str          # 7 characters, part of the release name
    ref: str            # what was asked for


def release_name(short: str, now: float | None = None) -> str:
    """releases/<UTC timestamp to the microsecond>-<short sha>: names sort by time, and two
    deploys of one commit in the same second get two names (the unpack stage also refuses a
    release directory that exists, so a name is never reused)."""
    now = time.time() if now is None else now
    micros = int(round(now * 1_000_000)) % 1_000_000
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(int(now))) + f".{micros:06d}Z-{short}"


def _git(source: str, *args: str) -> str:
    result = subprocess.run(["git", "-C", source, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"git {' '.join(args)} in {source} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def is_git(source: str) -> bool:
    return subprocess.run(["git", "-C", source, "rev-parse", "--show-toplevel"],
                          capture_output=True, text=True).stdout.strip() == os.path.realpath(source)


def archive_git(source: str, ref: str, workdir: str) -> Archive:
    sha = _git(source, "rev-parse", "--verify", f"{ref}^{{commit}}")
    path = os.path.join(workdir, f"{sha[:12]}.tar.gz")
    _git(source, "archive", "--format=tar.gz", "-o", path, sha)
    return Archive(path, sha, sha[:7], ref)


def archive_dir(source: str, workdir: str) -> Archive:
    digest = hashlib.sha256()
    files = []
    for top, dirs, names in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(names):
            full = os.path.join(top, name)
            rel = os.path.relpath(full, source)
            files.append((full, rel))
            digest.update(rel.encode() + b"\0" + Path(full).read_bytes() + b"\0")
    revision = "dir-" + digest.hexdigest()[:12]
    path = os.path.join(workdir, f"{revision}.tar.gz")
    with tarfile.open(path, "w:gz") as tar:
        for full, rel in files:
            tar.add(full, arcname=rel, recursive=False)
    return Archive(path, revision, digest.hexdigest()[:7], "(directory)")


def build_release(source: str, ref: str, workdir: str) -> Archive:
    """The tarball of the release to ship, from a git repo at `ref` or a plain directory."""
    return archive_git(source, ref, workdir) if is_git(source) else archive_dir(source, workdir)


def project_root() -> Path | None:
    """The source tree of this railcar, when it runs from one (an editable install)."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "pyproject.toml").is_file() and (root / "server" / "railcar").is_dir() else None


def find_wheel(given: str | None, wheelhouse: str | None) -> str | None:
    """A railcar wheel of this exact version: `given`, else one in the wheelhouse."""
    if given:
        if not os.path.isfile(given):
            raise BuildError(f"railcar wheel {given} does not exist")
        return os.path.abspath(given)
    if wheelhouse:
        found = sorted(glob.glob(os.path.join(wheelhouse, f"railcar-{__version__}-*.whl")))
        if found:
            return os.path.abspath(found[-1])
    return None


def build_wheel(workdir: str) -> str:
    """Build railcar's wheel (this version) locally: from its source tree if it runs from
    one, else with pip from the local pip cache or index. Hosts then install it offline.
    The build is reproducible (fixed file times), so the same source gives the same bytes
    and a host that has them is not sent them again."""
    root = project_root()
    target = str(root) if root else f"railcar=={__version__}"
    env = {**os.environ, "SOURCE_DATE_EPOCH": os.environ.get("SOURCE_DATE_EPOCH", "315532800")}
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                             "--wheel-dir", workdir, target], capture_output=True, text=True,
                            env=env)
    found = glob.glob(os.path.join(workdir, f"railcar-{__version__}-*.whl"))
    if result.returncode != 0 or not found:
        raise BuildError(f"cannot build the railcar {__version__} wheel from {target}:\n"
                         f"{result.stderr.strip()}")
    return found[0]


def local_workdir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="railcar-deploy-")
