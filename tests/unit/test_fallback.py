"""The master's answer while an app is down (railcar.fallback), on the fake factory and a real
loopback listener: a 503 (an error page in development) once the app's boot failed and no
worker is ready, never while a worker serves, and the workers get the listener back as soon
as one is ready."""

import gevent.socket
import pytest

from .fakes import FAIL, READY, Harness

from railcar import states


@pytest.fixture
def listener():
    sock = gevent.socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock
    sock.close()


def get(listener) -> tuple[str, dict[str, str], str]:
    """GET / on the listener: (status line, headers, body), read until the server closes."""
    with gevent.socket.create_connection(listener.getsockname(), timeout=5) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: app.example\r\n\r\n")
        data = b""
        while chunk := client.recv(65536):
            data += chunk
    head, _, body = data.decode().partition("\r\n\r\n")
    status, *lines = head.split("\r\n")
    return status, dict(line.split(": ", 1) for line in lines), body


def down(h: Harness) -> None:
    h.until(lambda: h.pool.spawning.state == states.BACKOFF, what="BACKOFF")


def test_an_app_that_failed_to_boot_gets_a_plain_503_until_a_worker_is_ready(listener):
    h = Harness(workers=1, listeners=[listener])
    h.factory.outcomes["A"] = FAIL
    h.reconcile()
    down(h)
    assert h.pool.fallback.running
    status, headers, body = get(listener)
    assert status == "HTTP/1.1 503 Service Unavailable"
    assert headers["Retry-After"] == "5" and headers["Connection"] == "close"
    assert headers["Cache-Control"] == "no-store"
    assert headers["Content-Type"] == "text/plain"
    assert "not available" in body and "ImportError" not in body, "production hides it"

    h.factory.outcomes["A"] = READY     # the release is fixed
    h.clock.advance(1.0)
    h.reconcile()
    h.until(lambda: len(h.ready()) == 1, what="a worker once the release is fixed")
    assert not h.pool.fallback.running, "the worker has the listener back"


def test_development_shows_the_boot_error_escaped(listener):
    h = Harness(workers=1, listeners=[listener], environment="development")
    h.factory.resolve_error = "cannot import <script>alert(1)</script> & co"
    h.reconcile()
    down(h)
    status, headers, body = get(listener)
    assert status.startswith("HTTP/1.1 503 ")
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert "app: the app failed to boot" in body
    assert "cannot import &lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in body
    assert "<script>" not in body


def test_a_failed_restart_leaves_the_old_workers_serving_not_the_master(listener):
    h = Harness(workers=2, listeners=[listener]).start()
    h.factory.current, h.factory.outcomes["B"] = "B", FAIL
    job = h.restart()
    h.until(job.ready, what="the restart to return")
    assert not job.value.ok and len(h.ready()) == 2
    assert not h.pool.fallback.running


def test_workers_that_crash_and_cannot_come_back_turn_it_on_and_a_stop_off(listener):
    h = Harness(workers=2, listeners=[listener]).start()
    assert not h.pool.fallback.running
    h.factory.outcomes["A"] = FAIL      # e.g. a dependency gone from the venv
    for worker in h.ready():
        worker.exit(1)
    down(h)
    assert h.ready() == [] and h.pool.fallback.running
    assert get(listener)[0] == "HTTP/1.1 503 Service Unavailable"
    h.pool.stop(graceful=True, timeout=1.0)
    assert not h.pool.fallback.running
