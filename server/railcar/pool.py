"""The workers of one app: keep the wanted number serving, roll them over to a new release.

Runs in the master (gevent). Every spawn goes through `self.lock`, so a rolling restart and
a crash respawn never interleave. `manage_workers` is the one place that reconciles the
actual worker set with the wanted one; `restart` is the one place that changes release.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

import gevent
import gevent.lock

from . import release as releases
from . import states
from .config import AppConfig
from .process import WorkerProcess

MAX_BACKOFF = 60.0


@dataclass
class RestartOutcome:
    ok: bool
    error: str | None = None
    release: str | None = None
    started_at: float = 0.0
    finished_at: float = 0.0

    def as_dict(self) -> dict:
        return {"ok": self.ok, "error": self.error, "release": self.release,
                "started_at": self.started_at, "finished_at": self.finished_at}


class AppPool:
    def __init__(self, app: AppConfig, listeners, graceful_timeout: float, log):
        self.app = app
        self.listeners = listeners
        self.graceful_timeout = graceful_timeout
        self.log = log
        self.workers: list[WorkerProcess] = []
        self.lock = gevent.lock.Semaphore()
        self.stopping = False
        self.boot_failures = 0          # consecutive failed spawns, for backoff
        self.next_spawn_at = 0.0
        self.last_error: str | None = None
        self.last_restart: RestartOutcome | None = None
        self.restart_txt_mtime = self._restart_txt_mtime()

    # --- views ----------------------------------------------------------------------------
    def serving(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.state in states.SERVING]

    def current_release(self) -> str | None:
        ready = [w for w in self.workers if w.state == states.READY]
        return ready[-1].release.path if ready else None

    # --- spawning -------------------------------------------------------------------------
    def _worker_spec(self) -> dict:
        return {"app": self.app.name, "limits": self.app.limits,
                "access_log": self.app.access_log, "graceful_timeout": self.graceful_timeout}

    def spawn_worker(self, release: releases.Release) -> WorkerProcess:
        worker = WorkerProcess(self.app.name, release, self.log, self._on_worker_exit)
        self.workers.append(worker)
        try:
            worker.start(self.listeners, self._worker_spec(), self.app.env)
        except OSError:
            pass    # state is FAILED with the reason in boot_error
        else:
            self.log.info("%s: spawned worker %s (release %s)", self.app.name, worker.pid,
                          release.path)
        return worker

    def _spawn_ready(self, release: releases.Release) -> tuple[WorkerProcess, bool]:
        worker = self.spawn_worker(release)
        ok = worker.state != states.FAILED and worker.wait_ready(self.app.boot_timeout)
        if not ok:
            self.log.error("%s", worker.failure_text())
            if worker in self.workers and worker.popen is None:
                self.workers.remove(worker)
        return worker, ok

    def _resolve(self) -> releases.Release:
        return releases.resolve(self.app.root, self.app.module, self.app.python)

    def manage_workers(self) -> None:
        """Reconcile: spawn the missing workers (with backoff after failures), retire extras."""
        if self.stopping or self.lock.locked():
            return
        serving = self.serving()
        missing = self.app.workers - len(serving)
        if missing < 0:
            for worker in sorted(serving, key=lambda w: w.started_at)[:-missing]:
                worker.retire()
        elif missing > 0 and time.monotonic() >= self.next_spawn_at:
            gevent.spawn(self._fill, missing)

    def _fill(self, count: int) -> None:
        with self.lock:
            if self.stopping:
                return
            try:
                release = self._resolve()
            except releases.ReleaseError as exc:
                self._boot_failed(str(exc))
                return
            for _ in range(count):
                worker, ok = self._spawn_ready(release)
                if not ok:
                    self._boot_failed(worker.failure_text())
                    return
                self.boot_failures = 0
                self.last_error = None

    def _boot_failed(self, error: str) -> None:
        self.last_error = error
        self.boot_failures += 1
        delay = min(2.0 ** (self.boot_failures - 1), MAX_BACKOFF)
        self.next_spawn_at = time.monotonic() + delay
        self.log.error("%s: could not start a worker; next try in %.0f s", self.app.name, delay)

    def _on_worker_exit(self, worker: WorkerProcess) -> None:
        if worker in self.workers:
            self.workers.remove(worker)
        if worker.state == states.EXITED and not worker.retired:
            self.log.warning("%s: worker %s exited unexpectedly (%s); respawning",
                             self.app.name, worker.pid, exit_reason(worker.returncode))
        self.manage_workers()

    # --- rolling restart ------------------------------------------------------------------
    def restart(self) -> RestartOutcome:
        """Replace every serving worker with one of the release the root points to now.

        For each old worker: start a new one, wait until it is ready, retire the old one.
        If a new worker fails to boot, the restart is aborted: new workers are retired and
        old ones (same pids) keep serving; any already retired are replaced from their
        release. Returns once every old worker has exited.
        """
        outcome = RestartOutcome(ok=False, started_at=time.time())
        with self.lock:
            outcome = self._restart_locked(outcome)
        outcome.finished_at = time.time()
        self.last_restart = outcome
        self.manage_workers()
        return outcome

    def _restart_locked(self, outcome: RestartOutcome) -> RestartOutcome:
        try:
            release = self._resolve()
        except releases.ReleaseError as exc:
            outcome.error = str(exc)
            return outcome
        outcome.release = release.path
        old = self.serving()
        self.log.info("%s: rolling restart of %d worker(s) onto %s", self.app.name,
                      len(old), release.path)
        fresh, retired = [], []
        for index in range(max(self.app.workers, len(old))):
            worker, ok = self._spawn_ready(release)
            if not ok:
                outcome.error = worker.failure_text()
                self.last_error = outcome.error
                self._abort(fresh, retired)
                return outcome
            fresh.append(worker)
            if index < len(old):
                old[index].retire()
                retired.append(old[index])
        self._wait_exited(retired)
        self.boot_failures, self.last_error = 0, None
        outcome.ok = True
        self.log.info("%s: rolling restart done, serving %s", self.app.name, release.path)
        return outcome

    def _abort(self, fresh: list[WorkerProcess], retired: list[WorkerProcess]) -> None:
        self.log.error("%s: restart aborted; the previous workers keep serving", self.app.name)
        for old in retired:
            self._spawn_ready(old.release)
        for worker in fresh:
            worker.retire()

    def _wait_exited(self, workers: list[WorkerProcess]) -> None:
        deadline = self.graceful_timeout + 5
        gevent.joinall([gevent.spawn(w.exited.wait) for w in workers], timeout=deadline)
        for worker in workers:
            if not worker.exited.is_set():
                worker.kill(signal.SIGKILL)

    # --- restart.txt ----------------------------------------------------------------------
    def _restart_txt_mtime(self) -> float | None:
        try:
            return os.stat(os.path.join(self.app.root, "tmp", "restart.txt")).st_mtime
        except OSError:
            return None

    def restart_txt_touched(self) -> bool:
        """True once each time APP_ROOT/tmp/restart.txt gets a new mtime (Passenger's trigger)."""
        mtime = self._restart_txt_mtime()
        touched = mtime is not None and mtime != self.restart_txt_mtime
        self.restart_txt_mtime = mtime
        return touched

    # --- stopping -------------------------------------------------------------------------
    def stop(self, graceful: bool, timeout: float) -> None:
        """Retire (graceful) or quit every worker; SIGKILL what is left after `timeout`."""
        self.stopping = True
        workers = list(self.workers)
        for worker in workers:
            if graceful:
                worker.retire()
            else:
                worker.retired = True
                worker.kill(signal.SIGQUIT)
        gevent.joinall([gevent.spawn(w.exited.wait) for w in workers], timeout=timeout)
        for worker in workers:
            if not worker.exited.is_set():
                self.log.warning("%s: worker %s did not stop in time; killing it",
                                 self.app.name, worker.pid)
                worker.kill(signal.SIGKILL)
                worker.exited.wait(5)


def exit_reason(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit status {returncode}"
