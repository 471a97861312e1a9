"""How one app's workers come to be: directly, or forked from a preloader of their release.

Runs in the master (gevent). Spawn methods (the app's `spawn_method`):
- `direct`: each worker is its own `python -m railcar.worker`;
- `smart`: one preloader per release (`python -m railcar.preloader`, the app imported once)
  forks the workers. `preloader` is the one new workers fork from; `preloaders` are all alive.
  A rolling restart starts a fresh one (`fresh_preloader`); one that is not current is
  stopped once no worker forked from it is left (`stop_idle_preloaders`).

Every process comes from the factory (railcar.seam), so nothing here forks or signals by
itself. The Spawner decides nothing about how many workers there are or when: the pool does
(railcar.pool); callers serialise spawns (the pool's lock).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Callable

from . import release as releases
from . import states
from .config import AppConfig
from . import balance
from .seam import Process, ProcessFactory
from .settings import ConfigError


class Spawner:
    def __init__(self, app: AppConfig, listeners, graceful_timeout: float, log,
                 factory: ProcessFactory, on_exit: Callable[[Process], None]):
        self.app = app
        self.listeners = listeners
        self.graceful_timeout = graceful_timeout
        self.log = log
        self.factory = factory
        self.on_exit = on_exit                  # every process's exit, worker or preloader
        self.preloaders: list[Process] = []     # alive (smart spawning)
        self.preloader: Process | None = None   # the one new workers fork from
        self.started = False    # on_starting ran (railcar.hooks): once, before any spawn
        # The open-connection counts every worker of the app publishes (railcar.balance),
        # inherited by each worker and preloader; for the master's whole life.
        self.balance_fd = balance.create()

    @property
    def smart(self) -> bool:
        return self.app.supervision.smart

    def spec(self) -> dict:
        """What a worker or preloader is told at exec (RAILCAR_WORKER)."""
        return {"app": self.app.name, "limits": self.app.limits,
                "access_log": self.app.access_log,
                "access_log_format": self.app.access_log_format,
                "graceful_timeout": self.graceful_timeout, "health": self.app.health,
                "hooks_module": self.app.hooks_module, "gc_freeze": self.app.gc_freeze,
                "boot_nice": self.app.boot_nice, "event_loop": self.app.event_loop,
                "tls": self.app.tls, "balance_fd": self.balance_fd}

    def resolve(self) -> releases.Release:
        """The release to spawn now, with the app's environment (the env file read now);
        its certificate and key (if any) must load as they are now. Before the app's first
        worker, its on_starting hook runs (`on_starting`). Raises releases.ReleaseError."""
        try:
            self.app.check_tls()
            env = self.app.environment()
        except ConfigError as exc:
            raise releases.ReleaseError(str(exc)) from None
        release = self.factory.resolve(self.app.root, self.app.module, self.app.python, env,
                                       self.app.run_as)
        if not self.started:
            self.on_starting(release)
        return release

    def on_starting(self, release: releases.Release) -> None:
        """The app's on_starting hook, once before its first worker, in a one-shot process
        of the app's (the factory's run_on_starting). Raises ReleaseError if it fails, which
        fails the spawn like a boot failure (so it runs again before the next try)."""
        if self.app.hooks_module:
            server = {"app": self.app.name, "workers": self.app.workers,
                      "binds": list(self.app.binds), "master_pid": os.getpid()}
            output = self.factory.run_on_starting(release, self.app.hooks_module, server,
                                                  self.app.run_as, self.app.boot_timeout)
            for line in output.splitlines():
                self.log.info("%s: on_starting: %s", self.app.name, line)
        self.started = True

    def spawn(self, release: releases.Release) -> Process:
        """Start one worker of `release`, not waited for (FAILED if it could not start).
        With smart spawning `self.preloader` (READY, of that release) forks it."""
        if self.smart:
            worker = self.factory.fork(self.preloader, self.app.name, release, self.on_exit)
        else:
            worker = self.factory.start("worker", self.app.name, release, self.spec(),
                                        self.listeners, release.env, self.app.run_as,
                                        self.on_exit)
        if worker.state != states.FAILED:
            self.log.info("%s: spawned worker %s (release %s)", self.app.name, worker.pid,
                          release.path)
        return worker

    def spawn_ready(self, release: releases.Release,
                    adopt: Callable[[Process], None]) -> tuple[Process, bool]:
        """A new worker of `release`, waited for until ready (its boot and health check).
        `adopt(worker)` is called as soon as it exists, before the wait. With smart spawning
        a preloader of that release is started first if there is none; if it fails to boot,
        it is returned as the failed process (its failure_text tells the app's error)."""
        if self.smart:
            preloader, ok = self.preloader_ready(release)
            if not ok:
                return preloader, False
        worker = self.spawn(release)
        adopt(worker)
        ok = worker.state != states.FAILED and \
            worker.wait_ready(self.app.boot_timeout, self.app.health_timeout)
        return worker, ok

    def preloader_ready(self, release: releases.Release) -> tuple[Process, bool]:
        """The current preloader if it is READY and of `release`, else a new one, waited for."""
        current = self.preloader
        if current is not None and current.release == release and \
                current.state == states.READY:
            return current, True
        began = time.monotonic()
        preloader = self.factory.start("preloader", self.app.name, release, self.spec(),
                                       self.listeners, release.env, self.app.run_as,
                                       self.on_exit)
        if preloader.state == states.FAILED:
            return preloader, False
        self.preloaders.append(preloader)
        if not preloader.wait_ready(self.app.boot_timeout):
            return preloader, False
        self.log.info("%s: preloader %s ready in %.2f s (release %s, event loop %s)",
                      self.app.name, preloader.pid, time.monotonic() - began, release.path,
                      preloader.event_loop or "unknown")
        self.preloader = preloader
        return preloader, True

    def fresh_preloader(self) -> Process | None:
        """Start a rolling restart: new workers fork from a new preloader (new code). Returns
        the previous one, for `keep_preloader` if the restart aborts."""
        previous, self.preloader = self.preloader, None
        return previous

    def keep_preloader(self, previous: Process | None) -> None:
        """After an aborted restart: new workers fork from `previous` again if it serves."""
        if previous is not None and previous.state == states.READY:
            self.preloader = previous

    def reap(self) -> None:
        """Forget preloaders that are gone (logging an unexpected exit). Idempotent."""
        for preloader in [p for p in self.preloaders if p.exited.is_set()]:
            self.preloaders.remove(preloader)
            if self.preloader is preloader:
                self.preloader = None
            if preloader.state == states.EXITED and not preloader.retired:
                self.log.warning("%s: preloader %s exited unexpectedly (%s)", self.app.name,
                                 preloader.pid, exit_reason(preloader.returncode))

    def stop_idle_preloaders(self, workers: list[Process]) -> None:
        """Stop every preloader but the current one that none of `workers` was forked from."""
        in_use = {id(w.preloader) for w in workers}
        for preloader in list(self.preloaders):
            if preloader is not self.preloader and id(preloader) not in in_use \
                    and preloader.state == states.READY:
                self.log.info("%s: stopping preloader %s (release %s)", self.app.name,
                              preloader.pid, preloader.release.path)
                preloader.retire()


def exit_reason(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit status {returncode}"
