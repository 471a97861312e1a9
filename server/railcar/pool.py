"""The workers of one app: how many are wanted, which are alive, and the one reconcile.

Runs in the master (gevent). Roles, one module each:
- railcar.spawner   starts workers (direct, or forked from a preloader), through the
                    process factory (railcar.seam: the OS seam; tests use a fake one);
- railcar.rollout   rolling restart, its abort and canary, replacement of one worker,
                    restart.txt;
- railcar.limits    each tick: samples, replacement over a limit, dynamic sizing;
- railcar.states    worker states, and the app's spawning (RUNNING or BACKOFF);
- railcar.snapshot  the immutable view everyone else reads (`snapshot()`).

Events: a process's exit is not handled where it is seen. It is put on the master's queue
(`notify(Exited(pool, process))`), like every other wake-up (`wake()`), and the master's loop
answers with `reconcile()`: the one place that reaps processes that are gone and brings the
worker set to the wanted number (gunicorn's handle_chld -> reap_workers -> manage_workers).
The master also reconciles every pool once per tick.

Every spawn goes through `self.lock`, so a rolling restart, a reconcile's spawns and a
replacement never interleave; reconcile spawns nothing while the lock is held or the app is in
BACKOFF.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from typing import Callable

import gevent
import gevent.lock

from . import release as releases
from . import states
from . import supervision
from .config import AppConfig
from .fallback import BootErrorResponder
from .limits import Upkeep
from .rollout import Record, RestartOutcome, RestartTxt, Rollout
from .seam import Process, ProcessFactory
from .snapshot import PoolSnapshot, WorkerView, frozen
from .spawner import Spawner, exit_reason


@dataclass(frozen=True)
class Wake:
    """Something changed in `pool`: reconcile it on the master's loop."""

    pool: AppPool


@dataclass(frozen=True)
class Exited(Wake):
    """`process` of `pool` is gone (its state is EXITED or FAILED)."""

    process: Process


class AppPool:
    def __init__(self, app: AppConfig, listeners, graceful_timeout: float, log,
                 factory: ProcessFactory | None = None,
                 notify: Callable[[Wake], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        """`factory`: where processes come from (default: the OS's, process.OSProcessFactory).
        `notify(event)`: puts an event on the master's queue (default: reconcile at once).
        `clock`: time.monotonic, or a test's own clock."""
        if factory is None:
            from .process import OSProcessFactory

            factory = OSProcessFactory(log)
        self.app = app
        self.listeners = listeners
        self.graceful_timeout = graceful_timeout
        self.log = log
        self.clock = clock
        self.notify = notify or (lambda event: event.pool.reconcile())
        self.spawner = Spawner(app, listeners, graceful_timeout, log, factory,
                               lambda process: self.notify(Exited(self, process)))
        self.workers: list[Process] = []
        self.lock = gevent.lock.Semaphore()
        self.stopping = False
        self.wanted = app.workers           # grows up to max_workers under load
        self.spawning = states.Spawning()   # RUNNING, or BACKOFF after failed spawns
        self.last_error: str | None = None
        self.health_failures = 0            # new workers that failed their health check
        self.record = Record()
        self.upkeep = Upkeep(self)
        self.restart_txt = RestartTxt(app.root)
        self.fallback = BootErrorResponder(
            app.name, listeners, log, self.snapshot,
            app.supervision.development)

    # --- views ----------------------------------------------------------------------------
    def serving(self) -> list[Process]:
        return [w for w in self.workers if w.state in states.SERVING]

    def retire_timeout(self) -> float:
        """How long a retiring worker may take (supervision.retire_timeout)."""
        return supervision.retire_timeout(self.graceful_timeout,
                                          self.app.limits.get("long_lived_timeout", 0.0))

    def current_release(self) -> str | None:
        ready = [w for w in self.workers if w.state == states.READY]
        return ready[-1].release.path if ready else None

    def snapshot(self, resources: bool = False) -> PoolSnapshot:
        """An immutable view of the app and its processes now (railcar.snapshot).

        Per worker, RSS/USS/CPU come from the master's last sample; with `resources`, a
        worker not sampled yet is read now (psutil) instead of showing none."""
        record = self.record
        canary = record.canary.as_dict() if record.canary else None
        return PoolSnapshot(
            name=self.app.name, root=self.app.root, binds=tuple(self.app.binds),
            release=self.current_release(), wanted=self.wanted, min_workers=self.app.workers,
            max_workers=max(self.app.supervision.max_workers, self.app.workers),
            error=self.last_error, spawning=self.spawning,
            last_restart=frozen(record.last_restart.as_dict()) if record.last_restart
            else None,
            restarts=frozen(record.restarts), replacements=frozen(record.replacements),
            last_replacement=frozen(record.last_replacement) if record.last_replacement
            else None,
            canary=frozen(canary) if canary else None, canaries=frozen(record.canaries),
            health=frozen(self.app.health) if self.app.health else None,
            health_failures=self.health_failures, canary_settings=frozen(self.app.canary),
            spawn_method=self.app.supervision.spawn_method, stopping=self.stopping,
            workers=tuple(self._view(w, resources) for w in list(self.workers)),
            preloaders=tuple(self._view(p, False) for p in list(self.spawner.preloaders)),
            totals=self.upkeep.counters.totals())

    def _view(self, process: Process, resources: bool) -> WorkerView:
        sample = self.upkeep.samples.get(process)
        stats = (sample.stats if sample else None) or {}
        measured: dict = {"sampled": sample is not None}
        if sample is not None and sample.rss is not None:
            measured.update(rss=sample.rss, uss=sample.uss, cpu=sample.cpu)
        elif resources and process.kind == "worker":
            measured.update(process.resources())
        return WorkerView(
            pid=process.pid, kind=process.kind, release=process.release.path,
            python=process.release.python, state=process.state,
            started_at=process.started_at, ready_at=process.ready_at,
            event_loop=process.event_loop,
            replacing=process in self.upkeep.replacing,
            current=process is self.spawner.preloader,
            counters=frozen({k: v for k, v in stats.items() if type(v) is int}),
            stats=frozen(stats), **measured)

    # --- asking workers -------------------------------------------------------------------
    def ask(self, call: str, timeout: float, pids=None) -> dict[int, dict | None]:
        """Ask every worker (those in `pids` if given) `call` over its channel, all at once;
        {pid: its checked reply, None if it did not answer in time}. Blocks up to `timeout`."""
        targets = [w for w in list(self.workers)
                   if w.pid is not None and (pids is None or w.pid in pids)]
        jobs = [gevent.spawn(w.call, call, timeout) for w in targets]
        gevent.joinall(jobs)
        return {w.pid: job.value for w, job in zip(targets, jobs)}

    def tell_all(self, call: str) -> None:
        """Send `call` to every worker without waiting for answers."""
        for worker in list(self.workers):
            worker.tell(call)

    # --- the one reconcile ----------------------------------------------------------------
    def wake(self) -> None:
        """Have the master's loop reconcile this pool soon."""
        self.notify(Wake(self))

    def reconcile(self) -> None:
        """Reap what is gone, then spawn the missing workers (not in BACKOFF, not while a
        restart or replacement holds the lock) or retire the extra ones. Called by the
        master's loop only; returns at once (spawning runs in its own greenlet)."""
        self._reap()
        self._answer_while_down()
        if self.stopping or self.lock.locked():
            return
        self.spawner.stop_idle_preloaders(self.workers)
        serving = self.serving()
        missing = self.wanted - len(serving)
        if missing < 0:
            for worker in sorted(serving, key=lambda w: w.started_at)[:-missing]:
                worker.retire()
        elif missing > 0 and self.spawning.may_spawn(self.clock()):
            gevent.spawn(self._fill, missing)

    def _reap(self) -> None:
        """Forget every process that is gone, logging those that were not asked to stop."""
        self.spawner.reap()
        for worker in [w for w in self.workers if w.state in (states.EXITED, states.FAILED)
                       and (w.exited.is_set() or w.pid is None)]:
            self.workers.remove(worker)
            self.upkeep.forget(worker)
            if worker.state == states.EXITED and not worker.retired:
                self.log.warning("%s: worker %s exited unexpectedly (%s); respawning",
                                 self.app.name, worker.pid, exit_reason(worker.returncode))

    def _fill(self, count: int) -> None:
        with self.lock:
            if self.stopping:
                return
            try:
                release = self.spawner.resolve()
            except releases.ReleaseError as exc:
                self.boot_failed(str(exc))
                return
            for _ in range(count):
                worker, ok = self.spawn_ready(release)
                if not ok:
                    self.boot_failed(worker.failure_text())
                    return
                self.last_error = None

    def spawn_ready(self, release: releases.Release) -> tuple[Process, bool]:
        """A new worker of `release`, one of `workers` from the start, waited for (spawner).
        Callers hold the lock."""
        worker, ok = self.spawner.spawn_ready(release, self.workers.append)
        if ok:
            self.spawning = self.spawning.succeeded()     # BACKOFF -> RUNNING
            self.fallback.stop()
            return worker, ok
        self.log.error("%s", worker.failure_text())
        if worker.kind == "worker" and worker.health_error:
            self.health_failures += 1
        if worker.pid is None and worker in self.workers:
            self.workers.remove(worker)     # never started: no exit will come to reap it
        return worker, ok

    def boot_failed(self, error: str) -> None:
        """A spawn failed: RUNNING/BACKOFF -> BACKOFF, and answer clients while down."""
        self.last_error = error
        self.spawning = self.spawning.failed(self.clock())
        self.log.error("%s: could not start a worker; next try in %.0f s", self.app.name,
                       self.spawning.delay)
        self._answer_while_down()

    def _answer_while_down(self) -> None:
        """The master answers 503 (an error page in development) while the app's last boot
        failed and no worker is ready; workers take the listeners back once one is ready."""
        down = (self.last_error is not None and not self.stopping
                and not any(w.state == states.READY for w in self.workers))
        if down:
            self.fallback.start()
        else:
            self.fallback.stop()

    # --- what the master asks -------------------------------------------------------------
    def restart(self, progress=None) -> RestartOutcome:
        """Rolling restart onto the release the root points to now (railcar.rollout).
        Blocks until done; `progress(text)`, if given, hears of the canary as it goes."""
        return Rollout(self, progress).run()

    def restart_txt_touched(self) -> bool:
        """True once each time APP_ROOT/tmp/restart.txt gets a new mtime."""
        return self.restart_txt.touched()

    def supervise(self) -> None:
        """Each tick: one round of sampling, limits and sizing (railcar.limits)."""
        self.upkeep.round()

    def stop(self, graceful: bool, timeout: float) -> None:
        """Retire (graceful) or quit every worker; SIGKILL what is left after `timeout`."""
        self.stopping = True
        self.fallback.stop()
        if graceful:
            timeout = max(timeout, self.retire_timeout())
        processes = list(self.workers) + list(self.spawner.preloaders)
        for process in processes:
            if graceful:
                process.retire()
            else:
                process.retired = True
                process.kill(signal.SIGQUIT)
        gevent.joinall([gevent.spawn(p.exited.wait) for p in processes], timeout=timeout)
        for process in processes:
            if not process.exited.is_set():
                self.log.warning("%s: worker %s did not stop in time; killing it",
                                 self.app.name, process.pid)
                process.kill(signal.SIGKILL)
                process.exited.wait(5)
