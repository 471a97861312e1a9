"""Each tick, for one app: sample every worker, replace those over a limit, size a dynamic pool.

Runs in the master (gevent). `Upkeep.round()` starts one round in its own greenlet unless the
previous one still runs (a worker slow to answer never holds up the master's loop). A round:
- asks every READY or RETIRING worker for its `stats` (the pool's `ask`) and reads its RSS/CPU (USS every
  supervision.USS_INTERVAL seconds), keeping the latest in `samples` and adding its counters
  to the app's totals (`counters`, which only grow);
- replaces each READY worker over a limit (max_requests, memory_limit, max_request_time:
  supervision.limit_exceeded), through rollout.replace in a greenlet of its own;
- sizes a dynamic pool (`resize`): one more worker when every worker has a request in flight
  (up to max_workers), one fewer when one was idle for idle_timeout (down to `workers`).
What a round decides goes through the pool (its `wanted`, its workers' retire); the spawns
themselves are the pool's reconcile.
"""

from __future__ import annotations

import gevent

from . import rollout, states, supervision


class Upkeep:
    def __init__(self, pool):
        self.pool = pool
        self.samples: dict = {}                 # worker -> supervision.Sample
        self.counters = supervision.AppCounters()
        self.replacing: set = set()             # workers whose replacement is under way
        self.warned_boot_memory = False
        self.greenlet: gevent.Greenlet | None = None

    def round(self) -> None:
        """Start one round unless the previous one still runs or the pool is stopping."""
        if self.pool.stopping or (self.greenlet is not None and not self.greenlet.dead):
            return
        self.greenlet = gevent.spawn(self.run)

    def forget(self, worker) -> None:
        """The worker is gone: drop its sample (its counts stay in the totals)."""
        self.samples.pop(worker, None)
        self.counters.forget(worker.pid)

    def run(self) -> None:
        pool = self.pool
        watched = [w for w in pool.workers if w.state in (states.READY, states.RETIRING)]
        answers = pool.ask("stats", 1.0, {w.pid for w in watched})
        now = pool.clock()
        for worker in watched:
            stats = answers.get(worker.pid)
            sample = self.samples.get(worker)
            if sample is None:
                sample = self.samples[worker] = supervision.Sample(
                    first_seen=now, active_at=now,
                    request_budget=supervision.request_budget(pool.app.supervision))
            sample.record(stats, worker.resources(supervision.uss_due(sample, now)), now)
            if stats:
                self.counters.add(worker.pid, stats)
        if pool.stopping:
            return
        for worker in watched:
            if worker.state == states.READY and worker not in self.replacing:
                reason = supervision.limit_exceeded(
                    self.samples[worker], pool.app.supervision,
                    pool.app.limits["max_request_time"], now)
                if reason:
                    self.replace(worker, reason)
                elif not self.warned_boot_memory:
                    self._warn_boot_memory(worker)
        self.resize(now)

    def replace(self, worker, reason: supervision.Replacement) -> None:
        """Swap `worker` for a new one (rollout.replace) in a greenlet of its own, unless its
        replacement is under way already. Returns at once."""
        if worker in self.replacing or worker.state != states.READY:
            return
        self.replacing.add(worker)
        gevent.spawn(self._replace, worker, reason)

    def _replace(self, worker, reason: supervision.Replacement) -> None:
        try:
            rollout.replace(self.pool, worker, reason)
        finally:
            self.replacing.discard(worker)

    def _warn_boot_memory(self, worker) -> None:
        """Once per app: a worker is over memory_limit before it served a request."""
        pool = self.pool
        over = supervision.memory_over_at_boot(self.samples[worker], pool.app.supervision)
        if over:
            self.warned_boot_memory = True
            pool.log.warning("%s: worker %s is over memory_limit before serving any request "
                             "(%s); the app needs more than that to boot, so it is not "
                             "replaced until it has served one", pool.app.name, worker.pid,
                             over.detail)

    def resize(self, now: float) -> None:
        """Dynamic pool: one step per tick, and none while a worker boots (the lock is
        held) or the samples do not cover every serving worker."""
        pool = self.pool
        policy = pool.app.supervision
        maximum = policy.max_workers
        if maximum <= pool.app.workers or pool.lock.locked():
            return
        ready = [w for w in pool.workers if w.state == states.READY and w in self.samples]
        if not ready or len(ready) != len(pool.serving()):
            return
        samples = [self.samples[w] for w in ready]
        if all((s.stats or {}).get("in_flight") for s in samples):
            if pool.wanted < maximum:
                pool.wanted = max(pool.wanted, len(ready)) + 1
                pool.log.info("%s: all %d workers busy; growing the pool to %d",
                              pool.app.name, len(ready), pool.wanted)
                pool.wake()
            return
        idle = [w for w, s in zip(ready, samples)
                if now - s.active_at >= policy.idle_timeout]
        if idle and len(ready) > pool.app.workers:
            worker = max(idle, key=lambda w: w.started_at)
            pool.wanted = len(ready) - 1
            pool.log.info("%s: worker %s idle for %.0f s; shrinking the pool to %d",
                          pool.app.name, worker.pid, now - self.samples[worker].active_at,
                          pool.wanted)
            worker.retire()
