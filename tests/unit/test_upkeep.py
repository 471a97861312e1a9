"""Each tick's upkeep on the fake factory: replacement over max_requests, memory_limit and
max_request_time (new worker ready before the old one retires), dynamic sizing."""

import signal

from .fakes import FAIL, MIB, Harness

from railcar import states


def replaced(h: Harness, worker) -> int:
    """Wait for `worker`'s replacement to be done; the new worker's pid."""
    h.until(lambda: worker.exited.is_set() and len(h.ready()) == h.app.workers,
            what=f"worker {worker.pid} replaced")
    new_pid = h.pool.record.last_replacement["new_pid"]
    assert h.index(("ready", new_pid)) < h.index(("retire", worker.pid)), \
        "the new worker is ready before the old one retires"
    return new_pid


def test_a_worker_over_max_requests_is_replaced():
    h = Harness(workers=2, max_requests=100).start()
    worker, other = h.ready()
    worker.stats["requests"] = 100
    other.stats["requests"] = 99
    h.tick()
    replaced(h, worker)
    assert other.state == states.READY
    view = h.pool.snapshot()
    assert dict(view.replacements) == {"max_requests": 1}
    assert view.last_replacement["reason"] == "max_requests: served 100 requests (limit 100)"
    assert signal.SIGUSR2 not in worker.signals


def test_a_replacement_takes_over_the_clients_of_the_worker_it_replaces():
    """The new worker is told, before the old one retires, how many connections it takes
    over (HTTPServer.take_over)."""
    h = Harness(workers=1, max_requests=100).start()
    [worker] = h.ready()
    worker.stats.update(requests=100, connections=12)
    h.tick()
    new_pid = replaced(h, worker)
    told = ("call", new_pid, "take_over", {"connections": 12})
    assert h.index(("ready", new_pid)) < h.index(told) < h.index(("retire", worker.pid))


def test_a_worker_over_memory_limit_is_replaced_once_it_served_a_request():
    h = Harness(workers=1, memory_limit=100).start()
    [worker] = h.ready()
    worker.memory["uss"] = 150 * MIB
    h.tick()
    h.tick()
    assert worker.state == states.READY, "over the limit from its boot on: kept"
    worker.stats["requests"] = 1
    h.tick()
    replaced(h, worker)
    assert h.pool.record.replacements["memory_limit"] == 1
    assert "USS 150 MiB is over 100 MiB" in h.pool.record.last_replacement["reason"]


def test_a_worker_past_max_request_time_is_replaced_as_it_asks():
    h = Harness(workers=1, max_request_time=30).start()
    [worker] = h.ready()
    worker.stats["replace"] = "max_request_time: GET /slow has run for 31 s"
    h.tick()
    replaced(h, worker)
    assert h.pool.record.replacements["max_request_time"] == 1
    assert signal.SIGUSR2 not in worker.signals


def test_a_worker_that_stops_answering_is_replaced_after_its_stacks_are_asked_for():
    h = Harness(workers=1, max_request_time=30).start()
    [worker] = h.ready()
    worker.stats["connections"] = 9
    h.tick()
    worker.answers = False
    h.clock.advance(29)
    h.tick()
    assert worker.state == states.READY
    h.clock.advance(2)
    h.tick()
    new_pid = replaced(h, worker)
    # The new worker takes over as many as the last stats it answered said.
    assert ("call", new_pid, "take_over", {"connections": 9}) in h.factory.timeline
    assert worker.signals[0] == signal.SIGUSR2
    assert "has not answered for 31 s" in h.pool.record.last_replacement["reason"]


def test_a_replacement_that_fails_to_boot_keeps_the_old_worker_and_backs_off():
    h = Harness(workers=1, max_requests=10).start()
    [worker] = h.ready()
    worker.stats["requests"] = 10
    h.factory.outcomes["A"] = FAIL
    h.tick()
    h.until(lambda: h.pool.spawning.state == states.BACKOFF, what="BACKOFF")
    h.until(lambda: not h.pool.upkeep.replacing, what="the replacement to give up")
    assert worker.state == states.READY and h.ready() == [worker]
    starts = len(h.factory.processes)
    h.tick()
    h.until(lambda: not h.pool.upkeep.replacing, what="the tick's replacement attempt")
    assert len(h.factory.processes) == starts, "no new try before retry_at"
    h.factory.outcomes["A"] = "ready"
    h.clock.advance(1.0)
    h.tick()
    replaced(h, worker)
    assert h.pool.spawning == states.Spawning(), "a worker booted: BACKOFF -> RUNNING"


def test_a_busy_pool_grows_one_worker_per_tick_up_to_max_workers():
    h = Harness(workers=1, max_workers=3).start()
    for step in (2, 3):
        for worker in h.ready():
            worker.stats["in_flight"] = 1
        h.tick()
        assert h.pool.wanted == step
        h.until(lambda: len(h.ready()) == step, what=f"{step} workers")
        h.factory.stats["A"] = {"in_flight": 1}
    for worker in h.ready():
        worker.stats["in_flight"] = 1
    h.tick()
    h.tick()
    assert h.pool.wanted == 3 and len(h.pool.workers) == 3


def test_an_idle_pool_shrinks_back_to_workers_newest_first():
    h = Harness(workers=1, max_workers=3, idle_timeout=60).start()
    h.factory.stats["A"] = {"in_flight": 1}
    for worker in h.ready():
        worker.stats["in_flight"] = 1
    h.tick()
    h.until(lambda: len(h.ready()) == 2, what="a second worker")
    first, second = sorted(h.ready(), key=lambda w: w.started_at)
    for worker in (first, second):
        worker.stats["in_flight"] = 0
    h.tick()
    h.clock.advance(59)
    h.tick()
    assert len(h.ready()) == 2, "not idle long enough"
    h.clock.advance(1)
    h.tick()
    h.until(lambda: second.exited.is_set(), what="the newest idle worker retired")
    assert h.pool.wanted == 1 and first.state == states.READY
    h.clock.advance(120)
    h.tick()
    h.tick()
    assert h.ready() == [first], "never below `workers`"
