"""Every way serving workers are swapped for new ones: the rolling restart (all of them) and
the replacement of one worker over a limit; and what starts a restart from the app's side
(tmp/restart.txt).

Runs in the master (gevent), under the pool's lock, so a restart, a replacement and a
reconcile's spawns never interleave. The order is always: start the new worker, wait until it
is ready (booted, health check passed), then retire the old one, so no request is refused.

Rolling restart (`Rollout.run`): for each old worker, one new worker of the release the root
points to now, then the old one retires. If a new worker fails to boot, or the canary (the
first new worker, watched for canary_duration beside every old one) fails, the restart aborts:
new workers are retired, old ones (the same pids) keep serving, any already retired are
replaced from their own release, and new workers fork from the previous preloader again.

Replacement (`replace`): a new worker of the current release, ready, then the old one
retires; if the new one fails to boot, the old one keeps serving and the app goes to BACKOFF.
"""

from __future__ import annotations

import collections
import os
import signal
import time
from dataclasses import dataclass, field

import gevent

from . import canary as canaries
from . import release as releases
from . import states
from .spawner import exit_reason
from .supervision import Replacement

CANARY_POLL = 0.5      # seconds between looks at the canary's counters
TAKE_OVER_CALL = 1.0   # seconds a new worker has to acknowledge `take_over`
EXIT_MARGIN = 5.0      # seconds past graceful_timeout before a retiring worker is killed


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


@dataclass
class Record:
    """What the app's restarts and replacements came to, for status and metrics."""

    last_restart: RestartOutcome | None = None
    restarts: collections.Counter = field(default_factory=collections.Counter)  # ok/failed
    canary: canaries.Canary | None = None       # the one watched now, or the last one
    canaries: collections.Counter = field(default_factory=collections.Counter)  # verdicts
    replacements: collections.Counter = field(default_factory=collections.Counter)  # limit
    last_replacement: dict | None = None


class Rollout:
    """One rolling restart of `pool` (railcar.pool.AppPool). `progress(text)` hears of the
    canary as it goes."""

    def __init__(self, pool, progress):
        self.pool = pool
        self.log = pool.log
        self.name = pool.app.name
        self.progress = _quiet(progress)
        self.fresh: list = []       # new workers started so far
        self.retired: list = []     # old workers retired so far

    def run(self) -> RestartOutcome:
        """Returns once every old worker has exited (or the restart aborted)."""
        outcome = RestartOutcome(ok=False, started_at=time.time())
        with self.pool.lock:
            self._run_locked(outcome)
        outcome.finished_at = time.time()
        record = self.pool.record
        record.last_restart = outcome
        record.restarts["ok" if outcome.ok else "failed"] += 1
        self.pool.wake()
        return outcome

    def _run_locked(self, outcome: RestartOutcome) -> None:
        pool = self.pool
        try:
            release = pool.spawner.resolve()
        except releases.ReleaseError as exc:
            outcome.error = str(exc)
            return
        outcome.release = release.path
        old = pool.serving()
        self.log.info("%s: rolling restart of %d worker(s) onto %s", self.name, len(old),
                      release.path)
        previous_preloader = pool.spawner.fresh_preloader()
        for index in range(max(pool.wanted, len(old))):
            worker, ok = pool.spawn_ready(release)
            error = None if ok else worker.failure_text()
            if ok:
                self.fresh.append(worker)
                if index == 0 and old and pool.app.canary.get("canary_duration"):
                    outcome.canary = canary = self.watch_canary(worker, release, len(old))
                    if canary.state != canaries.PASSED:
                        error = (f"canary failed: {canary.reason}; the canary worker "
                                 f"{canary.pid} is retired")
            if error:
                outcome.error = pool.last_error = error
                pool.spawner.keep_preloader(previous_preloader)
                self.abort()
                return
            if index < len(old):
                hand_over(pool, old[index], worker)
                self.retired.append(old[index])
        wait_exited(self.retired, pool.retire_timeout())
        pool.last_error = None
        outcome.ok = True
        self.log.info("%s: rolling restart done, serving %s", self.name, release.path)

    def watch_canary(self, worker, release: releases.Release,
                     beside: int) -> canaries.Canary:
        """Let `worker` (READY) serve beside the `beside` old ones for canary_duration, its
        counters sampled every CANARY_POLL seconds, then judge it (canary.Canary.finish)."""
        pool = self.pool
        canary = canaries.Canary.from_settings(pool.app.canary, worker.pid, release.path,
                                               beside)
        pool.record.canary = canary
        message = (f"{self.name}: canary worker {worker.pid} (release {release.path}) "
                   f"serves beside {beside} old worker(s) for {canary.duration:g} s")
        self.log.info("%s", message)
        self.progress(message)
        deadline = time.monotonic() + canary.duration
        while worker.state == states.READY and not pool.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            gevent.sleep(min(CANARY_POLL, left))
            canary.record(worker.call("stats", timeout=1.0))
        if worker.state != states.READY or pool.stopping:
            why = ("the server is stopping" if pool.stopping
                   else f"it exited: {exit_reason(worker.returncode)}")
            canary.finish(cut_short=why)
        else:
            canary.record(worker.call("stats", timeout=1.0))
            canary.finish()
        pool.record.canaries[canary.state] += 1
        message = f"{self.name}: canary {canary.state}: {canary.reason}"
        (self.log.info if canary.state == canaries.PASSED else self.log.error)("%s", message)
        self.progress(message)
        return canary

    def abort(self) -> None:
        """Old workers keep serving: those retired already are replaced from their own
        release first, then the new ones retire."""
        self.log.error("%s: restart aborted; the previous workers keep serving", self.name)
        for old in self.retired:
            self.pool.spawn_ready(old.release)
        for worker in self.fresh:
            worker.retire()


def replace(pool, worker, reason: Replacement) -> None:
    """Swap `worker` (READY) for a new worker of the current release, under the pool's lock:
    the new one is ready before the old one retires. Nothing is started while the app is in
    BACKOFF; if the new one fails to boot, the old one keeps serving and the app goes to
    BACKOFF (it is tried again after the delay). Returns once the old worker has exited."""
    if not pool.spawning.may_spawn(pool.clock()):
        return
    with pool.lock:
        if pool.stopping or worker.state != states.READY:
            return
        pool.log.warning("%s: replacing worker %s: %s", pool.app.name, worker.pid, reason)
        if reason.unresponsive:
            worker.kill(signal.SIGUSR2)     # its stacks go to the log
        try:
            fresh, ok = pool.spawn_ready(pool.spawner.resolve())
            error = None if ok else fresh.failure_text()
        except releases.ReleaseError as exc:
            fresh, ok, error = None, False, str(exc)
        if not ok:
            pool.boot_failed(error)
            return
        hand_over(pool, worker, fresh, ask=not reason.unresponsive)
        pool.record.replacements[reason.limit.value] += 1
        pool.record.last_replacement = {"pid": worker.pid, "new_pid": fresh.pid,
                                        "reason": str(reason), "at": time.time()}
    wait_exited([worker], pool.retire_timeout())


def hand_over(pool, old, fresh, ask: bool = True) -> None:
    """Retire `old`, its clients going to `fresh` (READY): `fresh` is told first to accept
    as many reconnections as `old` has connections at once (`take_over`, see
    railcar.http.server.HTTPServer.take_over) rather than defer them to idler workers, of
    which there are none under load: each of those clients would wait up to the accept
    deferral (50 ms) of a busy worker. The count is asked of `old` now, or (not `ask`: it
    does not answer) taken from its last sample."""
    stats = old.call("stats", timeout=TAKE_OVER_CALL) if ask else None
    if stats is None:
        sample = pool.upkeep.samples.get(old)
        stats = sample.stats if sample is not None else None
    fresh.call("take_over", timeout=TAKE_OVER_CALL,
               args={"connections": (stats or {}).get("connections")})
    old.retire()


def wait_exited(workers: list, retire_timeout: float) -> None:
    """Wait for retiring `workers` to exit; SIGKILL those still there after
    `retire_timeout` (pool.retire_timeout) and a margin."""
    gevent.joinall([gevent.spawn(w.exited.wait) for w in workers],
                   timeout=retire_timeout + EXIT_MARGIN)
    for worker in workers:
        if not worker.exited.is_set():
            worker.kill(signal.SIGKILL)


class RestartTxt:
    """APP_ROOT/tmp/restart.txt, Passenger's trigger: `touched()` is True once each time the
    file gets a new mtime."""

    def __init__(self, root: str):
        self.path = os.path.join(root, "tmp", "restart.txt")
        self.mtime = self._mtime()

    def _mtime(self) -> float | None:
        try:
            return os.stat(self.path).st_mtime
        except OSError:
            return None

    def touched(self) -> bool:
        mtime = self._mtime()
        touched = mtime is not None and mtime != self.mtime
        self.mtime = mtime
        return touched


def _quiet(progress):
    """`progress` that never fails the restart (the client may have gone away)."""
    def say(text: str) -> None:
        if progress is not None:
            try:
                progress(text)
            except OSError:
                pass
    return say
