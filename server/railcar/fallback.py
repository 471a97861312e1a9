"""Answer for an app that failed to boot, so its clients get a response instead of a hang.

Runs in the master (gevent). While an app has no ready worker and its last boot failed, the
master accepts on the app's listening sockets itself and answers every request with 503:
- environment "development": an HTML page with the boot error and its traceback;
- environment "production": a plain 503 (the error is in the server log, never shown).
It stops as soon as a worker is ready again (the pool calls `stop`). Idempotent start/stop.
"""

from __future__ import annotations

import html
import socket

import gevent

from .http.wsgi import date_header

READ_TIMEOUT = 5.0
MAX_HEAD = 65536

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
    def __init__(self, pool, development: bool):
        self.pool = pool
        self.development = development
        self.acceptors: list[gevent.Greenlet] = []

    @property
    def running(self) -> bool:
        return bool(self.acceptors)

    def start(self) -> None:
        if not self.acceptors:
            self.acceptors = [gevent.spawn(self._accept, listener)
                              for listener in self.pool.listeners]

    def stop(self) -> None:
        acceptors, self.acceptors = self.acceptors, []
        gevent.killall(acceptors, block=False)

    def _accept(self, listener) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                continue        # a worker took that connection
            except OSError:
                gevent.sleep(0.5)
                continue
            gevent.spawn(self._answer, sock)

    def _answer(self, sock: socket.socket) -> None:
        try:
            sock.settimeout(READ_TIMEOUT)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < MAX_HEAD:
                chunk = sock.recv(8192)
                if not chunk:
                    return
                head += chunk
            sock.sendall(self.response(head.startswith(b"HEAD ")))
        except OSError:
            pass
        finally:
            sock.close()

    def response(self, head_only: bool = False) -> bytes:
        error = self.pool.last_error or "the app is not ready"
        if self.development:
            body = PAGE.format(app=html.escape(self.pool.app.name),
                               error=html.escape(error)).encode("utf-8")
            content_type = "text/html; charset=utf-8"
        else:
            body = b"503 Service Unavailable\nthe application is not available\n"
            content_type = "text/plain"
        head = (f"HTTP/1.1 503 Service Unavailable\r\n{date_header()}Server: railcar\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Retry-After: 5\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n")
        return head.encode("latin-1") + (b"" if head_only else body)
