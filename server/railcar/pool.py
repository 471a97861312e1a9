"""The workers of one app: keep the wanted number serving, roll them over to a new release.

Runs in the master (gevent). Every spawn goes through `self.lock`, so a rolling restart, a
crash respawn and a replacement never interleave. `manage_workers` is the one place that
reconciles the actual worker set with the wanted one; `restart` is the one place that changes
release; `replace_worker` is the one way a worker over a limit is swapped for a new one.
`supervise` (each tick) samples the workers, replaces those over a limit and sizes a dynamic
pool between `workers` and `max_workers`.

Spawn methods (the app's `spawn_method`): `direct` starts each worker as `python -m
railcar.worker`; `smart` keeps one preloader per release (the app imported once) and has it
fork the workers. `self.preloader` is the one new workers fork from; a rolling restart starts
a fresh one from the root, and a preloader that is not current is stopped once no worker
forked from it is left.
"""

from __future__ import annotations

import collections
import os
import signal
import time
from dataclasses import dataclass

import gevent
import gevent.lock

from . import canary as canaries
from . import release as releases
from . import states
from . import supervision
from .config import AppConfig
from .settings import ConfigError
from .fallback import BootErrorResponder
from .process import WorkerProcess
from .snapshot import PoolSnapshot, WorkerView, frozen

CANARY_POLL = 0.5      # seconds between looks at the canary's counters


@dataclass
class RestartOutcome:
    ok: bool
    error: str | None = None
    release: str | None = None
    started_at: float = 0.0
    finished_at: float = 0.0
    canary: canaries.Canary | None = None

    def as_dict(self) -> dict:
        return {"ok": self.ok, "error": self.error, "release": self.release,
                "started_at": self.started_at, "finished_at": self.finished_at,
                "canary": self.canary.as_dict() if self.canary else None}


class AppPool:
    def __init__(self, app: AppConfig, listeners, graceful_timeout: float, log):
        self.app = app
        self.listeners = listeners
        self.graceful_timeout = graceful_timeout
        self.log = log
        self.workers: list[WorkerProcess] = []
        self.lock = gevent.lock.Semaphore()
        self.stopping = False
        self.spawning = states.Spawning()   # RUNNING, or BACKOFF after failed spawns
        self.last_error: str | None = None
        self.last_restart: RestartOutcome | None = None
        self.restart_txt_mtime = self._restart_txt_mtime()
        self.wanted = app.workers           # grows up to max_workers under load
        self.samples: dict[WorkerProcess, supervision.Sample] = {}
        self.counters = supervision.AppCounters()
        self.replacing: set[WorkerProcess] = set()
        self.warned_boot_memory = False
        self.replacements: collections.Counter[str] = collections.Counter()
        self.last_replacement: dict | None = None
        self.restarts: collections.Counter[str] = collections.Counter()   # "ok" / "failed"
        self.canary: canaries.Canary | None = None    # the one watched now, or the last one
        self.canaries: collections.Counter[str] = collections.Counter()  # "passed"/"failed"
        self.health_failures = 0        # new workers that failed their health check
        self.supervisor: gevent.Greenlet | None = None
        self.preloaders: list[WorkerProcess] = []     # alive (smart spawning)
        self.preloader: WorkerProcess | None = None  # the one new workers fork from
        self.started = False    # on_starting ran (railcar.hooks): once, before any spawn
        self.fallback = BootErrorResponder(
            app.name, listeners, log, self.snapshot,
            app.supervision.development)

    # --- views ----------------------------------------------------------------------------
    def serving(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.state in states.SERVING]

    def retire_timeout(self) -> float:
        """How long a retiring worker may take: graceful_timeout for its requests, and
        long_lived_timeout plus the close of its WebSockets and streams (http/server.py)."""
        return max(self.graceful_timeout, self.app.limits.get("long_lived_timeout", 0.0) + 2)

    def current_release(self) -> str | None:
        ready = [w for w in self.workers if w.state == states.READY]
        return ready[-1].release.path if ready else None

    def snapshot(self, resources: bool = False) -> PoolSnapshot:
        """An immutable view of the app and its processes now (railcar.snapshot).

        Per worker, RSS/USS/CPU come from the master's last sample; with `resources`, a
        worker not sampled yet is read now (psutil) instead of showing none."""
        canary = self.canary.as_dict() if self.canary else None
        return PoolSnapshot(
            name=self.app.name, root=self.app.root, binds=tuple(self.app.binds),
            release=self.current_release(), wanted=self.wanted, min_workers=self.app.workers,
            max_workers=max(self.app.supervision.max_workers, self.app.workers),
            error=self.last_error, spawning=self.spawning,
            last_restart=frozen(self.last_restart.as_dict()) if self.last_restart else None,
            restarts=frozen(self.restarts), replacements=frozen(self.replacements),
            last_replacement=frozen(self.last_replacement) if self.last_replacement else None,
            canary=frozen(canary) if canary else None, canaries=frozen(self.canaries),
            health=frozen(self.app.health) if self.app.health else None,
            health_failures=self.health_failures, canary_settings=frozen(self.app.canary),
            spawn_method=self.app.supervision.spawn_method, stopping=self.stopping,
            workers=tuple(self._view(w, resources) for w in list(self.workers)),
            preloaders=tuple(self._view(p, False) for p in list(self.preloaders)),
            totals=self.counters.totals())

    def _view(self, process: WorkerProcess, resources: bool) -> WorkerView:
        sample = self.samples.get(process)
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
            replacing=process in self.replacing, current=process is self.preloader,
            counters=frozen({k: v for k, v in stats.items() if type(v) is int}),
            stats=frozen(stats), **measured)

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

    # --- spawning -------------------------------------------------------------------------
    def _worker_spec(self) -> dict:
        return {"app": self.app.name, "limits": self.app.limits,
                "access_log": self.app.access_log,
                "access_log_format": self.app.access_log_format,
                "graceful_timeout": self.graceful_timeout, "health": self.app.health,
                "hooks_module": self.app.hooks_module, "gc_freeze": self.app.gc_freeze,
                "tls": self.app.tls}

    def smart(self) -> bool:
        return self.app.supervision.smart

    def spawn_worker(self, release: releases.Release) -> WorkerProcess:
        """Start one worker of `release`; with smart spawning `self.preloader` (READY, of
        that release: see _spawn_ready) forks it."""
        worker = WorkerProcess(self.app.name, release, self.log, self._on_worker_exit)
        self.workers.append(worker)
        try:
            if self.smart():
                worker.start_forked(self.preloader)
            else:
                worker.start(self.listeners, self._worker_spec(), release.env,
                             self.app.run_as)
        except OSError:
            pass    # state is FAILED with the reason in boot_error
        else:
            self.log.info("%s: spawned worker %s (release %s)", self.app.name, worker.pid,
                          release.path)
        return worker

    def _spawn_ready(self, release: releases.Release) -> tuple[WorkerProcess, bool]:
        """A new worker of `release`, waited for. With smart spawning, a preloader of that
        release is started first if there is none; if it fails to boot, it is returned as
        the failed worker (its failure_text tells the app's error)."""
        if self.smart():
            preloader, ok = self._preloader_ready(release)
            if not ok:
                self.log.error("%s", preloader.failure_text())
                return preloader, False
        worker = self.spawn_worker(release)
        ok = worker.state != states.FAILED and \
            worker.wait_ready(self.app.boot_timeout, self.app.health_timeout)
        if ok:
            self.fallback.stop()
        else:
            self.log.error("%s", worker.failure_text())
            if worker.health_error:
                self.health_failures += 1
            if worker in self.workers and worker.popen is None:
                self.workers.remove(worker)
        return worker, ok

    def _preloader_ready(self, release: releases.Release) -> tuple[WorkerProcess, bool]:
        current = self.preloader
        if current is not None and current.release == release and \
                current.state == states.READY:
            return current, True
        preloader = WorkerProcess(self.app.name, release, self.log, self._on_preloader_exit,
                                  kind="preloader")
        self.preloaders.append(preloader)
        began = time.monotonic()
        try:
            preloader.start(self.listeners, self._worker_spec(), release.env, self.app.run_as)
        except OSError:
            self.preloaders.remove(preloader)
            return preloader, False
        if not preloader.wait_ready(self.app.boot_timeout):
            return preloader, False
        self.log.info("%s: preloader %s ready in %.2f s (release %s)", self.app.name,
                      preloader.pid, time.monotonic() - began, release.path)
        self.preloader = preloader
        return preloader, True

    def _on_preloader_exit(self, preloader: WorkerProcess) -> None:
        if preloader in self.preloaders:
            self.preloaders.remove(preloader)
        if self.preloader is preloader:
            self.preloader = None
        if preloader.state == states.EXITED and not preloader.retired:
            self.log.warning("%s: preloader %s exited unexpectedly (%s)", self.app.name,
                             preloader.pid, exit_reason(preloader.returncode))

    def _stop_idle_preloaders(self) -> None:
        """Stop every preloader but the current one that no live worker was forked from."""
        in_use = {id(w.preloader) for w in self.workers}
        for preloader in list(self.preloaders):
            if preloader is not self.preloader and id(preloader) not in in_use \
                    and preloader.state == states.READY:
                self.log.info("%s: stopping preloader %s (release %s)", self.app.name,
                              preloader.pid, preloader.release.path)
                preloader.retire()

    def _resolve(self) -> releases.Release:
        """The release to spawn now, with the app's environment (the env file read now);
        its certificate and key (if any) must load as they are now."""
        try:
            self.app.check_tls()
            env = self.app.environment()
        except ConfigError as exc:
            raise releases.ReleaseError(str(exc)) from None
        release = releases.resolve(self.app.root, self.app.module, self.app.python, env,
                                   self.app.run_as)
        if not self.started:
            self._on_starting(release)
        return release

    def _on_starting(self, release: releases.Release) -> None:
        """The app's on_starting hook, once before its first worker: in a one-shot process
        of the app's (release.run_on_starting). Raises ReleaseError if it fails, which fails
        the spawn like a boot failure (so it runs again before the next try)."""
        if self.app.hooks_module:
            server = {"app": self.app.name, "workers": self.app.workers,
                      "binds": list(self.app.binds), "master_pid": os.getpid()}
            output = releases.run_on_starting(release, self.app.hooks_module, server,
                                              self.app.run_as, self.app.boot_timeout)
            for line in output.splitlines():
                self.log.info("%s: on_starting: %s", self.app.name, line)
        self.started = True

    def manage_workers(self) -> None:
        """Reconcile: spawn the missing workers (with backoff after failures), retire extras."""
        self._answer_while_down()
        if self.stopping or self.lock.locked():
            return
        self._stop_idle_preloaders()
        serving = self.serving()
        missing = self.wanted - len(serving)
        if missing < 0:
            for worker in sorted(serving, key=lambda w: w.started_at)[:-missing]:
                worker.retire()
        elif missing > 0 and self.spawning.may_spawn(time.monotonic()):
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
                self.spawning = self.spawning.succeeded()
                self.last_error = None

    def _boot_failed(self, error: str) -> None:
        self.last_error = error
        self.spawning = self.spawning.failed(time.monotonic())     # -> BACKOFF
        self.log.error("%s: could not start a worker; next try in %.0f s", self.app.name,
                       self.spawning.delay)
        self._answer_while_down()

    def _on_worker_exit(self, worker: WorkerProcess) -> None:
        if worker in self.workers:
            self.workers.remove(worker)
        self.samples.pop(worker, None)
        self.counters.forget(worker.pid)
        if worker.state == states.EXITED and not worker.retired:
            self.log.warning("%s: worker %s exited unexpectedly (%s); respawning",
                             self.app.name, worker.pid, exit_reason(worker.returncode))
        self.manage_workers()

    # --- rolling restart ------------------------------------------------------------------
    def restart(self, progress=None) -> RestartOutcome:
        """Replace every serving worker with one of the release the root points to now.

        For each old worker: start a new one, wait until it is ready, retire the old one.
        If a new worker fails to boot, the restart is aborted: new workers are retired and
        old ones (same pids) keep serving; any already retired are replaced from their
        release. With a canary (canary_duration), the first new worker first serves beside
        all the old ones for that long; if it fails, the restart aborts the same way.
        Returns once every old worker has exited. `progress(text)`, if given, hears of the
        canary as it goes.
        """
        outcome = RestartOutcome(ok=False, started_at=time.time())
        with self.lock:
            outcome = self._restart_locked(outcome, _quiet(progress))
        outcome.finished_at = time.time()
        self.last_restart = outcome
        self.restarts["ok" if outcome.ok else "failed"] += 1
        self.manage_workers()
        return outcome

    def _restart_locked(self, outcome: RestartOutcome, progress) -> RestartOutcome:
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
        previous_preloader, self.preloader = self.preloader, None    # a fresh one: new code
        for index in range(max(self.wanted, len(old))):
            worker, ok = self._spawn_ready(release)
            error = None if ok else worker.failure_text()
            if ok:
                fresh.append(worker)
                if index == 0 and old and self.app.canary.get("canary_duration"):
                    outcome.canary = canary = self._watch_canary(worker, release, len(old),
                                                                 progress)
                    if canary.state != canaries.PASSED:
                        error = (f"canary failed: {canary.reason}; the canary worker "
                                 f"{canary.pid} is retired")
            if error:
                outcome.error = self.last_error = error
                if previous_preloader is not None and previous_preloader.state == states.READY:
                    self.preloader = previous_preloader
                self._abort(fresh, retired)
                return outcome
            if index < len(old):
                old[index].retire()
                retired.append(old[index])
        self._wait_exited(retired)
        self.spawning, self.last_error = self.spawning.succeeded(), None
        outcome.ok = True
        self.log.info("%s: rolling restart done, serving %s", self.app.name, release.path)
        return outcome

    def _watch_canary(self, worker: WorkerProcess, release: releases.Release, beside: int,
                      progress) -> canaries.Canary:
        """Let `worker` (READY) serve beside the `beside` old ones for canary_duration, its
        counters sampled every CANARY_POLL seconds, then judge it (canary.Canary.finish)."""
        canary = canaries.Canary.from_settings(self.app.canary, worker.pid, release.path,
                                               beside)
        self.canary = canary
        message = (f"{self.app.name}: canary worker {worker.pid} (release {release.path}) "
                   f"serves beside {beside} old worker(s) for {canary.duration:g} s")
        self.log.info("%s", message)
        progress(message)
        deadline = time.monotonic() + canary.duration
        while worker.state == states.READY and not self.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            gevent.sleep(min(CANARY_POLL, left))
            canary.record(worker.call("stats", timeout=1.0))
        if worker.state != states.READY or self.stopping:
            why = ("the server is stopping" if self.stopping
                   else f"it exited: {exit_reason(worker.returncode)}")
            canary.finish(cut_short=why)
        else:
            canary.record(worker.call("stats", timeout=1.0))
            canary.finish()
        self.canaries[canary.state] += 1
        message = f"{self.app.name}: canary {canary.state}: {canary.reason}"
        (self.log.info if canary.state == canaries.PASSED else self.log.error)("%s", message)
        progress(message)
        return canary

    def _abort(self, fresh: list[WorkerProcess], retired: list[WorkerProcess]) -> None:
        self.log.error("%s: restart aborted; the previous workers keep serving", self.app.name)
        for old in retired:
            self._spawn_ready(old.release)
        for worker in fresh:
            worker.retire()

    def _wait_exited(self, workers: list[WorkerProcess]) -> None:
        deadline = self.retire_timeout() + 5
        gevent.joinall([gevent.spawn(w.exited.wait) for w in workers], timeout=deadline)
        for worker in workers:
            if not worker.exited.is_set():
                worker.kill(signal.SIGKILL)

    def _answer_while_down(self) -> None:
        """The master answers 503 (an error page in development) while the app's last boot
        failed and no worker is ready; workers take the listeners back once one is ready."""
        down = (self.last_error is not None and not self.stopping
                and not any(w.state == states.READY for w in self.workers))
        if down:
            self.fallback.start()
        else:
            self.fallback.stop()

    # --- limits and the dynamic pool (each tick) ------------------------------------------
    def supervise(self) -> None:
        """Start one round of sampling and decisions unless the previous one still runs."""
        if self.stopping or (self.supervisor is not None and not self.supervisor.dead):
            return
        self.supervisor = gevent.spawn(self._supervise)

    def _supervise(self) -> None:
        watched = [w for w in self.workers if w.state in (states.READY, states.RETIRING)]
        answers = [gevent.spawn(w.call, "stats", 1.0) for w in watched]
        gevent.joinall(answers)
        now = time.monotonic()
        for worker, answer in zip(watched, answers):
            sample = self.samples.get(worker)
            if sample is None:
                sample = self.samples[worker] = supervision.Sample(
                    first_seen=now, active_at=now,
                    request_budget=supervision.request_budget(self.app.supervision))
            sample.record(answer.value, worker.resources(supervision.uss_due(sample, now)), now)
            if answer.value:
                self.counters.add(worker.pid, answer.value)
        if self.stopping:
            return
        for worker in watched:
            if worker.state == states.READY and worker not in self.replacing:
                reason = supervision.limit_exceeded(
                    self.samples[worker], self.app.supervision,
                    self.app.limits["max_request_time"], now)
                if reason:
                    self.replace_worker(worker, reason)
                elif not self.warned_boot_memory:
                    self._warn_boot_memory(worker)
        self._resize(now)

    def _warn_boot_memory(self, worker: WorkerProcess) -> None:
        """Once per app: a worker is over memory_limit before it served a request."""
        over = supervision.memory_over_at_boot(self.samples[worker], self.app.supervision)
        if over:
            self.warned_boot_memory = True
            self.log.warning("%s: worker %s is over memory_limit before serving any request "
                             "(%s); the app needs more than that to boot, so it is not "
                             "replaced until it has served one", self.app.name, worker.pid,
                             over.detail)

    def replace_worker(self, worker: WorkerProcess, reason: supervision.Replacement) -> None:
        """Swap `worker` for a new one of the current release, without dropping a request:
        the new worker is started and ready before the old one retires gracefully. If the new
        one fails to boot, the old one keeps serving (and is tried again after the backoff).
        Returns at once; the work runs in its own greenlet, under the pool lock."""
        if worker in self.replacing or worker.state != states.READY:
            return
        self.replacing.add(worker)
        gevent.spawn(self._replace, worker, reason)

    def _replace(self, worker: WorkerProcess, reason: supervision.Replacement) -> None:
        try:
            if not self.spawning.may_spawn(time.monotonic()):
                return
            with self.lock:
                if self.stopping or worker.state != states.READY:
                    return
                self.log.warning("%s: replacing worker %s: %s", self.app.name, worker.pid,
                                 reason)
                if reason.unresponsive:
                    worker.kill(signal.SIGUSR2)     # its stacks go to the log
                try:
                    fresh, ok = self._spawn_ready(self._resolve())
                except releases.ReleaseError as exc:
                    fresh, ok = None, False
                    self.last_error = str(exc)
                if not ok:
                    self._boot_failed(fresh.failure_text() if fresh else self.last_error)
                    return
                worker.retire()
                self.replacements[reason.limit.value] += 1
                self.last_replacement = {"pid": worker.pid, "new_pid": fresh.pid,
                                         "reason": reason, "at": time.time()}
            self._wait_exited([worker])
        finally:
            self.replacing.discard(worker)

    def _resize(self, now: float) -> None:
        """Dynamic pool: one more worker when every worker has a request in flight (up to
        max_workers); one fewer when a worker has been idle for idle_timeout (down to
        `workers`). One step per tick, and none while a worker boots."""
        policy = self.app.supervision
        maximum = policy.max_workers
        if maximum <= self.app.workers or self.lock.locked():
            return
        ready = [w for w in self.workers if w.state == states.READY and w in self.samples]
        if not ready or len(ready) != len(self.serving()):
            return
        samples = [self.samples[w] for w in ready]
        if all((s.stats or {}).get("in_flight") for s in samples):
            if self.wanted < maximum:
                self.wanted = max(self.wanted, len(ready)) + 1
                self.log.info("%s: all %d workers busy; growing the pool to %d",
                              self.app.name, len(ready), self.wanted)
            return
        idle = [w for w, s in zip(ready, samples)
                if now - s.active_at >= policy.idle_timeout]
        if idle and len(ready) > self.app.workers:
            worker = max(idle, key=lambda w: w.started_at)
            self.wanted = len(ready) - 1
            self.log.info("%s: worker %s idle for %.0f s; shrinking the pool to %d",
                          self.app.name, worker.pid, now - self.samples[worker].active_at,
                          self.wanted)
            worker.retire()

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
        self.fallback.stop()
        if graceful:
            timeout = max(timeout, self.retire_timeout())
        workers = list(self.workers) + list(self.preloaders)
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


def _quiet(progress):
    """`progress` that never fails the restart (the client may have gone away)."""
    def say(text: str) -> None:
        if progress is not None:
            try:
                progress(text)
            except OSError:
                pass
    return say


def exit_reason(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit status {returncode}"
