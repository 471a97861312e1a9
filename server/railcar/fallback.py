"""Answer for an app that failed to boot, so its clients get a response instead of a hang.

Runs in the master (gevent). While an app has no ready worker and its last boot failed, the
master accepts on the app's listening sockets itself and answers every request with 503:
- environment "development": an HTML page with the boot error and its traceback;
- environment "production": a plain 503 (the error is in the server log, never shown).
It stops as soon as a worker is ready again (the pool calls `stop`). Idempotent start/stop.
Served by the same HTTP code as the workers, bounded in number and time like every listener
of the master's own (railcar.responder). That code (and the HTTP server under it) is
imported at the first start only: a master whose apps boot never needs it.
"""

from __future__ import annotations

PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{app}: the app failed to boot</title>
<style>body{{font-family:sans-serif;margin:2em}}pre{{background:#f4f4f4;padding:1em;
overflow:auto}}</style></head>
<body><h1>{app}: the app failed to boot</h1>
<p>railcar could not start a worker for this app; it keeps retrying. The error:</p>
<pre>{error}</pre>
<p>This page is shown because the app runs with <code>environment = "development"</code>.
In production the client gets a plain 503 and the error goes only to the log.</p>
</body></html>
"""


class BootErrorResponder:
    """`snapshot()` gives the app's current pool.snapshot(): the page shows its error."""

    def __init__(self, app_name: str, listeners, log, snapshot, development: bool):
        self.app_name = app_name
        self.listeners = listeners
        self.snapshot = snapshot
        self.development = development
        self.log = log
        self.responder = None       # a railcar.responder.Responder from the first start on

    @property
    def running(self) -> bool:
        return self.responder is not None and self.responder.running

    def start(self) -> None:
        if self.responder is None:
            from .responder import Responder

            self.responder = Responder(f"{self.app_name}: the answer while the app is down",
                                       self.answer, self.log)
        self.responder.start(self.listeners)

    def stop(self) -> None:
        if self.responder is not None:
            self.responder.stop()

    def answer(self, environ, start_response):
        """The WSGI app: 503 with the boot error (development) or without it (production)."""
        from .responder import plain

        error = self.snapshot().error or "the app is not ready"
        if self.development:
            import html     # here: its entities table would stay in every master otherwise

            body = PAGE.format(app=html.escape(self.app_name),
                               error=html.escape(error)).encode("utf-8")
            content_type = "text/html; charset=utf-8"
        else:
            body = b"503 Service Unavailable\nthe application is not available\n"
            content_type = "text/plain"
        return plain(start_response, "503 Service Unavailable", body, content_type,
                     headers=(("Retry-After", "5"), ("Cache-Control", "no-store")))
