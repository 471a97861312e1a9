"""The worker's HTTP server: accept loop, graceful retire, stats.

Runs in a worker process that is already gevent monkey-patched. The listening sockets are
inherited from the master, which keeps its own copies open across restarts; closing ours only
stops this worker from accepting, so queued connections go to the other workers.

One greenlet accepts per listener; one greenlet serves each connection, request after request
(keep-alive, pipelining). No exception escapes a connection greenlet: protocol errors become
4xx/505 responses, application errors 500s, and socket errors a quiet close.

The server owns a ServerState (state.py: counters, the retiring flag, the open connections)
and hands it, with a Service (what connections serve with), to each Connection it accepts;
connections update the state and never reach back into the server.
"""

import errno
import resource
import select
import socket
import sys
from operator import attrgetter
from time import monotonic

import gevent
from gevent import getcurrent
from gevent.hub import get_hub, sleep  # gevent's own: these polls are not the app's sleeps
from gevent.monkey import get_original
from gevent.socket import socket as gsocket

from ..views import Limits
from .connection import Connection
from .deadline import Deadline
from .proxies import TrustedProxies
from .state import ServerState, Service
from .environ import base_environ

__all__ = ["HTTPServer", "Limits"]

_ACCEPT_DEFER = 0.05  # longest a worker with connections defers accepting to idler workers
_ACCEPT_BURST = 64  # most connections accepted at once after a deferral that timed out
_BALANCE_POLL = 0.001  # deferring to a less-loaded worker: how often to look whether it took it
_BALANCE_STUCK = 1.0  # a second deferral timed out within this: the other worker is stuck
_TAKE_OVER = 2.0  # how long a worker taking over from a retiring one accepts without deferring
_TAKE_OVER_ANY = 1 << 16  # the connections taken over when the retiring worker's count is unknown
_EVICT_POLL = 0.2  # at worker_connections with none idle: how often to look again
_RETIRE_POLL = 0.25  # past long_lived_timeout: how often to look for new long-lived ones
_END_WAIT = 1.5  # after ending a long-lived connection: how long its app has to return
# accept() errors that mean "try again later" rather than "this listener is gone".
_ACCEPT_RETRY = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_select = get_original("select", "select")  # a non-blocking look at a listener, no switch


class HTTPServer:
    """Serves one WSGI `app` on already-listening sockets (TCP or AF_UNIX).

    `access_log`, if given, is called with one line per request, in `access_log_format`:
    "text", `REMOTE - - [time] "METHOD TARGET PROTOCOL" STATUS BYTES DURATION_MS`, or "json",
    one JSON object (see accesslog.py).
    Every request gets an id (the client's valid `X-Request-Id`, else a new one: environ
    HTTP_X_REQUEST_ID, response header X-Request-Id) and, from a trusted proxy's
    `X-Request-Start`, a queue time (see requestinfo.py).
    `base_environ` adds keys to every environ (e.g. SERVER_SOFTWARE).
    `tls_context` (an SSLContext of gevent.ssl, see railcar.tls), if given, makes every TCP
    listener speak HTTPS: each connection's handshake runs in its own greenlet within
    `header_timeout`, as an idle connection (see Connection._handshake); unix sockets stay
    plain.
    `on_timeout(description, environ, stack)`, if given, is called after a request ran past
    `limits.max_request_time` and was answered 504 (its stack is written to stderr first),
    whether it was blocked or computing without a pause (see deadline.py).

    `state` (a ServerState) holds the counters its connections update; `stats()` reads them.
    `load` (a railcar.balance.LoadTable), if given, is the table of open-connection counts this
    worker shares with the other workers of its app: new connections go to the least loaded
    (see `_accept_budget`).

    The master serves its own small listeners (railcar.responder) with this same server,
    under a stricter policy than a worker's:
    `lifetime` (seconds; 0: none) bounds each connection's whole life, whatever it is doing;
    `evict_busy`: at worker_connections a new connection closes the oldest one even in the
    middle of a request (a worker closes only idle ones, see `_evict`), and `on_evict(total)`
    is called after each such eviction; `own_listeners=False`: stopping leaves the listeners
    open (the master keeps them across restarts).
    """

    def __init__(self, listeners, app, limits=None, access_log=None, base_environ=None,
                 on_timeout=None, *, lifetime=0.0, evict_busy=False, on_evict=None,
                 own_listeners=True, tls_context=None, access_log_format="text", load=None):
        self.listeners = list(listeners)
        self.lifetime = lifetime
        self.evict_busy = evict_busy
        self.on_evict = on_evict
        self.own_listeners = own_listeners
        self.limits = limits = limits or Limits()
        self.extra_environ = dict(base_environ or {})
        self.state = state = ServerState(limits.worker_connections,
                                         limits.max_concurrent_requests, load)
        # max_request_time: a watchdog for blocked requests, a CPU timer for busy ones.
        self.deadline = (Deadline(state, limits.max_request_time, on_timeout)
                         if limits.max_request_time else None)
        self.service = Service(app, limits, access_log, TrustedProxies(limits.trusted_proxies),
                               self.deadline, access_log_format)
        self.tls_context = tls_context
        self._acceptors = []
        self._last_timeout = -_BALANCE_STUCK  # monotonic() of the last deferral timed out
        self._take_over_left = 0  # connections still to accept without deferring (take_over)
        self._take_over_until = 0.0  # monotonic(): ... until then at most
        self._deferring = set()  # acceptor greenlets in a deferral (_accept_budget)

    # -- public interface ---------------------------------------------------------------------

    def start(self):
        """Start one accept greenlet per listener and return at once."""
        _make_fd_room(self.limits.worker_connections)
        for listener in self.listeners:
            self._acceptors.append(gevent.spawn(self._accept_loop, listener))
        if self.deadline is not None:
            self.deadline.start()

    def stats(self):
        """Requests served in total, requests in flight, open connections, and the counters."""
        return self.state.stats()

    def connections(self):
        """The open connections, as a list (safe to iterate while connections come and go)."""
        return list(self.state.connections)

    def requests_in_flight(self):
        """One dict per request being served: method, path, client, age (seconds)."""
        now = monotonic()
        return [conn.describe_request(now) for conn in self.connections() if conn.busy_since]

    def retire(self, grace, long_lived_grace=None):
        """Graceful stop; blocks the calling greenlet until done. Returns True if every
        connection finished on its own (or, long-lived, was ended) in time. `grace` is the
        server's graceful_timeout.

        Stops accepting and closes our copies of the listeners; every request in flight gets
        `Connection: close`; a connection idle between requests may still start one within
        ~1 s (its client may be mid-send), then it is closed. After `grace`, what is left
        is killed, except long-lived connections (WebSockets, streaming responses: see
        Connection.long_lived): they have `long_lived_grace` (default
        `limits.long_lived_timeout`), then are ended (Connection.end_long_lived: a WebSocket
        gets the close frame 1001) and killed if still open `_END_WAIT` s later. A request
        that starts streaming after that deadline is ended at once.
        """
        state = self.state
        state.retiring = True
        self._close_listeners()
        for conn in self.connections():
            conn.wake_if_idle()
        if long_lived_grace is None:
            long_lived_grace = self.limits.long_lived_timeout
        started = monotonic()
        grace_at, long_lived_at = started + grace, started + long_lived_grace
        clean = True
        try:
            while state.connections:
                now = monotonic()
                if now >= max(grace_at, long_lived_at) + _END_WAIT + 5:
                    return False  # greenlets that would not die: the worker exits anyway
                if now >= long_lived_at:
                    self._end_long_lived(now)
                if self._kill_overdue(now, now >= grace_at):
                    clean = False
                    if not state.connections:
                        break
                pending = [t for t in (grace_at, long_lived_at) if t > now]
                wait = min(pending) - now if pending else _RETIRE_POLL
                if now >= long_lived_at:
                    wait = min(wait, _RETIRE_POLL)
                state.all_closed.wait(wait)
            return clean
        finally:
            self._stop_deadline()

    def _end_long_lived(self, now):
        """Past long_lived_timeout: end every long-lived connection (each once, each in its
        own greenlet: a close frame may wait for a slow client)."""
        for conn in self.connections():
            if conn.long_lived and not conn.ended_at:
                conn.ended_at = now
                gevent.spawn(conn.end_long_lived, _END_WAIT / 2)

    def _kill_overdue(self, now, past_grace):
        """Kill the long-lived connections ended more than _END_WAIT ago and, `past_grace`,
        every connection that is not long-lived. True if any was killed."""
        overdue = [conn.greenlet for conn in self.connections() if conn.greenlet and (
            (conn.ended_at and now - conn.ended_at > _END_WAIT)
            or (past_grace and not conn.long_lived))]
        if overdue:
            gevent.killall(overdue, timeout=5)
        return bool(overdue)

    def take_over(self, connections=None, seconds=_TAKE_OVER):
        """A peer worker holding `connections` (None: unknown) is retiring (rolling restart,
        replacement): accept that many new connections at once, within `seconds`, instead
        of deferring them to idler workers (`_accept_budget`). The retiring worker closes
        its keep-alive connections within ~1 s (connection.py _RETIRE_IDLE) and its clients
        reconnect together: the other workers are as busy as before, so deferring would only
        make each of those clients wait `_ACCEPT_DEFER`. Bounded by the count, this worker
        takes the retiring one's share and no more, so the next retiring worker's clients
        go to the next new worker."""
        self._take_over_left = _TAKE_OVER_ANY if connections is None else max(connections, 0)
        self._take_over_until = monotonic() + seconds
        if self._deferring and self._take_over_left:
            get_hub().loop.run_callback(self._end_deferrals)

    def stop(self):
        """Immediate stop: close the listeners and every connection."""
        self.state.retiring = True
        self._close_listeners()
        self._kill_connections()
        self._stop_deadline()

    def stop_accepting(self):
        """Stop accepting (and close the listeners we own); the connections open carry on
        to their end, which `lifetime` bounds if set."""
        self.state.retiring = True
        self._close_listeners()

    def _stop_deadline(self):
        if self.deadline is not None:
            self.deadline.stop()

    # -- accepting ----------------------------------------------------------------------------

    def _accept_loop(self, listener):
        """Accept connections from `listener` until the server retires.

        Several worker processes accept from the same listening socket, and all of them wake
        when a connection arrives. A gevent worker that accepts greedily takes connections
        while it is busy, so they wait for its event loop while other workers sit idle
        (gunicorn -k gevent shows this as requests queued up to half a second). So: accept
        one connection per wake, non-blocking (EAGAIN just means another process won the
        race), and when this worker already has connections, defer to the others: to a
        worker with fewer open connections, and otherwise let this worker's event loop run
        everything that is ready first (`gevent.idle()`), so an idle worker gets to the
        accept first. The deferral is bounded (`_ACCEPT_DEFER`) so that a worker saturated on
        its own, with no idle peer, still accepts, and then takes the whole queue
        (`_accept_budget`).

        At `worker_connections`, a new connection is accepted only if an idle one can be
        closed to make room (`_evict_oldest_idle`); otherwise we stop accepting until a
        connection closes or becomes idle.
        """
        raw = getattr(listener, "_sock", listener)  # the C-level socket under gevent's
        raw.setblocking(False)
        family = listener.family
        tls = None
        if family == socket.AF_UNIX:
            base = base_environ("", "", self.extra_environ)
        else:
            host, port = listener.getsockname()[:2]
            base = base_environ(host, str(port), self.extra_environ)
            tls = self.tls_context
            if tls is not None:
                base["wsgi.url_scheme"] = "https"
        hub = get_hub()
        watcher = hub.loop.io(raw.fileno(), 1)
        state = self.state
        room = state.room
        try:
            while not state.retiring:
                if not room.is_set() and not self._can_evict():
                    room.wait(_EVICT_POLL)
                    continue
                budget = self._accept_budget(raw)
                if not budget:  # a less-loaded worker took what was queued
                    hub.wait(watcher)
                    continue
                for _ in range(budget):
                    try:
                        fd, addr = raw._accept()
                    except BlockingIOError:
                        hub.wait(watcher)
                        break
                    except OSError as exc:
                        if not self._accept_failed(exc, listener):
                            return
                        break
                    self._spawn_connection(gsocket(family, socket.SOCK_STREAM, 0, fileno=fd),
                                           addr, base, tls)
                    if self._take_over_left:
                        self._take_over_left -= 1
                    if len(state.connections) > self.limits.worker_connections:
                        self._evict()
                    if not room.is_set():
                        break
        finally:
            watcher.close()

    def _can_evict(self):
        """At worker_connections: is there a connection to close for a new one?"""
        if self.evict_busy:
            return any(not conn.evicting for conn in self.state.connections)
        return any(conn.idle and not conn.evicting for conn in self.state.connections)

    def _evict(self):
        """Close one connection to make room for the one just accepted.

        A worker closes the connection idle the longest: a keep-alive connection between
        requests, or one that has not sent a byte yet. A flood of idle sockets thus cannot
        keep real clients out; a connection in the middle of a request is never chosen.
        With `evict_busy` (the master's listeners) the oldest connection goes, whatever it
        is doing: it is the nearest its `lifetime` anyway, and one that holds a slot for long
        (a slowloris) must not crowd out the next client.
        """
        state = self.state
        if self.evict_busy:
            victim = next((conn for conn in state.connections if not conn.evicting), None)
            if victim is not None:
                victim.evicting = True
                victim.greenlet.kill(block=False)
        else:
            victim = min((conn for conn in state.connections
                          if conn.idle and not conn.evicting), key=_idle_since, default=None)
            if victim is not None:
                victim.evict()
        if victim is not None:
            state.evicted += 1
            if self.on_evict is not None:
                self.on_evict(state.evicted)

    def _accept_budget(self, listener):
        """How many connections queued on `listener` to accept now (0: none is queued any
        more): while taking over from a retiring worker (`take_over`), the whole queue at
        once, up to the count it was given, whatever the other workers hold (its clients are
        reconnecting, and a deferral would only make them wait); otherwise as
        `_balanced_budget` says. A take-over ends a deferral under way (`_end_deferrals`)."""
        taken = self._taken_over()
        if taken:
            return taken
        deferring = getcurrent()
        self._deferring.add(deferring)
        try:
            return self._balanced_budget(listener)
        except _TakeOverNow:
            return self._taken_over() or 1
        finally:
            self._deferring.discard(deferring)

    def _taken_over(self):
        """What is left to take over (`take_over`), at most a burst; 0 when nothing is."""
        if self._take_over_left:
            if monotonic() < self._take_over_until:
                return min(self._take_over_left, _ACCEPT_BURST)
            self._take_over_left = 0
        return 0

    def _end_deferrals(self):
        """Runs in the hub, after `take_over`: every acceptor still deferring a connection
        takes it now (it leaves `_deferring` as soon as its deferral ends, so nothing is
        thrown into an acceptor doing anything else)."""
        for acceptor in list(self._deferring):
            if acceptor in self._deferring:
                acceptor.throw(_TakeOverNow)

    def _balanced_budget(self, listener):
        """How many connections queued on `listener` to accept now (0: none is queued any
        more). A worker without connections: one, at once.

        With the shared table (`state.load`), a worker that has more open connections than
        another (that accepts) leaves the accept to that one: every worker is woken for a new
        connection, and which one wins must not be timing luck, or one can end up with most
        of a client's simultaneous connections, which then queue behind each other (the
        p99) while the other worker idles. It looks again every `_BALANCE_POLL` s whether
        the connection was taken (0). A worker with the fewest connections takes one at
        once; one level with the least loaded, one after a single pass of what its own loop
        has ready (a less busy worker gets there first), if it is still queued then. Not
        until its loop is idle: with many busy connections every worker's loop may stay busy
        for the whole deferral, and a worker taking a burst then would take what should go
        to the others.

        Every deferral is bounded by `_ACCEPT_DEFER`. Alone (no table, or no other worker
        accepting), a worker waits that long at most for its loop to be idle, then takes a
        burst, so that a burst of new connections waits for one deferral rather than one
        each. Deferring to a less loaded worker, it takes one after that long (the other
        was only late, say not scheduled on a busy machine), or a burst when that happens
        again within `_BALANCE_STUCK` s (it is stuck in a long request)."""
        state = self.state
        connections = state.connections
        if not connections:
            return 1
        started = monotonic()
        load = state.load
        least = None
        if load is not None:
            while True:
                least = load.least_other()
                if least is None or len(connections) <= least:
                    break
                if monotonic() - started >= _ACCEPT_DEFER:
                    return self._deferral_timed_out()
                sleep(_BALANCE_POLL)
                if state.retiring or not _select([listener], (), (), 0)[0]:
                    return 0
            if least is not None:
                if len(connections) < least:
                    return 1
                sleep(0)
                return 0 if state.retiring or not _select([listener], (), (), 0)[0] else 1
        with gevent.Timeout(_ACCEPT_DEFER, False):
            gevent.idle()
            return 1
        return _ACCEPT_BURST

    def _deferral_timed_out(self):
        """A deferral to other workers timed out: the budget (see `_accept_budget`)."""
        now = monotonic()
        stuck = now - self._last_timeout < _BALANCE_STUCK
        self._last_timeout = now
        return _ACCEPT_BURST if stuck else 1

    def _accept_failed(self, exc, listener):
        """Handle an accept() error; False when the listener is unusable."""
        if exc.errno in (errno.EINTR, errno.ECONNABORTED, errno.EPROTO):
            return True  # that one connection is gone; carry on
        if self.state.retiring:
            return False
        sys.stderr.write(f"railcar: accept() on {listener!r} failed: {exc}\n")
        if exc.errno in _ACCEPT_RETRY:
            sleep(0.5)  # out of descriptors or memory: back off, keep serving
            return True
        return False

    def _spawn_connection(self, sock, addr, base, tls=None):
        if sock.family == socket.AF_UNIX:
            remote_addr = remote_port = ""
        else:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            remote_addr, remote_port = addr[0], str(addr[1])
            if tls is not None:  # no I/O yet: the handshake is the connection greenlet's
                sock = tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        conn = Connection(self.service, self.state, sock, remote_addr, remote_port, base,
                          tls is not None)
        self.state.opened(conn)
        if self.lifetime:
            conn.greenlet = gevent.spawn(_run_for, conn, self.lifetime)
        else:
            conn.greenlet = gevent.spawn(conn.run)

    def _close_listeners(self):
        """Stop the accept greenlets (which stops their fd watchers), then close our fds
        (unless they are not ours to close)."""
        gevent.killall(self._acceptors)
        self._acceptors = []
        if self.state.load is not None:
            self.state.load.leave()
        if self.own_listeners:
            for listener in self.listeners:
                listener.close()

    def _kill_connections(self):
        gevent.killall([conn.greenlet for conn in self.connections() if conn.greenlet],
                       timeout=5)


_idle_since = attrgetter("idle_since")


class _TakeOverNow(Exception):
    """Thrown into an acceptor deferring a connection when the server starts a take-over."""


def _run_for(conn, seconds):
    """Serve `conn` for at most `seconds`; then it is closed, whatever it was doing."""
    with gevent.Timeout(seconds, False):
        conn.run()


def _make_fd_room(connections):
    """Raise this process's soft limit on open files (often 1024) toward the hard limit, so
    that `connections` sockets fit, as nginx's worker_rlimit_nofile does. Best effort."""
    wanted = connections + 128  # listeners, logs, the channel, the app's own files
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (ValueError, OSError):
            pass
