"""Administration of a running master: status schema, backtraces, signals, logs, shutdown."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import psutil
import pytest
import requests

from conftest import gone, wait_for, write_app

APP = '''
import os, time
def waiting_in_known_function(seconds):
    time.sleep(seconds)

def application(environ, start_response):
    if environ["PATH_INFO"] == "/wait":
        waiting_in_known_function(float(environ["QUERY_STRING"] or 2))
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def make_app(tmp_path):
    return write_app(tmp_path / "app", APP)


def test_status_json_schema_counts_requests(railcar, tmp_path):
    server = railcar().start(str(make_app(tmp_path)), "--workers", "2", workers_ready=2)
    for _ in range(10):
        assert server.get("/").status_code == 200
    status = server.status()
    assert status["master"]["pid"] == server.proc.pid
    [app] = status["apps"]
    assert {"name", "root", "release", "workers"} <= set(app)
    assert app["release"] == str(tmp_path / "app")
    for worker in app["workers"]:
        assert {"pid", "release", "state", "requests", "in_flight", "started_at", "rss",
                "cpu"} <= set(worker)
        assert worker["rss"] > 1_000_000
    assert sum(w["requests"] for w in app["workers"]) == 10
    server.stop()


def test_backtraces_show_a_blocked_greenlet(railcar, tmp_path):
    server = railcar().start(str(make_app(tmp_path)), "--workers", "1", workers_ready=1)
    thread = threading.Thread(target=lambda: server.get("/wait?3"))
    thread.start()
    time.sleep(0.7)
    in_flight = server.workers()[0]["in_flight"]
    result = server.cli("backtraces")
    thread.join(timeout=15)
    assert in_flight == 1
    assert result.returncode == 0, result.stderr
    assert "waiting_in_known_function" in result.stdout
    server.stop()


def test_graceful_stop_finishes_in_flight_request(railcar, tmp_path):
    server = railcar().start(str(make_app(tmp_path)), "--workers", "1", workers_ready=1)
    worker = server.workers()[0]["pid"]
    answers = []
    thread = threading.Thread(target=lambda: answers.append(server.get("/wait?2")))
    thread.start()
    time.sleep(0.5)
    server.proc.send_signal(signal.SIGTERM)
    thread.join(timeout=20)
    server.proc.wait(timeout=30)
    assert answers and answers[0].status_code == 200 and answers[0].text == str(worker)
    assert gone(worker)


def test_usr1_reopens_the_log(railcar, tmp_path):
    server = railcar().start(str(make_app(tmp_path)), "--workers", "1", workers_ready=1)
    rotated = tmp_path / "rotated.log"
    os.rename(server.log_file, rotated)
    server.proc.send_signal(signal.SIGUSR1)
    # The file appears before the master's line is written into it: wait for the line.
    wait_for(lambda: "log files reopened" in server.log(), 10, what="the reopened log's line")
    server.stop()


@pytest.mark.parametrize("release_toml, start_seconds, stop_seconds", [
    ("[server]\ngraceful_timeout = 45\n", 60 + 30, 45 + 30),
    ("[app]\nboot_timeout = 200\nlong_lived_timeout = 100\n\n[server]\ngraceful_timeout = 45\n",
     200 + 30, 100 + 2 + 30),
])
def test_the_master_asks_systemd_for_the_start_and_stop_its_settings_need(
        railcar, tmp_path, monkeypatch, release_toml, start_seconds, stop_seconds):
    """A unit's TimeoutStartSec= and TimeoutStopSec= come from the settings it was rendered
    with (the deploy's: the defaults); a release's railcar.toml may raise boot_timeout,
    graceful_timeout or long_lived_timeout. The master under systemd (Type=notify) asks for
    what its own settings need, by the unit's rule: a new worker's ready time (boot_timeout
    here) plus 30 s to start; the longer of graceful_timeout and long_lived_timeout + 2 s,
    plus 30 s, to stop gracefully."""
    app = make_app(tmp_path)
    (app / "railcar.toml").write_text(release_toml)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp_path / "notify.sock"))
        notify.settimeout(60)
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
        server = railcar().start(str(app), "--workers", "1", wait=False)
        assert notify.recv(4096).decode() == f"EXTEND_TIMEOUT_USEC={start_seconds * 1_000_000}"
        assert "READY=1" in notify.recv(4096).decode().split("\n")
        server.proc.send_signal(signal.SIGTERM)
        assert notify.recv(4096).decode().split("\n") == [
            "STOPPING=1", f"EXTEND_TIMEOUT_USEC={stop_seconds * 1_000_000}"]
        assert server.proc.wait(timeout=60) == 0


def test_workers_exit_when_the_master_is_killed(railcar, tmp_path):
    server = railcar().start(str(make_app(tmp_path)), "--workers", "2", workers_ready=2)
    workers = [w["pid"] for w in server.workers()]
    server.proc.kill()
    server.proc.wait()
    wait_for(lambda: all(gone(pid) for pid in workers), 30, what="orphaned workers to exit")


def test_access_log_and_admin_socket_mode(railcar, tmp_path):
    access = tmp_path / "access.log"
    server = railcar().start(str(make_app(tmp_path)), "--workers", "1",
                             "--access-log", str(access), workers_ready=1)
    assert oct(os.stat(server.admin_socket).st_mode & 0o777) == "0o600"
    requests.get(server.url + "/hello?x=1", timeout=10)
    wait_for(lambda: access.exists() and "/hello?x=1" in access.read_text(), 10,
             what="the access log line")
    line = access.read_text().strip().splitlines()[-1]
    assert '"GET /hello?x=1 HTTP/1.1" 200' in line
    server.stop()
    assert psutil.pid_exists(server.proc.pid) is False or gone(server.proc.pid)
