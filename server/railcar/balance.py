"""Open-connection counts shared by the workers of one app, so that new connections go to
the least-loaded worker.

The workers of an app accept from the same listening sockets, and every one of them is woken
when a connection arrives; which one wins the accept is timing luck. When a client opens many
connections at once (a proxy's keep-alive pool, a load generator) one worker can end up with
most of them, and its connections then queue behind each other while the other worker has
little to do. nginx answers this within one process (`accept_mutex`, its
`ngx_accept_disabled`); railcar's workers are separate processes, so they publish their counts
in a small table they all map, and a worker that has more connections than the least-loaded
one leaves the accept to it (railcar.http.server `_accept_budget`).

The table is a memfd the master creates per app (`create`) and every worker inherits, by exec
(the fd number is in its spec, `balance_fd`) or by fork from its preloader. It has `SLOTS`
slots of one signed 64-bit integer: 0 for a free slot, else the owner's open connections + 1.
A worker claims a free slot (`LoadTable`) by taking a POSIX record lock on its first byte,
so two workers never share one and a dead worker's lock is gone with it: a slot whose count
looks low but whose lock can be taken belongs to a worker that died without clearing it, and
is freed (`least_other`). A worker that stops accepting (retiring) clears its slot (`leave`).
A worker that finds no free slot, or no table, simply does not take part.
"""

import fcntl
import mmap
import os

__all__ = ["SLOTS", "LoadTable", "create"]

SLOTS = 128  # more than workers + max_workers during a rolling restart of any sane app
_SIZE = SLOTS * 8


def create():
    """A new, all-free table: its fd (close-on-exec; pass it to the workers explicitly)."""
    fd = os.memfd_create("railcar-balance", os.MFD_CLOEXEC)
    os.ftruncate(fd, _SIZE)
    return fd


class LoadTable:
    """This worker's view of the table on `fd`; it owns one slot if one was free (`slot`,
    else None and every method is a no-op that reports no peer)."""

    __slots__ = ("fd", "map", "counts", "slot", "published")

    def __init__(self, fd):
        self.fd = fd
        self.map = mmap.mmap(fd, _SIZE)
        self.counts = memoryview(self.map).cast("q")
        self.slot = None
        self.published = 0
        for slot in range(SLOTS):
            if self._try_lock(slot):
                self.slot = slot
                self.publish(0)
                break

    def publish(self, connections):
        """This worker now has `connections` open connections."""
        if self.slot is not None:
            self.published = connections + 1
            self.counts[self.slot] = self.published

    def leave(self):
        """This worker accepts no more: the others stop counting on it."""
        if self.slot is not None:
            self.counts[self.slot] = 0
            self.published = 0

    def least_other(self):
        """The fewest open connections of another worker that accepts, or None if there is
        none (or this worker takes no part). A slot whose owner is gone is freed."""
        if not self.published:
            return None
        while True:
            least, where = 0, -1
            mine = self.slot
            for slot, value in enumerate(self.counts):
                if value and slot != mine and (not least or value < least):
                    least, where = value, slot
            if not least:
                return None
            if least >= self.published or not self._try_lock(where):
                return least - 1  # alive (its lock is held), or no lower than us anyway
            # Its owner died without leaving: free the slot, and look again.
            self.counts[where] = 0
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, where * 8)

    def _try_lock(self, slot):
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, slot * 8)
            return True
        except OSError:
            return False
