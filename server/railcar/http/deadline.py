"""max_request_time: a request running past it is answered 504 (if nothing was sent yet), its
stack goes to the log, its connection ends, and the server's `on_timeout` is told (the worker
then asks the master to replace it).

Runs in a worker process (gevent). Two ways to find such a request, one outcome (`expire`):

- The watchdog greenlet looks a few times per limit (at most 1 s apart) for requests in flight
  past it. Those are blocked (on I/O, a lock, a sleep): it ends them from outside.
- A request that never yields (pure-Python CPU work) starves the watchdog and the whole event
  loop. For it, an interval timer on the CPU time of the process (setitimer ITIMER_VIRTUAL,
  SIGVTALRM) fires while the process computes. Python runs a signal handler between two
  bytecodes of whatever runs at that moment: if that is the greenlet of a request past its
  limit, the handler raises RequestTimeout there, which unwinds the application up to the
  connection, which answers 504 through `expire`. In any other greenlet, or in the hub, the
  handler does nothing, so no other request is ever interrupted. Should the application
  swallow the exception and carry on (a bare `except:` in a loop), the next tick answers 504
  and logs the stack from the handler itself (the response has not started, so the few
  bytes go straight into the empty socket buffer) and raises once more; the worker, still
  busy, stops answering its master, which replaces it.

Requests that waited only because another one hogged the loop must not pay for it: after a
watchdog pass that woke late (the loop was stalled), overdue requests get one more interval to
finish before they are expired (they usually just had to wait for their turn).

ITIMER_VIRTUAL counts CPU time only, so an idle worker is never woken, and SIGVTALRM is a
signal applications leave alone (SIGALRM belongs to them: signal.alarm()). An application
must not set ITIMER_VIRTUAL or a SIGVTALRM handler of its own while max_request_time is on.
"""

import signal
import sys
import threading
import traceback
from time import monotonic

import gevent
from gevent import getcurrent
from gevent.hub import sleep  # gevent's own: the watchdog's pauses are not the app's sleeps

__all__ = ["Deadline", "RequestTimeout"]


class RequestTimeout(BaseException):
    """Raised inside a request that ran past max_request_time without yielding.

    A BaseException, so that an application's `except Exception` lets it through. `frame`:
    where the request was interrupted (its stack is logged from there).
    """

    def __init__(self, frame, answered=False):
        super().__init__("the request ran past max_request_time")
        self.frame = frame
        self.answered = answered  # `expire` already ran for this request


class Deadline:
    """Enforces `limit` seconds per request over the connections of `state` (a ServerState,
    whose `timed_out` it counts) and calls `on_timeout(description, environ, stack)` (if
    given) for each request it ends (see the module doc): `environ` is the request's WSGI
    environ, `stack` its stack as logged.

    A connection provides `greenlet`, `busy_since` (monotonic start of the app call, 0.0
    between requests), `environ` (of the request in the app), `describe_request(now)` and
    `time_out()`.
    """

    def __init__(self, state, limit, on_timeout=None):
        self.state = state
        self.on_timeout = on_timeout
        self.limit = limit
        self.interval = min(1.0, limit / 4)
        self.watchdog = None
        self.timer = False
        self.interrupted = None  # (connection, busy_since) of the request last interrupted

    def start(self):
        """Start the watchdog greenlet and, in the main thread, the CPU timer."""
        self.watchdog = gevent.spawn(self._watch)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGVTALRM, self._on_cpu_tick)
            signal.setitimer(signal.ITIMER_VIRTUAL, self.interval, self.interval)
            self.timer = True

    def stop(self):
        if self.timer:
            signal.setitimer(signal.ITIMER_VIRTUAL, 0)
            self.timer = False
        if self.watchdog is not None:
            self.watchdog.kill(block=False)
            self.watchdog = None

    def _watch(self):
        interval = self.interval
        limit = self.limit
        late_before = False
        expected = monotonic() + interval
        while True:
            sleep(interval)
            now = monotonic()
            late = now - expected > interval / 2 and not late_before
            late_before, expected = late, now + interval
            if late:  # the loop was stalled: let the requests that only waited run first
                continue
            for conn in list(self.state.connections):
                if conn.busy_since and now - conn.busy_since > limit:
                    self.expire(conn, now)

    def _on_cpu_tick(self, signum, frame):
        """SIGVTALRM handler: interrupt the running greenlet if it is an overdue request.

        Runs between two bytecodes of the interrupted code, on its stack; it only reads, and
        raises in the one case it must.
        """
        current = getcurrent()
        for conn in list(self.state.connections):
            if conn.greenlet is current:
                if conn.busy_since and monotonic() - conn.busy_since > self.limit:
                    request = (conn, conn.busy_since)
                    if self.interrupted != request:
                        self.interrupted = request
                        raise RequestTimeout(frame)
                    self.expire(conn, frame=frame)  # it swallowed the first one
                    raise RequestTimeout(frame, answered=True)
                return

    def expire(self, conn, now=None, frame=None):
        """Log the request's stack, count it, answer 504 if nothing was sent, end the
        connection, then call `on_timeout`. `frame`: where RequestTimeout interrupted it
        (called from the connection's own greenlet); else the watchdog found it blocked."""
        now = monotonic() if now is None else now
        if self.interrupted is not None and self.interrupted[0] is conn:
            self.interrupted = None
        info = conn.describe_request(now)
        if frame is None and conn.greenlet is not None:
            frame = conn.greenlet.gr_frame
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(no stack)\n"
        description = (f"{info['method']} {info['path']} from {info['client']} ran past "
                       f"max_request_time ({self.limit:g} s)")
        sys.stderr.write(f"railcar: {description}; its stack:\n{stack}")
        self.state.timed_out += 1
        environ = conn.environ
        conn.time_out()
        if self.on_timeout is not None:
            self.on_timeout(description, environ, stack)
