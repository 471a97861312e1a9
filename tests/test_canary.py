"""Canary: the first new worker of a rolling restart serves beside the old ones, and a release
whose 5xx rate is too high is turned back before the other workers follow.

Releases run on the test interpreter; each app appends one line per request it answers to a
file of its release, so what the canary served is seen from the app's side too.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import requests

from conftest import free_port, railcar_command, swap_current, wait_for, write_app
from loadgen import Load

APP = '''
import itertools, os

FAIL_EVERY = {fail_every}
counter = itertools.count(1)

def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path != "/health":
        with open(os.path.join(os.path.dirname(__file__), "served.log"), "a") as log:
            log.write(f"{{os.getpid()}} {{path}}\\n")
        if FAIL_EVERY and next(counter) % FAIL_EVERY == 0:
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"flaky {name}"]
    body = b"release {name}"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''

DURATION = 6.0


def make_release(root: Path, name: str, fail_every: int = 0) -> Path:
    return write_app(root / "releases" / name, APP.format(name=name, fail_every=fail_every))


def served(release: Path) -> int:
    try:
        return len((release / "served.log").read_text().splitlines())
    except FileNotFoundError:
        return 0


def start_loads(server) -> list[Load]:
    # New connections spread over every worker, the canary included; keep-alive
    # connections opened before the restart stay on the old workers.
    return [Load("127.0.0.1", server.port, clients=4, mode="close", max_seconds=60).start(),
            Load("127.0.0.1", server.port, clients=2, mode="keepalive", max_seconds=60).start()]


def restart_in_background(server) -> subprocess.Popen:
    return subprocess.Popen(railcar_command() + ["restart", "--admin-socket",
                                                 server.admin_socket],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def scrape(port: int) -> str:
    return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def test_canary_aborts_a_flaky_release_and_passes_a_healthy_one(railcar, tmp_path):
    root = tmp_path / "app"
    good = make_release(root, "good")
    flaky = make_release(root, "flaky", fail_every=5)      # a fifth of its answers are 500
    swap_current(root, good)
    metrics_port = free_port()
    server = railcar().start(
        str(root / "current"), "--workers", "2", "--health-path", "/health",
        "--canary-duration", str(DURATION), "--canary-min-requests", "20",
        "--canary-max-error-rate", "0.1", "--metrics-bind", f"127.0.0.1:{metrics_port}",
        workers_ready=2)
    old_pids = {w["pid"] for w in server.workers()}

    loads = start_loads(server)
    time.sleep(1.0)
    swap_current(root, flaky)
    restart = restart_in_background(server)

    # While watched: the canary serves beside both old workers, and says so everywhere.
    watching, metrics, table = wait_for(lambda: _watching(server, metrics_port), 20,
                                        what="the canary to be watched")
    app = watching["apps"][0]
    canary_rows = [w for w in app["workers"] if w["canary"]]
    assert len(canary_rows) == 1 and canary_rows[0]["release"] == str(flaky)
    assert old_pids <= {w["pid"] for w in app["workers"] if w["state"] == "ready"}
    assert app["canary"]["beside"] == 2 and app["canary"]["duration"] == DURATION
    assert app["canary_settings"] == {"canary_duration": DURATION, "canary_min_requests": 20,
                                      "canary_max_error_rate": 0.1}
    assert 'railcar_canary_active{app="current"} 1.0' in metrics
    assert "canary: watching worker" in table and "ready (canary)" in table

    out, err = restart.communicate(timeout=60)
    abort_at = time.monotonic()
    time.sleep(1.0)
    for load in loads:
        load.stop()

    assert restart.returncode != 0
    assert "canary failed" in err and "above canary_max_error_rate 10.0%" in err, err
    assert "answered 5xx" in err
    canary = server.status()["apps"][0]["last_restart"]["canary"]
    assert canary["state"] == "failed" and canary["judged"] is True
    assert canary["requests"] >= 20 and canary["error_rate"] > 0.1
    # It was watched for the whole period, no longer.
    assert DURATION <= canary["finished_at"] - canary["started_at"] < DURATION + 2.5

    # The clients saw only the canary's own 5xx; everything else came from the old release.
    outcomes = [o for load in loads for o in load.outcomes]
    failures = [o for load in loads for o in load.failures()]
    assert all(o.status == 500 and o.body == b"flaky flaky" for o in failures), failures[:3]
    # (The verdict is taken from its counters just before it is retired: a few requests may
    # still arrive in between, more on a busy machine.)
    assert canary["errors"] <= len(failures) <= canary["errors"] + 3 + canary["errors"] // 20
    assert {o.body for o in outcomes if o.status == 200} <= {b"release good", b"release flaky"}
    assert not [o for o in outcomes if o.started > abort_at + 0.5 and o.body != b"release good"]
    # Its share, not more: the canary served a fraction of the requests of its watch.
    wall = time.time() - time.monotonic()
    in_watch = [o for o in outcomes
                if canary["started_at"] <= o.started + wall <= canary["finished_at"]]
    assert canary["requests"] <= served(flaky) <= canary["requests"] * 1.05 + 10
    assert canary["requests"] < 0.7 * len(in_watch), (canary["requests"], len(in_watch))

    assert {w["pid"] for w in server.workers()} == old_pids
    assert server.get("/").text == "release good"
    text = scrape(metrics_port)
    assert 'railcar_canaries_total{app="current",outcome="failed"} 1.0' in text
    assert 'railcar_canary_active{app="current"} 0.0' in text
    assert "last canary: FAILED" in server.cli("status").stdout

    # A healthy release: the canary passes and the restart completes, with no failure.
    fixed = make_release(root, "fixed")
    swap_current(root, fixed)
    loads = start_loads(server)
    time.sleep(0.5)
    result = server.cli("restart")
    time.sleep(0.5)
    for load in loads:
        load.stop()
        assert load.failures() == [], load.failures()[:3]
    assert result.returncode == 0, result.stderr
    assert "canary passed" in result.stderr
    status = server.status()["apps"][0]
    assert status["last_restart"]["canary"]["state"] == "passed"
    assert status["canaries"] == {"failed": 1, "passed": 1}
    assert {w["release"] for w in server.workers()} == {str(fixed)}
    assert not old_pids & {w["pid"] for w in server.workers()}
    server.stop()


def _watching(server, metrics_port: int):
    """(status, metrics, status table) taken while a canary is watched, or None."""
    data = server.status()
    canary = data["apps"][0]["canary"]
    if not canary or canary["state"] != "watching" or canary["seconds_left"] < 3:
        return None
    return data, scrape(metrics_port), server.cli("status").stdout


def test_too_few_requests_are_not_judged_and_no_canary_without_old_workers(railcar, tmp_path):
    """A canary that saw fewer than canary_min_requests lets the restart go on; the first
    start has no old workers to compare with, so no canary."""
    root = tmp_path / "app"
    first = make_release(root, "a")
    swap_current(root, first)
    server = railcar().start(str(root / "current"), "--workers", "1",
                             "--canary-duration", "1", "--canary-min-requests", "1000")
    assert server.status()["apps"][0]["canary"] is None
    swap_current(root, make_release(root, "b", fail_every=1))
    result = server.cli("restart")
    assert result.returncode == 0, result.stderr
    canary = server.status()["apps"][0]["last_restart"]["canary"]
    assert canary["state"] == "passed" and canary["judged"] is False
    assert "fewer than canary_min_requests (1000), not judged" in canary["reason"]
    data = json.loads(server.cli("status", "--json").stdout)
    assert data["apps"][0]["canary"]["state"] == "passed"
    server.stop()


def test_a_canary_that_dies_aborts_the_restart(railcar, tmp_path):
    root = tmp_path / "app"
    good = make_release(root, "good")
    dying = make_release(root, "dying")
    (dying / "wsgi.py").write_text(
        "import os\n"
        "def application(environ, start_response):\n"
        "    if environ['PATH_INFO'] == '/die':\n"
        "        os._exit(3)\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'release dying']\n")
    swap_current(root, good)
    server = railcar().start(str(root / "current"), "--workers", "1",
                             "--canary-duration", "20", "--canary-min-requests", "1000")
    old_pids = {w["pid"] for w in server.workers()}
    swap_current(root, dying)
    restart = restart_in_background(server)
    wait_for(lambda: _watching_state(server), 20, what="the canary to be watched")
    # New connections go to either worker: ask until the canary got one and died.
    for _ in range(200):
        try:
            requests.get(server.url + "/die", timeout=5)
        except requests.RequestException:
            break
    out, err = restart.communicate(timeout=30)
    assert restart.returncode != 0
    assert "canary failed: the watch of canary worker" in err
    assert "ended early (it exited: exit status 3)" in err, err
    canary = server.status()["apps"][0]["canary"]
    assert canary["state"] == "failed" and canary["finished_at"] - canary["started_at"] < 10
    assert {w["pid"] for w in server.workers()} == old_pids
    assert server.get("/").text == "release good"
    server.stop()


def _watching_state(server) -> bool:
    canary = server.status()["apps"][0]["canary"]
    return bool(canary) and canary["state"] == "watching"
