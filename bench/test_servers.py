"""The servers' graceful restarts and wrk's tail script, against real processes:
`python -m pytest bench`. Servers that are not installed are skipped."""

import sys
import time
from pathlib import Path

import psutil
import pytest

import run
import servers
import wrk

HELLO = run.APPS["hello"]
BIN = Path(sys.executable).parent


def _start(name):
    kind = servers.KINDS[name]
    executable = servers.find_program(kind.program, BIN)
    if executable is None:
        pytest.skip(f"{kind.program} is not installed")
    return servers.RunningServer(kind, executable, HELLO, 2, 4, 30)


def _workers(running):
    return servers.live_children(running.process.pid, recursive=True)


def _settled(running, count=2, age=1.0, timeout=30):
    """Wait until COUNT processes under the master have run AGE seconds: a worker signalled
    while it boots may miss the restart (gunicorn's does), which the bench never does (it
    restarts after a warm-up and a control load)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = psutil.Process(running.process.pid).children(recursive=True)
        if sum(time.time() - c.create_time() >= age for c in children) >= count:
            return
        time.sleep(0.1)
    pytest.fail(f"{running.kind.name}: {count} processes did not come up")


@pytest.mark.parametrize("name", ["railcar", "gunicorn-gevent"])
def test_restart_replaces_every_worker_and_keeps_serving(name):
    with _start(name) as running:
        _settled(running)
        before = _workers(running)
        outcome = running.restart(timeout=30)
        assert outcome.ok, outcome.detail
        after = _workers(running)
        assert after and not before & after
        assert servers.answers(running.port) == 200


def test_a_server_without_restart_says_so():
    kind = servers.KINDS["waitress"]
    assert kind.restart is None
    running = servers.RunningServer(kind, "waitress-serve", HELLO, 1, 1, 1)
    try:
        with pytest.raises(servers.ServerError, match="no graceful restart"):
            running.restart(timeout=1)
    finally:
        running.close()


def test_the_tail_script_gives_the_max_and_counts_over_a_threshold():
    program = servers.find_program("wrk", BIN)
    if program is None:
        pytest.skip("wrk is not installed")
    with _start("railcar") as running:
        url = f"http://127.0.0.1:{running.port}/"
        everything, _ = wrk.run(program, url, 1, 4, 1, over_ms=0)
        assert everything.max_ms and everything.max_ms >= everything.p99_ms
        assert everything.over_count >= everything.requests > 0
        nothing, _ = wrk.run(program, url, 1, 4, 1, over_ms=60_000)
        assert nothing.over_count == 0 and nothing.over_ms == 60_000
