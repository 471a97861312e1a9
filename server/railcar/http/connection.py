"""One client connection of the worker's HTTP server, served request after request.

Runs in a worker process (gevent). A `Connection` reads requests with the parser, runs the
WSGI app for each, writes the response and decides whether the connection can serve another
(keep-alive, pipelining). What it builds on: the parser (parser.py), the environ
(environ.py), the request body and wsgi.input (body.py), the response (wsgi.py), the server's
counters (state.py). No exception escapes `run`: protocol errors become 4xx/505
responses, application errors 500s, and socket errors a quiet close.
"""

import socket
import sys
import traceback
from time import monotonic, time

from gevent import GreenletExit, Timeout, getcurrent, sleep
from gevent.hub import Waiter, get_hub
from gevent.socket import socket as _PlainSocket

from .accesslog import json_line, text_line
from .body import EMPTY_INPUT, Input, RequestBody
from .deadline import RequestTimeout
from .environ import build_environ
from .parser import HTTPError, Request, RequestParser
from .proxies import apply_forwarded
from .requestinfo import queue_time, request_id
from .state import RECV_SIZE
from .websocket import UpgradedSocket, handshake_error, wants_websocket
from .wire import ClientDisconnected, error_response, send_all
from .wsgi import Response

# How a connection takes turns with the others of its worker. After a response, its next read
# waits for the socket through the hub's poll rather than trying recv first: the client
# (not pipelining) has usually not sent its next request yet, and the recv that would say so
# (EAGAIN, an exception) cost more than the poll costs when the request is already there.
# wrk -t2 -c50, 2 workers, alternated rounds: hello 16.83 us of worker CPU per request
# instead of 17.47, p99 8.7 ms instead of 11.4. Waiting through the poll is also how it
# yields: it joins the same poll as the connections waiting on their sockets, in its turn.
# Pipelined requests (already parsed, no read needed) and TLS connections are served at
# once, with a sleep(0) after every 4 so that one fast client cannot hold the worker.
# (Earlier, with a recv attempted first: hello bench, 64 connections, never yielding 47k
# req/s with p99 36 ms; sleep(0) after every request 35k with p99 7.9 ms; Flask c50,
# sleep(0) every 8 requests p99 30 ms, through the poll every 4 requests p99 ~11 ms.)
_YIELD_EVERY_MASK = 3
_RETIRE_IDLE = 1.0  # how long an idle connection may still start a request once we retire
_LINGER_TIME = 2.0  # after an error, how long we read and discard what the client still sends
_LINGER_BYTES = 1 << 20
_OVERLOADED = "503 Service Unavailable"
_TIMED_OUT = "504 Gateway Timeout"
_BODY_TIMED_OUT = "408 Request Timeout"
_LAST_CHUNK = b"0\r\n\r\n"


class _IdleRetire(Exception):
    """Thrown into a connection greenlet blocked between requests when the server retires."""


class _Evicted(Exception):
    """Thrown into an idle connection greenlet to close it, making room for a new one."""


class Connection:
    """One client connection, served by its own greenlet (`run`) request after request.

    Given what it serves with (`service`: app, limits, access log, proxies, deadline) and the
    server's `state`, whose counters it updates and whose `retiring` flag it obeys; it
    removes itself from `state` when it ends. It knows nothing else of the server.
    """

    __slots__ = ("service", "state", "sock", "remote_addr", "remote_port", "base", "parser", "limits",
                 "proxied",
                 "greenlet", "idle", "served", "timeout", "response", "body", "linger",
                 "busy_since", "environ", "idle_since", "evicting", "tls", "long_lived",
                 "upgraded", "ended_at", "poll_next", "timer", "timer_after")

    def __init__(self, service, state, sock, remote_addr, remote_port, base, tls=False):
        limits = service.limits
        self.service = service
        self.state = state
        self.sock = sock
        self.remote_addr = remote_addr
        self.remote_port = remote_port
        self.base = base
        self.limits = limits
        self.parser = RequestParser(limits.max_request_line, limits.max_header_size,
                                    limits.max_headers, limits.max_body_size, RECV_SIZE)
        self.greenlet = None
        self.idle = False  # True only while blocked waiting for the next request
        self.served = 0
        self.timeout = None
        self.response = None
        self.body = None  # the RequestBody of the request being served, if it has one
        self.linger = False  # close with unread input: discard it first (see _linger)
        self.proxied = service.trusted_proxies.trusts(remote_addr)  # X-Forwarded-* count
        self.busy_since = 0.0  # monotonic() when the app was called; 0.0 between requests
        self.environ = None  # the environ of the request in the app (for on_timeout)
        self.idle_since = 0  # state.idle_ticks when the idle wait began (orders evictions)
        self.evicting = False  # chosen to be closed to make room for a new connection
        self.tls = tls  # `sock` is an SSLSocket whose handshake is still to be done
        # A WebSocket, or a response streaming without a known length (server-sent events):
        # counted in state.long_lived instead of in_flight, kept by a retiring server up to
        # long_lived_timeout, exempt from max_request_time.
        self.long_lived = False
        self.upgraded = None  # the UpgradedSocket offered to the app for a WebSocket request
        self.ended_at = 0.0  # monotonic() when the retiring server ended it (end_long_lived)
        self.poll_next = False  # the next read waits for the hub's poll first (see _serve)
        self.timer = None  # the timer bounding a wait for the socket (see _recv_waiting)
        self.timer_after = None  # ... and its timeout

    def run(self):
        """Serve until the client or the server ends the connection. Never raises."""
        try:
            if not self.tls or self._handshake():
                self._serve()
        except (ClientDisconnected, ConnectionError, TimeoutError, RequestTimeout):
            pass  # RequestTimeout here: interrupted again while answering the first one
        except GreenletExit:  # killed by stop() or at the end of retire()'s grace
            self.linger = False
            raise
        except Exception:
            sys.stderr.write(f"railcar: internal error on connection from "
                             f"{self.remote_addr or 'unix socket'}:\n{traceback.format_exc()}")
        finally:
            try:
                if self.linger:
                    self._linger()
            finally:  # even when killed or timed out while lingering
                if self.timer is not None:
                    self.timer.close()
                self.sock.close()
                self.state.closed(self)

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
                n = self.sock.recv_into(self.service.recv_buffer)
                if not n:
                    break
                total += n
        except OSError:
            pass

    def _handshake(self):
        """The TLS handshake, within header_timeout. Until it is done the connection counts
        as idle, like one that has not sent a byte yet: a client that never completes it
        holds a connection slot for at most header_timeout (and may be evicted at
        worker_connections), never the worker. When the server retires meanwhile, the
        client has ~1 s more to finish it (a client that connected just before the retire
        is served, as an idle connection may still start its request). False: close
        (failed, timed out, evicted)."""
        state = self.state
        state.idle_ticks += 1
        self.idle_since = state.idle_ticks
        self.idle = True
        try:
            self.timeout = _RETIRE_IDLE if state.retiring else self.limits.header_timeout
            self.sock.settimeout(self.timeout)
            self.sock.do_handshake()
            return True
        except _IdleRetire:
            self.idle = False
            return self._finish_handshake()
        except (OSError, _Evicted):  # ssl.SSLError and timeouts are OSErrors
            return False
        finally:
            self.idle = False

    def _finish_handshake(self):
        """The rest of a handshake cut short by the server retiring: ~1 s more (OpenSSL
        resumes a non-blocking handshake where it stopped)."""
        try:
            self.timeout = _RETIRE_IDLE
            self.sock.settimeout(self.timeout)
            self.sock.do_handshake()
            return True
        except OSError:
            return False

    def _serve(self):
        while True:
            item = self._next_request()
            if item is None:
                return
            if type(item) is not Request:
                self._refuse(item)
                return
            if not self._handle(item):
                if not item.complete or self.parser.in_message or item.error is not None:
                    self.linger = True  # the client may still be sending
                return
            self.served += 1
            if type(self.sock) is _PlainSocket and not self.parser.ready:
                self.poll_next = True
            elif not self.served & _YIELD_EVERY_MASK:
                # A pipelined request needs no read, and a TLS read does not wait while
                # gevent's SSL layer holds data: yield now and then. sleep(0) alone would not
                # do between reads: gevent runs its callbacks (sleep(0) is one) before it
                # polls, for up to the switch interval and often longer, so connections
                # taking turns by sleep(0) starve the ones that wait on their sockets.
                sleep(0)

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
        state = self.state
        if state.retiring:
            timeout = _RETIRE_IDLE
        elif self.served:
            timeout = self.limits.keepalive_timeout
        else:
            timeout = self.limits.header_timeout
        state.idle_ticks += 1
        self.idle_since = state.idle_ticks
        self.idle = True
        try:
            return self._fill_quietly(timeout)
        except _IdleRetire:
            self.idle = False
            return self._fill_quietly(_RETIRE_IDLE)
        except _Evicted:
            return False
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

    def evict(self):
        """Called when the worker is at worker_connections and a new client waits: close this
        connection if it is still idle (between requests, or not a byte sent yet)."""
        self.evicting = True
        get_hub().loop.run_callback(self._throw_if_evicted)

    def _throw_if_evicted(self):
        if self.idle and self.greenlet:
            self.greenlet.throw(_Evicted)
        else:  # it started a request meanwhile: it may be chosen again when idle
            self.evicting = False

    def _fill(self, timeout):
        """Receive once (waiting up to `timeout` s) and feed the parser; return the byte
        count, 0 at EOF. Raises TimeoutError or OSError.

        The socket's timeout is set to `timeout` too: it bounds each wait of the sends that
        follow (wire.send_all). On a plain socket the receive itself is ours: gevent's
        recv_into makes a gevent.Timeout (an exception object, a timer) for every wait,
        which for a keep-alive connection is every request, and that was a tenth of the CPU
        a small request costs; `_recv_waiting` waits on the socket's own read watcher and a
        bare timer instead."""
        if timeout != self.timeout:
            self.sock.settimeout(timeout)
            self.timeout = timeout
        buf = self.service.recv_buffer
        sock = self.sock
        if type(sock) is _PlainSocket:
            if self.poll_next:  # yielding (see _serve): through the poll even if readable
                self.poll_next = False
                n = self._recv_waiting(timeout, buf)
            else:
                try:
                    n = sock._sock.recv_into(buf)
                except BlockingIOError:
                    n = self._recv_waiting(timeout, buf)
        else:
            n = sock.recv_into(buf)
        if n:
            self.parser.feed(buf, n)
        return n

    def _recv_waiting(self, timeout, buf):
        """Wait until the plain socket is readable (at most `timeout` s, None: no limit),
        then receive into `buf`. Raises TimeoutError, OSError, or what another greenlet
        throws in meanwhile (the watchers are stopped whatever happens)."""
        sock = self.sock
        hub = get_hub()
        timer = None
        if timeout is not None:
            # One timer per connection, restarted for each wait (`again`): a new timer for
            # every wait cost twice as much, and a keep-alive connection waits per request.
            timer = self.timer
            if timer is None or self.timer_after != timeout:
                if timer is not None:
                    timer.close()
                timer = self.timer = hub.loop.timer(timeout, timeout)
                self.timer_after = timeout
        while True:
            waiter = Waiter(hub)
            watcher = sock._read_event
            watcher.start(waiter.switch, waiter)
            if timer is not None:
                timer.again(waiter.throw, TimeoutError, "timed out")
            try:
                waiter.get()
            finally:
                watcher.stop()
                if timer is not None:
                    timer.stop()
            try:
                return sock._sock.recv_into(buf)
            except BlockingIOError:  # readable, then not: wait again, for a whole `timeout`
                pass

    def _fill_quietly(self, timeout):
        try:
            return self._fill(timeout)
        except OSError:  # timeouts, resets
            return 0

    def _body_timed_out(self):
        """The client stalled sending the body: 408 if the response has not started (the
        request was not served), then the connection ends; what the app writes is dropped."""
        self._abandon(_BODY_TIMED_OUT, "the request body arrived too slowly")

    # -- responding ---------------------------------------------------------------------------

    def _handle(self, request):
        """Run the application for `request`; True if the connection can serve another."""
        service = self.service
        state = self.state
        started = monotonic()
        try:
            if request.error is not None:  # the body is already known to be bad
                raise request.error
            environ = build_environ(self.base, request, self.remote_addr, self.remote_port,
                                    self.limits.max_body_size)
        except HTTPError as error:
            self._refuse(error, request)
            return False
        rid = environ["HTTP_X_REQUEST_ID"] = request_id(environ.get("HTTP_X_REQUEST_ID"))
        queue = None
        if self.proxied:
            apply_forwarded(environ, service.trusted_proxies)
            start = environ.get("HTTP_X_REQUEST_START")
            if start is not None:
                queue = queue_time(start, time())
                if queue is not None:
                    state.queued(queue)
        if "HTTP_UPGRADE" in environ and wants_websocket(request):
            refusal = handshake_error(request)
            if refusal is not None:
                self._refuse(refusal[0], request, refusal[1])
                return False
            self.upgraded = UpgradedSocket(self.sock, self.parser.upgrade_tail,
                                           self._take_over)
            environ["gunicorn.socket"] = self.upgraded  # see websocket.py
        http11 = request.version == "1.1"
        response = Response(self.sock, state, request, http11, rid)
        response.on_stream = self._become_long_lived
        self.response = response
        if request.complete and not request.body and request.error is None:
            self.body = None
            environ["wsgi.input"] = EMPTY_INPUT
        else:
            expect = http11 and environ.get("HTTP_EXPECT", "").lower() == "100-continue"
            self.body = body = RequestBody(request, response, self.sock, self.limits,
                                           self._fill, self._body_timed_out, expect)
            response.body_drainable = body.drainable
            environ["wsgi.input"] = Input(request, body.pull, body.send_continue if expect
                                          else None)
        if state.in_flight >= state.max_in_flight:
            state.overloaded += 1
            self._refuse(HTTPError(_OVERLOADED, "too many requests in progress; retry later"),
                         request, "Retry-After: 1\r\n" + _id_header(response), environ, queue)
            return False
        state.in_flight += 1
        self.busy_since = started
        self.environ = environ
        try:
            ok = self._run_app(environ, response)
        except RequestTimeout as timeout:  # past max_request_time, interrupted (deadline.py)
            self.busy_since = 0.0  # first: the CPU timer must not interrupt us again
            if not timeout.answered:
                service.deadline.expire(self, frame=timeout.frame)
            ok = False
        finally:
            self.busy_since = 0.0
            self.environ = None
            if self.long_lived:
                self.long_lived = False
                state.long_lived -= 1
            else:
                state.in_flight -= 1
            state.requests += 1
        state.answered(response.code, monotonic() - started)
        if service.access_log is not None:
            self._log(request, response.code, response.sent, started, environ, queue)
        return ok and response.keep_alive and (request.complete or self.body.drain()) \
            and request.error is None

    def _run_app(self, environ, response):
        """Call the app and write its response; False if the connection must close."""
        result = None
        try:
            result = self.service.app(environ, response.start_response)
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
        except StopIteration:
            # gunicorn's convention, which flask-sock follows once the WebSocket ended: the
            # connection is done. From an app that did not take the connection, an error.
            if self.upgraded is None or not self.upgraded.taken:
                self._app_error(environ, response)
            return False
        except HTTPError as error:  # a bad body, raised by wsgi.input
            if not response.headers_sent:
                self._send_quietly(error_response(error.status, error.detail,
                                                  _id_header(response)))
                response.code = int(error.status[:3])
            return False
        except Exception:
            self._app_error(environ, response)
            return False
        finally:
            response.finished = True  # a write or start_response from now on raises
            if result is not None and hasattr(result, "close"):
                try:
                    result.close()
                except Exception:
                    self._app_error(environ, response)

    def _take_over(self):
        """The app began to speak on environ["gunicorn.socket"] (a WebSocket): the
        connection is no longer HTTP. railcar writes nothing more on it (the response counts
        as a 101, already sent), and it ends when the app returns; its socket waits without
        a timeout, as the app's WebSocket library expects."""
        response = self.response
        response.headers_sent = True
        response.code = 101
        response.keep_alive = False
        response.broken = True  # anything the app still hands over as a response is dropped
        self.sock.settimeout(None)
        self.timeout = None
        self._become_long_lived()

    def _become_long_lived(self):
        """A WebSocket, or a response that began to stream (Response.on_stream)."""
        if not self.long_lived and self.busy_since:
            self.long_lived = True
            self.busy_since = 0.0  # out of max_request_time and `status --requests`
            self.state.in_flight -= 1
            self.state.long_lived += 1

    def end_long_lived(self, timeout):
        """Called once by a retiring server at long_lived_timeout (which sets `ended_at`).

        A WebSocket gets the close frame 1001 (going away) and ends once its app returns on
        the client's answer (the server kills it if that takes too long). A stream is ended:
        a chunked one with its last chunk when no write of the app is under way, so the
        client sees a complete response; then its greenlet is killed."""
        if self.upgraded is not None and self.upgraded.taken:
            self.upgraded.going_away(timeout)
            return
        response = self.response
        if response.chunked and not response.finished and not response.sending:
            response.finished = True
            with Timeout(timeout, False):
                self._send_quietly(_LAST_CHUNK)
        response.broken = True
        response.keep_alive = False
        if self.greenlet is not None and self.greenlet is not getcurrent():
            self.greenlet.kill(block=False)

    def _app_error(self, environ, response):
        """Print the traceback, prefixed with the request; answer 500 if nothing was sent."""
        sys.stderr.write(f"railcar: error in application handling {environ['REQUEST_METHOD']} "
                         f"{environ['RAW_URI']}:\n{traceback.format_exc()}")
        if not response.headers_sent:
            response.headers_sent = True
            response.code = 500
            self._send_quietly(error_response("500 Internal Server Error",
                                              headers=_id_header(response)))

    def _refuse(self, error, request=None, headers="", environ=None, queue=None):
        """Answer a request we will not serve, then the connection closes."""
        self.linger = True
        self._send_quietly(error_response(error.status, error.detail, headers))
        code = int(error.status[:3])
        self.state.refused(code)
        if self.service.access_log is not None:
            self._log(request, code, 0, monotonic(), environ, queue)

    def describe_request(self, now):
        """The request in flight as a dict for `status --requests`."""
        request = self.response.request
        return {"method": request.method, "path": request.url.decode("latin-1"),
                "client": f"{self.remote_addr}:{self.remote_port}" if self.remote_addr
                else "unix", "age": now - self.busy_since if self.busy_since else 0.0}

    def time_out(self):
        """The request ran past max_request_time (deadline.py). Answer 504 if the response has
        not started, then end the connection: kill its greenlet when called from the
        watchdog; when called from the greenlet itself, `_handle` returns False."""
        self.busy_since = 0.0
        self._abandon(_TIMED_OUT, "the request took too long")
        if self.greenlet is not None and self.greenlet is not getcurrent():
            self.greenlet.kill(block=False)

    def _abandon(self, status, detail):
        """Give up on the request: answer `status` if the response has not started, drop
        whatever the app still writes, and end the connection without lingering."""
        response = self.response
        if not response.headers_sent:
            response.headers_sent = True
            response.code = int(status[:3])
            self._send_quietly(error_response(status, detail, _id_header(response)))
        response.broken = True  # whatever the app still writes is dropped
        response.keep_alive = False
        self.linger = False

    def _send_quietly(self, data):
        try:
            send_all(self.sock, data)
        except ClientDisconnected:
            pass

    def _log(self, request, code, sent, started, environ=None, queue=None):
        """One access log line, in the service's access log format (see accesslog.py)."""
        seconds = monotonic() - started
        service = self.service
        if service.access_log_json:
            service.access_log(json_line(environ, self.remote_addr, request, code, sent,
                                         seconds, queue))
        else:
            service.access_log(text_line(self.remote_addr, request, code, sent,
                                         seconds * 1000.0))


def _id_header(response):
    """The X-Request-Id header line of an error answer to `response`'s request."""
    return f"X-Request-Id: {response.request_id}\r\n" if response.request_id else ""

