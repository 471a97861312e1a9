"""Helpers for the HTTP tests: the .http case files, a server subprocess, raw clients.

Case files (tests/http/cases/*.http) hold one raw request each, after header lines:

    # expect: 400            the status the server answers, or "close" (no response at all)
    # env PATH_INFO: /a b    for "200" cases: environ values the app must see ("_body": body)
    # note: found by ...     a comment (bench/fuzz.py writes one on the cases it saves)

In the request text, line breaks are ignored (write them as \\r\\n, or \\n for a bare LF);
the escapes \\r \\n \\t \\0 \\xNN and \\\\ are decoded, and {N*TEXT} repeats TEXT N times
(innermost first, so repetitions nest).
"""

import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CASES_DIR = Path(__file__).parent / "cases"

_REPEAT = re.compile(r"\{(\d+)\*([^{}]*)\}")
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|[rnt0\\])")
_SIMPLE = {"r": "\r", "n": "\n", "t": "\t", "0": "\0", "\\": "\\"}


def unescape(text):
    """Decode a case file's escapes into bytes."""
    def one(match):
        code = match.group(1)
        return chr(int(code[1:], 16)) if code[0] == "x" else _SIMPLE[code]
    return _ESCAPE.sub(one, text).encode("latin-1")


@dataclass
class Case:
    name: str
    expect: str
    data: bytes
    env: dict = field(default_factory=dict)


def load_case(path):
    expect, env, lines = None, {}, []
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.startswith("# expect:"):
            expect = line.split(":", 1)[1].strip()
        elif line.startswith("# note:"):
            continue
        elif line.startswith("# env "):
            key, _, value = line[len("# env "):].partition(": ")
            env[key] = unescape(value).decode("latin-1")
        else:
            lines.append(line)
    text = "".join(lines)
    while True:
        expanded = _REPEAT.sub(lambda m: m.group(2) * int(m.group(1)), text)
        if expanded == text:
            break
        text = expanded
    assert expect, f"{path.name}: no '# expect:' line"
    return Case(path.stem, expect, unescape(text), env)


def load_cases():
    return [load_case(path) for path in sorted(CASES_DIR.glob("*.http"))]


class ServerProcess:
    """tests/http/serve.py in a subprocess, on a fresh 127.0.0.1 port (or a unix socket)."""

    def __init__(self, *options):
        self.stderr_file = tempfile.TemporaryFile()
        self._out = b""
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "server"), str(ROOT)]))
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.http.serve", *options],
                                     cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=self.stderr_file)
        line = self.readline(10)
        assert line.startswith("READY "), f"server did not start: {line!r} {self.stderr()}"
        address = line.split(" ", 1)[1]
        self.port = int(address) if address.isdigit() else None
        self.path = None if self.port else address

    def readline(self, timeout):
        """One line of the server's stdout, or "" after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._out:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return ""
            chunk = os.read(fd, 65536)
            if not chunk:
                return ""
            self._out += chunk
        line, _, self._out = self._out.partition(b"\n")
        return line.decode().strip()

    def url(self, path="/"):
        return f"http://127.0.0.1:{self.port}{path}"

    def connect(self, timeout=5.0):
        if self.path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(self.path)
        else:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        return sock

    def signal(self, signum):
        self.proc.send_signal(signum)

    def access_log(self):
        """The access log lines so far (the server prints them on SIGUSR1)."""
        self.signal(signal.SIGUSR1)
        lines = []
        while line := self.readline(0.5):
            lines.append(line)
        return lines

    def stderr(self):
        self.stderr_file.seek(0)
        return self.stderr_file.read().decode(errors="replace")

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self.stderr_file.close()


def exchange(server, data, timeout=5.0):
    """Send `data`, half-close, and return everything the server sends until it closes."""
    with server.connect(timeout) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may refuse before reading everything; its answer is still there
        return read_until_close(sock)


def read_until_close(sock):
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class Response:
    status: int
    headers: dict  # lower-cased name -> value (repeated names joined with ", ")
    body: bytes
    raw_head: bytes


class Reader:
    """Reads HTTP responses one by one from a socket (responses may be pipelined)."""

    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed")
        self.buffer += chunk

    def read_until(self, marker):
        while marker not in self.buffer:
            self._fill()
        data, _, self.buffer = self.buffer.partition(marker)
        return data + marker

    def read_exactly(self, n):
        while len(self.buffer) < n:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def at_eof(self, timeout=2.0):
        """True if the server closes the connection (nothing more arrives) within timeout."""
        self.sock.settimeout(timeout)
        try:
            return not self.buffer and not self.sock.recv(1)
        except ConnectionResetError:
            return True

    def response(self, head=False):
        """The next response; `head` for a response to HEAD (never a body)."""
        raw = self.read_until(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        if status == 100:
            return self.response(head)
        headers = {}
        for line in lines[1:-2]:
            name, _, value = line.partition(":")
            name, value = name.lower(), value.strip()
            headers[name] = headers[name] + ", " + value if name in headers else value
        if head or status in (204, 304):
            body = b""
        elif headers.get("transfer-encoding") == "chunked":
            body = self._chunked()
        elif "content-length" in headers:
            body = self.read_exactly(int(headers["content-length"]))
        else:
            body = self.buffer + read_until_close(self.sock)
            self.buffer = b""
        return Response(status, headers, body, raw)

    def _chunked(self):
        parts = []
        while True:
            size = int(self.read_until(b"\r\n")[:-2].split(b";")[0], 16)
            if size == 0:
                self.read_until(b"\r\n")
                return b"".join(parts)
            parts.append(self.read_exactly(size))
            assert self.read_exactly(2) == b"\r\n"


def request_bytes(method="GET", path="/", headers=(), body=b"", version="1.1",
                  host="test.local"):
    """A well-formed request as bytes (Content-Length added for a body)."""
    lines = [f"{method} {path} HTTP/{version}"]
    if host:
        lines.append(f"Host: {host}")
    lines += [f"{name}: {value}" for name, value in headers]
    if body and not any(name.lower() in ("content-length", "transfer-encoding")
                        for name, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def wait_for(predicate, timeout=5.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
