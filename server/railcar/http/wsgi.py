"""PEP 3333 glue: the environ, wsgi.input, start_response and response writing.

Runs in a worker process. The connection (server.py) owns the socket and the parser; this
module turns one parsed `Request` into an environ, gives the application a `Response` whose
`start_response` and `write` it calls, and frames what the application produces:

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
"""

import re
import sys
from email.utils import formatdate
from time import time
from urllib.parse import unquote_to_bytes
from wsgiref.util import FileWrapper

import httptools

from .parser import BAD_REQUEST, BODY_TOO_LARGE, HTTPError

__all__ = ["ClientDisconnected", "Input", "EMPTY_INPUT", "Response", "base_environ",
           "build_environ", "error_response"]


class ClientDisconnected(OSError):
    """The client went away (or stalled past a timeout) while we read from or wrote to it."""


def base_environ(server_name, server_port, extra=None):
    """The per-listener constant part of every environ, copied for each request."""
    environ = {
        "SCRIPT_NAME": "",
        "SERVER_NAME": server_name,
        "SERVER_PORT": server_port,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "wsgi.file_wrapper": FileWrapper,
    }
    if extra:
        environ.update(extra)
    return environ


# Header name (bytes, as received) -> environ key, or None for names we drop. Bounded so that a
# client sending endless distinct names cannot grow it without limit.
_KEYS = {b"Content-Type": "CONTENT_TYPE", b"Content-Length": "CONTENT_LENGTH"}
_KEYS_MAX = 2048


def _environ_key(name):
    key = _KEYS.get(name)
    if key is None and name not in _KEYS:
        if b"_" in name:
            # Dropped as nginx and gunicorn do: "X_Foo" would otherwise pose as "X-Foo".
            key = None
        else:
            key = name.decode("latin-1").upper().replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
        if len(_KEYS) < _KEYS_MAX:
            _KEYS[name] = key
    return key


def build_environ(base, request, remote_addr, remote_port, max_body_size=0):
    """Return the environ for `request` (without wsgi.input). Raises HTTPError for a request
    that is well-formed HTTP but unacceptable: missing or repeated Host in HTTP/1.1, a bad
    request target, or a Content-Length over `max_body_size`.
    """
    environ = base.copy()
    environ["REQUEST_METHOD"] = request.method
    environ["SERVER_PROTOCOL"] = "HTTP/" + request.version
    environ["REMOTE_ADDR"] = remote_addr
    environ["REMOTE_PORT"] = remote_port
    authority = _set_target(environ, request.url, request.method)
    for name, value in request.headers:
        key = _KEYS.get(name) or _environ_key(name)
        if key is None:
            continue
        value = value.rstrip(b" \t").decode("latin-1")
        if key in environ:
            if key == "HTTP_HOST":
                raise HTTPError(BAD_REQUEST, "more than one Host header")
            value = environ[key] + ("; " if key == "HTTP_COOKIE" else ", ") + value
        environ[key] = value
    if "HTTP_HOST" not in environ and request.version == "1.1":
        raise HTTPError(BAD_REQUEST, "missing Host header")
    if max_body_size and int(environ.get("CONTENT_LENGTH", 0)) > max_body_size:
        raise HTTPError(BODY_TOO_LARGE, "request body too large")
    if authority is not None:
        # RFC 9112 3.2.2: an absolute-form target decides the host; Host is ignored.
        environ["HTTP_HOST"] = authority[0]
        _server_from_host(environ, authority[1])
    elif not environ["SERVER_NAME"]:
        _server_from_host(environ)
    return environ


def _set_target(environ, url, method):
    """Set PATH_INFO (percent-decoded, latin-1), QUERY_STRING and RAW_URI from the target.
    Returns (authority, default port) of an absolute-form target, else None. The target's
    scheme does not change wsgi.url_scheme: that is the connection's (or a trusted proxy's)."""
    raw = url.decode("latin-1")
    environ["RAW_URI"] = raw
    authority = None
    if url[:1] == b"/":
        path, _, query = url.partition(b"?")
        if b"#" in path or b"#" in query:
            path = path.partition(b"#")[0]
            query = query.partition(b"#")[0]
    elif url == b"*":  # OPTIONS * (the parser refused it with any other method)
        path = query = b""
    else:  # absolute-form or CONNECT's authority-form
        try:
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            raise HTTPError(BAD_REQUEST, "invalid request target") from None
        path, query = parsed.path or b"", parsed.query or b""
        if method != "CONNECT":
            authority = _authority(url, parsed)
    if b"%" in path:
        path = unquote_to_bytes(path)
    environ["PATH_INFO"] = path.decode("latin-1")
    environ["QUERY_STRING"] = query.decode("latin-1")
    return authority


def _authority(url, parsed):
    """host[:port] of an absolute-form target, as written; 400 unless it is an http(s) URI
    with a host and no userinfo (RFC 9110 4.2.4: userinfo in an http URI is an error)."""
    scheme = (parsed.schema or b"").lower()
    if scheme not in (b"http", b"https") or not parsed.host or parsed.userinfo \
            or url[len(scheme):len(scheme) + 3] != b"://":
        raise HTTPError(BAD_REQUEST, "invalid absolute-form request target")
    rest = url[len(scheme) + 3:]
    for stop in (b"/", b"?", b"#"):
        rest = rest.partition(stop)[0]
    return rest.decode("latin-1"), "443" if scheme == b"https" else "80"


def _server_from_host(environ, default_port="80"):
    """SERVER_NAME/PORT from HTTP_HOST: for listeners without an address of their own (unix
    sockets), and for absolute-form targets."""
    host = environ.get("HTTP_HOST", "")
    name, sep, port = host.rpartition(":")
    if not sep or "]" in port:  # no port, or a bare IPv6 literal
        name, port = host, default_port
    environ["SERVER_NAME"] = name or "localhost"
    environ["SERVER_PORT"] = port


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


_SERVER = "Server: railcar\r\n"
# RFC 9110: a status code is 3 digits; field names are tokens; a reason phrase and field
# values are visible characters, obs-text, space and tab. [0-9] rather than \d: only ASCII.
_STATUS = re.compile(r"[1-5][0-9][0-9] [\t\x20-\x7e\x80-\xff]*")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
# Header names already found to be tokens -> lower-cased; bounded like wsgi._KEYS.
_NAMES = {}
_NAMES_MAX = 1024
# Status lines already found valid -> their code.
_STATUSES = {}
_STATUSES_MAX = 256
_SEND_CHUNK = 1 << 20
_NO_BODY_CODES = frozenset((204, 304))
# Response header names (lower-cased) that change framing or that we add ourselves.
_SPECIAL = frozenset(("content-length", "date", "server", "connection", "transfer-encoding",
                      "keep-alive"))
_date_cache = [0, ""]


def date_header():
    """The Date header line, formatted at most once per second."""
    now = int(time())
    if now != _date_cache[0]:
        _date_cache[1] = "Date: " + formatdate(now, usegmt=True) + "\r\n"
        _date_cache[0] = now
    return _date_cache[1]


def error_response(status, detail="", headers=""):
    """A complete plain-text response carrying `Connection: close`, as bytes. `headers`:
    extra header lines, each ending in CRLF."""
    body = (status + ("\n" + detail if detail else "") + "\n").encode("latin-1", "replace")
    head = (f"HTTP/1.1 {status}\r\n{date_header()}{_SERVER}{headers}Content-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode("latin-1") + body


def send_all(sock, data):
    """Send all of `data` on a gevent socket, or raise ClientDisconnected.

    The socket's timeout bounds each wait for the client to accept more bytes, not the whole
    transfer (gevent's own sendall gives the whole call one deadline, which would cut off a
    large body sent to a slow but live client). Small writes take one direct send().
    """
    try:
        try:
            sent = sock._sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            view = memoryview(data)
            while sent < len(view):
                sent += sock.send(view[sent:sent + _SEND_CHUNK])
    except OSError as exc:
        raise ClientDisconnected(str(exc)) from exc


def _app_fields(headers):
    """Check the application's header list; return (lines, content_length, add_date,
    add_server, close): the header lines to send as one str (framing and hop-by-hop fields
    left out), the Content-Length it set or None, whether Date and Server are still ours to
    add, and whether it asked for `Connection: close`. Raises TypeError or ValueError naming
    the first bad field; nothing of a bad list is kept.
    """
    lines = []
    length = None
    add_date = add_server = True
    close = False
    for name, value in headers:
        lname = _NAMES.get(name)
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
        if lname in _SPECIAL:
            if lname == "content-length":
                if not (value.isascii() and value.isdigit() and len(value) <= 18):
                    raise ValueError(f"invalid Content-Length {value!r}: expected decimal digits")
                if length is not None and int(value) != length:
                    raise ValueError(f"two different Content-Length values: {length} and "
                                     f"{value!r}")
                length = int(value)
                continue  # written by _head, once, where the status allows one
            if lname == "date":
                add_date = False
            elif lname == "server":
                add_server = False
            else:  # hop-by-hop: ours to write
                if lname == "connection" and "close" in value.lower():
                    close = True
                continue
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines), length, add_date, add_server, close


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
                 "broken", "finished")

    def __init__(self, sock, state, request, http11):
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
        self.finished = False

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
        self.fields, self.length, self.add_date, self.add_server, self.app_close = fields
        return self.write

    def _head(self, body_length):
        """Status line and headers as bytes. Decides framing: Content-Length (the app's, or
        `body_length` when the whole body is known), chunked, or close-delimited; none at
        all for 1xx, 204 and 304, which have no body.
        """
        if self.status is None:
            raise AssertionError("the application did not call start_response")
        lines = ["HTTP/1.1 ", self.status, "\r\n", self.fields]
        code = self.code
        if self.app_close or code < 200 or self.state.retiring:
            # Interim statuses cannot end a response (upgrades are not supported); a retiring
            # server tells every client it is closing.
            self.keep_alive = False
        elif self.body_drainable is not None and self.keep_alive and not self.body_drainable():
            self.keep_alive = False
        length = self.length
        if code < 200 or code in _NO_BODY_CODES:
            pass  # no body, so no framing either, whatever the application set
        elif length is not None:
            lines.append(f"Content-Length: {length}\r\n")
            if not self.head_only:
                self.remaining = length
        elif self.head_only:
            pass
        elif body_length is not None:
            lines.append(f"Content-Length: {body_length}\r\n")
        elif self.http11:
            lines.append("Transfer-Encoding: chunked\r\n")
            self.chunked = True
        else:
            self.keep_alive = False
        if self.add_date:
            lines.append(date_header())
        if self.add_server:
            lines.append(_SERVER)
        if not self.keep_alive:
            lines.append("Connection: close\r\n\r\n")
        elif not self.http11:
            lines.append("Connection: keep-alive\r\n\r\n")
        else:
            lines.append("\r\n")
        return "".join(lines).encode("latin-1")

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
        try:
            send_all(self.sock, data)
        except ClientDisconnected:
            self.broken = True
            self.keep_alive = False
            raise
