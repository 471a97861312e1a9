"""The request body: wsgi.input, and the reading from the client behind it.

Runs in a worker process. The connection owns the socket and the parser. For a request with a
body it makes a `RequestBody`, whose `pull()` receives more bytes within the body's time
limits (the parser appends the decoded chunks to `Request.body`), and gives the application
an `Input` reading from it. After the application, the connection asks the `RequestBody` to
discard what is left unread, if that is little enough, to serve another request on the
connection. A request known to have no body gets the shared, stateless `EMPTY_INPUT`.
"""

import sys
from time import monotonic

from .wire import ClientDisconnected, send_all

__all__ = ["EMPTY_INPUT", "EmptyInput", "Input", "RequestBody"]

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_DRAIN_LIMIT = 65536  # unread request body we read and discard to keep a connection


class EmptyInput:
    """wsgi.input for a request whose body is known to be empty: stateless, shared."""

    __slots__ = ()

    def read(self, size=-1):
        return b""

    def readline(self, size=-1):
        return b""

    def readlines(self, hint=-1):
        return []

    def __iter__(self):
        return iter(())


EMPTY_INPUT = EmptyInput()


class Input:
    """wsgi.input: the request body, pulled from the socket only as the application reads.

    `pull()` (the connection's) receives more bytes and feeds the parser, which appends body
    chunks to `request.body`; before the first pull, `expect_continue()` sends the interim
    `100 Continue` the client may be waiting for. `read(n)` returns exactly n bytes unless the
    body ends first. A body error (bad chunk, too large) raises HTTPError; a client that goes
    away raises ClientDisconnected.
    """

    __slots__ = ("_request", "_pull", "_continue", "_pending")

    def __init__(self, request, pull, expect_continue=None):
        self._request = request
        self._pull = pull
        self._continue = expect_continue
        self._pending = b""

    def _chunk(self):
        """The next body chunk, or b"" at the end of the body."""
        if self._pending:
            chunk, self._pending = self._pending, b""
            return chunk
        request = self._request
        body = request.body
        while not body:
            if request.complete:
                if request.error is not None:
                    raise request.error
                return b""
            if self._continue is not None:
                self._continue, send_continue = None, self._continue
                send_continue()
            self._pull()
        return body.popleft()

    def read(self, size=-1):
        if size is None or size < 0:
            return b"".join(iter(self._chunk, b""))
        parts = []
        while size > 0:
            chunk = self._chunk()
            if not chunk:
                break
            if len(chunk) > size:
                chunk, self._pending = chunk[:size], chunk[size:]
            parts.append(chunk)
            size -= len(chunk)
        return b"".join(parts)

    def readline(self, size=-1):
        if size is None or size < 0:
            size = sys.maxsize
        parts = []
        while size > 0:
            chunk = self._chunk()
            if not chunk:
                break
            end = chunk.find(b"\n", 0, size) + 1 or min(len(chunk), size)
            if end < len(chunk):
                chunk, self._pending = chunk[:end], chunk[end:]
            parts.append(chunk)
            size -= len(chunk)
            if chunk[-1:] == b"\n":
                break
        return b"".join(parts)

    def readlines(self, hint=-1):
        lines, total = [], 0
        for line in self:
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self):
        return iter(self.readline, b"")


class RequestBody:
    """Reads the body of one request from the client, within the body's time limits.

    `fill(timeout)` is the connection's: receive once, waiting up to `timeout` seconds, feed
    the parser and return the byte count (0 at EOF), or raise TimeoutError/OSError.
    `on_stall()` is called when the client sends too slowly, before the reader gets
    ClientDisconnected (the connection answers 408 and ends). `expecting`: the client sent
    `Expect: 100-continue` and waits for `send_continue()` before it sends the body.
    """

    __slots__ = ("request", "response", "sock", "limits", "fill", "on_stall", "expecting",
                 "waited", "received")

    def __init__(self, request, response, sock, limits, fill, on_stall, expecting):
        self.request = request
        self.response = response
        self.sock = sock
        self.limits = limits
        self.fill = fill
        self.on_stall = on_stall
        self.expecting = expecting  # the client awaits "100 Continue" we have not sent
        self.waited = 0.0  # seconds spent waiting for this body
        self.received = 0  # bytes received while reading this body

    def pull(self):
        """Receive more of the body (wsgi.input's source); ClientDisconnected when the client
        closed, failed or stalled."""
        try:
            n = self._fill()
        except TimeoutError:
            self.on_stall()
            raise ClientDisconnected("timed out reading the request body") from None
        except OSError as exc:
            raise ClientDisconnected(str(exc)) from None
        if not n:
            raise ClientDisconnected("client closed the connection during the request body")

    def _fill(self):
        """Receive more of the body, like the connection's `fill`, within its time limits.

        `client_body_timeout` bounds each wait for the client, as nginx's does; and over the
        whole body the client must keep up `client_body_min_rate` bytes per second on
        average, after a first `client_body_timeout` of grace (Apache's mod_reqtimeout
        MinRate). Only time spent waiting for the client counts, not the app's own work
        between reads. Raises TimeoutError when either runs out.
        """
        limits = self.limits
        timeout = limits.client_body_timeout
        if limits.client_body_min_rate:
            allowed = timeout + self.received / limits.client_body_min_rate
            timeout = min(timeout, allowed - self.waited)
            if timeout <= 0:
                raise TimeoutError("request body below client_body_min_rate")
        started = monotonic()
        try:
            n = self.fill(timeout)
        finally:
            self.waited += monotonic() - started
        self.received += n
        return n

    def send_continue(self):
        """Send `100 Continue` (wsgi.input calls this on its first read of a waiting body)."""
        self.expecting = False
        if not self.response.headers_sent:
            send_all(self.sock, _CONTINUE)

    def drainable(self):
        """Whether the unread rest of the body is small enough to discard, so that the
        connection can serve another request (the Response consults it for its headers)."""
        request = self.request
        if request.complete:
            return request.error is None
        if self.expecting:  # the client may never send the body it asked permission for
            return False
        length = _content_length(request)
        return length is None or length - request.body_size <= _DRAIN_LIMIT

    def drain(self):
        """Read and discard a small unread rest; True if the connection can be reused."""
        if not self.drainable():
            return False
        request = self.request
        limit = request.body_size + _DRAIN_LIMIT
        while not request.complete:
            request.body.clear()
            if request.body_size > limit:
                return False
            try:
                if not self._fill():
                    return False
            except OSError:
                return False
        request.body.clear()
        return request.error is None


def _content_length(request):
    """The request's Content-Length, or None (chunked)."""
    for name, value in request.headers:
        if name.lower() == b"content-length":
            return int(value)
    return None
