"""Bytes to the client: sending on a gevent socket, the Date header, whole close responses.

Runs in a worker process (and in the master's own listeners). `send_all` is the one way
response bytes reach a socket (ClientDisconnected when the client is gone); `error_response`
is the one builder of a whole response that ends the connection (an error the server
answers itself: 4xx, 503, 504, 500), used wherever the server answers without the app.
"""

from time import gmtime, time

from gevent.socket import socket as _PlainSocket

__all__ = ["SERVER", "ClientDisconnected", "date_header", "error_response", "send_all"]

SERVER = "Server: railcar\r\n"
_SEND_CHUNK = 1 << 20
_date_cache = [0, ""]
# RFC 9110's IMF-fixdate names, whatever the locale (not email.utils.formatdate: the email
# package it brings would stay in every worker's memory for this one line).
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class ClientDisconnected(OSError):
    """The client went away (or stalled past a timeout) while we read from or wrote to it."""


def date_header():
    """The Date header line, formatted at most once per second."""
    now = int(time())
    if now != _date_cache[0]:
        _date_cache[1] = f"Date: {http_date(now)}\r\n"
        _date_cache[0] = now
    return _date_cache[1]


def http_date(seconds: int) -> str:
    """`seconds` since the epoch as an HTTP date: `Sun, 29 Nov 2026 11:31:48 GMT`."""
    t = gmtime(seconds)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


def error_response(status, detail="", headers=""):
    """A complete plain-text response carrying `Connection: close`, as bytes. `headers`:
    extra header lines, each ending in CRLF."""
    body = (status + ("\n" + detail if detail else "") + "\n").encode("latin-1", "replace")
    head = (f"HTTP/1.1 {status}\r\n{date_header()}{SERVER}{headers}Content-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode("latin-1") + body


def send_all(sock, data):
    """Send all of `data` on a gevent socket, or raise ClientDisconnected.

    The socket's timeout bounds each wait for the client to accept more bytes, not the whole
    transfer (gevent's own sendall gives the whole call one deadline, which would cut off a
    large body sent to a slow but live client). Small writes on a plain socket take one
    direct send() (never on a TLS socket, whose `_sock` would bypass the encryption).
    """
    try:
        try:
            sent = sock._sock.send(data) if type(sock) is _PlainSocket else 0
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            view = memoryview(data)
            while sent < len(view):
                sent += sock.send(view[sent:sent + _SEND_CHUNK])
    except OSError as exc:
        raise ClientDisconnected(str(exc)) from exc
