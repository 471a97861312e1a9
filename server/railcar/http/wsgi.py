"""The WSGI response (PEP 3333): start_response, write, and how the response is framed.

Runs in a worker process (and in the master's own listeners). The connection (connection.py)
gives the application a `Response`, whose `start_response` and `write` it calls, and frames
what the application produces:

- a list or tuple body is sent with a computed Content-Length in a single `sendall`, status line
  and headers included (the hello-world hot path);
- any other iterable is streamed, each non-empty chunk written as soon as it is produced, with
  chunked transfer-coding when the application set no Content-Length and the client speaks
  HTTP/1.1, else by closing the connection at the end;
- a HEAD response, 1xx, 204 and 304 never carry a body, whatever the application yields;
  1xx, 204 and 304 carry no Content-Length either (HEAD keeps the application's).

`Date` and `Server` are added unless the application set them; hop-by-hop headers from the
application are replaced by our own framing (`Connection: close` from the app is honoured).

What the application hands over is checked before a byte of it is sent (`start_response`
raises ValueError or TypeError, which the connection turns into a logged 500): the status is
three digits and a reason phrase, header names are tokens, header values hold no control
character but tab (no NUL, CR, LF, DEL), Content-Length is plain decimal digits and several
Content-Length fields must agree. A response is used once: `start_response` and `write`
called after it finished raise RuntimeError and send nothing, so a `write` kept by the
application can never put bytes into a later response.

The environ is built in environ.py, wsgi.input in body.py, the bytes sent in wire.py.
"""

import re

from .wire import SERVER, ClientDisconnected, date_header, send_all

__all__ = ["Response"]

# RFC 9110: a status code is 3 digits; field names are tokens; a reason phrase and field
# values are visible characters, obs-text, space and tab. [0-9] rather than \d: only ASCII.
_STATUS = re.compile(r"[1-5][0-9][0-9] [\t\x20-\x7e\x80-\xff]*")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
_EVENT_STREAM = re.compile(r"^content-type:[ \t]*text/event-stream", re.MULTILINE)
# Header names already found to be tokens -> lower-cased; bounded like environ._KEYS.
_NAMES = {}
_NAMES_MAX = 1024
# Header fields already checked: (name, value) -> what _check_field returned. Most apps send
# the same few fields with every response (Content-Type, Content-Length, Cache-Control), and
# one lookup costs less than the checks. Bounded, and only for short values, so that fields
# that change with every response (cookies, ETags) soon stop being added.
_FIELDS = {}
_FIELDS_MAX = 512
_FIELDS_VALUE_MAX = 100
# Status lines already found valid -> their code.
_STATUSES = {}
_STATUSES_MAX = 256
_NO_BODY_CODES = frozenset((204, 304))
# Response header names (lower-cased) that change framing or that we add ourselves.
_SPECIAL = frozenset(("content-length", "date", "server", "connection", "transfer-encoding",
                      "keep-alive", "x-request-id"))


def _app_fields(headers):
    """Check the application's header list; return (lines, content_length, add_date,
    add_server, close, own_id): the header lines to send as one str (framing and hop-by-hop
    fields left out), the Content-Length it set or None, whether Date and Server are still
    ours to add, whether it asked for `Connection: close`, and whether it set X-Request-Id
    itself (then ours is not added). Raises TypeError or ValueError naming
    the first bad field; nothing of a bad list is kept.
    """
    lines = []
    length = None
    add_date = add_server = True
    close = own_id = False
    for name, value in headers:
        try:
            field = _FIELDS.get((name, value))
        except TypeError:  # unhashable: not a pair of str, which _check_field says
            field = None
        if field is None:
            field = _check_field(name, value)
        lname, line = field
        if lname in _SPECIAL:
            if lname == "content-length":
                if length is not None and line != length:
                    raise ValueError(f"two different Content-Length values: {length} and "
                                     f"{value!r}")
                length = line
                continue  # written by _head, once, where the status allows one
            if lname == "date":
                add_date = False
            elif lname == "server":
                add_server = False
            elif lname == "x-request-id":
                own_id = True
            else:  # hop-by-hop: ours to write
                if lname == "connection" and "close" in value.lower():
                    close = True
                continue
        lines.append(line)
    return "".join(lines), length, add_date, add_server, close, own_id


def _check_field(name, value):
    """(lower-cased name, header line) of a valid field (for Content-Length, its value as an
    int instead of the line); raises TypeError or ValueError naming a bad one. Remembered in
    _FIELDS if there is room and the value is short."""
    lname = _NAMES.get(name) if type(name) is str else None
    if lname is None:
        if type(name) is not str:
            raise TypeError(f"header {name!r}: {value!r} is not a pair of str")
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"header name {name!r} is not a token (RFC 9110: letters, "
                             "digits and !#$%&'*+-.^_`|~ only)")
        lname = name.lower()
        if len(_NAMES) < _NAMES_MAX:
            _NAMES[name] = lname
    if type(value) is not str:
        raise TypeError(f"header {name!r}: {value!r} is not a pair of str")
    # Visible ASCII (the usual case) is checked by two C string methods; the rest by regex.
    if not (value.isascii() and value.isprintable()) and not _FIELD_VALUE.fullmatch(value):
        raise ValueError(f"header {name!r}: value {value!r} holds a control character "
                         "or one beyond latin-1 (only tab, space and visible characters)")
    if lname == "content-length":
        if not (value.isascii() and value.isdigit() and len(value) <= 18):
            raise ValueError(f"invalid Content-Length {value!r}: expected decimal digits")
        field = (lname, int(value))
    else:
        field = (lname, f"{name}: {value}\r\n")
    if len(value) <= _FIELDS_VALUE_MAX and len(_FIELDS) < _FIELDS_MAX:
        _FIELDS[(name, value)] = field
    return field


class Response:
    """The response to one request: start_response, write, and framing decisions.

    `keep_alive` starts as what the request allows and may only drop: when the server
    retires (`state.retiring`, read from the server's ServerState), when the application says `Connection: close`,
    when the body cannot be framed (HTTP/1.0 without Content-Length), when fewer bytes than
    Content-Length were sent, or when too much of the request body is left unread to discard
    (`body_drainable`).
    After the application finishes, the connection may serve another request iff `keep_alive`.
    Once `finished` (set when the body ended, and by the connection when it is done with the
    request whatever happened), `start_response` and `write` raise RuntimeError.
    """

    __slots__ = ("sock", "state", "request", "head_only", "http11", "keep_alive",
                 "body_drainable", "status", "code", "fields", "length", "add_date",
                 "add_server", "app_close", "headers_sent", "chunked", "remaining", "sent",
                 "broken", "finished", "request_id", "app_request_id", "on_stream",
                 "sending")

    def __init__(self, sock, state, request, http11, request_id=None):
        self.sock = sock
        self.state = state
        self.request = request
        self.head_only = request.method == "HEAD"
        self.http11 = http11
        self.keep_alive = request.keep_alive
        self.body_drainable = None  # set when the request body may still be unread
        self.status = None
        self.code = 0
        self.fields = ""  # the application's header lines, checked (see _app_fields)
        self.length = None  # the application's Content-Length
        self.add_date = self.add_server = True
        self.app_close = False
        self.headers_sent = False
        self.chunked = False
        self.remaining = None  # Content-Length bytes still to send, if the app set one
        self.sent = 0  # body bytes sent
        self.broken = False
        self.on_stream = None  # called once the head of a streaming response is written
        self.sending = False  # a write is under way (another greenlet must not write)
        self.finished = False
        self.request_id = request_id  # echoed as X-Request-Id unless the app set its own
        self.app_request_id = False

    def start_response(self, status, headers, exc_info=None):
        """PEP 3333 start_response; returns `write`. A bad status or header raises
        ValueError/TypeError here, in the application, and nothing of it is kept."""
        if self.finished:
            raise RuntimeError("start_response called after the response finished")
        if exc_info:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response called a second time without exc_info")
        code = _STATUSES.get(status)
        if code is None:
            if type(status) is not str or not _STATUS.fullmatch(status):
                raise ValueError(f"invalid status {status!r}: expected three digits (100-599), "
                                 "a space and a reason phrase without control characters")
            code = int(status[:3])
            if len(_STATUSES) < _STATUSES_MAX:
                _STATUSES[status] = code
        fields = _app_fields(headers)
        self.code = code
        self.status = status
        (self.fields, self.length, self.add_date, self.add_server, self.app_close,
         self.app_request_id) = fields
        return self.write

    def _head(self, body_length):
        """Status line and headers as bytes. Decides framing: Content-Length (the app's, or
        `body_length` when the whole body is known), chunked, or close-delimited; none at
        all for 1xx, 204 and 304, which have no body.
        """
        if self.status is None:
            raise AssertionError("the application did not call start_response")
        code = self.code
        if self.app_close or code < 200 or self.state.retiring:
            # Interim statuses cannot end a response (a WebSocket app writes its own 101 on
            # the socket: see websocket.py); a retiring server tells every client it closes.
            self.keep_alive = False
        elif self.body_drainable is not None and self.keep_alive and not self.body_drainable():
            self.keep_alive = False
        length = self.length
        if code < 200 or code in _NO_BODY_CODES:
            framing = ""  # no body, so no framing either, whatever the application set
        elif length is not None:
            framing = f"Content-Length: {length}\r\n"
            if not self.head_only:
                self.remaining = length
        elif self.head_only:
            framing = ""
        elif body_length is not None:
            framing = f"Content-Length: {body_length}\r\n"
        elif self.http11:
            self.chunked = True
            framing = "Transfer-Encoding: chunked\r\n" + self._streaming()
        else:
            self.keep_alive = False
            framing = self._streaming()
        if not self.keep_alive:
            end = "Connection: close\r\n\r\n"
        elif not self.http11:
            end = "Connection: keep-alive\r\n\r\n"
        else:
            end = "\r\n"
        request_id = self.request_id
        own_id = "" if request_id is None or self.app_request_id \
            else f"X-Request-Id: {request_id}\r\n"
        date = date_header() if self.add_date else ""
        server = SERVER if self.add_server else ""
        # One f-string: a list of the parts and a join took a fifth longer.
        return (f"HTTP/1.1 {self.status}\r\n{self.fields}{framing}{date}{server}{own_id}"
                f"{end}").encode("latin-1")

    def _streaming(self):
        """The body's length is not known up front: a stream (server-sent events, or any
        response the app yields piece by piece). The connection counts it as long-lived; an
        event stream tells nginx not to buffer it (X-Accel-Buffering), unless the app said.
        Returns the header line to add, if any."""
        if self.on_stream is not None:
            self.on_stream()
        fields = self.fields.lower()
        if "text/event-stream" in fields and _EVENT_STREAM.search(fields) \
                and "x-accel-buffering:" not in fields:
            return "X-Accel-Buffering: no\r\n"
        return ""

    def send_whole(self, body):
        """Send the whole response when the body is known up front (a list or tuple body)."""
        head = self._head(len(body))
        self.headers_sent = True
        self.finished = True
        if self.head_only or self.code < 200 or self.code in _NO_BODY_CODES:
            self._send(head)
            return
        remaining = self.remaining
        if remaining is not None:
            if len(body) > remaining:
                body = body[:remaining]
            elif len(body) < remaining:
                self.keep_alive = False
            self.remaining = remaining - len(body)
        self.sent = len(body)
        if len(body) <= 65536:
            self._send(head + body)
        else:
            self._send(head)
            self._send(body)

    def write(self, data):
        """Send one body chunk now (the PEP 3333 write callable; also used for iterables).
        Headers go out with the first non-empty chunk. Raises RuntimeError once the response
        finished: a `write` kept past its response never reaches the wire.
        """
        if self.finished:
            raise RuntimeError("write() called after the response finished")
        if self.broken:
            raise ClientDisconnected("client connection closed")
        if type(data) is not bytes:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"response body chunk must be bytes, not {type(data).__name__}")
            data = bytes(data)
        head = b""
        if not self.headers_sent:
            if not data:
                return
            head = self._head(None)
            self.headers_sent = True
        if self.head_only or self.code < 200 or self.code in _NO_BODY_CODES:
            data = b""
        elif self.remaining is not None:
            if len(data) > self.remaining:
                data = data[:self.remaining]
            self.remaining -= len(data)
        self.sent += len(data)
        if self.chunked and data:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        if head or data:
            self._send(head + data)

    def finish(self):
        """End the body after the iterable is exhausted."""
        if not self.headers_sent:
            self.send_whole(b"")
            return
        self.finished = True
        if self.chunked:
            self._send(b"0\r\n\r\n")
        elif self.remaining:
            self.keep_alive = False  # the app sent less than its Content-Length

    def _send(self, data):
        self.sending = True
        try:
            send_all(self.sock, data)
        except ClientDisconnected:
            self.broken = True
            self.keep_alive = False
            raise
        finally:
            self.sending = False
