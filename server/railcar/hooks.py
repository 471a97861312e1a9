"""An app's lifecycle hooks (`hooks_module`): find the module's functions and call them.

Runs in the app's own processes, with the app's interpreter, as the app's account, never in
the master: the master runs the server's interpreter (the hooks module may import what only
the app's virtualenv has), and a master started as root must not run app code. All hooks are
optional; a module that defines none of them is fine.

| hook | process | when | if it raises |
| --- | --- | --- | --- |
| on_starting(server) | a one-shot `python -m railcar.hooks` the master starts | once per master and app, before the app's first worker (or preloader) | the app's first boot fails (retried with backoff, the hook again first) |
| post_fork(worker) | each worker | after the fork (or the import), before the health check and before it accepts | the worker's boot fails like an import error: a restart aborts |
| worker_exit(worker) | the worker | once it stopped serving (retired or stopped), as it exits | logged; the exit goes on |
| on_timeout(worker, environ, stack) | the worker, in a greenlet of its own | after a request ran past max_request_time and got its 504 | logged |

Every failure is logged with its traceback (the process's stderr, relayed to the server log).
`server` and `worker` are read-only views (ServerInfo, WorkerInfo); `environ` is the WSGI
environ of the request that timed out, `stack` its stack as text (what the log shows).

This module needs only the standard library: it is imported by workers, whose virtualenv
holds railcar's core alone.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from dataclasses import dataclass

HOOKS = ("on_starting", "post_fork", "worker_exit", "on_timeout")
SPEC_VARIABLE = "RAILCAR_HOOKS"     # the on_starting child's spec (see main)


@dataclass(frozen=True)
class ServerInfo:
    """What on_starting(server) is told: the app about to start in this master."""
    app: str                # the app's name
    release: str            # the resolved release directory (cwd, first on sys.path)
    workers: int            # workers it starts with
    binds: tuple            # its listeners: "HOST:PORT" or "unix:PATH"
    master_pid: int


@dataclass(frozen=True)
class WorkerInfo:
    """What post_fork, worker_exit and on_timeout are told: the worker they run in."""
    pid: int
    app: str
    release: str
    preloaded: bool         # forked from a preloader (smart spawning) rather than started


class HookFailed(Exception):
    """A hook raised; the message holds the traceback."""


class Hooks:
    """The hook functions of one module (a hook it does not define does nothing)."""

    def __init__(self, module_name: str | None = None):
        self.module_name = module_name
        self.functions = {}
        if module_name:
            module = importlib.import_module(module_name)
            for name in HOOKS:
                function = getattr(module, name, None)
                if function is not None:
                    if not callable(function):
                        raise TypeError(f"{module_name}.{name} is not callable")
                    self.functions[name] = function

    def __contains__(self, name: str) -> bool:
        return name in self.functions

    def run(self, name: str, *args) -> None:
        """Call hook `name`; raise HookFailed, carrying the traceback, if it raises."""
        function = self.functions.get(name)
        if function is None:
            return
        try:
            function(*args)
        except BaseException:
            raise HookFailed(f"railcar: hook {name} of {self.module_name} (pid {os.getpid()}) "
                             f"failed:\n{traceback.format_exc()}") from None

    def call(self, name: str, *args) -> bool:
        """Call hook `name`; a failure is written to stderr with its traceback. Returns
        whether it went through (or there is no such hook)."""
        try:
            self.run(name, *args)
            return True
        except HookFailed as failure:
            sys.stderr.write(str(failure))
            sys.stderr.flush()
            return False


def main() -> None:
    """`python -m railcar.hooks`: run on_starting once, in the release directory (the master
    made it the cwd). Exit 1 with the traceback on stderr when it fails."""
    spec = json.loads(os.environ.pop(SPEC_VARIABLE))
    release = spec["release"]
    sys.path[:] = [release] + [p for p in sys.path if p not in ("", release)]
    server = ServerInfo(app=spec["app"], release=release, workers=spec["workers"],
                        binds=tuple(spec["binds"]), master_pid=spec["master_pid"])
    try:
        hooks = Hooks(spec["module"])
    except BaseException:
        sys.stderr.write(f"railcar: cannot import hooks module {spec['module']}:\n"
                         f"{traceback.format_exc()}")
        sys.exit(1)
    if not hooks.call("on_starting", server):
        sys.exit(1)


if __name__ == "__main__":
    main()
