"""WSGI applications the HTTP server tests run, dispatched on PATH_INFO."""

import hashlib
import json
import time
from wsgiref.validate import validator


def hello(environ, start_response):
    body = b"Hello, World!"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


def echo_environ(environ, start_response):
    """The environ's str values as JSON (wsgi.* and non-str values left out)."""
    data = {k: v for k, v in environ.items() if type(v) is str}
    data["_body"] = environ["wsgi.input"].read().decode("latin-1")
    body = json.dumps(data).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def upload_hash(environ, start_response):
    """sha256 and size of the request body, read in 64 KiB pieces."""
    stream = environ["wsgi.input"]
    digest, size = hashlib.sha256(), 0
    while True:
        chunk = stream.read(65536)
        if not chunk:
            break
        digest.update(chunk)
        size += len(chunk)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{size} {digest.hexdigest()}".encode()]


def stream(environ, start_response):
    """Yields `n` chunks, sleeping `delay` seconds before each but the first."""
    query = dict(p.split("=") for p in environ["QUERY_STRING"].split("&") if p)
    n, delay = int(query.get("n", 3)), float(query.get("delay", 0.3))
    start_response("200 OK", [("Content-Type", "text/plain")])
    for i in range(n):
        if i:
            time.sleep(delay)
        yield f"chunk {i} at {time.time():.3f}\n".encode()


def slow(environ, start_response):
    """Sleeps `QUERY_STRING` seconds, then answers."""
    time.sleep(float(environ["QUERY_STRING"] or 1))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"slept"]


def crash(environ, start_response):
    raise RuntimeError("boom")


def crash_mid_stream(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"partial"
    raise RuntimeError("boom mid-stream")


def big(environ, start_response):
    """A 16 MiB streamed body, for clients that hang up early."""
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    piece = b"x" * 65536
    for _ in range(256):
        yield piece


def big_once(environ, start_response):
    """A 16 MiB body as a single list item: sent with one send_all."""
    body = b"y" * (16 << 20)
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [body]


def ignore_body(environ, start_response):
    """Answers without reading the request body."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "7")])
    return [b"ignored"]


def read_later(environ, start_response):
    """Waits `QUERY_STRING` seconds (default 0.5) before reading the body, then echoes it."""
    time.sleep(float(environ["QUERY_STRING"] or 0.5))
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def custom_headers(environ, start_response):
    """Sets its own Server and Date, and a hop-by-hop header the server must replace."""
    start_response("200 OK", [("Server", "custom/1.0"), ("Date", "Thu, 01 Jan 2026 00:00:00 GMT"),
                              ("Transfer-Encoding", "identity"), ("Content-Length", "2")])
    return [b"ok"]


def injected_header(environ, start_response):
    start_response("200 OK", [("X-Evil", "a\r\nSet-Cookie: stolen=1")])
    return [b"never sent"]


def head_body(environ, start_response):
    """Yields a body even for HEAD; the server must not send it."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "11")])
    yield b"hello"
    yield b" world"


def write_callable(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written ")
    return [b"returned"]


def http10_stream(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"one "
    yield b"two"


def checked(environ, start_response):
    """The validator-wrapped app: reads the body (if any) and streams a reply."""
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"got "
    yield str(len(body)).encode()


ROUTES = {
    "/hello": hello,
    "/environ": echo_environ,
    "/upload": upload_hash,
    "/stream": stream,
    "/slow": slow,
    "/crash": crash,
    "/crash-mid-stream": crash_mid_stream,
    "/big": big,
    "/big-once": big_once,
    "/ignore-body": ignore_body,
    "/head-body": head_body,
    "/read-later": read_later,
    "/custom-headers": custom_headers,
    "/injected-header": injected_header,
    "/write": write_callable,
    "/http10-stream": http10_stream,
    "/validated": validator(checked),
}


def app(environ, start_response):
    handler = ROUTES.get(environ["PATH_INFO"], echo_environ)
    return handler(environ, start_response)
