"""The WSGI environ (PEP 3333) of a parsed request.

Runs in a worker process (and in the master's own listeners). `base_environ` is the
per-listener constant part, built once; `build_environ` copies it for one `Request` and adds
the request line and the headers, refusing with HTTPError what is well-formed HTTP but not
acceptable (a missing or repeated Host in HTTP/1.1, a bad target, a declared body over the
limit). Header names with "_" are dropped (they would pose as their "-" twins).
wsgi.input is not set here: the connection adds it (body.py).
"""

import sys
from urllib.parse import unquote_to_bytes
from wsgiref.util import FileWrapper

import httptools

from .errors import BAD_REQUEST, BODY_TOO_LARGE, HTTPError

__all__ = ["base_environ", "build_environ"]


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
