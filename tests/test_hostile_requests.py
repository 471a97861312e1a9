"""Hostile clients against a real `railcar start`: oversized chunk metadata, odd request
targets, slow bodies, floods of idle sockets. After each, the worker that took it is the same
process (no crash, no replacement) and a new connection is served."""

from __future__ import annotations

import json
import resource
import select
import socket
import threading
import time

import pytest
import requests

from conftest import RailcarServer, free_port, wait_for, write_app

APP = '''
import hashlib, json, os

def application(environ, start_response):
    body = b""
    if environ["PATH_INFO"] == "/read":
        body = environ["wsgi.input"].read()
    info = {"pid": os.getpid(), "length": len(body),
            "sha256": hashlib.sha256(body).hexdigest()}
    for key in ("HTTP_HOST", "SERVER_NAME", "SERVER_PORT", "REQUEST_METHOD", "PATH_INFO"):
        info[key] = environ.get(key)
    data = json.dumps(info).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(data)))])
    return [data]
'''

CHUNKED_HEAD = (b"POST /read HTTP/1.1\r\nHost: hostile.test\r\nTransfer-Encoding: chunked\r\n"
                b"\r\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One worker, so that every request of the module reaches the same process."""
    workdir = tmp_path_factory.mktemp("hostile")
    app = write_app(workdir / "app", APP)
    (workdir / "srv").mkdir()
    srv = RailcarServer(workdir / "srv")
    srv.start(str(app), "--workers", "1", "--client-body-timeout", "1")
    yield srv
    srv.stop()
    srv.kill_everything()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def read_response(sock, timeout=10.0) -> tuple[int, dict, bytes]:
    """One whole response (Content-Length framed, or until close)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError(f"closed before a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", -1))
    while length < 0 or len(body) < length:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def send_while_reading(sock, pieces, timeout=20.0) -> bytes:
    """Send `pieces` (an iterable of bytes) while reading whatever the server answers; stop
    when the server has answered a whole head, closed, or reset. Returns what was read."""
    sock.setblocking(False)
    received = b""
    pending = b""
    pieces = iter(pieces)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and b"\r\n\r\n" not in received:
            if not pending:
                pending = next(pieces, b"")
            readable, writable, _ = select.select([sock], [sock] if pending else [], [], 0.5)
            if readable:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
            if writable and pending:
                pending = pending[sock.send(pending):]
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        sock.setblocking(True)
    sock.settimeout(5)
    try:  # the rest of the error response, if any
        while chunk := sock.recv(65536):
            received += chunk
    except (OSError, TimeoutError):
        pass
    return received


def server_closed(sock: socket.socket, timeout: float = 10) -> bool:
    """The server closed this connection (EOF or reset) within `timeout`."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except (TimeoutError, socket.timeout):
        return False
    return True


def status_of(raw: bytes) -> int:
    assert raw.startswith(b"HTTP/1.1 "), raw[:200]
    return int(raw.split(b" ", 2)[1])


def get_json(server, path="/", host="hostile.test") -> dict:
    with server.connect() as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                     .encode())
        status, _, body = read_response(sock)
    assert status == 200, body
    return json.loads(body)


def assert_unharmed(server, pid):
    """The same worker serves a new connection, and logged no internal error."""
    assert get_json(server)["pid"] == pid
    assert server.only_worker_pid() == pid
    assert "internal error" not in server.log()


def chunked_pieces(first_line: bytes, filler: bytes, total: int, rest: bytes = b""):
    """A chunked body whose metadata grows by `filler` to `total` bytes, as a generator."""
    yield CHUNKED_HEAD + first_line
    sent = 0
    while sent < total:
        yield filler
        sent += len(filler)
    yield rest


# -- trailer fields and chunk extensions ---------------------------------------------------------

@pytest.mark.parametrize("shape", ["extension", "extension_value", "extension_unread",
                                   "trailer", "many_trailers"])
def test_8_mib_of_chunk_metadata_is_refused_in_bounded_memory(server, shape):
    pid = server.only_worker_pid()
    # Warm up the paths a chunked upload takes, so that RSS growth is the attempt's own.
    with server.connect() as sock:
        sock.sendall(CHUNKED_HEAD + b"5;a=b\r\nhello\r\n0\r\nX-T: 1\r\n\r\n")
        assert read_response(sock)[0] == 200
    before = rss_kib(pid)
    filler = b"x" * 65536
    first, rest = {
        "extension": (b"5;", b"\r\nhello\r\n0\r\n\r\n"),
        "extension_value": (b"5 ; name = ", b"\r\nhello\r\n0\r\n\r\n"),
        "extension_unread": (b"5;", b"\r\nhello\r\n0\r\n\r\n"),
        "trailer": (b"5\r\nhello\r\n0\r\nX-Trailer: ", b"\r\n\r\n"),
        "many_trailers": (b"5\r\nhello\r\n0\r\n", b"\r\n"),
    }[shape]
    if shape == "many_trailers":
        filler = b"X-T: 1\r\n" * 8192
    pieces = chunked_pieces(first, filler, 8 << 20, rest)
    if shape == "extension_unread":  # an app that answers without reading the body
        pieces = (piece.replace(b"POST /read ", b"POST / ") for piece in pieces)
    with server.connect() as sock:
        raw = send_while_reading(sock, pieces)
        if shape == "extension_unread" and status_of(raw) == 200:
            # The app answered from the head alone (the oversized line had not arrived in
            # the first receive): the server then refuses to buffer the rest and closes.
            assert server_closed(sock), "the connection stayed open after the oversized line"
        else:
            assert status_of(raw) in (400, 431), raw[:200]
            assert b"Connection: close" in raw
    growth = rss_kib(pid) - before
    assert growth < 1024, f"worker RSS grew by {growth} KiB"
    assert_unharmed(server, pid)


def test_chunk_extensions_with_optional_whitespace_are_accepted(server):
    pid = server.only_worker_pid()
    body = (b"5 ; name = value\r\nhello\r\n"
            b"6\t;\tq = \"a \\\"quoted\\\" string\" ; flag\r\n world\r\n"
            b"0 ; last = yes\r\nX-Checksum: 1\r\n\r\n")
    with server.connect() as sock:
        sock.sendall(CHUNKED_HEAD + body)
        status, _, data = read_response(sock)
    assert status == 200, data
    assert json.loads(data)["length"] == len(b"hello world")
    assert_unharmed(server, pid)


def test_a_large_chunked_upload_still_works(server):
    import hashlib
    payload = bytes(range(256)) * 16384  # 4 MiB
    pieces = [CHUNKED_HEAD]
    for start in range(0, len(payload), 100_000):
        piece = payload[start:start + 100_000]
        pieces.append(b"%x;part=%d\r\n" % (len(piece), start) + piece + b"\r\n")
    pieces.append(b"0\r\n\r\n")
    with server.connect() as sock:
        sock.sendall(b"".join(pieces))
        status, _, data = read_response(sock)
    assert status == 200
    assert json.loads(data)["sha256"] == hashlib.sha256(payload).hexdigest()


# -- request targets -----------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["GET", "POST", "HEAD", "DELETE"])
def test_asterisk_target_is_only_for_options(server, method):
    pid = server.only_worker_pid()
    with server.connect() as sock:
        sock.sendall(f"{method} * HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n".encode())
        status, headers, _ = read_response(sock)
    assert status == 400
    assert headers.get("connection") == "close"
    with server.connect() as sock:
        sock.sendall(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
        status, _, data = read_response(sock)
    assert status == 200 and json.loads(data)["REQUEST_METHOD"] == "OPTIONS"
    assert_unharmed(server, pid)


@pytest.mark.parametrize("target, host, name, port", [
    ("http://target.example:8081/p?q=1", "target.example:8081", "target.example", "8081"),
    ("http://target.example/p", "target.example", "target.example", "80"),
    ("https://secure.example/p", "secure.example", "secure.example", "443"),
    ("http://[::1]:8082/p", "[::1]:8082", "[::1]", "8082"),
])
def test_absolute_form_target_decides_the_host(server, target, host, name, port):
    pid = server.only_worker_pid()
    with server.connect() as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: conflicting.example\r\n\r\n".encode())
        status, _, data = read_response(sock)
    assert status == 200, data
    environ = json.loads(data)
    assert (environ["HTTP_HOST"], environ["SERVER_NAME"], environ["SERVER_PORT"]) \
        == (host, name, port)
    assert environ["PATH_INFO"] == "/p"
    assert_unharmed(server, pid)


# -- slow bodies (the module's server runs with --client-body-timeout 1) --------------------------

def test_a_stalled_body_gets_408(server):
    pid = server.only_worker_pid()
    started = time.monotonic()
    with server.connect() as sock:
        sock.sendall(b"POST /read HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
        status, headers, _ = read_response(sock)
    assert status == 408 and headers.get("connection") == "close"
    assert time.monotonic() - started < 5
    assert_unharmed(server, pid)


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_trickling_a_byte_at_a_time_is_cut_off(server, chunked):
    """Each byte arrives well within client_body_timeout, but far below the minimum rate."""
    pid = server.only_worker_pid()
    if chunked:
        head, unit = CHUNKED_HEAD, b"1\r\nx\r\n"
    else:
        head, unit = b"POST /read HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n", b"x"
    started = time.monotonic()
    answer = b""
    with server.connect() as sock:
        sock.sendall(head)
        sock.settimeout(0.4)
        for _ in range(60):  # at most 24 s
            try:
                sock.sendall(unit)
                answer = sock.recv(4096)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            break
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert elapsed < 6, elapsed
    assert_unharmed(server, pid)


def test_a_steady_slow_upload_is_not_cut_off(server):
    """3 s at ~4 KB/s: above the default minimum rate, each piece within the timeout."""
    pid = server.only_worker_pid()
    pieces = 15
    with server.connect() as sock:
        sock.sendall(b"POST /read HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n"
                     % (pieces * 800))
        for _ in range(pieces):
            sock.sendall(b"y" * 800)
            time.sleep(0.2)
        status, _, data = read_response(sock)
    assert status == 200 and json.loads(data)["length"] == pieces * 800
    assert_unharmed(server, pid)


# -- connection capacity -------------------------------------------------------------------------

def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"needs {wanted} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def test_a_flood_of_idle_sockets_does_not_starve_new_clients(railcar, tmp_path):
    """2,000 idle sockets (half never send a byte, half idle keep-alive) against 2 workers of
    1,000 connections each: new clients are still answered within a second."""
    raise_fd_limit(4096)
    app = write_app(tmp_path / "app", APP)
    server = railcar().start(str(app), "--workers", "2", workers_ready=2)
    pids = {w["pid"] for w in server.workers()}
    idle: list[socket.socket] = []
    try:
        for i in range(2000):
            sock = server.connect()
            if i % 2:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            idle.append(sock)
        for sock in idle[1::2]:  # every keep-alive request was answered: now all are idle
            assert read_response(sock)[0] == 200
        time.sleep(0.5)
        latencies = []
        for _ in range(10):
            started = time.monotonic()
            with server.connect(timeout=5) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                status, _, data = read_response(sock, timeout=5)
            latencies.append(time.monotonic() - started)
            assert status == 200 and json.loads(data)["pid"] in pids
        assert max(latencies) < 1.0, latencies
        assert {w["pid"] for w in server.workers()} == pids
    finally:
        for sock in idle:
            sock.close()


def test_connections_mid_request_are_not_evicted(railcar, tmp_path):
    """Only idle connections make room: a client that has begun a request keeps its
    connection even when the worker is full."""
    app = write_app(tmp_path / "app", APP)
    server = railcar().start(str(app), "--workers", "1", "--worker-connections", "3")
    busy = server.connect()
    busy.sendall(b"POST /read HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab")
    time.sleep(0.2)
    others = [server.connect() for _ in range(4)]  # each new one evicts an idle one
    try:
        time.sleep(0.3)
        for sock in others[-2:]:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            assert read_response(sock)[0] == 200
        busy.sendall(b"cd")
        status, _, data = read_response(busy)
        assert status == 200 and json.loads(data)["length"] == 4
    finally:
        busy.close()
        for sock in others:
            sock.close()


def test_evicted_connections_are_counted_per_worker(railcar, tmp_path):
    """Each idle connection a worker closes at worker_connections to make room counts: in
    its `status --json` row (`evicted`) and in metrics
    (railcar_worker_evicted_connections_total{app,pid})."""
    metrics = free_port()
    app = write_app(tmp_path / "app", APP)
    server = railcar().start(str(app), "--workers", "1", "--worker-connections", "2",
                             "--metrics-bind", f"127.0.0.1:{metrics}")
    [worker] = server.workers()
    pid = worker["pid"]
    assert worker["evicted"] == 0
    socks = []
    try:
        for _ in range(5):  # the 3rd, 4th and 5th each close the longest-idle one
            socks.append(server.connect())
            time.sleep(0.2)
        for sock in socks[:3]:
            assert select.select([sock], [], [], 5)[0] and sock.recv(1) == b""
        socks[-1].sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert read_response(socks[-1])[0] == 200
        [worker] = server.workers()
        assert worker["pid"] == pid and worker["evicted"] == 3 and worker["connections"] == 2
        line = f'railcar_worker_evicted_connections_total{{app="app",pid="{pid}"}} 3.0'
        wait_for(lambda: line in requests.get(f"http://127.0.0.1:{metrics}/metrics",
                                              timeout=5).text, 10, what=line)
    finally:
        for sock in socks:
            sock.close()
