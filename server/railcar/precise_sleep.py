"""Sleeps that end on time on gevent's epoll loop: a timerfd armed for the earliest one.

Runs in a worker or preloader whose app has `event_loop = auto` (railcar.eventloop installs
it after monkey-patching). libev's epoll backend waits in whole milliseconds, rounded up,
so a timer fires up to ~1 ms late: an app's 20 ms `time.sleep` (monkey-patched) returned
after 20.5-21 ms. `install()` replaces the sleeps an app calls (`gevent.sleep`,
`gevent.time.sleep`, the monkey-patched `time.sleep`) with `sleep`, which does what gevent's
does and also puts the sleep's deadline on a heap and arms a timerfd (CLOCK_MONOTONIC,
absolute) for the earliest pending deadline. The timerfd sits in the loop's epoll set, so
epoll_wait returns at that deadline (a nanosecond timer, with the kernel's default 50 us
slack) and libev, now past the timer's expiry, runs it. When the timerfd fires, its
callback drops the deadlines gone by and arms it for the next. The deadline is taken after
the loop's clock is updated, so it is never before libev's own expiry of the timer. A sleep
that ends early (its greenlet killed) leaves its deadline: one spurious wake-up later.

Only sleeps of up to MAX_TRACKED seconds are tracked (a millisecond is nothing on a longer
one). `gevent.hub.sleep` stays gevent's: gevent's own modules and railcar's polls (accept
balancing, the request-time watchdog) use it, so the worker of an app that never sleeps
never makes a timerfd nor loads ctypes. Other timers (socket timeouts,
Event.wait(timeout)...) keep libev's resolution. A sleep in a thread with a hub of its own
is gevent's: the timerfd belongs to the main thread's hub. It is this process's: a forked
child drops the inherited one (os.register_at_fork) and makes its own at its first sleep.
If no timerfd can be made (a seccomp filter), sleeps are gevent's, as without this module.
Uses ctypes for timerfd_create/timerfd_settime on Pythons before 3.13 (the os functions).
"""

from __future__ import annotations

import heapq
import os
from time import monotonic

import gevent
import gevent.hub
from gevent.hub import get_hub

MAX_TRACKED = 60.0
INFINITY = float("inf")

_gevent_sleep = gevent.hub.sleep
_clock: "_Clock | None" = None      # this process's timerfd, made at its first sleep
_broken = False                     # no timerfd could be made: gevent's sleeps
_registered = False                 # the at-fork hook is in place


class _Clock:
    """A timerfd in the hub's loop and the deadlines it is armed for (the earliest)."""

    def __init__(self, hub):
        self.hub = hub
        self.fd, self._settime = _timerfd()
        self.deadlines: list[float] = []
        self.armed = INFINITY
        self.watcher = hub.loop.io(self.fd, 1)
        self.watcher.start(self._fired)
        self.watcher.ref = False    # it never keeps the loop alive by itself

    def wake_at(self, deadline: float) -> None:
        heapq.heappush(self.deadlines, deadline)
        if deadline < self.armed:
            self.armed = deadline
            self._settime(self.fd, deadline)

    def _fired(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:     # re-armed meanwhile: nothing to read
            pass
        # Deadlines up to now are done with: those of sleeps libev ran this round, and those
        # due since (callbacks ran meanwhile), which it runs next round without waiting (it
        # updates its clock before it computes the wait).
        deadlines = self.deadlines
        now = monotonic()
        while deadlines and deadlines[0] <= now:
            heapq.heappop(deadlines)
        self.armed = INFINITY
        if deadlines:
            self.armed = deadlines[0]
            self._settime(self.fd, self.armed)

    def close(self) -> None:
        self.watcher.stop()
        self.watcher.close()
        os.close(self.fd)


def sleep(seconds=0, ref=True):
    """gevent.sleep, ending on time (see the module's docstring)."""
    global _clock
    if not 0 < seconds <= MAX_TRACKED or _broken:
        return _gevent_sleep(seconds, ref)
    hub = get_hub()
    clock = _clock
    if clock is None or clock.hub is not hub:
        if clock is not None or not hub.main_hub:   # a thread's own hub: gevent's sleep
            return _gevent_sleep(seconds, ref)
        clock = _start(hub)
        if clock is None:
            return _gevent_sleep(seconds, ref)
    loop = hub.loop
    with loop.timer(seconds, ref=ref) as timer:
        loop.update_now()           # as gevent's sleep does: the timer counts from now
        clock.wake_at(monotonic() + seconds)
        hub.wait(timer)


def _start(hub) -> "_Clock | None":
    global _clock, _broken
    try:
        _clock = _Clock(hub)
    except OSError:
        _broken = True
    return _clock


def _forget_in_child() -> None:
    """After fork: the timerfd is the parent's (shared with it): drop ours of it."""
    global _clock
    if _clock is not None:
        clock, _clock = _clock, None
        try:
            clock.close()
        except OSError:
            pass


def install() -> None:
    """Make gevent's sleeps (and the monkey-patched time.sleep) this module's `sleep`.
    Idempotent; call after monkey-patching, before the app is imported."""
    import time

    import gevent.time

    global _registered
    gevent.sleep = gevent.time.sleep = sleep
    if time.sleep is _gevent_sleep:     # monkey-patched
        time.sleep = sleep
    if not _registered:
        os.register_at_fork(after_in_child=_forget_in_child)
        _registered = True


def _timerfd():
    """(fd, settime(fd, monotonic deadline)) of a new non-blocking CLOCK_MONOTONIC timerfd;
    OSError if it cannot be made."""
    if hasattr(os, "timerfd_create"):       # Python 3.13
        fd = os.timerfd_create(_CLOCK_MONOTONIC, flags=os.TFD_NONBLOCK | os.TFD_CLOEXEC)

        def settime(fd: int, deadline: float) -> None:
            os.timerfd_settime(fd, flags=os.TFD_TIMER_ABSTIME, initial=deadline)
        return fd, settime
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.timerfd_create(_CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"timerfd_create: {os.strerror(errno)}")

    class Timespec(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

    class Itimerspec(ctypes.Structure):
        _fields_ = [("it_interval", Timespec), ("it_value", Timespec)]

    spec = Itimerspec()
    value = spec.it_value
    timerfd_settime = libc.timerfd_settime
    pointer = ctypes.byref(spec)

    def settime(fd: int, deadline: float) -> None:
        seconds = int(deadline)
        value.tv_sec = seconds
        value.tv_nsec = int((deadline - seconds) * 1e9)
        timerfd_settime(fd, _TFD_TIMER_ABSTIME, pointer, None)
    return fd, settime


_CLOCK_MONOTONIC = 1
_TFD_TIMER_ABSTIME = 1
