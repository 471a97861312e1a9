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

__all__ = ["HTTPError", "Request", "RequestParser"]


class HTTPError(Exception):
    """A request the server refuses. `status` is the full status string ("400 Bad Request").

    The connection that raised it is answered with `status` (if no response has started yet)
    and then closed: after a framing error nothing that follows on the wire can be trusted.
    """

    def __init__(self, status, detail=""):
        super().__init__(f"{status}: {detail}" if detail else status)
        self.status = status
        self.detail = detail


BAD_REQUEST = "400 Bad Request"
URI_TOO_LONG = "414 URI Too Long"
HEADERS_TOO_LARGE = "431 Request Header Fields Too Large"
BODY_TOO_LARGE = "413 Content Too Large"
BAD_VERSION = "505 HTTP Version Not Supported"


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

    def __init__(self, max_request_line=8190, max_header_size=65536, max_headers=100,
                 max_body_size=0, slack=65536):
        self.ready = deque()
        self.closed = False  # after an error or an Upgrade: feed nothing more
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
        self._error = None  # the HTTPError a callback raised, to report instead of llhttp's

    @property
    def in_message(self):
        """True while part of a request has been received but is not yet queued."""
        return self._headers is not None

    def feed(self, data):
        """Parse `data` (bytes or memoryview). Errors are queued or attached, never raised."""
        if self.closed:
            return
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade:
            # Upgrade and CONNECT are served as plain requests, then the connection closes:
            # llhttp has already completed the message and skipped any body.
            self.closed = True
            if self.ready and isinstance(self.ready[-1], Request):
                self.ready[-1].keep_alive = False
        except HttpParserError as exc:
            self._fail(self._error or _classify(exc))
        else:
            if self._headers is not None:
                self._head_bytes += len(data)
                if self._head_bytes > self._head_limit:
                    self._fail(HTTPError(HEADERS_TOO_LARGE, "header section too large"))

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
        if headers is None:  # a chunked trailer field: counted, then dropped
            return
        if len(headers) >= self.max_headers:
            self._raise(HEADERS_TOO_LARGE, "too many header fields")
        headers.append((name, value))

    def on_headers_complete(self):
        parser = self._parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            self._raise(BAD_VERSION, "HTTP/" + version)
        headers = self._headers
        if version == "1.0" and any(n.lower() == b"transfer-encoding" for n, _ in headers):
            # RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 means faulty framing.
            self._raise(BAD_REQUEST, "Transfer-Encoding in an HTTP/1.0 request")
        request = Request(parser.get_method().decode("ascii"), self._url, version, headers,
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
