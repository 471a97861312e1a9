"""What a spawn runs: the release an app root points to now, its WSGI module and its Python.

Runs in the master, once per spawn batch: a root that is a symlink (`current`) is resolved
each time, so new workers run the release `current` points to now.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field

# Modules the worker needs from the app's interpreter.
WORKER_IMPORTS = ("railcar", "gevent", "httptools")


class ReleaseError(Exception):
    """The release cannot be run: the message says why in terms the user can act on."""


@dataclass(frozen=True)
class Release:
    path: str       # resolved release directory (never the symlink)
    module: str     # MODULE or MODULE:CALLABLE
    python: str     # interpreter the workers run
    # Variables the app's processes get (`env` and the env file): secrets, so never shown.
    env: dict[str, str] = field(default_factory=dict, repr=False, compare=False)


def find_module(release_dir: str, module: str | None) -> str:
    """`--app`/`module` if given, else wsgi.py, else passenger_wsgi.py (its `application`)."""
    if module:
        return module
    for candidate in ("wsgi", "passenger_wsgi"):
        if os.path.isfile(os.path.join(release_dir, candidate + ".py")):
            return candidate
    raise ReleaseError(
        f"{release_dir}: no WSGI app found: give --app MODULE:CALLABLE, a [app] module in "
        "railcar.toml, or a wsgi.py exposing `application`")


def find_python(release_dir: str, python: str | None) -> str:
    """`--python` if given, else the release's .venv or venv, else railcar's own interpreter."""
    if python:
        return python
    for venv in (".venv", "venv"):
        candidate = os.path.join(release_dir, venv, "bin", "python")
        if os.access(candidate, os.X_OK):
            return candidate
    return sys.executable


def check_python(python: str, run_as=None) -> None:
    """Fail plainly if `python` cannot run or cannot import what a worker needs.

    The check runs the app's own interpreter (its virtualenv is the app's: a `.pth` file there
    runs code), so under a root master it runs as the app's account, `run_as` (a
    config.Account), like the workers, and from `/` rather than the master's directory.
    """
    if not os.access(python, os.X_OK):
        raise ReleaseError(f"interpreter {python} does not exist or is not executable")
    code = ("import importlib.util, sys\n"
            f"missing = [m for m in {WORKER_IMPORTS!r} if importlib.util.find_spec(m) is None]\n"
            "print(' '.join(missing)); sys.exit(1 if missing else 0)\n")
    options, env, who = {}, dict(os.environ), ""
    if run_as is not None:
        options, who = run_as.process_options(), f" (as {run_as.user})"
        env.update(run_as.environ())
    try:
        result = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=30,
                                cwd="/", env=env, stdin=subprocess.DEVNULL, **options)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ReleaseError(f"interpreter {python} cannot be run{who}: {exc}") from None
    if result.returncode != 0:
        missing = result.stdout.strip() or result.stderr.strip()
        raise ReleaseError(
            f"interpreter {python} cannot import {missing}: install railcar into that "
            f"environment ({python} -m pip install railcar)")


def resolve(root: str, module: str | None, python: str | None,
            env: dict[str, str] | None = None, run_as=None) -> Release:
    """The release `root` points to now, to run with `env` as `run_as` (see check_python).
    Raises ReleaseError with a plain message."""
    path = os.path.realpath(root)
    if not os.path.isdir(path):
        raise ReleaseError(f"app root {root} does not lead to a directory ({path})")
    interpreter = find_python(path, python)
    check_python(interpreter, run_as)
    return Release(path=path, module=find_module(path, module), python=interpreter,
                   env=dict(env or {}))
