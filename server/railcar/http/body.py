"""wsgi.input: the request body, read from the client only as the application asks.

Runs in a worker process. The connection owns the socket and the parser; it hands `Input`
a `pull()` that receives more bytes (within the body's time limits) and feeds the parser,
which appends decoded body chunks to `Request.body`. A request known to have no body gets
the shared, stateless `EMPTY_INPUT`.
"""

import sys

__all__ = ["EMPTY_INPUT", "EmptyInput", "Input"]


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
