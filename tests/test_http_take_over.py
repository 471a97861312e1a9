"""HTTPServer.take_over over real sockets, in-process: a busy worker defers new connections to
idler workers (up to the accept deferral), except the ones it was told to take over from a
retiring worker, which it accepts at once.

"Busy" is made deterministic: a greenlet that yields without end keeps the event loop from
ever going idle, as a worker saturated by its clients does. Clients connect with plain
blocking sockets (the kernel completes the handshake into the listen queue); each accept is
recorded with the loop turns and the time since the clients connected. Tests of what is
deferred make the deferral 30 s, so "deferred" is "not accepted within 0.3 s", whatever the
load of the machine.
"""

import socket
import time

import gevent
import pytest

from railcar.http import HTTPServer
from railcar.http import server as http_server

DEFER_MS = http_server._ACCEPT_DEFER * 1000


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


class BusyServer:
    """An HTTPServer on 127.0.0.1 holding one keep-alive connection, its loop kept busy."""

    def __init__(self):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.server = HTTPServer([self.listener], hello)
        self.turns = 0
        self.accepted = []      # (loop turns, monotonic) of each connection accepted
        spawn_connection = self.server._spawn_connection

        def recorded(*args):
            self.accepted.append((self.turns, time.monotonic()))
            spawn_connection(*args)

        self.server._spawn_connection = recorded
        self.server.start()
        self.clients = []
        self.spinning = False
        self.connect().sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        self.wait_accepted(1)
        self.spinning = True
        self.spinner = gevent.spawn(self._spin)

    def _spin(self):
        while self.spinning:
            self.turns += 1
            gevent.sleep(0)

    def connect(self):
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self.clients.append(sock)
        return sock

    def wait_accepted(self, count, timeout=5.0):
        deadline = time.monotonic() + timeout
        while len(self.accepted) < count and time.monotonic() < deadline:
            gevent.sleep(0 if self.spinning else 0.001)
        assert len(self.accepted) >= count, f"{len(self.accepted)} of {count} accepted"

    def arrivals(self, count):
        """Connect `count` clients at once; (loop turns, ms) from then to each accept."""
        before = len(self.accepted)
        turns, began = self.turns, time.monotonic()
        for _ in range(count):
            self.connect()
        self.wait_accepted(before + count)
        return [(t - turns, (at - began) * 1000) for t, at in self.accepted[before:]]

    def close(self):
        self.spinning = False
        self.spinner.join(timeout=5)
        for sock in self.clients:
            sock.close()
        self.server.stop()


@pytest.fixture
def busy():
    server = BusyServer()
    yield server
    server.close()


def test_a_busy_server_defers_new_connections_to_idler_workers(busy):
    arrivals = busy.arrivals(2)
    assert all(ms >= DEFER_MS / 2 for _, ms in arrivals), arrivals


def still_waiting(busy, count, seconds=0.3):
    """Connect `count` clients; True if none of them is accepted within `seconds`."""
    before = len(busy.accepted)
    for _ in range(count):
        busy.connect()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        gevent.sleep(0)
    return len(busy.accepted) == before


@pytest.fixture
def long_deferral(monkeypatch):
    """A deferral far longer than any test: a connection deferred is not accepted at all."""
    monkeypatch.setattr(http_server, "_ACCEPT_DEFER", 30.0)


def test_take_over_accepts_that_many_connections_at_once_then_defers_again(
        long_deferral, busy):
    busy.server.take_over(2)
    first, second = busy.arrivals(2)
    assert first[0] == second[0], "both in the same accept"
    assert still_waiting(busy, 1), "the third is deferred again"


def test_take_over_without_a_count_takes_every_connection_while_it_lasts(
        long_deferral, busy):
    busy.server.take_over(None)
    arrivals = busy.arrivals(3) + busy.arrivals(2)
    assert len(arrivals) == 5


def test_take_over_ends_after_its_time(long_deferral, busy):
    busy.server.take_over(5, seconds=0.0)
    assert still_waiting(busy, 2)


def test_take_over_ends_a_deferral_under_way(long_deferral, busy):
    assert still_waiting(busy, 1), "deferred (for 30 s)"
    busy.server.take_over(2)
    busy.wait_accepted(2)       # the one waiting, at once
    assert busy.arrivals(1), "and the take-over goes on"
