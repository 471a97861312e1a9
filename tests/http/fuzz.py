"""Fuzzing the HTTP layer: request generators (hypothesis strategies), a real `railcar start`
to throw them at, the checks every answer must pass, and case files for what fails.

Used by tests/test_fuzz_http.py (bounded, in CI) and bench/fuzz.py (as long as you like).

What must hold for any bytes a client sends:
- the worker neither crashes nor is replaced (the same pid answers afterwards);
- what comes back is empty (the server just closed) or starts with an HTTP/1.1 status line,
  and no response is a 5xx other than 505 (a client cannot cause a server error);
- the server closes the connection once the client has half-closed it (no hang);
- nothing reaches the log as an internal error.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

from hypothesis import strategies as st

CASES_DIR = Path(__file__).parent / "cases"

APP = '''
import os

def application(environ, start_response):
    body = b""
    if environ["PATH_INFO"] == "/read":
        body = environ["wsgi.input"].read()
    data = b"%d %d" % (os.getpid(), len(body))
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(data)))])
    return [data]
'''

# -- generating requests -------------------------------------------------------------------------

_TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=12)


def _mostly(good, bad):
    """`good` seven times in eight, else `bad`: most requests get far enough to exercise
    bodies, chunked framing and pipelining, not only the request line."""
    return st.sampled_from([True] * 7 + [False]).flatmap(lambda ok: good if ok else bad)


_METHODS = _mostly(st.sampled_from(["GET", "POST", "PUT", "HEAD", "OPTIONS", "DELETE"]),
                   st.sampled_from(["PATCH", "CONNECT", "TRACE", "get", "G ET", ""]) | _TEXT)
_TARGETS = _mostly(st.sampled_from(["/", "/read", "/read?x=1#f", "http://fuzz.example/read",
                                    "https://fuzz.example:8443/"]),
                   st.sampled_from(["*", "//x", "/%00", "/a b", "fuzz.example:80",
                                    "http://u@fuzz.example/", "/\x7f", "/" + "a" * 300])
                   | _TEXT)
_VERSIONS = _mostly(st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]),
                    st.sampled_from(["HTTP/2.0", "HTTP/1.1 ", "http/1.1", "HTTP/1",
                                     "HTTP/1.10", ""]))
_HEADER_NAMES = _mostly(st.sampled_from(["X-A", "Cookie", "Accept", "Connection", "Expect",
                                         "Upgrade"]),
                        st.sampled_from(["Host", "Content-Length", "Transfer-Encoding", "X_B",
                                         " Host", "Host ", "Content-Length ", ""]) | _TEXT)
_HEADER_VALUES = _mostly(st.sampled_from(["fuzz.example", "0", "5", "chunked", "close",
                                          "keep-alive", "100-continue", "websocket",
                                          "Upgrade", "text/plain", ""]),
                         st.sampled_from(["+5", "1_0", "-1", " 3 ", "99999999999999999999",
                                          "gzip, chunked", "chunked, gzip",
                                          "chunked, chunked", "a\x00b", "a\rb",
                                          "v" * 70000]) | _TEXT)
_EOLS = _mostly(st.just("\r\n"), st.sampled_from(["\n", "\r", "\r\r\n"]))


@st.composite
def _chunk_extension(draw):
    ows = st.sampled_from(["", "", " ", "\t", "  "])
    token = st.sampled_from(["a", "name", "x-y", "q", "b@d", ""])
    value = st.sampled_from(["", "v", '"quoted"', '"q \\" x"', '"open', "x y", "e" * 5000])
    text = draw(ows) + ";" + draw(ows) + draw(token)
    if draw(st.booleans()):
        text += draw(ows) + "=" + draw(ows) + draw(value)
    return text


@st.composite
def _chunked_body(draw):
    eol = draw(_EOLS)
    parts = []
    for data in draw(st.lists(st.binary(min_size=1, max_size=40), max_size=4)):
        size = len(data) + draw(_mostly(st.just(0), st.sampled_from([-1, 1, 100])))
        exts = "".join(draw(st.lists(_chunk_extension(), max_size=2)))
        parts.append(f"{max(size, 0):x}{exts}".encode() + b"\r\n" + data + b"\r\n")
    if draw(st.booleans()):
        last = "0" + "".join(draw(st.lists(_chunk_extension(), max_size=2))) + "\r\n"
        trailers = "".join(f"{draw(_HEADER_NAMES)}: {draw(_HEADER_VALUES)}\r\n"
                           for _ in range(draw(st.integers(0, 2))))
        parts.append((last + trailers + (eol if draw(st.booleans()) else "\r\n"))
                     .encode("latin-1"))
    return b"".join(parts)


@st.composite
def structured_request(draw):
    """One request built from plausible and broken parts."""
    eol = draw(_EOLS)
    lines = [f"{draw(_METHODS)} {draw(_TARGETS)} {draw(_VERSIONS)}"]
    if draw(st.sampled_from([True] * 9 + [False])):
        lines.append("Host: fuzz.example")
    headers = draw(st.lists(st.tuples(_HEADER_NAMES, _HEADER_VALUES), max_size=3))
    lines += [f"{name}: {value}" for name, value in headers]
    eol = eol if draw(st.sampled_from([True] * 3 + [False])) else draw(_EOLS)
    body_kind = draw(st.sampled_from(["none", "length", "chunked", "raw"]))
    body = b""
    if body_kind == "length":
        body = draw(st.binary(max_size=60))
        off = draw(_mostly(st.just(0), st.sampled_from([-1, 2])))
        lines.append(f"Content-Length: {len(body) + off}")
    elif body_kind == "chunked":
        lines.append("Transfer-Encoding: chunked")
        body = draw(_chunked_body())
    elif body_kind == "raw":
        body = draw(st.binary(max_size=30))
    head = (eol.join(lines) + eol + eol).encode("latin-1", "replace")
    return head + body


def _seeds():
    from tests.http.support import load_cases  # the case files are the mutation seeds
    return [case.data for case in load_cases() if len(case.data) < 4096]


@st.composite
def mutated(draw, base):
    """`base` with a few byte-level edits: insert, delete, overwrite, duplicate."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "duplicate"]))
        at = draw(st.integers(0, len(data)))
        if op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8)
                               | st.sampled_from([b"\r\n", b"\n", b"\0", b" ", b";", b":",
                                                  b"\r\n\r\n", b"0\r\n\r\n"]))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        elif op == "replace" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "duplicate":
            data[at:at] = data[at:at + draw(st.integers(1, 16))]
    return bytes(data)


def requests_strategy():
    """Whole client transmissions: 1-3 pipelined requests, mutated now and then."""
    one = st.sampled_from([True] * 3 + [False]).flatmap(
        lambda ok: structured_request() if ok else st.sampled_from(_seeds()))
    pipelined = st.lists(one, min_size=1, max_size=3).map(b"".join)
    return _mostly(pipelined, mutated(pipelined))


def cuts_strategy():
    """Where to split a transmission into separate sends (fractions of its length)."""
    return st.lists(st.floats(0, 1), max_size=4)


def split(data, cuts):
    points = sorted({int(len(data) * cut) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])] or [b""]


# -- the target ----------------------------------------------------------------------------------

_STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) ")
_SERVER_ERROR = re.compile(rb"HTTP/1\.1 5(?!05)\d\d ")


class FuzzFailure(AssertionError):
    """An input broke one of the rules in the module docstring."""


class Target:
    """A real `railcar start` (one worker) serving APP, in a temporary directory."""

    def __init__(self):
        from conftest import RailcarServer  # tests/ is on sys.path under pytest and bench
        self.dir = Path(tempfile.mkdtemp(prefix="railcar-fuzz-"))
        app = self.dir / "app"
        app.mkdir()
        (app / "wsgi.py").write_text(APP)
        (self.dir / "srv").mkdir()
        self.server = RailcarServer(self.dir / "srv")
        self.server.start(str(app), "--workers", "1", "--header-timeout", "5",
                          "--client-body-timeout", "5")
        self.pid = self.worker_pid()

    def worker_pid(self):
        answer = self._get()
        return int(answer.split()[0])

    def _get(self):
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: fuzz.example\r\nConnection: close\r\n\r\n")
            raw = _read_all(sock, 10)
        head, _, body = raw.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200 "):
            raise FuzzFailure(f"a good request after the input got {raw[:200]!r}")
        return body

    def check(self, data, cuts=()):
        """Send `data` in pieces, half-close, read to the end; raise FuzzFailure if a rule
        is broken."""
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                for piece in split(data, cuts):
                    sock.sendall(piece)
                sock.shutdown(socket.SHUT_WR)
            except OSError:  # the server closed first (HTTP/1.0, an error): its answer is read
                pass
            started = time.monotonic()
            raw = _read_all(sock, 8)
            if time.monotonic() - started >= 8:
                raise FuzzFailure("the server did not close after the client's EOF")
        if raw and not _STATUS_LINE.match(raw):
            raise FuzzFailure(f"not an HTTP/1.1 response: {raw[:200]!r}")
        if _SERVER_ERROR.search(raw):
            raise FuzzFailure(f"a server error for a client's input: {raw[:300]!r}")
        pid = self.worker_pid()
        if pid != self.pid:
            raise FuzzFailure(f"worker {self.pid} was replaced by {pid}")
        if "internal error" in self.server.log():
            raise FuzzFailure("internal error in the log:\n" + self.server.log()[-3000:])

    def close(self):
        self.server.stop()
        self.server.kill_everything()
        shutil.rmtree(self.dir, ignore_errors=True)


def _read_all(sock, timeout):
    deadline = time.monotonic() + timeout
    chunks = []
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except OSError:  # timeouts, resets
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


# -- case files ----------------------------------------------------------------------------------

def case_text(data: bytes) -> str:
    """`data` in the case-file notation (tests/http/support.py): escapes, a line per CRLF."""
    out = []
    for byte in data:
        char = chr(byte)
        if char == "\r":
            out.append("\\r")
        elif char == "\n":
            out.append("\\n\n")
        elif char == "\t":
            out.append("\\t")
        elif char == "\\":
            out.append("\\\\")
        elif char in "{}" or not 0x20 <= byte < 0x7f:
            out.append(f"\\x{byte:02x}")
        else:
            out.append(char)
    return "".join(out)


def save_case(data: bytes, reason: str, directory: Path = CASES_DIR) -> Path:
    """Write a failing input as tests/http/cases/fuzz_<hash>.http. Its `# expect:` says
    `review`: replace it with the outcome the server must give (a status or "close");
    until then the parser tests fail on it, so it is not forgotten."""
    name = "fuzz_" + hashlib.sha256(data).hexdigest()[:12] + ".http"
    path = directory / name
    lines = ["# expect: review"]
    lines += ["# note: " + line for line in reason.splitlines()[:5]]
    path.write_text("\n".join(lines) + "\n" + case_text(data) + "\n", encoding="latin-1",
                    errors="replace")
    return path
