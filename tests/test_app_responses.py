"""What an app hands over, against a real `railcar start` over real sockets: bad status lines,
header names, header values and Content-Lengths become a logged 500 and never reach the wire;
204 and 304 carry no body and no framing; a `write` or response kept past its response raises
in the app and sends nothing. After every hostile response the worker is the same process and
a new connection is served."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conftest import RailcarServer, wait_for, write_app  # noqa: E402
from tests.http.support import Reader, read_until_close, request_bytes  # noqa: E402

APP = r'''
import os
import gevent

SECRET = b"never-on-the-wire"
BAD = {
    "/name-space": ("200 OK", [("Bad Name", "x")]),
    "/name-colon": ("200 OK", [("X-A: b", "c")]),
    "/name-empty": ("200 OK", [("", "x")]),
    "/name-crlf": ("200 OK", [("X-A\r\nSet-Cookie", "stolen=1")]),
    "/name-latin1": ("200 OK", [("X-\xe9", "x")]),
    "/value-crlf": ("200 OK", [("X-Evil", "a\r\nSet-Cookie: stolen=1")]),
    "/value-lf": ("200 OK", [("X-Evil", "a\nSet-Cookie: stolen=1")]),
    "/value-cr": ("200 OK", [("X-Evil", "a\rSet-Cookie: stolen=1")]),
    "/value-nul": ("200 OK", [("X-Evil", "a\x00b")]),
    "/value-del": ("200 OK", [("X-Evil", "a\x7fb")]),
    "/value-esc": ("200 OK", [("X-Evil", "a\x1bb")]),
    "/value-vt": ("200 OK", [("X-Evil", "a\x0bb")]),
    "/value-unicode": ("200 OK", [("X-Evil", "a\u2028b")]),
    "/value-hop-by-hop": ("200 OK", [("Connection", "close\r\nSet-Cookie: stolen=1")]),
    "/value-date": ("200 OK", [("Date", "today\nSet-Cookie: stolen=1")]),
    "/value-bytes": ("200 OK", [("X-Evil", b"bytes")]),
    "/cl-underscore": ("200 OK", [("Content-Length", "1_7")]),
    "/cl-plus": ("200 OK", [("Content-Length", " +17 ")]),
    "/cl-space": ("200 OK", [("Content-Length", "17 ")]),
    "/cl-negative": ("200 OK", [("Content-Length", "-1")]),
    "/cl-list": ("200 OK", [("Content-Length", "17, 17")]),
    "/cl-hex": ("200 OK", [("Content-Length", "0x11")]),
    "/cl-arabic-digits": ("200 OK", [("Content-Length", "\u0661\u0667")]),
    "/cl-empty": ("200 OK", [("Content-Length", "")]),
    "/cl-huge": ("200 OK", [("Content-Length", "9" * 5000)]),
    "/cl-differ": ("200 OK", [("Content-Length", "17"), ("Content-Length", "3")]),
    "/status-crlf": ("200 OK\r\nSet-Cookie: stolen=1", []),
    "/status-short": ("20 OK", []),
    "/status-sign": ("+20 OK", []),
    "/status-nul": ("200 O\x00K", []),
    "/status-no-reason-space": ("200", []),
}
kept = {}


def application(environ, start_response):
    path = environ["PATH_INFO"]
    query = environ["QUERY_STRING"]
    if path in BAD:
        status, headers = BAD[path]
        start_response(status, headers)
        return [SECRET]
    if path == "/pid":
        body = str(os.getpid()).encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]
    if path == "/caught":
        # The error is raised in the app, which may answer something else instead.
        try:
            start_response("200 OK", [("X-Evil", "a\r\nb")])
        except ValueError as exc:
            start_response("502 Bad Gateway", [("X-Error", type(exc).__name__)])
        return [b"recovered"]
    if path == "/fine":
        start_response("200 OK", [("X-Tab", "a\tb"), ("X-Latin", "caf\xe9"),
                                  ("X-Symbols", "!#$%&'*+-.^_`|~ \"(),/:;<=>?@[\\]{}"),
                                  ("Content-Length", "5"), ("content-length", "5")])
        return [b"fine!"]
    if path == "/no-body":
        code = query or "204"
        write = start_response(code + " X", [("Content-Length", "11"),
                                            ("Transfer-Encoding", "chunked"),
                                            ("X-Kept", "yes")])
        write(b"hello ")
        return [SECRET]
    if path == "/no-body-stream":
        code = query or "204"
        start_response(code + " X", [("Content-Length", "17")])
        def body():
            yield b"hello "
            yield SECRET
        return body()
    if path == "/head-length":
        start_response("200 OK", [("Content-Length", "17")])
        return [SECRET]
    # --- a response used after it finished --------------------------------------------------
    if path == "/keep-write":
        kept["write"] = start_response("200 OK", [("Content-Type", "text/plain")])
        kept["start_response"] = start_response
        return [b"kept"]
    if path == "/use-kept":
        outcome = []
        try:
            kept["write"](SECRET)
            outcome.append("wrote")
        except Exception as exc:
            outcome.append(type(exc).__name__)
        try:
            kept["start_response"]("200 OK", [("X-Injected", "1")])
            outcome.append("started")
        except Exception as exc:
            outcome.append(type(exc).__name__)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [" ".join(outcome).encode()]
    if path == "/late-writer":
        # A greenlet of the app writes after the response ended, while the same connection
        # serves its next request.
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        def late():
            gevent.sleep(float(query or 0.3))
            try:
                write(SECRET)
                kept["late"] = "wrote"
            except Exception as exc:
                kept["late"] = type(exc).__name__
        gevent.spawn(late)
        return iter([b"streamed"])
    if path == "/late-result":
        body = kept.get("late", "pending").encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]
    if path == "/close-writes":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        class Body:
            def __iter__(self):
                yield b"body"
            def close(self):
                try:
                    write(SECRET)
                    kept["close"] = "wrote"
                except Exception as exc:
                    kept["close"] = type(exc).__name__
        return Body()
    if path == "/close-result":
        body = kept.get("close", "pending").encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]
    if path == "/slow":
        gevent.sleep(float(query or 0.6))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"slow done"]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"no route"]
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("responses")
    root = write_app(base / "app", APP)
    workdir = base / "server"
    workdir.mkdir()
    server = RailcarServer(workdir)
    server.start(str(root), "--workers", "1")
    server.pid = server.only_worker_pid()
    yield server
    server.stop()
    server.kill_everything()


def raw_exchange(server, *requests: bytes) -> bytes:
    """Send the requests on one connection, the last one closing it; everything received."""
    with server.connect() as sock:
        sock.sendall(b"".join(requests))
        return read_until_close(sock)


def assert_same_worker_serves(server):
    """The worker is the one that started, and a new connection is served by it."""
    assert server.only_worker_pid() == server.pid
    with server.connect() as sock:
        sock.sendall(request_bytes("GET", "/pid", headers=[("Connection", "close")]))
        response = Reader(sock).response()
    assert response.status == 200 and response.body == str(server.pid).encode()


def logged_error(server, path) -> str | None:
    """The exception line of the traceback logged for GET `path`, once it is in the log."""
    _, found, after = server.log().partition(f"handling GET {path}:")
    for line in after.splitlines() if found else ():
        match = re.search(r"\] ((?:Value|Type|Assertion)Error\b.*)$", line)
        if match:
            return match.group(1)
    return None


BAD_PATHS = ["/name-space", "/name-colon", "/name-empty", "/name-crlf", "/name-latin1",
             "/value-crlf", "/value-lf", "/value-cr", "/value-nul", "/value-del", "/value-esc",
             "/value-vt", "/value-unicode", "/value-hop-by-hop", "/value-date", "/value-bytes",
             "/cl-underscore", "/cl-plus", "/cl-space", "/cl-negative", "/cl-list", "/cl-hex",
             "/cl-arabic-digits", "/cl-empty", "/cl-huge", "/cl-differ", "/status-crlf",
             "/status-short", "/status-sign", "/status-nul", "/status-no-reason-space"]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_bad_status_or_header_is_a_logged_500_and_never_sent(server, path):
    raw = raw_exchange(server, request_bytes("GET", path, headers=[("Connection", "close")]))
    assert raw.startswith(b"HTTP/1.1 500 "), raw[:200]
    assert b"never-on-the-wire" not in raw and b"stolen" not in raw.lower()
    assert b"X-Evil" not in raw and b"Bad Name" not in raw
    assert raw.count(b"\r\n\r\n") == 1  # one response, nothing after it
    entry = wait_for(lambda: logged_error(server, path), 10, what="the app error logged")
    assert entry.startswith(("ValueError: ", "TypeError: ")), entry
    assert_same_worker_serves(server)


def test_the_app_can_catch_a_bad_header_and_answer_otherwise(server):
    with server.connect() as sock:
        sock.sendall(request_bytes("GET", "/caught"))
        response = Reader(sock).response()
    assert response.status == 502 and response.headers["x-error"] == "ValueError"
    assert response.body == b"recovered"


def test_tab_obs_text_and_repeated_equal_content_length_pass(server):
    with server.connect() as sock:
        sock.sendall(request_bytes("GET", "/fine") + request_bytes("GET", "/pid"))
        reader = Reader(sock)
        first, second = reader.response(), reader.response()
    assert first.status == 200 and first.body == b"fine!"
    assert first.raw_head.lower().count(b"content-length:") == 1
    assert b"X-Tab: a\tb\r\n" in first.raw_head and b"X-Latin: caf\xe9\r\n" in first.raw_head
    assert second.body == str(server.pid).encode()


@pytest.mark.parametrize("code", ["204", "304"])
@pytest.mark.parametrize("path", ["/no-body", "/no-body-stream"])
def test_204_and_304_carry_no_body_and_no_framing_the_app_set(server, code, path):
    """Two requests on one connection: if any body byte or framing leaked into the first
    response, the second would not parse as the next response."""
    with server.connect() as sock:
        sock.sendall(request_bytes("GET", f"{path}?{code}") + request_bytes("GET", "/pid"))
        reader = Reader(sock)
        head = reader.read_until(b"\r\n\r\n")
        assert head.startswith(f"HTTP/1.1 {code} X\r\n".encode())
        lowered = head.lower()
        assert b"content-length" not in lowered and b"transfer-encoding" not in lowered
        assert b"X-Kept: yes" in head or path == "/no-body-stream"
        nxt = reader.response()
        assert nxt.status == 200 and nxt.body == str(server.pid).encode()
        assert b"never-on-the-wire" not in reader.buffer and b"hello" not in reader.buffer
    assert_same_worker_serves(server)


def test_head_keeps_the_apps_content_length_without_the_body(server):
    with server.connect() as sock:
        sock.sendall(request_bytes("HEAD", "/head-length") + request_bytes("GET", "/pid"))
        reader = Reader(sock)
        head = reader.response(head=True)
        nxt = reader.response()
    assert head.headers["content-length"] == "17"
    assert nxt.body == str(server.pid).encode()


def test_kept_write_raises_on_the_same_connection_and_writes_nothing(server):
    raw = raw_exchange(server, request_bytes("GET", "/keep-write"),
                       request_bytes("GET", "/use-kept", headers=[("Connection", "close")]))
    assert b"never-on-the-wire" not in raw and b"X-Injected" not in raw
    assert raw.endswith(b"RuntimeError RuntimeError"), raw[-200:]
    assert_same_worker_serves(server)


def test_kept_write_raises_on_another_connection(server):
    with server.connect() as first:
        first.sendall(request_bytes("GET", "/keep-write"))
        assert Reader(first).response().body == b"kept"
        raw = raw_exchange(server, request_bytes("GET", "/use-kept",
                                                 headers=[("Connection", "close")]))
        first.sendall(request_bytes("GET", "/pid", headers=[("Connection", "close")]))
        rest = read_until_close(first)
    assert raw.endswith(b"RuntimeError RuntimeError") and b"never-on-the-wire" not in raw
    assert b"never-on-the-wire" not in rest and rest.endswith(str(server.pid).encode())
    assert_same_worker_serves(server)


def test_write_from_a_greenlet_after_the_response_raises(server):
    """The late write falls while the same connection serves a slower next request."""
    raw = raw_exchange(server, request_bytes("GET", "/late-writer?0.2"),
                       request_bytes("GET", "/slow?0.6", headers=[("Connection", "close")]))
    assert b"never-on-the-wire" not in raw
    assert raw.count(b"HTTP/1.1 200 ") == 2 and raw.endswith(b"slow done")
    raw = raw_exchange(server, request_bytes("GET", "/late-result",
                                             headers=[("Connection", "close")]))
    assert raw.endswith(b"RuntimeError")
    assert_same_worker_serves(server)


def test_write_from_the_iterables_close_raises(server):
    raw = raw_exchange(server, request_bytes("GET", "/close-writes"),
                       request_bytes("GET", "/close-result", headers=[("Connection", "close")]))
    assert b"never-on-the-wire" not in raw and raw.endswith(b"RuntimeError")
    time.sleep(0.1)
    assert_same_worker_serves(server)
