"""WebSockets and server-sent events on railcar: the flask-sock example app with a real
WebSocket client (the `websockets` package), malformed handshakes, and long-lived connections
counted in status and metrics."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import ssl
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from certs import TestCA
from conftest import REPO, free_port, wait_for
from loadgen import Load

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.http.support import exchange  # noqa: E402

EXAMPLE = REPO / "examples" / "wsecho"
KEY = base64.b64encode(os.urandom(16)).decode()


def ws_url(server, path: str = "/echo") -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


def head_of(sock: socket.socket) -> bytes:
    """Read up to the end of a response head (or EOF)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def handshake(path="/echo", method="GET", version="1.1", **fields) -> bytes:
    headers = {"Host": "localhost", "Connection": "Upgrade", "Upgrade": "websocket",
               "Sec-WebSocket-Key": KEY, "Sec-WebSocket-Version": "13"}
    for name, value in fields.items():
        name = name.replace("_", "-")
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    lines = [f"{method} {path} HTTP/{version}"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture
def echo_server(railcar):
    return railcar().start(str(EXAMPLE), "--workers", "1")


def test_flask_sock_echo_through_railcar(echo_server):
    with connect(ws_url(echo_server), open_timeout=10, close_timeout=5) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        ws.send(b"\x00\x01binary\xff")
        assert ws.recv(timeout=10) == b"\x00\x01binary\xff"
        big = "x" * 300_000  # several frames' worth, through the socket's send path
        ws.send(big)
        assert ws.recv(timeout=10) == big
    # The connection left HTTP: nothing of a second response followed on it, and the
    # worker goes on serving plain HTTP on new connections.
    assert echo_server.get("/").json()["app"] == "wsecho"
    assert "Traceback" not in echo_server.log()


def test_many_websockets_on_one_worker_then_the_count_drops(echo_server):
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(connect(ws_url(echo_server), open_timeout=10))
                   for _ in range(20)]
        for number, ws in enumerate(sockets):
            ws.send(f"message {number}")
        for number, ws in enumerate(sockets):
            assert ws.recv(timeout=10) == f"message {number}"
        [worker] = echo_server.workers()
        assert worker["long_lived"] == 20 and worker["in_flight"] == 0
        table = echo_server.cli("status")
        assert "LONG-LIVED" in table.stdout, table.stdout
    wait_for(lambda: echo_server.workers()[0]["long_lived"] == 0, 10,
             what="the closed WebSockets to be counted out")


def test_websockets_count_against_worker_connections_and_are_never_evicted(railcar):
    """At worker_connections, open WebSockets are not closed to make room: a new client waits
    in the listen queue until one of them ends."""
    server = railcar().start(str(EXAMPLE), "--workers", "1", "--worker-connections", "3")
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(connect(ws_url(server), open_timeout=10))
                   for _ in range(3)]
        with server.connect(timeout=10) as waiting:
            waiting.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            waiting.settimeout(1.5)
            with pytest.raises(TimeoutError):
                waiting.recv(4096)
            for ws in sockets:  # all three still open and answering
                ws.send("still here")
                assert ws.recv(timeout=10) == "still here"
            sockets[0].close()
            waiting.settimeout(10)
            assert head_of(waiting).startswith(b"HTTP/1.1 200 ")


def test_websocket_over_tls_in_standalone_mode(railcar, tmp_path):
    """wss:// straight to railcar with --certfile/--keyfile: the app's socket is the TLS one."""
    ca = TestCA(tmp_path / "pki")
    certfile, keyfile, _ = ca.issue("server")
    server = railcar().start(str(EXAMPLE), "--workers", "1", "--certfile", str(certfile),
                             "--keyfile", str(keyfile))
    context = ssl.create_default_context(cafile=str(ca.cafile))
    with connect(f"wss://localhost:{server.port}/echo", ssl=context, open_timeout=10,
                 close_timeout=5) as ws:
        for message in ("over tls", b"\x00\xff" * 40_000):
            ws.send(message)
            assert ws.recv(timeout=10) == message
        assert server.workers()[0]["long_lived"] == 1


def test_first_frame_sent_with_the_handshake_is_not_lost(echo_server):
    """Bytes right behind the request head belong to the WebSocket (a masked text frame)."""
    mask = b"\x01\x02\x03\x04"
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(b"early"))
    frame = b"\x81\x85" + mask + payload
    with echo_server.connect(timeout=10) as sock:
        sock.sendall(handshake() + frame)
        head = head_of(sock)
        assert head.startswith(b"HTTP/1.1 101 "), head
        rest = head.partition(b"\r\n\r\n")[2]
        deadline = time.monotonic() + 10
        while len(rest) < 7 and time.monotonic() < deadline:
            rest += sock.recv(4096)
        assert rest[:7] == b"\x81\x05early", rest


@pytest.mark.parametrize("request_bytes,status", [
    (handshake(Sec_WebSocket_Key=None), b"400"),
    (handshake(Sec_WebSocket_Key="c2hvcnQ="), b"400"),          # decodes to 5 bytes
    (handshake(Sec_WebSocket_Key="!!not base64!!"), b"400"),
    (handshake(Sec_WebSocket_Version="8"), b"426"),
    (handshake(Sec_WebSocket_Version=None), b"426"),
    (handshake(Connection="keep-alive"), b"400"),
    (handshake(method="POST", Content_Length="0"), b"400"),
    (handshake(version="1.0"), b"400"),
    (handshake(Content_Length="5") + b"hello", b"400"),
])
def test_malformed_handshakes_get_4xx_and_the_worker_lives(echo_server, request_bytes, status):
    pid = echo_server.only_worker_pid()
    reply = exchange(echo_server, request_bytes)
    assert reply.startswith(b"HTTP/1.1 " + status), reply
    if status == b"426":
        assert b"Sec-WebSocket-Version: 13\r\n" in reply
    assert echo_server.get("/").json()["pid"] == pid
    assert echo_server.only_worker_pid() == pid


def test_websocket_request_to_a_plain_route_gets_the_apps_own_answer(echo_server):
    """The app did not take the connection: what it answers is sent as an ordinary response
    (Flask refuses a WebSocket request to a route without websocket=True with its own 400
    page), then the connection closes."""
    pid = echo_server.only_worker_pid()
    reply = exchange(echo_server, handshake(path="/"))
    assert reply.startswith(b"HTTP/1.1 400 BAD REQUEST\r\n"), reply
    assert b"text/html" in reply and b"Connection: close\r\n" in reply
    assert echo_server.get("/").json()["pid"] == pid


def test_event_stream_is_long_lived_unbuffered_and_exempt_from_max_request_time(railcar):
    metrics_port = free_port()
    server = railcar().start(str(EXAMPLE), "--workers", "1", "--max-request-time", "1",
                             "--metrics-bind", f"127.0.0.1:{metrics_port}")
    with server.connect(timeout=10) as sock:
        sock.sendall(b"GET /events?every=0.2 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head = head_of(sock)
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert b"X-Accel-Buffering: no\r\n" in head
        assert b"Transfer-Encoding: chunked\r\n" in head
        wait_for(lambda: server.workers()[0]["long_lived"] == 1, 10, what="the stream counted")
        pid = server.only_worker_pid()
        gauge = f'railcar_worker_long_lived_connections{{app="wsecho",pid="{pid}"}} 1.0'
        wait_for(lambda: gauge in requests.get(f"http://127.0.0.1:{metrics_port}/metrics",
                                               timeout=10).text, 10, what=gauge)
        time.sleep(1.5)  # past max_request_time: a stream is not a stuck request
        data = b""
        deadline = time.monotonic() + 5
        while b"tick 8" not in data and time.monotonic() < deadline:
            data += sock.recv(4096)
        assert b"tick 8" in data, data
        assert server.workers()[0]["in_flight"] == 0
    wait_for(lambda: server.workers()[0]["long_lived"] == 0, 10, what="the stream counted out")
    assert "504" not in server.log()


class Watched:
    """A WebSocket in a thread of its own, waiting for the server to close it: when the close
    frame came and with which code."""

    def __init__(self, url: str):
        self.stack = contextlib.ExitStack()
        self.ws = self.stack.enter_context(connect(url, open_timeout=20, close_timeout=5))
        self.ws.send("ping")
        assert self.ws.recv(timeout=20) == "ping"
        self.code = self.closed_at = None
        self.thread = threading.Thread(target=self._wait, daemon=True)
        self.thread.start()

    def _wait(self):
        try:
            while True:
                self.ws.recv(timeout=120)
        except ConnectionClosed as closed:
            self.closed_at = time.monotonic()
            self.code = closed.rcvd.code if closed.rcvd else None
        except TimeoutError:
            pass
        finally:
            self.stack.close()


class EventStream:
    """A server-sent events stream read in a thread: whether it ended with the last chunk."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.sock.sendall(b"GET /events?every=0.5 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.data = b""
        self.ended_at = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            while chunk := self.sock.recv(65536):
                self.data += chunk
                if self.data.endswith(b"\r\n0\r\n\r\n"):
                    break
        except OSError:
            pass
        self.ended_at = time.monotonic()
        self.sock.close()


def test_rolling_restart_drains_websockets_and_streams_within_their_deadline(railcar):
    """50 WebSockets and an event stream stay open through a rolling restart under HTTP
    load until long_lived_timeout (4 s, while graceful_timeout is 30 s), then get close 1001
    and the stream's end; the restart ends at most ~2 s after that; no HTTP request fails."""
    long_lived = 4.0
    server = railcar().start(str(EXAMPLE), "--workers", "2", "--graceful-timeout", "30",
                             "--long-lived-timeout", str(long_lived), workers_ready=2)
    old = {w["pid"] for w in server.workers()}
    sockets = [Watched(ws_url(server)) for _ in range(50)]
    stream = EventStream(server.port)
    wait_for(lambda: sum(w["long_lived"] for w in server.workers()) == 51, 20,
             what="50 WebSockets and a stream counted in status")
    loads = [Load("127.0.0.1", server.port, clients=3, mode=mode, max_seconds=60).start()
             for mode in ("keepalive", "close")]
    time.sleep(1.0)
    began = time.monotonic()
    result = server.cli("restart", timeout=60)
    ended = time.monotonic()
    time.sleep(1.0)
    for load in loads:
        load.stop()
    assert result.returncode == 0, result.stderr
    for ws in sockets:
        ws.thread.join(timeout=10)
    stream.thread.join(timeout=10)

    failures = [o for load in loads for o in load.failures()]
    assert failures == [], failures[:3]
    assert sum(len(load.outcomes) for load in loads) > 50
    codes = [ws.code for ws in sockets]
    assert codes == [1001] * 50, codes
    closes = sorted(ws.closed_at - began for ws in sockets)
    # Kept until the deadline (the new workers boot first, then the old ones retire)...
    assert closes[0] >= long_lived - 0.5, closes
    # ...and closed together at it, the restart ending within ~2 s.
    assert closes[-1] - closes[0] < 2.0, closes
    assert ended - began <= closes[-1] + 2.0, (ended - began, closes)
    assert stream.data.startswith(b"HTTP/1.1 200 ") and stream.data.endswith(b"\r\n0\r\n\r\n")
    assert stream.ended_at - began >= long_lived - 0.5
    new = {w["pid"] for w in server.workers()}
    assert len(new) == 2 and not new & old
    assert all(w["long_lived"] == 0 for w in server.workers())
    print(f"restart took {ended - began:.2f} s; 1001 at {closes[0]:.2f}..{closes[-1]:.2f} s")


def test_graceful_stop_ends_websockets_at_their_deadline(railcar):
    """`railcar stop` retires the workers like a restart does: a WebSocket gets 1001 once
    long_lived_timeout (1 s) ran out, not after graceful_timeout (30 s)."""
    server = railcar().start(str(EXAMPLE), "--workers", "1", "--long-lived-timeout", "1",
                             "--graceful-timeout", "30")
    watched = Watched(ws_url(server))
    began = time.monotonic()
    result = server.cli("stop", timeout=60)
    took = time.monotonic() - began
    assert result.returncode == 0, result.stderr
    watched.thread.join(timeout=10)
    assert watched.code == 1001
    assert 1.0 <= watched.closed_at - began < 3.0, watched.closed_at - began
    assert took < 5.0, took
    server.proc.wait(timeout=30)
