"""The master's own small HTTP listeners: the metrics endpoint (railcar.metrics) and the answer
while an app is down (railcar.fallback). One request per connection, bounded in number, size
and time, so no client can make the master hold more than a fixed amount.

Runs in the master (gevent). A connection holds one of `max_connections` slots for at most
`deadline` seconds: reading the request head (at most MAX_HEAD bytes) and writing the whole
answer run under that one deadline, after which the connection is closed whatever it was
doing. When every slot is taken, the oldest connection is closed to make room for the new
one: it is the one nearest its deadline anyway, and a client that holds a slot for long (a
slowloris) is exactly what must not crowd out the next one. Idempotent start/stop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import gevent

from .http.wire import date_header

MAX_CONNECTIONS = 100
DEADLINE = 10.0          # seconds for a whole exchange: request head in, answer out
MAX_HEAD = 16 * 1024
EVICTION_LOG_INTERVAL = 10.0


@dataclass(frozen=True)
class Request:
    method: str
    target: str


def response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8",
             head_only: bool = False, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A whole HTTP/1.1 response with Content-Length and Connection: close."""
    lines = [f"HTTP/1.1 {status}", date_header().rstrip("\r\n"), "Server: railcar",
             f"Content-Type: {content_type}", f"Content-Length: {len(body)}",
             *(f"{name}: {value}" for name, value in headers), "Connection: close"]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


BAD_REQUEST = response("400 Bad Request", b"bad request\n")
INTERNAL_ERROR = response("500 Internal Server Error", b"internal error\n")
HEAD_TOO_LARGE = response("431 Request Header Fields Too Large", b"request head too large\n")


class Responder:
    """Accept on listeners and answer each request with `answer(request) -> bytes`."""

    def __init__(self, name: str, answer: Callable[[Request], bytes], log,
                 max_connections: int = MAX_CONNECTIONS, deadline: float = DEADLINE):
        self.name = name
        self.answer = answer
        self.log = log
        self.max_connections = max_connections
        self.deadline = deadline
        self.acceptors: list[gevent.Greenlet] = []
        self.connections: dict[gevent.Greenlet, float] = {}    # oldest first
        self.evicted = 0
        self.next_eviction_log = 0.0

    @property
    def running(self) -> bool:
        return bool(self.acceptors)

    def start(self, listeners) -> None:
        if not self.acceptors:
            self.acceptors = [gevent.spawn(self._accept, listener) for listener in listeners]

    def stop(self, close_connections: bool = False) -> None:
        """Stop accepting; with `close_connections` also end the exchanges under way (they
        end by their deadline otherwise)."""
        acceptors, self.acceptors = self.acceptors, []
        gevent.killall(acceptors, block=False)
        if close_connections:
            gevent.killall(list(self.connections), block=False)

    def _accept(self, listener) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                continue        # another process (a worker) took that connection
            except OSError:
                gevent.sleep(0.5)   # out of descriptors, for one: back off
                continue
            self._make_room()
            connection = gevent.spawn(self._serve, sock)
            self.connections[connection] = time.monotonic()
            connection.link(self._forget)

    def _forget(self, connection: gevent.Greenlet) -> None:
        self.connections.pop(connection, None)

    def _make_room(self) -> None:
        while len(self.connections) >= self.max_connections:
            oldest = next(iter(self.connections))
            self.connections.pop(oldest)
            oldest.kill(block=False)
            self.evicted += 1
        now = time.monotonic()
        if self.evicted and now >= self.next_eviction_log:
            self.next_eviction_log = now + EVICTION_LOG_INTERVAL
            self.log.warning("%s: %d connections open, the most allowed; closed the oldest "
                             "(%d so far)", self.name, self.max_connections, self.evicted)

    def _serve(self, sock) -> None:
        try:
            with gevent.Timeout(self.deadline, False):
                try:
                    reply = self._reply(sock)
                except OSError:
                    raise
                except Exception:
                    self.log.exception("%s: answering a request failed", self.name)
                    reply = INTERNAL_ERROR
                if reply:
                    sock.sendall(reply)
        except OSError:
            pass
        finally:
            sock.close()

    def _reply(self, sock) -> bytes | None:
        head = bytearray()
        while b"\r\n\r\n" not in head and b"\n\n" not in head:
            if len(head) > MAX_HEAD:
                return HEAD_TOO_LARGE
            chunk = sock.recv(4096)
            if not chunk:
                return None
            head += chunk
        request_line = bytes(head).split(b"\n", 1)[0].rstrip(b"\r").split(b" ")
        if len(request_line) != 3 or not request_line[2].startswith(b"HTTP/"):
            return BAD_REQUEST
        method, target = request_line[0].decode("latin-1"), request_line[1].decode("latin-1")
        return self.answer(Request(method, target))
