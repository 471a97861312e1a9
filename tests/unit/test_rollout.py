"""Rolling restart and its abort, on the fake factory: the order of starts, readiness and
retirements, and which workers serve afterwards."""

from .fakes import FAIL, HANG, READY, UNHEALTHY, Harness

from railcar import states


def restart(h: Harness):
    job = h.restart()
    h.until(job.ready, what="the restart to return")
    return job.value


def test_each_new_worker_is_ready_before_an_old_one_retires():
    h = Harness(workers=2).start()
    old = sorted(h.pids())
    h.factory.current = "B"
    outcome = restart(h)
    assert outcome.ok and outcome.release == "/srv/app/releases/B"
    new = [e[2] for e in h.factory.timeline if e[:2] == ("start", "worker") and e[3] == "B"]
    assert len(new) == 2
    for fresh, gone in zip(new, old):
        assert h.index(("start", "worker", fresh, "B")) < h.index(("ready", fresh)) \
            < h.index(("retire", gone)), h.factory.timeline
    # The second new worker starts only after the first old one retired: one at a time.
    assert h.index(("retire", old[0])) < h.index(("start", "worker", new[1], "B"))
    assert h.pids() == set(new) and not (set(old) & {w.pid for w in h.pool.workers})
    assert {w.release.path for w in h.ready()} == {"/srv/app/releases/B"}
    assert all(h.index(("exit", pid)) < len(h.factory.timeline) for pid in old), \
        "restart returns once every old worker has exited"
    assert h.pool.record.restarts["ok"] == 1


def test_a_release_that_fails_to_boot_aborts_and_the_old_workers_keep_serving():
    h = Harness(workers=2).start()
    old = h.pids()
    h.factory.current, h.factory.outcomes["B"] = "B", FAIL
    outcome = restart(h)
    assert not outcome.ok and "ImportError: broken" in outcome.error
    assert h.pids() == old, "the same pids keep serving"
    assert not any(("retire", pid) in h.factory.timeline for pid in old)
    h.step()
    assert h.pool.record.restarts["failed"] == 1
    assert h.pool.snapshot().error == outcome.error
    assert h.pool.spawning.state == states.RUNNING, "a failed restart is not a crash loop"


def test_an_abort_half_way_replaces_the_retired_old_worker_from_its_own_release():
    h = Harness(workers=2).start()
    old = sorted(h.pids())
    h.factory.current, h.factory.outcomes["B"] = "B", [READY, FAIL]
    outcome = restart(h)
    assert not outcome.ok
    h.until(lambda: len(h.ready()) == 2 and len(h.pool.workers) == 2, what="two workers")
    assert {w.release.path for w in h.ready()} == {"/srv/app/releases/A"}
    assert old[1] in h.pids(), "the old worker not retired yet is kept"
    [first_new] = [e[2] for e in h.factory.timeline if e[:2] == ("start", "worker")
                   and e[3] == "B" and ("ready", e[2]) in h.factory.timeline]
    assert ("retire", first_new) in h.factory.timeline, "the new worker is retired"
    # The replacement of the retired old worker was ready before the new one retired.
    [again] = [e[2] for e in h.factory.timeline if e[:2] == ("start", "worker")
               and e[3] == "A" and e[2] > first_new]
    assert h.index(("ready", again)) < h.index(("retire", first_new))


def test_a_new_worker_that_never_gets_ready_aborts_the_restart():
    h = Harness(workers=1, boot_timeout=0.2).start()
    old = h.pids()
    h.factory.current, h.factory.outcomes["B"] = "B", HANG
    outcome = restart(h)
    assert not outcome.ok and "did not become ready within 0.2 seconds" in outcome.error
    assert h.pids() == old
    assert not h.factory.alive() or all(w.release.path.endswith("A")
                                        for w in h.factory.alive())


def test_a_failed_health_check_aborts_and_is_counted():
    h = Harness(workers=1).start()
    h.factory.current, h.factory.outcomes["B"] = "B", UNHEALTHY
    outcome = restart(h)
    assert not outcome.ok and "failed its health check" in outcome.error
    assert h.pool.snapshot().health_failures == 1


def test_a_failing_canary_aborts_with_the_old_workers_serving_throughout():
    canary = {"canary_duration": 0.2, "canary_min_requests": 5, "canary_max_error_rate": 0.1}
    h = Harness(workers=2, canary=canary).start()
    old = h.pids()
    h.factory.current = "B"
    h.factory.stats["B"] = {"requests": 10, "in_flight": 0, "status_counts": {"5xx": 4}}
    outcome = restart(h)
    assert not outcome.ok and outcome.error.startswith("canary failed")
    assert outcome.canary.state == "failed" and outcome.canary.beside == 2
    assert h.pids() == old
    assert h.pool.record.canaries["failed"] == 1


def test_a_passing_canary_lets_the_restart_go_on():
    canary = {"canary_duration": 0.1, "canary_min_requests": 5, "canary_max_error_rate": 0.1}
    h = Harness(workers=2, canary=canary).start()
    h.factory.current = "B"
    h.factory.stats["B"] = {"requests": 10, "in_flight": 0, "status_counts": {"2xx": 10}}
    outcome = restart(h)
    assert outcome.ok and outcome.canary.state == "passed"
    assert {w.release.path for w in h.ready()} == {"/srv/app/releases/B"}


def test_smart_restart_forks_from_a_fresh_preloader_and_stops_the_old_one():
    h = Harness(workers=2, spawn_method="smart").start()
    [preloader_a] = h.factory.alive("preloader")
    assert {w.preloader for w in h.ready()} == {preloader_a}
    h.factory.current = "B"
    assert restart(h).ok
    h.until(lambda: preloader_a.exited.is_set(), what="the old preloader stopped")
    [preloader_b] = h.factory.alive("preloader")
    assert preloader_b.release.path.endswith("B")
    assert {w.preloader for w in h.ready()} == {preloader_b}
    assert h.pool.snapshot().preloaders[0].current


def test_smart_restart_abort_keeps_forking_from_the_old_preloader():
    h = Harness(workers=1, spawn_method="smart").start()
    [preloader_a] = h.factory.alive("preloader")
    h.factory.current, h.factory.outcomes["B"] = "B", FAIL
    assert not restart(h).ok
    assert h.pool.spawner.preloader is preloader_a
    h.factory.current = "A"     # the deploy put `current` back
    h.ready()[0].exit(1)        # a crash now: its successor forks from the old preloader
    h.until(lambda: len(h.ready()) == 1, what="the respawn")
    assert h.ready()[0].preloader is preloader_a
    assert h.factory.alive("preloader") == [preloader_a], "no new preloader was started"


def test_each_new_worker_takes_over_the_clients_of_the_old_one_it_replaces():
    """Before an old worker retires, the new one is told how many connections the old one
    holds: it accepts that many reconnections at once (HTTPServer.take_over)."""
    h = Harness(workers=2).start()
    old = sorted(h.pids())
    for worker, connections in zip(sorted(h.pool.workers, key=lambda w: w.pid), (7, 3)):
        worker.stats["connections"] = connections
    h.factory.current = "B"
    assert restart(h).ok
    new = [e[2] for e in h.factory.timeline if e[:2] == ("start", "worker") and e[3] == "B"]
    for fresh, gone, connections in zip(new, old, (7, 3)):
        told = ("call", fresh, "take_over", {"connections": connections})
        assert h.index(("ready", fresh)) < h.index(told) < h.index(("retire", gone)), \
            h.factory.timeline

