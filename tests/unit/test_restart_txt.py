"""APP_ROOT/tmp/restart.txt, on the fake factory: the master's tick restarts the app once each
time the file gets a new mtime, onto the release the root points to then."""

import os

from .fakes import FAIL, Harness


def app_root(tmp_path):
    (tmp_path / "current" / "tmp").mkdir(parents=True)
    return tmp_path / "current"


def touch(path, mtime: float) -> None:
    path.touch()
    os.utime(path, (mtime, mtime))


def finished(h: Harness, job):
    h.until(job.ready, what="the restart to return")
    return job.value


def test_each_touch_restarts_once_onto_the_current_release(tmp_path):
    root = app_root(tmp_path)
    restart_txt = root / "tmp" / "restart.txt"
    h = Harness(workers=2, root=str(root)).start()
    first = h.pids()
    assert h.tick() is None, "no restart.txt: nothing to do"

    h.factory.current = "B"
    touch(restart_txt, 1_000_000)
    outcome = finished(h, h.tick())
    assert outcome.ok and outcome.release == "/srv/app/releases/B"
    assert {w.release.path for w in h.ready()} == {"/srv/app/releases/B"}
    assert not first & h.pids()
    assert h.tick() is None, "the same mtime is one touch, not one restart per tick"

    second = h.pids()
    h.factory.current = "C"
    touch(restart_txt, 1_000_010)
    assert finished(h, h.tick()).release == "/srv/app/releases/C"
    assert not second & h.pids()
    assert h.pool.record.restarts["ok"] == 2


def test_a_file_there_before_the_start_is_no_touch_and_removing_it_is_none(tmp_path):
    root = app_root(tmp_path)
    restart_txt = root / "tmp" / "restart.txt"
    touch(restart_txt, 1_000_000)           # left by the last deploy
    h = Harness(workers=1, root=str(root)).start()
    assert h.tick() is None
    restart_txt.unlink()
    assert h.tick() is None
    touch(restart_txt, 1_000_000)           # the same mtime again, but after it was gone
    assert finished(h, h.tick()).ok
    assert h.pool.record.restarts["ok"] == 1


def test_a_touch_onto_a_broken_release_aborts_and_the_old_workers_serve(tmp_path):
    root = app_root(tmp_path)
    h = Harness(workers=2, root=str(root)).start()
    old = h.pids()
    h.factory.current, h.factory.outcomes["B"] = "B", FAIL
    touch(root / "tmp" / "restart.txt", 1_000_000)
    outcome = finished(h, h.tick())
    assert not outcome.ok and "ImportError: broken" in outcome.error
    assert h.pids() == old
    assert h.tick() is None, "a failed restart is not retried until the next touch"
    assert h.pool.record.restarts["failed"] == 1
