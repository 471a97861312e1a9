"""HTTPServer over real sockets on 127.0.0.1: a server subprocess (tests/http/serve.py, the
apps in tests/http/apps.py), raw socket clients and `requests`."""

import email.utils
import hashlib
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.http.support import (Reader, ServerProcess, exchange, load_cases,  # noqa: E402
                                request_bytes, wait_for)

CASES = load_cases()


@pytest.fixture(scope="module")
def server():
    proc = ServerProcess()
    yield proc
    proc.close()


@pytest.fixture
def fresh_server(request):
    """A server of its own, for tests that retire or stop it; options via parametrize."""
    servers = []

    def make(*options):
        servers.append(ServerProcess(*options))
        return servers[-1]

    yield make
    for proc in servers:
        proc.close()


def get(server, path, **kwargs):
    return requests.get(server.url(path), timeout=5, **kwargs)


def assert_alive(server):
    response = get(server, "/hello")
    assert response.status_code == 200 and response.text == "Hello, World!"


# -- the case files over the wire ----------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_case_over_the_wire(server, case):
    raw = exchange(server, case.data)
    if case.expect == "close":
        assert raw == b""
    else:
        status_line, _, rest = raw.partition(b"\r\n")
        assert status_line.split(b" ")[1].decode() == case.expect, raw[:200]
        if case.expect == "200":
            body = json.loads(rest.partition(b"\r\n\r\n")[2].decode())
            for key, value in case.env.items():
                assert body[key] == value, key
        else:  # refused: exactly one response, which announces the close
            assert raw.count(b"HTTP/1.1 ") == 1
            assert b"\r\nConnection: close\r\n" in raw
    assert_alive(server)  # the same server answers the next good request


# -- keep-alive and pipelining -------------------------------------------------------------------

def test_keep_alive_reuses_the_connection(server):
    with requests.Session() as session:
        ports = {session.get(server.url("/environ"), timeout=5).json()["REMOTE_PORT"]
                 for _ in range(5)}
    assert len(ports) == 1


def test_http10_closes_unless_keep_alive(server):
    with server.connect() as sock:
        reader = Reader(sock)
        sock.sendall(request_bytes("GET", "/hello", version="1.0", host=None))
        response = reader.response()
        assert response.body == b"Hello, World!" and response.headers["connection"] == "close"
        assert reader.at_eof()
    with server.connect() as sock:
        reader = Reader(sock)
        for _ in range(2):
            sock.sendall(request_bytes("GET", "/hello", [("Connection", "keep-alive")],
                                       version="1.0", host=None))
            response = reader.response()
            assert response.headers["connection"] == "keep-alive"
            assert response.body == b"Hello, World!"


def test_pipelined_requests_are_answered_in_order(server):
    with server.connect() as sock:
        sock.sendall(request_bytes("GET", "/environ?n=1")
                     + request_bytes("POST", "/environ?n=2", body=b"second body")
                     + request_bytes("GET", "/environ?n=3", [("Connection", "close")]))
        reader = Reader(sock)
        bodies = [json.loads(reader.response().body) for _ in range(3)]
        assert [b["QUERY_STRING"] for b in bodies] == ["n=1", "n=2", "n=3"]
        assert bodies[1]["_body"] == "second body"
        assert reader.at_eof()


def test_error_after_pipelined_good_request(server):
    raw = exchange(server, request_bytes("GET", "/hello") + b"GET / HTTP/1.1\r\nX: \0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert raw.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 400 " in raw


def test_keepalive_timeout_closes_idle_connections(fresh_server):
    proc = fresh_server("keepalive_timeout=0.5")
    with proc.connect() as sock:
        reader = Reader(sock)
        sock.sendall(request_bytes("GET", "/hello"))
        reader.response()
        started = time.monotonic()
        assert reader.at_eof(timeout=3)
        assert 0.3 < time.monotonic() - started < 2


# -- bodies --------------------------------------------------------------------------------------

def test_chunked_upload_of_megabytes(server):
    data = os.urandom(3 * 1024 * 1024 + 17)
    pieces = (data[i:i + 100_000] for i in range(0, len(data), 100_000))
    response = requests.post(server.url("/upload"), data=pieces, timeout=10)
    assert response.text == f"{len(data)} {hashlib.sha256(data).hexdigest()}"


def test_content_length_upload(server):
    data = os.urandom(2 * 1024 * 1024)
    response = requests.post(server.url("/upload"), data=data, timeout=10)
    assert response.text == f"{len(data)} {hashlib.sha256(data).hexdigest()}"


def test_app_runs_before_the_body_arrives(server):
    """The body is streamed to the app, never buffered first: an app that ignores a huge
    upload answers at once, with Connection: close since the rest cannot be drained."""
    with server.connect() as sock:
        sock.sendall(request_bytes("POST", "/ignore-body", [("Content-Length", "100000000")])
                     + b"x" * 1000)
        response = Reader(sock).response()
    assert response.body == b"ignored" and response.headers["connection"] == "close"


def test_small_unread_body_is_drained_and_connection_kept(server):
    with server.connect() as sock:
        reader = Reader(sock)
        sock.sendall(request_bytes("POST", "/ignore-body", body=b"y" * 5000))
        response = reader.response()
        assert response.body == b"ignored" and "connection" not in response.headers
        sock.sendall(request_bytes("GET", "/hello"))
        assert reader.response().body == b"Hello, World!"


def test_body_size_limit(fresh_server):
    proc = fresh_server("max_body_size=1000")
    raw = exchange(proc, request_bytes("POST", "/upload", body=b"z" * 1001))
    assert raw.startswith(b"HTTP/1.1 413 ")
    chunked = (request_bytes("POST", "/upload", [("Transfer-Encoding", "chunked")])
               + b"400\r\n" + b"z" * 1024 + b"\r\n0\r\n\r\n")
    assert exchange(proc, chunked).startswith(b"HTTP/1.1 413 ")
    ok = requests.post(proc.url("/upload"), data=b"z" * 1000, timeout=5)
    assert ok.status_code == 200


# -- Expect: 100-continue ------------------------------------------------------------------------

def test_100_continue_is_sent_when_the_app_reads(server):
    with server.connect() as sock:
        sock.sendall(request_bytes("POST", "/read-later?0.5",
                                   [("Expect", "100-continue"), ("Content-Length", "5")]))
        sock.settimeout(0.3)
        with pytest.raises(socket.timeout):  # the app sleeps 0.5 s before reading
            sock.recv(100)
        sock.settimeout(3)
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        response = Reader(sock).response()
    assert response.status == 200 and response.body == b"hello"


def test_no_100_continue_when_the_app_does_not_read(server):
    with server.connect() as sock:
        sock.sendall(request_bytes("POST", "/ignore-body",
                                   [("Expect", "100-continue"), ("Content-Length", "5")]))
        reader = Reader(sock)
        head = reader.read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in head
        assert reader.read_exactly(7) == b"ignored"
        assert reader.at_eof()


# -- responses -----------------------------------------------------------------------------------

def test_streaming_response_is_flushed_chunk_by_chunk(server):
    with server.connect() as sock:
        sock.sendall(request_bytes("GET", "/stream?n=3&delay=0.4"))
        reader = Reader(sock)
        head = reader.read_until(b"\r\n\r\n")
        assert b"Transfer-Encoding: chunked" in head
        first = reader.read_until(b"\r\n")  # chunk size line of the first chunk
        first_at = time.monotonic()
        body = reader.read_until(b"0\r\n\r\n")
        last_at = time.monotonic()
    assert int(first, 16) > 0 and b"chunk 2" in body
    assert last_at - first_at > 0.6  # the first chunk came before the others were produced


def test_head_never_has_a_body(server):
    with server.connect() as sock:
        reader = Reader(sock)
        sock.sendall(request_bytes("HEAD", "/head-body") + request_bytes("HEAD", "/stream?n=2")
                     + request_bytes("GET", "/hello"))
        first = reader.response(head=True)
        assert first.status == 200 and first.headers["content-length"] == "11"
        second = reader.response(head=True)
        assert second.status == 200 and "transfer-encoding" not in second.headers
        third = reader.response()  # would fail to parse if a HEAD body had leaked
        assert third.body == b"Hello, World!"


def test_date_server_and_hop_by_hop_headers(server):
    default = get(server, "/hello")
    assert default.headers["Server"] == "railcar" and default.headers["Date"].endswith(" GMT")
    custom = get(server, "/custom-headers")
    assert custom.headers["Server"] == "custom/1.0"
    assert custom.headers["Date"] == "Thu, 01 Jan 2026 00:00:00 GMT"
    assert "Transfer-Encoding" not in custom.headers and custom.text == "ok"
    sent = email.utils.parsedate_to_datetime(default.headers["Date"]).timestamp()
    assert abs(sent - time.time()) < 5


def test_date_is_an_imf_fixdate_whatever_the_day():
    from railcar.http.wire import http_date

    for seconds in (0, 951782400, 1796038308, 1798761599, 2**31 + 12345):
        assert http_date(seconds) == email.utils.formatdate(seconds, usegmt=True)


def test_write_callable(server):
    assert get(server, "/write").text == "written returned"


def test_http10_stream_is_delimited_by_close(server):
    raw = exchange(server, request_bytes("GET", "/http10-stream", version="1.0", host=None))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"chunked" not in head and b"Connection: close" in head and body == b"one two"


def test_header_injection_is_refused(server):
    response = get(server, "/injected-header")
    assert response.status_code == 500 and "Set-Cookie" not in response.headers


def test_app_error_is_500_with_traceback_on_stderr(server):
    response = get(server, "/crash")
    assert response.status_code == 500
    assert wait_for(lambda: "handling GET /crash" in server.stderr())
    assert "RuntimeError: boom" in server.stderr()


def test_app_error_mid_stream_closes_the_connection(server):
    with server.connect() as sock:
        sock.sendall(request_bytes("GET", "/crash-mid-stream"))
        raw = Reader(sock)
        head = raw.read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert raw.read_until(b"partial\r\n")
        assert raw.at_eof()  # closed without the terminating chunk
    assert_alive(server)


def test_client_disconnect_mid_response(server):
    for _ in range(3):
        with server.connect() as sock:
            sock.sendall(request_bytes("GET", "/big"))
            assert sock.recv(1000).startswith(b"HTTP/1.1 200 ")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # RST
    assert_alive(server)
    assert "big" not in server.stderr()  # no traceback for a client that went away


def test_slow_reader_gets_a_large_body(fresh_server):
    """The socket timeout bounds each wait for the client, not the whole transfer."""
    proc = fresh_server("keepalive_timeout=1", "header_timeout=1")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.settimeout(5)
    with sock:
        sock.connect(("127.0.0.1", proc.port))
        sock.sendall(request_bytes("GET", "/big-once"))
        started, received = time.monotonic(), 0
        while chunk := sock.recv(65536):
            received += len(chunk)
            time.sleep(0.01)
            if received >= 16 << 20:
                break
    assert received >= 16 << 20
    assert time.monotonic() - started > 1.2  # slower than one timeout, yet not cut off


def test_validator_app_runs_clean(server):
    assert get(server, "/validated").text == "got 0"
    assert requests.post(server.url("/validated"), data=b"12345", timeout=5).text == "got 5"
    head = requests.head(server.url("/validated"), timeout=5)
    assert head.status_code == 200 and head.content == b""
    chunked = requests.post(server.url("/validated"), data=iter([b"ab", b"cd"]), timeout=5)
    assert chunked.status_code == 200
    with requests.get(server.url("/validated"), stream=True, timeout=5) as response:
        assert b"".join(response.iter_content(1)) == b"got 0"
    stderr = server.stderr()
    assert "validate" not in stderr and "Warning" not in stderr


def test_upgrade_request_is_served_then_closed(server):
    """An app that does not take the connection answers an upgrade request plainly."""
    for upgrade in ([("Upgrade", "h2c")],
                    [("Upgrade", "websocket"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                     ("Sec-WebSocket-Version", "13")]):
        raw = exchange(server, request_bytes("GET", "/hello", [("Connection", "Upgrade")]
                                             + upgrade))
        assert raw.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in raw


def test_malformed_websocket_handshake_is_refused(server):
    raw = exchange(server, request_bytes("GET", "/hello", [("Connection", "Upgrade"),
                                                           ("Upgrade", "websocket")]))
    assert raw.startswith(b"HTTP/1.1 400 ") and b"Sec-WebSocket-Key" in raw


def test_stats(server):
    first = get(server, "/_stats").json()
    assert first["in_flight"] == 1 and first["connections"] >= 1
    second = get(server, "/_stats").json()
    assert second["requests"] == first["requests"] + 1


def test_access_log(server):
    get(server, "/hello?x=1")
    lines = server.access_log()
    pattern = r'^127\.0\.0\.1 - - \[[^\]]+\] "GET /hello\?x=1 HTTP/1\.1" 200 13 \d+\.\d$'
    assert any(re.match(pattern, line) for line in lines), lines


def test_worker_connections_limit(fresh_server):
    """Connections in the middle of a request are never closed to make room: a third client
    waits until one of them ends."""
    proc = fresh_server("worker_connections=2")
    first, second = proc.connect(), proc.connect()
    for sock in (first, second):
        sock.sendall(b"GET /hello HTTP/1.1\r\n")  # a request begun: not idle
    third = proc.connect()
    try:
        time.sleep(0.2)
        third.sendall(request_bytes("GET", "/hello"))
        third.settimeout(0.5)
        with pytest.raises(socket.timeout):  # not accepted while two connections are busy
            third.recv(100)
        first.close()
        third.settimeout(5)
        assert Reader(third).response().body == b"Hello, World!"
    finally:
        for sock in (first, second, third):
            sock.close()


def test_worker_connections_limit_closes_the_oldest_idle(fresh_server):
    """At the limit, a new client makes the worker close its longest-idle connection."""
    proc = fresh_server("worker_connections=2")
    first = proc.connect()  # not a byte sent: idle
    time.sleep(0.1)
    second = proc.connect()
    second.sendall(request_bytes("GET", "/hello"))
    assert Reader(second).response().body == b"Hello, World!"  # now idle keep-alive
    third = proc.connect()
    try:
        third.sendall(request_bytes("GET", "/hello"))
        assert Reader(third).response().body == b"Hello, World!"
        assert Reader(first).at_eof(2.0)  # the oldest idle one was closed
        second.sendall(request_bytes("GET", "/hello"))  # the younger one still serves
        assert Reader(second).response().body == b"Hello, World!"
    finally:
        for sock in (first, second, third):
            sock.close()


def test_unix_socket_listener(fresh_server, tmp_path):
    proc = fresh_server(f"UNIX={tmp_path / 'http.sock'}")
    with proc.connect() as sock:
        sock.sendall(request_bytes("GET", "/environ", host="app.example:8080"))
        environ = json.loads(Reader(sock).response().body)
    assert environ["REMOTE_ADDR"] == "" and environ["SERVER_NAME"] == "app.example"
    assert environ["SERVER_PORT"] == "8080"


def test_no_internal_errors_escaped(server):
    """Runs last in this module: nothing above made a connection greenlet fail."""
    assert "internal error" not in server.stderr()
    assert server.proc.poll() is None


# -- retire and stop -----------------------------------------------------------------------------

def test_retire_finishes_in_flight_and_closes_idle(fresh_server):
    proc = fresh_server("RETIRE_GRACE=5")
    idle = proc.connect()
    idle_reader = Reader(idle)
    idle.sendall(request_bytes("GET", "/hello"))
    idle_reader.response()
    late = proc.connect()  # idle too, but will start a request just after retire begins
    late.sendall(request_bytes("GET", "/hello"))
    late_reader = Reader(late)
    late_reader.response()
    busy = proc.connect()
    busy.sendall(request_bytes("GET", "/slow?1.0"))
    time.sleep(0.2)
    result = {}
    thread = threading.Thread(target=lambda: result.update(busy=Reader(busy).response()))
    thread.start()
    retired_at = time.monotonic()
    proc.signal(signal.SIGTERM)
    time.sleep(0.3)
    late.sendall(request_bytes("GET", "/hello"))  # mid-grace: still served, then closed
    late_response = late_reader.response()
    assert late_response.body == b"Hello, World!"
    assert late_response.headers["connection"] == "close"
    assert idle_reader.at_eof(timeout=3)
    assert time.monotonic() - retired_at < 2.5  # idle: closed after ~1 s, not keepalive 20 s
    with pytest.raises(ConnectionRefusedError):
        proc.connect()  # our listener copy is closed (here the only one)
    thread.join(5)
    assert result["busy"].body == b"slept" and result["busy"].headers["connection"] == "close"
    assert proc.readline(5) == "RETIRED True"
    for sock in (idle, late, busy):
        sock.close()


def test_retire_kills_what_outlives_the_grace(fresh_server):
    proc = fresh_server("RETIRE_GRACE=0.5")
    with proc.connect() as busy:
        busy.sendall(request_bytes("GET", "/slow?10"))
        time.sleep(0.2)
        started = time.monotonic()
        proc.signal(signal.SIGTERM)
        assert proc.readline(5) == "RETIRED False"
        assert time.monotonic() - started < 3
        assert Reader(busy).at_eof()


def test_stop_closes_everything_at_once(fresh_server):
    proc = fresh_server()
    with proc.connect() as busy, proc.connect() as idle:
        busy.sendall(request_bytes("GET", "/slow?10"))
        time.sleep(0.2)
        proc.signal(signal.SIGINT)
        assert proc.readline(5) == "STOPPED"
        assert Reader(busy).at_eof() and Reader(idle).at_eof()
