"""The health check a new worker runs on its own app before it takes any connection.

Runs in the worker (gevent-patched), after the app imported and before the worker starts
accepting from the listeners it shares with the other workers, so no client request can reach
a worker that has not passed it. The request never touches a socket: the app is called
in-process with the environ a real `GET PATH` with `Host: HOST` would get (built by the same
http.environ.build_environ), so it does not count as a served request, is not in the access log
and cannot be answered by another worker.

`check(app, health)` takes the app's `health` dict (config.health_check: path, host,
statuses, timeout) and returns None when the app answered an accepted status in time, else
one paragraph saying what happened: the status and the start of the body, the timeout, or the
app's traceback. An app that blocks without yielding to gevent cannot be interrupted here;
the master's own deadline (process.WorkerProcess.wait_ready) covers that case.
"""

from __future__ import annotations

import io
import sys
import traceback
from time import monotonic
from types import SimpleNamespace

import gevent

from .http.environ import base_environ, build_environ
from .settings import status_ranges

BODY_PREVIEW = 500           # characters of the body quoted in a failure
BODY_READ_LIMIT = 64 * 1024  # bytes of the body kept; the rest is read and dropped


def describe(health: dict) -> str:
    return f"GET {health['path']} (Host: {health['host']})"


def check(app, health: dict, extra_environ: dict | None = None) -> str | None:
    """Call `app` once as for `GET health["path"]`; None if healthy, else why not."""
    started = monotonic()
    try:
        with gevent.Timeout(health["timeout"]):
            status, body = _call(app, _environ(health, extra_environ))
    except gevent.Timeout:
        return (f"health check {describe(health)} did not answer within "
                f"{health['timeout']:g} seconds")
    except Exception:
        return (f"health check {describe(health)} raised an error in the app:\n"
                + traceback.format_exc().rstrip())
    took = (monotonic() - started) * 1000
    code = int(status[:3]) if status[:3].isdigit() else 0
    if any(low <= code <= high for low, high in status_ranges(health["statuses"])):
        sys.stderr.write(f"health check {describe(health)}: {status} in {took:.0f} ms\n")
        return None
    preview = body.decode("utf-8", "replace")[:BODY_PREVIEW].strip()
    return (f"health check {describe(health)} answered {status}, not one of "
            f"{health['statuses']}; the body starts:\n{preview or '(empty)'}")


def _environ(health: dict, extra: dict | None) -> dict:
    request = SimpleNamespace(
        method="GET", version="1.1", url=health["path"].encode("latin-1"),
        headers=[(b"Host", health["host"].encode("latin-1")),
                 (b"User-Agent", b"railcar-health-check")])
    environ = build_environ(base_environ("", "", extra), request, "127.0.0.1", "0")
    environ["wsgi.input"] = io.BytesIO(b"")
    return environ


def _call(app, environ: dict) -> tuple[str, bytes]:
    """Run the app like a server would; the status line and up to BODY_READ_LIMIT bytes."""
    started: list[str] = []
    body = bytearray()

    def keep(data: bytes) -> None:
        if len(body) < BODY_READ_LIMIT:
            body.extend(data[:BODY_READ_LIMIT - len(body)])

    def start_response(status, headers, exc_info=None):
        if exc_info and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [status]
        return keep

    result = app(environ, start_response)
    try:
        for data in result:
            keep(data)
    finally:
        if hasattr(result, "close"):
            result.close()
    if not started:
        raise RuntimeError("the app returned without calling start_response")
    return started[0], bytes(body)
