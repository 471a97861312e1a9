"""Health before traffic: a new worker checks its own app in-process before it serves.

Releases sit side by side under releases/ with a `current` symlink, as a deploy lays them out;
they run on the test interpreter (which has railcar). Every app appends one line per request it
answers (pid and path) to a file of its release, so what a release served is seen from the
app's side as well as from the access log and the clients.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import requests

from conftest import (free_port, gone, railcar_command, root_opt_in, swap_current, wait_for,
                      write_app)
from loadgen import Load

APP = '''
import os, time

HEALTH = {health!r}

def application(environ, start_response):
    path = environ["PATH_INFO"]
    with open(os.path.join(os.path.dirname(__file__), "served.log"), "a") as log:
        log.write(f"{{os.getpid()}} {{path}} {{environ.get('HTTP_HOST')}}\\n")
    if path == "/health":
        if HEALTH == "sleep":
            time.sleep(30)          # gevent-patched: the worker's own timeout ends it
        if HEALTH == "spin":
            while True:             # never yields: only the master's deadline ends it
                pass
        if HEALTH == "host" and environ.get("HTTP_HOST") != "health.example":
            start_response("421 Misdirected Request", [("Content-Type", "text/plain")])
            return [b"wrong host"]
        if HEALTH == "500":
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"database unreachable: connection refused\\n" + b"x" * 5000]
        if HEALTH == "302":
            start_response("302 Found", [("Location", "/login")])
            return [b""]
    body = b"release {name}"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''


def make_release(root: Path, name: str, health: str = "ok") -> Path:
    return write_app(root / "releases" / name, APP.format(name=name, health=health))


def served(release: Path) -> list[str]:
    """Paths the release's app answered, in order."""
    try:
        lines = (release / "served.log").read_text().splitlines()
    except FileNotFoundError:
        return []
    return [line.split()[1] for line in lines]


@pytest.fixture
def app_root(tmp_path) -> Path:
    root = tmp_path / "app"
    root.mkdir()
    return root


@pytest.mark.parametrize("spawn_method", ["smart", "direct"])
def test_unhealthy_release_is_refused_under_load_and_serves_nothing(railcar, app_root,
                                                                   spawn_method):
    good = make_release(app_root, "good")
    bad = make_release(app_root, "bad", health="500")
    swap_current(app_root, good)
    access_log = app_root / "access.log"
    server = railcar().start(str(app_root / "current"), "--workers", "2",
                             "--health-path", "/health", "--spawn-method", spawn_method,
                             "--access-log", str(access_log), workers_ready=2)
    old_pids = {w["pid"] for w in server.workers()}
    assert served(good) == ["/health", "/health"]     # one check in each worker

    loads = [Load("127.0.0.1", server.port, clients=3, mode=mode, max_seconds=30).start()
             for mode in ("keepalive", "close")]
    time.sleep(1.0)
    swap_current(app_root, bad)
    result = server.cli("restart")
    time.sleep(1.0)
    for load in loads:
        load.stop()

    assert result.returncode != 0
    assert "failed its health check" in result.stderr
    assert "GET /health" in result.stderr and "500 Internal Server Error" in result.stderr
    assert "database unreachable: connection refused" in result.stderr    # the body's start
    assert "x" * 1000 not in result.stderr                                 # only its start
    total = 0
    for load in loads:
        assert load.failures() == [], load.failures()[:3]
        assert {o.body for o in load.outcomes} == {b"release good"}
        total += len(load.outcomes)
    assert total > 50
    # The bad release answered its health checks and nothing else.
    assert served(bad) and set(served(bad)) == {"/health"}
    assert served(good).count("/") == total
    # The access log holds the client requests only: no health check, no 500.
    # (A worker writes its line just after the response, so the last may lag a moment.)
    wait_for(lambda: len(access_log.read_text().splitlines()) >= total, 5,
             what=f"{total} access log lines")
    lines = access_log.read_text().splitlines()
    assert len(lines) == total
    assert not [line for line in lines if "/health" in line or '" 500 ' in line]

    assert {w["pid"] for w in server.workers()} == old_pids
    status = server.status()["apps"][0]
    assert status["last_restart"]["ok"] is False
    assert "failed its health check" in status["last_restart"]["error"]
    assert status["release"] == str(good)

    # The same root, healthy again: the restart goes through.
    swap_current(app_root, make_release(app_root, "fixed"))
    result = server.cli("restart")
    assert result.returncode == 0, result.stderr
    assert server.get("/").text == "release fixed"
    assert not old_pids & {w["pid"] for w in server.workers()}
    server.stop()


def test_health_host_and_statuses(railcar, app_root):
    """The check sends health_host as Host; health_statuses decides what passes."""
    release = make_release(app_root, "host", health="host")
    swap_current(app_root, release)
    server = railcar().start(str(app_root / "current"), "--workers", "1",
                             "--health-path", "/health", "--health-host", "health.example")
    assert server.get("/").text == "release host"
    health_lines = [line for line in (release / "served.log").read_text().splitlines()
                    if " /health " in line]
    assert health_lines and all(line.endswith(" health.example") for line in health_lines)
    assert "health check GET /health (Host: health.example): 200 OK" in server.log()
    server.stop()

    # 302 is outside 200-299: refused at start (the master answers 503 meanwhile) ...
    redirecting = make_release(app_root, "redirect", health="302")
    swap_current(app_root, redirecting)
    server = railcar().start(str(app_root / "current"), "--workers", "1",
                             "--health-path", "/health", "--health-statuses", "200-299",
                             wait=False)
    app = wait_for(lambda: _failed_app(server), 30, what="the app to fail its health check")
    assert "302 Found, not one of 200-299" in app["error"]
    assert server.get("/").status_code == 503
    assert set(served(redirecting)) == {"/health"}
    server.stop()

    # ... and accepted when listed.
    server = railcar().start(str(app_root / "current"), "--workers", "1",
                             "--health-path", "/health", "--health-statuses", "200-299, 302")
    assert server.get("/").text == "release redirect"
    server.stop()


def _failed_app(server):
    if not os.path.exists(server.admin_socket):
        return None
    app = server.status()["apps"][0]
    return app if app["state"] == "failed" else None


def test_health_check_timeouts(railcar, app_root):
    """A check that does not answer in health_timeout fails, whether the app waits (the
    worker's timeout) or spins without yielding (the master's deadline)."""
    good = make_release(app_root, "good")
    swap_current(app_root, good)
    metrics_port = free_port()
    server = railcar().start(str(app_root / "current"), "--workers", "2",
                             "--health-path", "/health", "--health-timeout", "1",
                             "--metrics-bind", f"127.0.0.1:{metrics_port}", workers_ready=2)
    old_pids = {w["pid"] for w in server.workers()}
    for mode in ("sleep", "spin"):
        swap_current(app_root, make_release(app_root, mode, health=mode))
        began = time.monotonic()
        result = server.cli("restart")
        took = time.monotonic() - began
        assert result.returncode != 0
        assert "did not answer within 1 seconds" in result.stderr, result.stderr
        assert took < 15, took
        assert {w["pid"] for w in server.workers()} == old_pids
        assert server.get("/").text == "release good"
    app = server.status()["apps"][0]
    assert app["health"] == {"path": "/health", "host": "localhost", "statuses": "200-399",
                             "timeout": 1.0}
    assert app["health_failures"] == 2
    assert "health check: GET /health (Host: localhost), accepts 200-399 within 1s; " \
        "2 new worker(s) failed it" in server.cli("status").stdout
    metrics = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    assert 'railcar_health_check_failures_total{app="current"} 2.0' in metrics
    server.stop()


@pytest.mark.parametrize("flag, value, message", [
    ("--health-path", "health", "is not a URL path starting with /"),
    ("--health-statuses", "200-700", "not a status range within 100-599"),
    ("--health-statuses", "ok", "is not a status or a range"),
    ("--health-timeout", "0", "must be more than 0 seconds"),
    ("--canary-max-error-rate", "1.5", "must be from 0 to 1"),
])
def test_bad_health_settings_are_refused(railcar, app_root, flag, value, message):
    swap_current(app_root, make_release(app_root, "good"))
    server = railcar()
    result = server.cli("start", str(app_root / "current"), flag, value, timeout=30)
    assert result.returncode != 0
    assert flag in result.stderr and message in result.stderr, result.stderr


def test_health_settings_in_railcar_toml(railcar, app_root):
    release = make_release(app_root, "toml", health="host")
    (release / "railcar.toml").write_text(
        '[app]\nhealth_path = "/health"\nhealth_statuses = [200, "300-399"]\n'
        'server_names = ["health.example", "www.example"]\n')
    swap_current(app_root, release)
    server = railcar().start(str(app_root / "current"), "--workers", "1")
    assert server.get("/").text == "release toml"
    assert "(Host: health.example): 200 OK" in server.log()
    server.stop()


def test_daemon_start_reports_a_failing_health_check(app_root, tmp_path):
    """`start --daemon` waits for the health check and reports its failure (exit 1); the
    master stays up, answering 503, and serves once the release is healthy."""
    swap_current(app_root, make_release(app_root, "bad", health="500"))
    admin = str(tmp_path / "admin.sock")
    pid_file = tmp_path / "railcar.pid"
    port = free_port()
    result = subprocess.run(
        railcar_command() + ["start", str(app_root / "current"), *root_opt_in(()), "--daemon",
                             "--workers", "1",
                             "--port", str(port), "--health-path", "/health",
                             "--admin-socket", admin, "--pid-file", str(pid_file),
                             "--log-file", str(tmp_path / "log")],
        capture_output=True, text=True, timeout=90)
    pid = int(pid_file.read_text())
    try:
        assert result.returncode == 1, result.stdout + result.stderr
        assert "FAILED to boot" in result.stdout
        assert "failed its health check" in result.stdout
        assert "500 Internal Server Error" in result.stdout
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 503
        swap_current(app_root, make_release(app_root, "good"))
        wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/", timeout=10).text
                 == "release good", 30, interval=0.5, what="the healthy release to serve")
    finally:
        stop = subprocess.run(railcar_command() + ["stop", "--admin-socket", admin],
                              capture_output=True, text=True, timeout=90)
    assert stop.returncode == 0, stop.stderr
    assert gone(pid)
