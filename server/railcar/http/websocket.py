"""WebSockets on WSGI: the handshake check, and the connection's socket handed to the app.

Runs in a worker process (gevent). WSGI has no notion of a connection that stops being HTTP,
so each server exposes its socket in the environ its own way, and WebSocket libraries look
for the keys they know. simple-websocket (which flask-sock uses) takes `werkzeug.socket`,
`gunicorn.socket`, eventlet's input or gevent.pywsgi's input, in that order, then writes the
`101 Switching Protocols` itself and speaks the protocol on that socket; in its "gunicorn"
mode flask-sock ends the view by raising StopIteration, which gunicorn takes to mean "the
connection is no longer HTTP: close it". railcar offers the same contract under the same key:

- A request with `Upgrade: websocket` must be a valid opening handshake (RFC 6455 4.2.1):
  GET, HTTP/1.1, `Connection: Upgrade`, a `Sec-WebSocket-Key` of 16 base64-encoded bytes, no
  body; else `400` (or `426` with `Sec-WebSocket-Version: 13` for another version), before
  the app is called.
- environ["gunicorn.socket"] is an `UpgradedSocket` over the connection. The first time the
  app sends or receives on it, the connection is the app's: railcar writes no response of
  its own afterwards (not the app's status, not a 500 for the StopIteration), never reads it
  as HTTP again, and closes it when the app returns. An app that answers the request with
  start_response instead (say, a 403) gets an ordinary HTTP response.
- `werkzeug.socket` is deliberately absent: simple-websocket would prefer it, and in that mode
  flask-sock returns an ordinary `200` response after the WebSocket ended, for the server to
  write on a connection that is no longer HTTP.

gevent-websocket's `wsgi.websocket` is a different contract (the server does the handshake
and hands over a protocol object of its own); railcar does not provide it.
"""

import base64
import binascii

import gevent
from gevent.lock import Semaphore

from .errors import BAD_REQUEST, HTTPError

__all__ = ["CLOSE_GOING_AWAY", "UpgradedSocket", "handshake_error", "wants_websocket"]

_UPGRADE_REQUIRED = "426 Upgrade Required"
# A close frame from the server (unmasked, final), status 1001 "going away", no reason.
CLOSE_GOING_AWAY = b"\x88\x02\x03\xe9"


def _tokens(request, name):
    """The comma-separated tokens of every `name` field of `request`, lower-cased."""
    return [token.strip().lower() for field, value in request.headers
            if field.lower() == name for token in value.split(b",")]


def wants_websocket(request):
    """Whether the request asks to switch to the WebSocket protocol (`Upgrade: websocket`)."""
    return b"websocket" in _tokens(request, b"upgrade")


def handshake_error(request):
    """None for a valid WebSocket opening handshake, else the (HTTPError, extra header lines)
    to answer it with (RFC 6455 4.2.1, 4.4)."""
    if request.method != "GET" or request.version != "1.1":
        return HTTPError(BAD_REQUEST, "a WebSocket handshake is a GET over HTTP/1.1"), ""
    if b"upgrade" not in _tokens(request, b"connection"):
        return HTTPError(BAD_REQUEST, "Upgrade: websocket without Connection: Upgrade"), ""
    if any(field.lower() in (b"content-length", b"transfer-encoding")
           and value.strip() != b"0" for field, value in request.headers):
        return HTTPError(BAD_REQUEST, "a WebSocket handshake has no body"), ""
    keys = [value for field, value in request.headers
            if field.lower() == b"sec-websocket-key"]
    if len(keys) != 1 or not _is_key(keys[0].strip()):
        return HTTPError(BAD_REQUEST, "Sec-WebSocket-Key must be 16 bytes in base64"), ""
    versions = _tokens(request, b"sec-websocket-version")
    if versions != [b"13"]:
        return (HTTPError(_UPGRADE_REQUIRED, "only WebSocket version 13 is supported"),
                "Sec-WebSocket-Version: 13\r\n")
    return None


def _is_key(value):
    try:
        return len(base64.b64decode(value, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


class UpgradedSocket:
    """The connection's socket as the app sees it after a WebSocket handshake request.

    A thin proxy over the gevent socket: `recv` first returns what arrived right behind the
    request head (`tail`), `send` sends all it is given as one write (so two greenlets of the
    app, or the server's own close frame, never interleave inside a frame) and reports it all
    sent. `on_take()` is called once, before the app's first send or receive: from then on the
    connection is the app's. Anything else is the socket's own (fileno, close, settimeout...).

    `going_away(timeout)` is the server's side of a retire: it sends a close frame with status
    1001 between two of the app's writes, then drops what the app still sends (the close
    handshake's reply included), so nothing follows the close frame on the wire; the app sees
    the client's answering close frame (or the end of the connection) and returns.
    """

    def __init__(self, sock, tail, on_take):
        self._sock = sock
        self._tail = tail
        self._on_take = on_take
        self._lock = Semaphore()
        self.taken = False
        self.closing = False

    def _take(self):
        if not self.taken:
            self.taken = True
            self._on_take()

    def send(self, data, flags=0):
        self._take()
        if not self.closing:
            with self._lock:
                self._sock.sendall(data, flags)
        return len(data)

    def sendall(self, data, flags=0):
        self.send(data, flags)

    def recv(self, size, flags=0):
        self._take()
        if self._tail:
            data, self._tail = self._tail[:size], self._tail[size:]
            return data
        return self._sock.recv(size, flags)

    def recv_into(self, buffer, nbytes=0, flags=0):
        self._take()
        if self._tail:
            size = min(len(self._tail), nbytes or len(buffer))
            buffer[:size] = self._tail[:size]
            self._tail = self._tail[size:]
            return size
        return self._sock.recv_into(buffer, nbytes, flags)

    def going_away(self, timeout):
        """Send the close frame 1001 (once); False if it could not go out within `timeout`
        (the app is stuck in a write to a client that does not read)."""
        if self.closing:
            return True
        self.closing = True
        with gevent.Timeout(timeout, False):
            with self._lock:
                try:
                    self._sock.sendall(CLOSE_GOING_AWAY)
                except OSError:
                    return False
                return True
        return False

    def __getattr__(self, name):
        return getattr(self._sock, name)

    def __repr__(self):
        return f"<UpgradedSocket {self._sock!r}>"
