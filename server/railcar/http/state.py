"""What one HTTP server and its connections share: counters, flags, the open connections.

A `ServerState` is owned by the server (server.py) and handed to every connection it
accepts; a connection updates the counters and reads the flags through it, and a response
reads `retiring` from it. Nothing below the server holds the server itself (uvicorn's
ServerState plays the same part). Single-threaded (one gevent loop), so the counters are
plain ints updated in place; `stats()` is their snapshot for the master.

A `Service` is the other half of what a connection is given: what it serves with (the
application, the limits, the access log, the trusted proxies, the request deadline), fixed
for the server's life.
"""

import sys
from bisect import bisect_left

from gevent.event import Event

__all__ = ["LATENCY_BUCKETS", "QUEUE_BUCKETS", "RECV_SIZE", "ServerState", "Service"]

RECV_SIZE = 65536
# Upper bounds (seconds) of the request latency histogram buckets; one more bucket is +Inf.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Likewise for queue times (X-Request-Start to the app being called; see requestinfo.py).
QUEUE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServerState:
    """Counters and flags of one server, updated by its connections.

    - `requests`: requests served (the app was called); `in_flight`: being served now;
      `long_lived`: open WebSockets and streaming responses (connection.py), not in_flight;
      `max_in_flight`: more than this in flight are refused 503 (`overloaded` counts them);
    - `timed_out`: requests cut off at max_request_time; `evicted`: idle connections closed
      to make room at the connection limit;
    - `status_counts[code // 100]`, `latency_counts[i]` (requests that took at most
      LATENCY_BUCKETS[i] seconds, the last one +Inf, not cumulative), `latency_sum`;
    - `queue_counts`, `queue_sum`: the same over QUEUE_BUCKETS for the queue times of the
      requests that came with one (a trusted proxy's X-Request-Start);
    - `retiring`: set once by the server when it stops accepting; connections then finish
      their request with `Connection: close` and end;
    - `connections`: the open connections, oldest first (a dict used as an ordered set);
      a connection is added by the server when accepted and removes itself (`closed`);
    - `idle_ticks`: counts idle waits begun, so idle connections can be ordered by age;
    - `load`: the app's shared table of open-connection counts (railcar.balance.LoadTable), kept up
      to date here, or None.
    """

    __slots__ = ("requests", "in_flight", "long_lived", "max_in_flight", "overloaded",
                 "timed_out", "evicted", "status_counts", "latency_counts", "latency_sum",
                 "queue_counts", "queue_sum", "retiring",
                 "idle_ticks", "connections", "max_connections", "room", "all_closed", "load")

    def __init__(self, max_connections, max_in_flight=0, load=None):
        self.requests = 0
        self.in_flight = 0
        self.long_lived = 0
        self.max_in_flight = max_in_flight or sys.maxsize
        self.overloaded = 0
        self.timed_out = 0
        self.evicted = 0
        self.status_counts = [0] * 6
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.queue_counts = [0] * (len(QUEUE_BUCKETS) + 1)
        self.queue_sum = 0.0
        self.retiring = False
        self.idle_ticks = 0
        self.connections = {}
        self.max_connections = max_connections
        self.room = Event()  # set while under max_connections
        self.room.set()
        self.all_closed = Event()  # set when the last connection of a retiring server closed
        self.load = load

    def opened(self, conn):
        """Count a newly accepted connection."""
        connections = self.connections
        connections[conn] = None
        if len(connections) >= self.max_connections:
            self.room.clear()
        if self.load is not None and not self.retiring:
            self.load.publish(len(connections))

    def closed(self, conn):
        """A connection ended (called once, by the connection itself)."""
        self.connections.pop(conn, None)
        self.room.set()
        if self.retiring:
            if not self.connections:
                self.all_closed.set()
        elif self.load is not None:
            self.load.publish(len(self.connections))

    def answered(self, code, elapsed):
        """Count a request the app answered with status `code` in `elapsed` seconds."""
        self.status_counts[code // 100 % 6] += 1
        self.latency_counts[bisect_left(LATENCY_BUCKETS, elapsed)] += 1
        self.latency_sum += elapsed

    def queued(self, seconds):
        """Count a request that waited `seconds` before reaching this worker."""
        self.queue_counts[bisect_left(QUEUE_BUCKETS, seconds)] += 1
        self.queue_sum += seconds

    def refused(self, code):
        """Count a request answered `code` without calling the app."""
        self.status_counts[code // 100 % 6] += 1

    def stats(self):
        """Requests served in total, requests in flight, open connections, and the counters."""
        return {"requests": self.requests, "in_flight": self.in_flight,
                "long_lived": self.long_lived,
                "connections": len(self.connections), "overloaded": self.overloaded,
                "evicted": self.evicted,
                "timed_out": self.timed_out,
                "status_counts": {f"{i}xx": n for i, n in enumerate(self.status_counts) if i},
                "latency": {"buckets": list(LATENCY_BUCKETS), "counts": self.latency_counts,
                            "sum": self.latency_sum},
                "queue": {"buckets": list(QUEUE_BUCKETS), "counts": self.queue_counts,
                          "sum": self.queue_sum}}


class Service:
    """What every connection of one server serves with; fixed for the server's life.

    `app` (WSGI), `limits` (server.Limits), `access_log` (a callable taking one line, or
    None) and `access_log_json` (its lines are JSON objects, else text; see accesslog.py), `trusted_proxies` (proxies.TrustedProxies), `deadline` (deadline.Deadline, or None
    without max_request_time), and `recv_buffer`: one receive buffer shared by the
    connections, each filling and parsing it without a switch in between.
    """

    __slots__ = ("app", "limits", "access_log", "access_log_json", "trusted_proxies",
                 "deadline", "recv_buffer")

    def __init__(self, app, limits, access_log, trusted_proxies, deadline=None,
                 access_log_format="text"):
        self.app = app
        self.limits = limits
        self.access_log = access_log
        self.access_log_json = access_log_format == "json"
        self.trusted_proxies = trusted_proxies
        self.deadline = deadline
        self.recv_buffer = bytearray(RECV_SIZE)
