"""The master's own listeners (the metrics endpoint, the answer while an app is down) against
a slowloris: the connections it holds are capped and cut at an overall deadline, the next
client is answered at once, and the master, its workers and the app carry on. They speak the
workers' strict HTTP: malformed requests get a 400 and nothing smuggled behind is answered."""

from __future__ import annotations

import os
import socket
import time

import requests

from conftest import free_port, wait_for, write_app
from railcar.responder import DEADLINE, MAX_CONNECTIONS

APP = '''
import os

def application(environ, start_response):
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''
SLOW_CLIENTS = 3 * MAX_CONNECTIONS


class Slowloris:
    """Connections that send a request head one byte a second and never finish it."""

    def __init__(self, port: int, count: int):
        self.sockets = []
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            sock.setblocking(False)
            self.sockets.append(sock)

    def trickle(self) -> None:
        for sock in self.open():
            try:
                sock.send(b"a")
            except OSError:
                pass

    def open(self) -> list[socket.socket]:
        """The connections the server has not closed yet."""
        alive = []
        for sock in self.sockets:
            try:
                if sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b"":
                    continue
            except BlockingIOError:
                alive.append(sock)
            except OSError:
                continue
        return alive

    def hold(self, seconds: float, check) -> None:
        """Trickle for `seconds`, calling check() every second."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.trickle()
            check()
            time.sleep(1)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def exchange(port: int, raw: bytes) -> bytes:
    """Send `raw` on a fresh connection; everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def assert_strict_http(port: int, path: bytes, status: bytes) -> None:
    """What the workers refuse, the master's listener refuses too; one answer per connection."""
    for bad in (b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n",
                b"GET " + path + b" HTTP/1.1\r\n\r\n",  # no Host
                b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
                b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"):
        assert exchange(port, bad).startswith(b"HTTP/1.1 400 "), bad
    head = exchange(port, b"HEAD " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 " + status) and head.endswith(b"\r\n\r\n")
    assert b"\r\nConnection: close\r\n" in head
    request = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert exchange(port, request * 2).count(b"HTTP/1.1 ") == 1


def timed_get(url: str) -> requests.Response:
    started = time.monotonic()
    answer = requests.get(url, timeout=10, headers={"Connection": "close"})
    answer.elapsed_total = time.monotonic() - started
    return answer


def assert_slowloris_is_bounded(port: int, url: str, expected_status: int) -> None:
    """Hold SLOW_CLIENTS slow connections: at most MAX_CONNECTIONS stay open, `url` answers
    at once all along, and every one of them is closed by DEADLINE (plus a margin)."""
    slow = Slowloris(port, SLOW_CLIENTS)
    try:
        def check():
            answer = timed_get(url)
            assert answer.status_code == expected_status and answer.elapsed_total < DEADLINE / 3
            assert len(slow.open()) <= MAX_CONNECTIONS

        started = time.monotonic()
        slow.hold(DEADLINE / 2, check)
        assert slow.open(), "the slow connections were not held at all"
        wait_for(lambda: (slow.trickle(), not slow.open())[1], DEADLINE + 5, interval=1,
                 what="the master to cut every slow connection")
        assert time.monotonic() - started < DEADLINE + 6
    finally:
        slow.close()


def test_slowloris_against_the_metrics_endpoint(railcar, tmp_path):
    port = free_port()
    server = railcar().start(str(write_app(tmp_path / "app", APP)), "--workers", "2",
                             "--metrics-bind", f"127.0.0.1:{port}", workers_ready=2)
    pids = {w["pid"] for w in server.workers()}
    assert_slowloris_is_bounded(port, f"http://127.0.0.1:{port}/metrics", 200)
    assert "metrics: 100 connections open" in server.log()
    assert {w["pid"] for w in server.workers()} == pids
    assert int(server.get("/").text) in pids
    metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert 'railcar_workers{app="app",state="ready"} 2.0' in metrics.text
    assert requests.post(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 405
    assert requests.get(f"http://127.0.0.1:{port}/other", timeout=5).status_code == 404
    assert_strict_http(port, b"/metrics", b"200")
    server.stop()


def test_slowloris_against_the_answer_while_the_app_is_down(railcar, tmp_path):
    app = write_app(tmp_path / "app", "import missing_module_for_the_test\n")
    server = railcar().start(str(app), "--workers", "1", wait=False)
    wait_for(lambda: os.path.exists(server.admin_socket)
             and server.status()["apps"][0]["error"], 30, what="the boot error")
    assert_slowloris_is_bounded(server.port, server.url + "/", 503)
    assert_strict_http(server.port, b"/", b"503")
    assert server.status()["apps"][0]["state"] == "failed"
    (app / "wsgi.py").write_text(APP)
    assert server.cli("restart").returncode == 0
    pid = int(server.get("/").text)
    assert [w["pid"] for w in server.workers()] == [pid]
    server.stop()


def test_a_silent_admin_client_is_cut_at_the_deadline(railcar, tmp_path):
    from railcar.control.server import REQUEST_DEADLINE

    server = railcar().start(str(write_app(tmp_path / "app", APP)), "--workers", "1")
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(server.admin_socket)
    silent.settimeout(REQUEST_DEADLINE + 5)
    started = time.monotonic()
    silent.sendall(b'{"command": ')
    assert silent.recv(100) == b""          # closed by the master, not by our timeout
    assert time.monotonic() - started < REQUEST_DEADLINE + 3
    silent.close()
    assert server.status()["apps"][0]["state"] == "serving"
    server.stop()
