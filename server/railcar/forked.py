"""A worker forked by a preloader, seen from the master: not our child, so its exit is watched
through a pidfd and its exit status comes from the preloader.

Runs in the master (gevent). The pid comes from the preloader, which runs app code: it is
verified to be that preloader's child before anything else, and from then on the process is
named by a pidfd (or a psutil.Process, which checks the start time before each signal), never
by the number alone, so a pid reused by another process is never signalled.
"""

from __future__ import annotations

import os
import signal

import gevent
import gevent.fileobject
import gevent.socket
import psutil


class ForkedProcess:
    """A worker forked by a preloader (a process.WorkerProcess), seen through the part of
    Popen's interface that WorkerProcess uses (see the module's docstring); psutil polling
    stands in for the pidfd where there is none. Raises OSError if the pid is not the
    preloader's child."""

    POLL_INTERVAL = 0.2
    STATUS_WAIT = 2.0   # how long to wait for the preloader's word on the exit status

    def __init__(self, pid: int, output_fd: int, preloader):
        self.pid = pid
        self.preloader = preloader
        self.returncode: int | None = None
        try:
            self.pidfd, self.ps = _open_child(pid, preloader.pid)
        except ChildGone:
            # It exited (and its preloader reaped it) before we looked, as a worker that
            # fails its health check can: nothing left to verify or signal; its exit status
            # comes from the preloader and its last words are in the pipes.
            self.pidfd, self.ps = None, None
        self.stdout = gevent.fileobject.FileObject(output_fd, "rb")

    def wait(self) -> int | None:
        self._wait_gone()
        status = self.preloader._child_exit(self.pid)
        gevent.wait([status, self.preloader.exited], timeout=self.STATUS_WAIT, count=1)
        self.returncode = status.value if status.ready() else None
        self.preloader.child_exits.pop(self.pid, None)
        self.preloader.forked.discard(self.pid)
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        return self.returncode

    def _wait_gone(self) -> None:
        if self.pidfd is not None:
            gevent.socket.wait_read(self.pidfd)
            return
        if self.ps is None:
            return      # gone before it was opened
        while self.ps.is_running() and not _gone(self.pid):
            gevent.sleep(self.POLL_INTERVAL)

    def send_signal(self, sig: int) -> None:
        if self.returncode is not None:
            return
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, sig)
            elif self.ps is not None:
                self.ps.send_signal(sig)
        except (ProcessLookupError, psutil.Error):
            pass    # gone already (its pid may belong to another process by now)


class ChildGone(OSError):
    """The pid a preloader reported names no process (any more): never opened, never
    signalled."""


def _open_child(pid: int, parent: int) -> tuple[int | None, psutil.Process]:
    """A pidfd (None without pidfd support) and a psutil.Process for `pid`, verified to be a
    child of `parent`; OSError if it is not.

    The pidfd is opened first and checked alive last: if the process it names still exists
    after the parent check, that check read this very process (a pid is not reused while its
    process exists, zombie included)."""
    pidfd = None
    try:
        if hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal"):
            pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise ChildGone(f"the preloader reported pid {pid}, which does not exist") from None
    except OSError:
        pidfd = None        # a kernel without pidfds: psutil's start-time check instead
    try:
        ps = psutil.Process(pid)
        ok = ps.ppid() == parent
        if ok and pidfd is not None:
            signal.pidfd_send_signal(pidfd, 0)
    except (psutil.NoSuchProcess, ProcessLookupError):
        if pidfd is not None:
            os.close(pidfd)
        raise ChildGone(f"the preloader reported pid {pid}, which does not exist") from None
    except (psutil.Error, PermissionError):
        ok = False
    if not ok:
        if pidfd is not None:
            os.close(pidfd)
        raise OSError(f"the preloader {parent} reported pid {pid}, which is not its child; "
                      "it is never signalled")
    return pidfd, ps


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
