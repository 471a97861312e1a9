"""What a spawn runs: the release an app root points to now, its WSGI module and its Python.

Runs in the master, once per spawn batch: a root that is a symlink (`current`) is resolved
each time, so new workers run the release `current` points to now.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field

# Modules the worker needs from the app's interpreter.
WORKER_IMPORTS = ("railcar", "gevent", "httptools")
HOOK_OUTPUT_MAX = 64 * 1024     # the end of on_starting's output kept for the log or error


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

    A check that passed is remembered with the files it found (the interpreter and each
    module's origin: inode, size, mtime): while none of them changed, the same interpreter
    for the same account passes again without being run. A rolling restart thus does not
    start one more interpreter beside the workers still serving (its start-up CPU is taken
    from them); a new virtualenv, an upgraded or removed package is checked again.
    """
    if not os.access(python, os.X_OK):
        raise ReleaseError(f"interpreter {python} does not exist or is not executable")
    key = (python, getattr(run_as, "user", None))
    known = _passed.get(key)
    if known is not None and _signature(known[0]) == known[1]:
        return
    code = ("import importlib.util, sys\n"
            f"specs = [(m, importlib.util.find_spec(m)) for m in {WORKER_IMPORTS!r}]\n"
            "print(' '.join(m for m, s in specs if s is None))\n"
            "print(sys.executable)\n"
            "for m, s in specs:\n"
            "    print(s.origin if s is not None and s.origin else '')\n"
            "sys.exit(1 if any(s is None for m, s in specs) else 0)\n")
    result = _run_as_app([python, "-c", code], {}, "/", run_as, 30, capture_stderr=True)
    lines = result.stdout.splitlines()
    if result.returncode != 0:
        missing = (lines[0].strip() if lines else "") or result.stderr.strip()
        raise ReleaseError(
            f"interpreter {python} cannot import {missing}: install railcar into that "
            f"environment ({python} -m pip install railcar)")
    files = tuple(line for line in lines[1:] if line)
    if len(files) == len(WORKER_IMPORTS) + 1:
        _passed[key] = (files, _signature(files))


# (interpreter, account) -> (the files a passed check found, their _signature then)
_passed: dict[tuple, tuple] = {}


def _signature(files: tuple) -> tuple | None:
    """What tells a file was replaced: inode, size, mtime of each (None: one is gone)."""
    found = []
    for path in files:
        try:
            st = os.stat(path)
        except OSError:
            return None
        found.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(found)


def _run_as_app(argv: list[str], env: dict[str, str], cwd: str, run_as, timeout: float,
                capture_stderr: bool = False, what: str = "") -> subprocess.CompletedProcess:
    """Run one of the app's interpreters to completion as the app's account (`run_as`, under
    a root master), with our environment plus `env`. Output is text: stdout, and stderr
    apart (`capture_stderr`) or merged into it. Raises ReleaseError if it cannot run."""
    options, child_env, who = {}, dict(os.environ, **env), ""
    if run_as is not None:
        options, who = run_as.process_options(), f" (as {run_as.user})"
        child_env.update(run_as.environ())
    try:
        return subprocess.run(
            argv, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if capture_stderr else subprocess.STDOUT, text=True,
            errors="replace", timeout=timeout, cwd=cwd, env=child_env,
            stdin=subprocess.DEVNULL, **options)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ReleaseError(f"{what or 'interpreter ' + argv[0]} cannot be run{who}: "
                           f"{exc}") from None


def run_on_starting(release: Release, hooks_module: str, server: dict, run_as=None,
                    timeout: float = 60) -> str:
    """The app's on_starting hook (railcar.hooks): a one-shot `python -m railcar.hooks` of
    the app's interpreter, as the app's account (`run_as`), in the release directory, with
    the app's environment, so nothing of the app runs in the master (nor as root). `server`:
    the ServerInfo fields but the release. Returns its output; raises ReleaseError carrying
    it (the traceback) when the hook fails or does not end within `timeout` seconds."""
    spec = dict(server, module=hooks_module, release=release.path)
    result = _run_as_app([release.python, "-m", "railcar.hooks"],
                         dict(release.env, RAILCAR_HOOKS=json.dumps(spec)), release.path,
                         run_as, timeout,
                         what=f"hook on_starting of {hooks_module} ({release.python})")
    output = result.stdout[-HOOK_OUTPUT_MAX:]
    if result.returncode != 0:
        raise ReleaseError(output.strip() or
                           f"hook on_starting of {hooks_module} failed (exit status "
                           f"{result.returncode})")
    return output


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
