"""The master against real processes: start/stop, crash respawn, malformed requests, boot
failures, config errors, daemon mode and unix sockets."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time

import psutil
import pytest
import requests

from conftest import REPO, gone, railcar_command, root_opt_in, wait_for

SLEEPY_APP = '''
import os, time
def application(environ, start_response):
    if environ["PATH_INFO"] == "/sleep":
        time.sleep(float(environ["QUERY_STRING"] or 1))
    environ["wsgi.input"].read()
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


@pytest.fixture
def sleepy(tmp_path):
    app = tmp_path / "sleepy"
    app.mkdir()
    (app / "wsgi.py").write_text(SLEEPY_APP)
    return app


def test_flask_example_serves_and_stops_without_orphans(railcar, tmp_path):
    server = railcar().start(str(REPO / "examples" / "flaskapp"), "--workers", "2",
                             workers_ready=2)
    response = server.get("/")
    assert response.status_code == 200
    assert "railcar flask example" in response.text
    posted = requests.post(server.url + "/notes", data={"text": "hi"}, timeout=10)
    assert posted.status_code == 201
    master_pid = server.proc.pid
    workers = [w["pid"] for w in server.workers()]
    assert len(workers) == 2
    # Started by the master, or forked by its preloader (smart spawning, the default).
    parents = {psutil.Process(pid).ppid() for pid in workers}
    assert all(ppid == master_pid or psutil.Process(ppid).ppid() == master_pid
               for ppid in parents)

    table = server.cli("status")
    assert table.returncode == 0
    assert "flaskapp" in table.stdout and str(workers[0]) in table.stdout

    result = server.cli("stop")
    assert result.returncode == 0, result.stderr
    server.proc.wait(timeout=30)
    for pid in workers + [master_pid]:
        assert gone(pid)
    assert not os.path.exists(server.admin_socket)
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url, timeout=2)


def test_killed_worker_is_respawned_and_others_unaffected(railcar, sleepy):
    server = railcar().start(str(sleepy), "--workers", "2", workers_ready=2)
    pids = [w["pid"] for w in server.workers()]
    results: list = []

    def slow_request():
        try:
            results.append(requests.get(server.url + "/sleep?3", timeout=10).text)
        except requests.RequestException as exc:
            results.append(exc)

    # The kernel decides which worker accepts a connection: send slow requests until both
    # workers have one in flight (bounded), so the survivor has requests to complete.
    threads: list[threading.Thread] = []

    def both_busy() -> bool:
        busy = {w["pid"] for w in server.workers() if w.get("in_flight")}
        return set(pids) <= busy

    while len(threads) < 24 and not both_busy():
        threads.append(threading.Thread(target=slow_request))
        threads[-1].start()
        time.sleep(0.05)
    assert both_busy(), "slow requests never reached both workers"
    victim = pids[0]
    os.kill(victim, signal.SIGKILL)
    for thread in threads:
        thread.join(timeout=20)
    served = [r for r in results if isinstance(r, str)]
    # Every request that the surviving worker took completed normally.
    assert served and all(int(pid) != victim for pid in served)
    assert all(int(pid) == pids[1] for pid in served)
    wait_for(lambda: len(server.workers()) == 2 and victim not in
             {w["pid"] for w in server.workers()}, 10, what="a respawned worker")
    assert pids[1] in {w["pid"] for w in server.workers()}
    assert "exited unexpectedly (killed by SIGKILL)" in server.log()
    server.stop()


MALFORMED = {
    "garbage request line": b"\x16\x03\x01\x02\x00garbage\r\n\r\n",
    "100 KB header": b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    "invalid chunk size": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"zz\r\nhello\r\n0\r\n\r\n"),
    "content-length and transfer-encoding": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    "bare LF": b"GET / HTTP/1.1\nHost: x\n\n",
    "NUL in header": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "plus content-length": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
}


def send_raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError:
            pass
    return b"".join(chunks)


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_request_gets_4xx_and_worker_lives(railcar, case, sleepy):
    server = railcar().start(str(sleepy), "--workers", "1", workers_ready=1)
    pid = server.workers()[0]["pid"]
    reply = send_raw(server.port, MALFORMED[case])
    if reply:
        status = int(reply.split(b" ", 2)[1])
        assert 400 <= status < 500, reply[:200]
        assert reply.count(b"HTTP/1.1") == 1, "a second (smuggled) response was sent"
    assert server.get("/").text == str(pid)
    assert [w["pid"] for w in server.workers()] == [pid]
    server.stop()


BROKEN_APP = 'raise ImportError("no module named totally_missing_dependency")\n'


def test_app_failing_to_boot_at_start_keeps_master_up(railcar, tmp_path, sleepy):
    app = tmp_path / "broken"
    app.mkdir()
    (app / "wsgi.py").write_text(BROKEN_APP)
    server = railcar().start(str(app), "--workers", "1", wait=False)
    status = wait_for(lambda: os.path.exists(server.admin_socket) and
                      server.status()["apps"][0]["error"], 30, what="the boot error")
    assert "totally_missing_dependency" in status
    assert server.proc.poll() is None
    (app / "wsgi.py").write_text(SLEEPY_APP)
    result = server.cli("restart")
    assert result.returncode == 0, result.stderr
    assert server.get("/").status_code == 200
    server.stop()


def test_bad_config_names_key_and_file(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    (app / "wsgi.py").write_text(SLEEPY_APP)
    (app / "railcar.toml").write_text('[app]\nworkers = "two"\n')
    result = subprocess.run(railcar_command() + ["start", str(app)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode != 0
    assert "workers" in result.stderr and str(app / "railcar.toml") in result.stderr
    (app / "railcar.toml").write_text('[app]\nwrokers = 2\n')
    result = subprocess.run(railcar_command() + ["start", str(app)], capture_output=True,
                            text=True, timeout=30)
    assert "unknown key 'wrokers'" in result.stderr


def test_python_without_railcar_is_named(railcar, tmp_path, sleepy, make_venv):
    bare = make_venv(tmp_path / "bare", with_railcar=False)
    server = railcar().start(str(sleepy), "--python", str(bare), wait=False)
    error = wait_for(lambda: os.path.exists(server.admin_socket) and
                     server.status()["apps"][0]["error"], 30, what="the interpreter error")
    assert str(bare) in error and "cannot import railcar" in error
    server.stop()


def test_daemon_pid_file_and_unix_socket(tmp_path, sleepy):
    admin = str(tmp_path / "admin.sock")
    pid_file = tmp_path / "railcar.pid"
    unix_path = tmp_path / "app.sock"
    result = subprocess.run(
        railcar_command() + ["start", str(sleepy), *root_opt_in(()), "--daemon", "--bind",
                             f"unix:{unix_path}",
                             "--workers", "1", "--admin-socket", admin, "--pid-file",
                             str(pid_file), "--log-file", str(tmp_path / "log")],
        capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    pid = int(pid_file.read_text())
    try:
        assert psutil.pid_exists(pid)
        assert oct(os.stat(admin).st_mode & 0o777) == "0o600"
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(unix_path))
            sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200")
        # A pid file signals (stop, restart); status needs the admin socket and says so,
        # instead of asking the default socket, which may be another master's.
        for command in (["status"], ["backtraces"]):
            refused = subprocess.run(railcar_command() + [*command, "--pid-file", str(pid_file)],
                                     capture_output=True, text=True, timeout=30)
            assert refused.returncode != 0, command
            assert "give --admin-socket (--pid-file serves stop and restart)" in refused.stderr
        missing = subprocess.run(railcar_command() + ["restart", "--pid-file",
                                                      str(tmp_path / "none.pid")],
                                 capture_output=True, text=True, timeout=30)
        assert missing.returncode != 0 and "cannot read pid file" in missing.stderr
        assert "Traceback" not in missing.stderr
        hup = subprocess.run(railcar_command() + ["restart", "--pid-file", str(pid_file)],
                             capture_output=True, text=True, timeout=30)
        assert hup.returncode == 0 and f"sent SIGHUP to {pid}" in hup.stdout, hup.stderr
        # A stale pid file: its pid gone, or reused by another program, which is not signalled.
        stranger = subprocess.Popen(["sleep", "60"])
        try:
            stale = tmp_path / "stale.pid"
            for stale_pid, why in ((stranger.pid, "is not a railcar master"),
                                   (2 ** 22 + 1, "is not running")):
                stale.write_text(f"{stale_pid}\n")
                for command in (["restart"], ["stop"], ["stop", "--fast"]):
                    result = subprocess.run(railcar_command() + [*command, "--pid-file",
                                                                 str(stale)],
                                            capture_output=True, text=True, timeout=30)
                    assert result.returncode == 1, (command, result.stderr)
                    assert f"pid {stale_pid} of {stale} {why}" in result.stderr
                    assert "Traceback" not in result.stderr
            assert stranger.poll() is None   # not signalled
        finally:
            stranger.kill()
            stranger.wait()
    finally:
        stop = subprocess.run(railcar_command() + ["stop", "--admin-socket", admin],
                              capture_output=True, text=True, timeout=90)
    assert stop.returncode == 0, stop.stderr
    assert gone(pid)
    assert not pid_file.exists()
