"""The access log line of one request.

Runs in a worker process. The server is given an `access_log` callable taking one line (the
worker's AccessLog writes it to a file or stderr); the connection builds the line here after
each request, including the ones refused without calling the app (`request` None when not
even a request line was understood).
"""

from time import strftime

__all__ = ["text_line"]


def text_line(remote_addr, request, code, sent, millis):
    """`REMOTE - - [time] "METHOD TARGET PROTOCOL" STATUS BYTES DURATION_MS` (the common log
    format with the duration in milliseconds appended)."""
    if request is None:
        line = "-"
    else:
        line = f"{request.method} {request.url.decode('latin-1')} HTTP/{request.version}"
    stamp = strftime("%d/%b/%Y:%H:%M:%S %z")
    return f'{remote_addr or "-"} - - [{stamp}] "{line}" {code} {sent} {millis:.1f}'
