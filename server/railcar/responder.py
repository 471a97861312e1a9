"""The master's own small HTTP listeners: the metrics endpoint (railcar.metrics) and the answer
while an app is down (railcar.fallback), served by the workers' HTTP server (railcar.http: the
same strict parser, limits and response framing, with a WSGI app of the master's), bounded in
number, size and time so that no client can make the master hold more than a fixed amount.

Runs in the master (gevent). One request per connection: every answer says `Connection:
close`. A connection holds one of `max_connections` slots for at most `deadline` seconds,
whatever it is doing (reading the request head, at most MAX_HEAD bytes of header fields, or
writing the answer), after which it is closed. When every slot is taken, the oldest connection
is closed to make room for the new one: it is the one nearest its deadline anyway, and a
client that holds a slot for long (a slowloris) is exactly what must not crowd out the next
one. The listeners stay open when the responder stops (the master owns them). Idempotent
start/stop; a stopped responder can start again.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

from .http import HTTPServer, Limits

MAX_CONNECTIONS = 100
DEADLINE = 10.0          # seconds for a whole exchange: request head in, answer out
MAX_HEAD = 16 * 1024     # bytes of header fields (names and values)
EVICTION_LOG_INTERVAL = 10.0


def plain(start_response, status: str, body: bytes,
          content_type: str = "text/plain; charset=utf-8",
          headers: tuple[tuple[str, str], ...] = (), exc_info=None) -> list[bytes]:
    """Answer a whole `body` from a WSGI app of the master's: `return plain(...)`."""
    start_response(status, [("Content-Type", content_type),
                            ("Content-Length", str(len(body))), *headers], exc_info)
    return [body]


class Responder:
    """Serve the WSGI `app` on listeners of the master's, under the limits above. An error in
    `app` is logged (with `name`) and answered 500."""

    def __init__(self, name: str, app: Callable, log, max_connections: int = MAX_CONNECTIONS,
                 deadline: float = DEADLINE):
        self.name = name
        self.app = app
        self.log = log
        self.limits = Limits(max_header_size=MAX_HEAD, header_timeout=deadline,
                             keepalive_timeout=deadline, client_body_timeout=deadline,
                             worker_connections=max_connections, trusted_proxies=())
        self.deadline = deadline
        self.server: HTTPServer | None = None
        self.evicted = 0
        self.next_eviction_log = 0.0

    @property
    def running(self) -> bool:
        return self.server is not None

    def start(self, listeners) -> None:
        if self.server is None:
            self.server = HTTPServer(listeners, self._answer, self.limits,
                                     lifetime=self.deadline, evict_busy=True,
                                     on_evict=self._evicted, own_listeners=False)
            self.server.start()

    def stop(self, close_connections: bool = False) -> None:
        """Stop accepting; with `close_connections` also end the exchanges under way (they
        end by their deadline otherwise)."""
        server, self.server = self.server, None
        if server is not None:
            if close_connections:
                server.stop()
            else:
                server.stop_accepting()

    def _answer(self, environ, start_response):
        def closing(status, headers, exc_info=None):
            return start_response(status, [*headers, ("Connection", "close")], exc_info)

        try:
            return self.app(environ, closing)
        except Exception:
            self.log.exception("%s: answering a request failed", self.name)
            return plain(closing, "500 Internal Server Error", b"internal error\n",
                         exc_info=sys.exc_info())

    def _evicted(self, _total: int) -> None:
        self.evicted += 1
        now = time.monotonic()
        if now >= self.next_eviction_log:
            self.next_eviction_log = now + EVICTION_LOG_INTERVAL
            self.log.warning("%s: %d connections open, the most allowed; closed the oldest "
                             "(%d so far)", self.name, self.limits.worker_connections,
                             self.evicted)
