"""The access log line of one request, in the `text` or the `json` format.

Runs in a worker process. The server is given an `access_log` callable taking one line (the
worker's AccessLog writes it to a file or stderr); the connection builds the line here after
each request, including the ones refused without calling the app (`request` None when not
even a request line was understood).
"""

import json
from datetime import datetime, timezone
from time import strftime

__all__ = ["json_line", "text_line"]


def text_line(remote_addr, request, code, sent, millis):
    """`REMOTE - - [time] "METHOD TARGET PROTOCOL" STATUS BYTES DURATION_MS` (the common log
    format with the duration in milliseconds appended)."""
    if request is None:
        line = "-"
    else:
        line = f"{request.method} {request.url.decode('latin-1')} HTTP/{request.version}"
    stamp = strftime("%d/%b/%Y:%H:%M:%S %z")
    return f'{remote_addr or "-"} - - [{stamp}] "{line}" {code} {sent} {millis:.1f}'


def json_line(environ, remote_addr, request, code, sent, seconds, queue):
    """One JSON object: time (ISO 8601, UTC, milliseconds), remote_addr (the client as a
    trusted proxy names it, else the peer; "" for a unix socket peer), method, path, query,
    protocol, status, bytes (body bytes sent), duration (seconds), request_id, queue_time
    (seconds; null without a trusted X-Request-Start), user_agent, referer (null when
    absent). A request refused before it was understood has null method, path, query and
    protocol; one refused before its environ was built, a null request_id."""
    environ = environ or {}
    if request is None:
        method = path = query = protocol = None
    else:
        method, protocol = request.method, f"HTTP/{request.version}"
        path, _, query = request.url.decode("latin-1").partition("?")
    return json.dumps({
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "remote_addr": environ.get("REMOTE_ADDR", remote_addr),
        "method": method,
        "path": path,
        "query": query,
        "protocol": protocol,
        "status": code,
        "bytes": sent,
        "duration": round(seconds, 6),
        "request_id": environ.get("HTTP_X_REQUEST_ID"),
        "queue_time": None if queue is None else round(queue, 6),
        "user_agent": environ.get("HTTP_USER_AGENT"),
        "referer": environ.get("HTTP_REFERER"),
    }, separators=(",", ":"))
