"""The pool's one reconcile: respawning, BACKOFF as a state, the snapshot readers get."""

import pytest
from .fakes import FAIL, NO_START, READY, Harness

from railcar import states


def test_first_reconcile_spawns_the_wanted_workers():
    h = Harness(workers=3).start()
    assert len(h.ready()) == 3
    assert h.pool.spawning == states.Spawning()
    assert h.pool.last_error is None


def test_crashes_reach_the_pool_through_the_queue_and_one_reconcile_respawns():
    h = Harness(workers=3).start()
    before = h.reconciles
    crashed = h.ready()[:2]
    for worker in crashed:
        worker.exit(1)          # both exits queued before the loop turns
    assert len(h.pool.workers) == 3, "an exit does not touch the pool by itself"
    h.step()
    assert h.reconciles == before + 1, "two exits, one reconcile"
    assert not set(crashed) & set(h.pool.workers), "the gone workers were reaped"
    h.until(lambda: len(h.ready()) == 3, what="respawned workers")
    assert not {w.pid for w in crashed} & h.pids()


def test_failed_boots_put_the_app_in_backoff_with_growing_delays():
    h = Harness(workers=1)
    h.factory.outcomes["A"] = FAIL
    h.reconcile()
    h.until(lambda: h.pool.spawning.state == states.BACKOFF, what="BACKOFF")
    assert h.pool.spawning.failures == 1
    assert h.pool.spawning.retry_at == h.clock.now + 1.0
    assert "ImportError: broken" in h.pool.last_error
    starts = len(h.factory.processes)

    h.clock.advance(0.5)
    h.tick()
    assert len(h.factory.processes) == starts, "nothing is spawned before retry_at"

    h.clock.advance(0.5)
    h.reconcile()
    h.until(lambda: h.pool.spawning.failures == 2, what="the second failure")
    assert h.pool.spawning.delay == 2.0
    assert h.pool.snapshot().state == "failed"

    h.factory.outcomes["A"] = READY     # the release is fixed
    h.clock.advance(2.0)
    h.reconcile()
    h.until(lambda: len(h.ready()) == 1, what="a worker once the release is fixed")
    assert h.pool.spawning == states.Spawning()     # BACKOFF -> RUNNING
    assert h.pool.last_error is None


def test_backoff_is_capped():
    spawning = states.Spawning()
    for _ in range(20):
        spawning = spawning.failed(now=0.0)
    assert spawning.state == states.BACKOFF and spawning.delay == states.MAX_BACKOFF
    assert spawning.may_spawn(states.MAX_BACKOFF) and not spawning.may_spawn(1.0)
    assert spawning.succeeded() == states.Spawning()
    with pytest.raises(AttributeError):
        spawning.failures = 0


def test_a_worker_that_cannot_even_start_is_not_left_in_the_pool():
    h = Harness(workers=1)
    h.factory.outcomes["A"] = NO_START
    h.reconcile()
    h.until(lambda: h.pool.spawning.state == states.BACKOFF, what="BACKOFF")
    assert h.pool.workers == []
    assert "ENOMEM" in h.pool.last_error


def test_a_release_that_cannot_be_resolved_is_a_failed_spawn():
    h = Harness(workers=1)
    h.factory.resolve_error = "app root /srv/app/current does not lead to a directory"
    h.reconcile()
    h.until(lambda: h.pool.spawning.state == states.BACKOFF, what="BACKOFF")
    assert h.pool.snapshot().error == h.factory.resolve_error


def test_extra_workers_are_retired_oldest_first():
    h = Harness(workers=3).start()
    oldest = min(h.ready(), key=lambda w: w.started_at)
    h.pool.wanted = 2
    h.reconcile()
    assert oldest.state in (states.RETIRING, states.EXITED)
    h.until(lambda: len(h.pool.workers) == 2, what="the extra worker gone")


def test_snapshot_is_immutable_and_carries_every_counter_a_worker_reports():
    h = Harness(workers=2).start()
    worker = h.ready()[0]
    worker.stats.update(requests=7, in_flight=1, long_lived=3)
    h.tick()
    view = h.pool.snapshot()
    row = next(w for w in view.workers if w.pid == worker.pid)
    assert row.counters["long_lived"] == 3 and row.counters["requests"] == 7
    assert row.state == states.READY and row.sampled and row.rss > 0
    assert view.totals.requests == 7 and view.state == "serving" and view.release
    with pytest.raises(TypeError):
        row.counters["requests"] = 0
    with pytest.raises(AttributeError):
        view.wanted = 5
    worker.stats.update(requests=9)
    assert row.counters["requests"] == 7, "a snapshot does not change after it is taken"


def test_on_starting_runs_once_before_the_first_worker():
    h = Harness(workers=2)
    h.app.hooks_module = "hooks"
    h.start()
    starts = [i for i, e in enumerate(h.factory.timeline) if e[0] == "start"]
    assert h.factory.timeline.index(("on_starting", "hooks")) < starts[0]
    h.ready()[0].exit(1)
    h.until(lambda: len(h.ready()) == 2, what="the respawn")
    assert h.factory.timeline.count(("on_starting", "hooks")) == 1
