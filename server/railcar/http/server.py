"""The worker's HTTP server: accept loop, per-connection handler, graceful retire, stats.

Runs in a worker process that is already gevent monkey-patched. The listening sockets are
inherited from the master, which keeps its own copies open across restarts; closing ours only
stops this worker from accepting, so queued connections go to the other workers.

One greenlet accepts per listener; one greenlet serves each connection, request after request
(keep-alive, pipelining). No exception escapes a connection greenlet: protocol errors become
4xx/505 responses, application errors 500s, and socket errors a quiet close.
"""

import errno
import socket
import sys
import traceback
from bisect import bisect_left
from dataclasses import dataclass
from time import monotonic, strftime

import gevent
from gevent import GreenletExit
from gevent.event import Event
from gevent.hub import get_hub
from gevent.socket import socket as gsocket

from .parser import HTTPError, Request, RequestParser
from .proxies import TrustedProxies, apply_forwarded
from .wsgi import (EMPTY_INPUT, ClientDisconnected, Input, Response, base_environ,
                   build_environ, error_response, send_all)

__all__ = ["HTTPServer", "Limits"]

_RECV_SIZE = 65536
_DRAIN_LIMIT = 65536  # unread request body we read and discard to keep a connection
_ACCEPT_DEFER = 0.05  # longest a worker with connections defers accepting to idler workers
_RETIRE_IDLE = 1.0  # how long an idle connection may still start a request once we retire
_LINGER_TIME = 2.0  # after an error, how long we read and discard what the client still sends
_LINGER_BYTES = 1 << 20
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_OVERLOADED = "503 Service Unavailable"
_TIMED_OUT = "504 Gateway Timeout"
# Upper bounds (seconds) of the request latency histogram buckets; one more bucket is +Inf.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# accept() errors that mean "try again later" rather than "this listener is gone".
_ACCEPT_RETRY = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


@dataclass(frozen=True)
class Limits:
    """Per-worker protocol limits and timeouts (seconds). max_body_size 0 means unlimited."""

    max_request_line: int = 8190
    max_header_size: int = 65536
    max_headers: int = 100
    keepalive_timeout: float = 20.0
    header_timeout: float = 30.0
    worker_connections: int = 1000
    max_body_size: int = 0
    # Peers whose X-Forwarded-For/-Proto count: addresses, networks, "unix" (see proxies.py).
    trusted_proxies: tuple = ("127.0.0.0/8", "::1/128", "unix")
    max_concurrent_requests: int = 0  # more in flight get 503 + Retry-After; 0: no limit
    max_request_time: float = 0.0  # longer requests get 504 and `on_timeout`; 0: no limit


class _IdleRetire(Exception):
    """Thrown into a connection greenlet blocked between requests when the server retires."""


class HTTPServer:
    """Serves one WSGI `app` on already-listening sockets (TCP or AF_UNIX).

    `access_log`, if given, is called with one line per request:
    `REMOTE - - [time] "METHOD TARGET PROTOCOL" STATUS BYTES DURATION_MS`.
    `base_environ` adds keys to every environ (e.g. SERVER_SOFTWARE).
    `on_timeout(description)`, if given, is called after a request ran past
    `limits.max_request_time` and was answered 504 (its stack is written to stderr first).

    Counters for metrics are plain ints updated in place: `status_counts[code // 100]`,
    `latency_counts[i]` (requests that took at most LATENCY_BUCKETS[i] seconds, the last one
    +Inf, not cumulative) and `latency_sum`.
    """

    def __init__(self, listeners, app, limits=None, access_log=None, base_environ=None,
                 on_timeout=None):
        self.listeners = list(listeners)
        self.app = app
        self.limits = limits or Limits()
        self.access_log = access_log
        self.extra_environ = dict(base_environ or {})
        self.trusted_proxies = TrustedProxies(self.limits.trusted_proxies)
        self.on_timeout = on_timeout
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = self.limits.max_concurrent_requests or sys.maxsize
        self.overloaded = 0  # requests answered 503 over max_concurrent_requests
        self.timed_out = 0  # requests answered (or cut off) past max_request_time
        self.status_counts = [0] * 6
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.retiring = False
        self.recv_buffer = bytearray(_RECV_SIZE)  # shared: filled and parsed without a switch
        self._conns = set()
        self._acceptors = []
        self._room = Event()  # set while under worker_connections
        self._room.set()
        self._all_closed = Event()

    # -- public interface ---------------------------------------------------------------------

    def start(self):
        """Start one accept greenlet per listener and return at once."""
        for listener in self.listeners:
            self._acceptors.append(gevent.spawn(self._accept_loop, listener))
        if self.limits.max_request_time:
            self._acceptors.append(gevent.spawn(self._watch_request_time))

    def stats(self):
        """Requests served in total, requests in flight, open connections, and the counters."""
        return {"requests": self.requests, "in_flight": self.in_flight,
                "connections": len(self._conns), "overloaded": self.overloaded,
                "timed_out": self.timed_out,
                "status_counts": {f"{i}xx": n for i, n in enumerate(self.status_counts) if i},
                "latency": {"buckets": list(LATENCY_BUCKETS), "counts": self.latency_counts,
                            "sum": self.latency_sum}}

    def requests_in_flight(self):
        """One dict per request being served: method, path, client, age (seconds)."""
        now = monotonic()
        return [conn.describe_request(now) for conn in list(self._conns) if conn.busy_since]

    def retire(self, grace=30.0):
        """Graceful stop; blocks the calling greenlet until done. Returns True if every
        connection finished on its own within `grace` seconds.

        Stops accepting and closes our copies of the listeners; every request in flight gets
        `Connection: close`; a connection idle between requests may still start one within
        ~1 s (its client may be mid-send), then it is closed. After `grace`, what is left
        is killed.
        """
        self.retiring = True
        self._close_listeners()
        for conn in list(self._conns):
            conn.wake_if_idle()
        if self._conns and not self._all_closed.wait(grace):
            self._kill_connections()
            return False
        return True

    def stop(self):
        """Immediate stop: close the listeners and every connection."""
        self.retiring = True
        self._close_listeners()
        self._kill_connections()

    # -- accepting ----------------------------------------------------------------------------

    def _accept_loop(self, listener):
        """Accept connections from `listener` until the server retires.

        Several worker processes accept from the same listening socket, and all of them wake
        when a connection arrives. A gevent worker that accepts greedily takes connections
        while it is busy, so they wait for its event loop while other workers sit idle
        (gunicorn -k gevent shows this as requests queued up to half a second). So: accept
        one connection per wake, non-blocking (EAGAIN just means another process won the
        race), and when this worker already has connections, first let its event loop run
        everything that is ready (`gevent.idle()`): an idle worker gets to the accept first.
        The deferral is bounded (`_ACCEPT_DEFER`) so that a worker saturated on its own, with
        no idle peer, still accepts. At `worker_connections` we stop accepting until a
        connection closes.
        """
        raw = getattr(listener, "_sock", listener)  # the C-level socket under gevent's
        raw.setblocking(False)
        family = listener.family
        if family == socket.AF_UNIX:
            base = base_environ("", "", self.extra_environ)
        else:
            host, port = listener.getsockname()[:2]
            base = base_environ(host, str(port), self.extra_environ)
        hub = get_hub()
        watcher = hub.loop.io(raw.fileno(), 1)
        try:
            while not self.retiring:
                if not self._room.is_set():
                    self._room.wait()
                    continue
                if self._conns:
                    with gevent.Timeout(_ACCEPT_DEFER, False):
                        gevent.idle()
                try:
                    fd, addr = raw._accept()
                except BlockingIOError:
                    hub.wait(watcher)
                    continue
                except OSError as exc:
                    if not self._accept_failed(exc, listener):
                        return
                    continue
                self._spawn_connection(gsocket(family, socket.SOCK_STREAM, 0, fileno=fd),
                                       addr, base)
        finally:
            watcher.close()

    def _accept_failed(self, exc, listener):
        """Handle an accept() error; False when the listener is unusable."""
        if exc.errno in (errno.EINTR, errno.ECONNABORTED, errno.EPROTO):
            return True  # that one connection is gone; carry on
        if self.retiring:
            return False
        sys.stderr.write(f"railcar: accept() on {listener!r} failed: {exc}\n")
        if exc.errno in _ACCEPT_RETRY:
            gevent.sleep(0.5)  # out of descriptors or memory: back off, keep serving
            return True
        return False

    def _spawn_connection(self, sock, addr, base):
        if sock.family == socket.AF_UNIX:
            remote_addr = remote_port = ""
        else:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            remote_addr, remote_port = addr[0], str(addr[1])
        conn = Connection(self, sock, remote_addr, remote_port, base)
        self._conns.add(conn)
        if len(self._conns) >= self.limits.worker_connections:
            self._room.clear()
        conn.greenlet = gevent.spawn(conn.run)

    def _connection_closed(self, conn):
        self._conns.discard(conn)
        self._room.set()
        if self.retiring and not self._conns:
            self._all_closed.set()

    def _close_listeners(self):
        """Stop the accept greenlets (which stops their fd watchers), then close our fds."""
        gevent.killall(self._acceptors)
        self._acceptors = []
        for listener in self.listeners:
            listener.close()

    def _kill_connections(self):
        gevent.killall([conn.greenlet for conn in self._conns if conn.greenlet], timeout=5)

    # -- max_request_time ---------------------------------------------------------------------

    def _watch_request_time(self):
        """Find requests running past max_request_time, a few times per limit (at most 1 s
        apart). Only a request that yields to the event loop can be seen here; a worker stuck
        in pure CPU work stops answering its master, which replaces it."""
        limit = self.limits.max_request_time
        interval = min(1.0, limit / 4)
        while True:
            gevent.sleep(interval)
            now = monotonic()
            for conn in list(self._conns):
                if conn.busy_since and now - conn.busy_since > limit:
                    self._time_out(conn, now)

    def _time_out(self, conn, now):
        """Log the stuck request's stack, answer 504 if nothing was sent, end the connection."""
        info = conn.describe_request(now)
        frame = conn.greenlet.gr_frame if conn.greenlet else None
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(no stack)\n"
        description = (f"{info['method']} {info['path']} from {info['client']} ran past "
                       f"max_request_time ({self.limits.max_request_time:g} s)")
        sys.stderr.write(f"railcar: {description}; its stack:\n{stack}")
        self.timed_out += 1
        conn.time_out()
        if self.on_timeout is not None:
            self.on_timeout(description)


class Connection:
    """One client connection, served by its own greenlet (`run`) request after request."""

    __slots__ = ("server", "sock", "remote_addr", "remote_port", "base", "parser", "limits",
                 "proxied",
                 "greenlet", "idle", "served", "timeout", "response", "expecting", "linger",
                 "busy_since")

    def __init__(self, server, sock, remote_addr, remote_port, base):
        limits = server.limits
        self.server = server
        self.sock = sock
        self.remote_addr = remote_addr
        self.remote_port = remote_port
        self.base = base
        self.limits = limits
        self.parser = RequestParser(limits.max_request_line, limits.max_header_size,
                                    limits.max_headers, limits.max_body_size, _RECV_SIZE)
        self.greenlet = None
        self.idle = False  # True only while blocked waiting for the next request
        self.served = 0
        self.timeout = None
        self.response = None
        self.expecting = False  # the client awaits "100 Continue" we have not sent
        self.linger = False  # close with unread input: discard it first (see _linger)
        self.proxied = server.trusted_proxies.trusts(remote_addr)  # X-Forwarded-* count
        self.busy_since = 0.0  # monotonic() when the app was called; 0.0 between requests

    def run(self):
        """Serve until the client or the server ends the connection. Never raises."""
        try:
            self._serve()
        except (ClientDisconnected, ConnectionError, TimeoutError):
            pass
        except GreenletExit:  # killed by stop() or at the end of retire()'s grace
            self.linger = False
            raise
        except Exception:
            sys.stderr.write(f"railcar: internal error on connection from "
                             f"{self.remote_addr or 'unix socket'}:\n{traceback.format_exc()}")
        finally:
            if self.linger:
                self._linger()
            self.sock.close()
            self.server._connection_closed(self)

    def _linger(self):
        """Half-close, then read and discard for a bounded time before closing.

        Closing a socket with unread input makes the kernel send RST, which can destroy our
        error response before the client has read it (say, a 413 to a client still
        uploading). So we shut down our side and drain first, as nginx's lingering close does.
        """
        try:
            self.sock.shutdown(socket.SHUT_WR)
            deadline = monotonic() + _LINGER_TIME
            total = 0
            while total < _LINGER_BYTES:
                remaining = deadline - monotonic()
                if remaining <= 0:
                    break
                self.sock.settimeout(remaining)
                n = self.sock.recv_into(self.server.recv_buffer)
                if not n:
                    break
                total += n
        except OSError:
            pass

    def _serve(self):
        while True:
            item = self._next_request()
            if item is None:
                return
            if type(item) is not Request:
                self._refuse(item)
                return
            if not self._handle(item):
                if not item.complete or self.parser.in_message:
                    self.linger = True
                return
            self.served += 1

    # -- reading ------------------------------------------------------------------------------

    def _next_request(self):
        """The next queued Request or HTTPError; None if the connection should close
        (EOF, timeout, or nothing more can be parsed)."""
        parser = self.parser
        ready = parser.ready
        if not ready and not parser.in_message:
            if parser.closed or not self._wait_first_bytes():
                return None
        deadline = None
        while not ready:
            if parser.closed:
                return None
            if deadline is None:
                deadline = monotonic() + self.limits.header_timeout
            remaining = deadline - monotonic()
            if remaining <= 0 or not self._fill_quietly(remaining):
                return None
        return ready.popleft()

    def _wait_first_bytes(self):
        """Wait, idle, for the start of the next request. False: close the connection."""
        if self.server.retiring:
            timeout = _RETIRE_IDLE
        elif self.served:
            timeout = self.limits.keepalive_timeout
        else:
            timeout = self.limits.header_timeout
        self.idle = True
        try:
            return self._fill_quietly(timeout)
        except _IdleRetire:
            self.idle = False
            return self._fill_quietly(_RETIRE_IDLE)
        finally:
            self.idle = False

    def wake_if_idle(self):
        """Called when the server retires: cut an idle wait short (to ~1 s from now).

        The exception is thrown from a hub callback that checks `idle` again when it runs,
        so a connection that has meanwhile started a request is left alone.
        """
        if self.idle:
            get_hub().loop.run_callback(self._throw_if_idle)

    def _throw_if_idle(self):
        if self.idle and self.greenlet:
            self.greenlet.throw(_IdleRetire)

    def _fill(self, timeout):
        """Receive once (waiting up to `timeout` s) and feed the parser; return the byte
        count, 0 at EOF. Raises TimeoutError or OSError."""
        if timeout != self.timeout:
            self.sock.settimeout(timeout)
            self.timeout = timeout
        buf = self.server.recv_buffer
        n = self.sock.recv_into(buf)
        if n:
            self.parser.feed(memoryview(buf)[:n])
        return n

    def _fill_quietly(self, timeout):
        try:
            return self._fill(timeout)
        except OSError:  # timeouts, resets
            return 0

    def pull(self):
        """Receive more of a request body (wsgi.input's source)."""
        try:
            n = self._fill(self.limits.header_timeout)
        except TimeoutError:
            raise ClientDisconnected("timed out reading the request body") from None
        except OSError as exc:
            raise ClientDisconnected(str(exc)) from None
        if not n:
            raise ClientDisconnected("client closed the connection during the request body")

    def send_continue(self):
        """Send `100 Continue` (wsgi.input calls this on its first read of a waiting body)."""
        self.expecting = False
        if not self.response.headers_sent:
            send_all(self.sock, _CONTINUE)

    # -- responding ---------------------------------------------------------------------------

    def _handle(self, request):
        """Run the application for `request`; True if the connection can serve another."""
        server = self.server
        log = server.access_log
        started = monotonic()
        try:
            if request.error is not None:  # the body is already known to be bad
                raise request.error
            environ = build_environ(self.base, request, self.remote_addr, self.remote_port,
                                    self.limits.max_body_size)
            if self.proxied:
                apply_forwarded(environ, server.trusted_proxies)
        except HTTPError as error:
            self._refuse(error, request)
            return False
        http11 = request.version == "1.1"
        response = Response(self.sock, server, request, http11)
        self.response = response
        self.expecting = False
        if request.complete and not request.body and request.error is None:
            environ["wsgi.input"] = EMPTY_INPUT
        else:
            response.body_drainable = self.body_drainable
            expect = http11 and environ.get("HTTP_EXPECT", "").lower() == "100-continue"
            self.expecting = expect
            environ["wsgi.input"] = Input(request, self.pull, self.send_continue if expect
                                          else None)
        if server.in_flight >= server.max_in_flight:
            server.overloaded += 1
            self._refuse(HTTPError(_OVERLOADED, "too many requests in progress; retry later"),
                         request, "Retry-After: 1\r\n")
            return False
        server.in_flight += 1
        self.busy_since = started
        try:
            ok = self._run_app(environ, response)
        finally:
            self.busy_since = 0.0
            server.in_flight -= 1
            server.requests += 1
        elapsed = monotonic() - started
        server.status_counts[response.code // 100 % 6] += 1
        server.latency_counts[bisect_left(LATENCY_BUCKETS, elapsed)] += 1
        server.latency_sum += elapsed
        if log is not None:
            self._log(request, response.code, response.sent, started)
        return ok and response.keep_alive and (request.complete or self._drain(request)) \
            and request.error is None

    def _run_app(self, environ, response):
        """Call the app and write its response; False if the connection must close."""
        result = None
        try:
            result = self.server.app(environ, response.start_response)
            if type(result) is list and not response.headers_sent:
                response.send_whole(result[0] if len(result) == 1 and type(result[0]) is bytes
                                    else b"".join(result))
            else:
                for data in result:
                    response.write(data)
                    if response.head_only and response.headers_sent:
                        break
                response.finish()
            return True
        except ClientDisconnected:
            return False
        except HTTPError as error:  # a bad body, raised by wsgi.input
            if not response.headers_sent:
                self._send_quietly(error_response(error.status, error.detail))
                response.code = int(error.status[:3])
            return False
        except Exception:
            self._app_error(environ, response)
            return False
        finally:
            if result is not None and hasattr(result, "close"):
                try:
                    result.close()
                except Exception:
                    self._app_error(environ, response)

    def _app_error(self, environ, response):
        """Print the traceback, prefixed with the request; answer 500 if nothing was sent."""
        sys.stderr.write(f"railcar: error in application handling {environ['REQUEST_METHOD']} "
                         f"{environ['RAW_URI']}:\n{traceback.format_exc()}")
        if not response.headers_sent:
            response.headers_sent = True
            response.code = 500
            self._send_quietly(error_response("500 Internal Server Error"))

    def body_drainable(self):
        """Whether the unread rest of the request body is small enough to discard, so that
        the connection can serve another request (Response consults it for its headers)."""
        request = self.response.request
        if request.complete:
            return request.error is None
        if self.expecting:  # the client may never send the body it asked permission for
            return False
        length = _content_length(request)
        return length is None or length - request.body_size <= _DRAIN_LIMIT

    def _drain(self, request):
        """Read and discard a small unread body so the connection can be reused."""
        if not self.body_drainable():
            return False
        limit = request.body_size + _DRAIN_LIMIT
        while not request.complete:
            request.body.clear()
            if request.body_size > limit:
                return False
            try:
                if not self._fill(self.limits.header_timeout):
                    return False
            except OSError:
                return False
        request.body.clear()
        return request.error is None

    def _refuse(self, error, request=None, headers=""):
        """Answer a request we will not serve, then the connection closes."""
        self.linger = True
        self._send_quietly(error_response(error.status, error.detail, headers))
        code = int(error.status[:3])
        self.server.status_counts[code // 100] += 1
        if self.server.access_log is not None:
            self._log(request, code, 0, monotonic())

    def describe_request(self, now):
        """The request in flight as a dict for `status --requests`."""
        request = self.response.request
        return {"method": request.method, "path": request.url.decode("latin-1"),
                "client": f"{self.remote_addr}:{self.remote_port}" if self.remote_addr
                else "unix", "age": now - self.busy_since if self.busy_since else 0.0}

    def time_out(self):
        """Called by the server's watchdog: the request ran past max_request_time. Answer 504
        if the response has not started, then end the connection (kill its greenlet)."""
        self.busy_since = 0.0
        response = self.response
        if not response.headers_sent:
            response.headers_sent = True
            response.code = 504
            self._send_quietly(error_response(_TIMED_OUT, "the request took too long"))
        response.broken = True  # whatever the app still writes is dropped
        response.keep_alive = False
        self.linger = False
        if self.greenlet is not None:
            self.greenlet.kill(block=False)

    def _send_quietly(self, data):
        try:
            send_all(self.sock, data)
        except ClientDisconnected:
            pass

    def _log(self, request, code, sent, started):
        millis = (monotonic() - started) * 1000.0
        if request is None:
            line = "-"
        else:
            line = f"{request.method} {request.url.decode('latin-1')} HTTP/{request.version}"
        stamp = strftime("%d/%b/%Y:%H:%M:%S %z")
        self.server.access_log(f'{self.remote_addr or "-"} - - [{stamp}] "{line}" {code} {sent} '
                               f"{millis:.1f}")


def _content_length(request):
    """The request's Content-Length, or None (chunked)."""
    for name, value in request.headers:
        if name.lower() == b"content-length":
            return int(value)
    return None
