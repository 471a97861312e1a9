"""HTTP/1.1 request parsing on httptools (llhttp), with railcar's size limits.

Runs in a worker process, one `RequestParser` per client connection. The connection feeds it
whatever it receives; the parser turns those bytes into a queue (`ready`) of `Request` objects
and `HTTPError`s, in the order the client sent them, so pipelined requests are answered in
order. A request is queued as soon as its header section is complete; its body keeps arriving
in `Request.body` while the application runs, which lets large uploads stream instead of being
buffered.

llhttp is strict by default and we keep it that way: it rejects Content-Length together with
Transfer-Encoding, duplicate or malformed Content-Length (`+5`, `0_5`), bare LF line endings,
obs-fold, NUL and other control bytes in header values, bad header names and bad chunk sizes.
On top of llhttp this module enforces: the request line and header section size limits (414,
431), a maximum header count (431), the HTTP version (505 unless 1.0 or 1.1), an optional body
size limit (413) and the RFC 9112 rule that an HTTP/1.0 request with Transfer-Encoding has
faulty framing (400). After any error the parser is dead: the connection must answer the error
(if nothing else is pending) and close.
"""

from collections import deque

import httptools
from httptools import HttpParserError, HttpParserUpgrade

from ..views import Limits
from .chunked import ChunkedBody
from .errors import (BAD_REQUEST, BAD_VERSION, BODY_TOO_LARGE, HEADERS_TOO_LARGE,
                     URI_TOO_LONG, HTTPError)

__all__ = ["HTTPError", "Request", "RequestParser"]

_DEFAULT = Limits()   # a parser made without limits gets the settings' defaults

_HEAD_END = b"\r\n\r\n"


class Request:
    """One parsed request: what the header section said, and the body as it arrives.

    `headers` is the raw list of (name, value) bytes pairs in wire order. `body` is a deque of
    bytes chunks the parser appends to and the wsgi.input reader consumes; `complete` turns
    True when the last body byte has been parsed (at once for a request without a body), or
    when the body ended in error (`error` then holds the HTTPError to raise to the reader).
    """

    __slots__ = ("method", "url", "version", "headers", "keep_alive", "upgrade",
                 "body", "body_size", "complete", "error")

    def __init__(self, method, url, version, headers, keep_alive, upgrade):
        self.method = method
        self.url = url
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.body = deque()
        self.body_size = 0
        self.complete = False
        self.error = None


class RequestParser:
    """Feeds bytes to llhttp and queues `Request`s and `HTTPError`s in `ready`.

    Limits: `max_request_line` bounds the request target (414); `max_header_size` the sum of
    header name and value lengths and `max_headers` their number (431); `max_body_size` the
    decoded body (413; 0 means unlimited). A single header too big to ever finish is caught
    while llhttp is still buffering it, within one receive buffer (`slack`) of the limit.

    Not thread-safe; one per connection. `feed` never raises for bad input.
    """

    def __init__(self, max_request_line=_DEFAULT.max_request_line,
                 max_header_size=_DEFAULT.max_header_size, max_headers=_DEFAULT.max_headers,
                 max_body_size=_DEFAULT.max_body_size, slack=65536):
        self.ready = deque()
        self.closed = False  # after an error or an Upgrade: feed nothing more
        # Bytes received after an Upgrade request's header section: the first bytes of the
        # new protocol, which a WebSocket handler reads before anything from the socket.
        self.upgrade_tail = b""
        self._fed_at = 0  # where in the buffer the last feed to llhttp began
        self.max_request_line = max_request_line
        self.max_header_size = max_header_size
        self.max_headers = max_headers
        self.max_body_size = max_body_size
        self._head_limit = max_request_line + max_header_size + slack
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers = None  # list while inside a header section, else None
        self._header_size = 0
        self._head_bytes = 0  # bytes fed while inside a header section (over-estimate)
        self._request = None  # the request whose body is being parsed
        self._body_left = 0  # bytes of a Content-Length body llhttp has still to see
        self._chunks = None  # the ChunkedBody being decoded
        self._tail = b""  # the last bytes of an unfinished header section (at most 3)
        self._error = None  # the HTTPError a callback raised, to report instead of llhttp's

    @property
    def in_message(self):
        """True while part of a request has been received but is not yet queued."""
        return self._headers is not None

    def feed(self, data, end=None):
        """Parse `data[:end]` (bytes, bytearray or memoryview; `end` defaults to all of it).
        Errors are queued or attached, never raised.

        llhttp sees the header sections and the Content-Length bodies; each feed to it stops
        at the end of a header section, so that a chunked body that follows goes to our own
        decoder (chunked.py) instead.
        """
        if self.closed:
            return
        if type(data) is memoryview:
            data = data.tobytes()
        if end is None:
            end = len(data)
        view = memoryview(data)
        pos = 0
        try:
            if self._chunks is None and not self._body_left and not self._tail \
                    and data.find(_HEAD_END, 0, end) == end - 4:
                # The common case, first: the (rest of a) header section and nothing after.
                self._fed_at = 0
                self._parser.feed_data(view[:end])
                if self._request is not None:
                    self._start_body(self._request)
                return
            while pos < end and not self.closed:
                if self._chunks is not None:
                    pos = self._chunks.feed(data, view, pos, end)
                    if self._chunks.done:
                        self._end_chunked()
                elif self._body_left:
                    stop = min(end, pos + self._body_left)
                    self._body_left -= stop - pos
                    self._fed_at = pos
                    self._parser.feed_data(view[pos:stop])
                    pos = stop
                else:
                    pos = self._feed_head(data, view, pos, end)
        except HttpParserUpgrade as exc:
            # Upgrade and CONNECT are served as plain requests, then the connection closes
            # (unless the app takes the connection over: see websocket.py); llhttp has
            # already completed the message and skipped any body. What follows belongs to
            # the new protocol and is kept for it.
            self.closed = True
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else end
            self.upgrade_tail = bytes(view[min(self._fed_at + offset, end):end])
            if self.ready and isinstance(self.ready[-1], Request):
                self.ready[-1].keep_alive = False
        except HttpParserError as exc:
            self._fail(self._error or _classify(exc))
        except HTTPError as error:  # from the chunked decoder
            self._fail(error)

    def _feed_head(self, data, view, pos, end):
        """Feed llhttp up to the end of the next header section (CRLF CRLF: llhttp accepts no
        other line ending), or all of `data` if it does not end there; return the position
        reached. Bytes before a request line can only be the empty lines llhttp skips."""
        tail = self._tail
        stop = -1
        if tail:  # the CRLF CRLF may have begun in the previous feed
            found = (tail + data[pos:pos + 3]).find(_HEAD_END)
            if found >= 0:
                stop = pos + found + 4 - len(tail)
        if stop < 0:
            found = data.find(_HEAD_END, pos, end)
            if found >= 0:
                stop = found + 4
        self._fed_at = pos
        if stop >= 0:
            self._tail = b""
            self._parser.feed_data(view[pos:stop])
            if self._request is not None:
                self._start_body(self._request)
            return stop
        self._tail = (tail + data[max(pos, end - 3):end])[-3:]
        self._parser.feed_data(view[pos:end])
        if self._headers is not None:
            self._head_bytes += end - pos
            if self._head_bytes > self._head_limit:
                self._fail(HTTPError(HEADERS_TOO_LARGE, "header section too large"))
        return end

    def _start_body(self, request):
        """After a header section announcing a body: how it is framed. llhttp has already
        refused Transfer-Encoding other than a final `chunked`, and it together with
        Content-Length."""
        for name, value in request.headers:
            name = name.lower()
            if name == b"transfer-encoding":
                self._chunks = ChunkedBody(request, self.max_header_size - self._header_size,
                                           self.max_headers - len(request.headers),
                                           self.max_body_size)
                return
            if name == b"content-length":
                self._body_left = int(value)  # digits only: llhttp checked it

    def _end_chunked(self):
        """The chunked body is complete: llhttp, left expecting chunks, is replaced."""
        request = self._request
        request.complete = True
        self._request = None
        self._chunks = None
        self._header_size = 0
        self._parser = httptools.HttpRequestParser(self)
        if request.upgrade:
            request.keep_alive = False
            self.closed = True

    def _fail(self, error):
        """Attach `error` to the request whose body is in flight, else queue it; stop parsing."""
        self.closed = True
        request = self._request
        if request is not None:
            request.error = error
            request.complete = True
            request.keep_alive = False
        else:
            self.ready.append(error)

    def _raise(self, status, detail):
        self._error = error = HTTPError(status, detail)
        raise error

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self):
        self._url = b""
        self._headers = []
        self._header_size = 0
        self._head_bytes = 0

    def on_url(self, url):
        url = self._url + url if self._url else url
        if len(url) > self.max_request_line:
            self._raise(URI_TOO_LONG, "request line too long")
        self._url = url

    def on_header(self, name, value):
        self._header_size += len(name) + len(value)
        if self._header_size > self.max_header_size:
            self._raise(HEADERS_TOO_LARGE, "header section too large")
        headers = self._headers
        if len(headers) >= self.max_headers:
            self._raise(HEADERS_TOO_LARGE, "too many header fields")
        headers.append((name, value))

    def on_headers_complete(self):
        parser = self._parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            self._raise(BAD_VERSION, "HTTP/" + version)
        headers = self._headers
        url = self._url
        method = parser.get_method().decode("ascii")
        if url == b"*" and method != "OPTIONS":
            # RFC 9112 3.2.4: the asterisk-form is only for a server-wide OPTIONS.
            self._raise(BAD_REQUEST, "request target '*' is only for OPTIONS")
        if version == "1.0" and any(n.lower() == b"transfer-encoding" for n, _ in headers):
            # RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 means faulty framing.
            self._raise(BAD_REQUEST, "Transfer-Encoding in an HTTP/1.0 request")
        request = Request(method, url, version, headers,
                          parser.should_keep_alive(), parser.should_upgrade())
        self._headers = None
        self._request = request
        self.ready.append(request)

    def on_body(self, data):
        request = self._request
        request.body_size += len(data)
        if self.max_body_size and request.body_size > self.max_body_size:
            self._raise(BODY_TOO_LARGE, "request body too large")
        request.body.append(data)

    def on_message_complete(self):
        self._request.complete = True
        self._request = None
        self._header_size = 0


def _classify(exc):
    """Map an llhttp error to the HTTPError the client gets."""
    reason = str(exc)
    if reason == "Invalid HTTP version":
        return HTTPError(BAD_VERSION, reason)
    return HTTPError(BAD_REQUEST, reason)
