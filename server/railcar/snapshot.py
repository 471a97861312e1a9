"""An immutable view of one app's pool, for everyone who reads it: status, metrics, the
launcher's first-boot report, the fallback page.

Runs in the master. `pool.AppPool.snapshot()` builds one; nothing here touches a process or a
socket, and nothing in a snapshot changes after it is built (frozen dataclasses, tuples,
read-only mappings), so a reader can hold it across a gevent switch and see one consistent
moment. Readers never reach into the pool's own lists and samples.

Per worker, `counters` holds every count the worker reported in its last sampled `stats`
reply (requests, in_flight, connections, ... and any count a worker adds later, as checked by
railcar.replies): a reader that wants a new counter needs no change here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from . import states

EMPTY: Mapping[str, Any] = MappingProxyType({})


def frozen(mapping: Mapping | None) -> Mapping:
    """A read-only copy of `mapping` (None: empty)."""
    return MappingProxyType(dict(mapping)) if mapping else EMPTY


@dataclass(frozen=True)
class WorkerView:
    """One worker (or preloader) at the moment of the snapshot."""

    pid: int | None
    kind: str                           # "worker" or "preloader"
    release: str
    python: str
    state: str                          # states.BOOTING, READY, RETIRING, ...
    started_at: float                   # time.time()
    ready_at: float | None
    replacing: bool = False             # a replacement for it is being started
    current: bool = False               # preloader: new workers fork from it
    counters: Mapping[str, int] = field(default_factory=lambda: EMPTY)   # of its last stats
    stats: Mapping[str, Any] = field(default_factory=lambda: EMPTY)      # that reply, whole
    rss: int | None = None
    uss: int | None = None
    cpu: float | None = None
    sampled: bool = False               # rss/uss/cpu come from the master's last tick
    event_loop: str | None = None       # its event-loop backend (railcar.eventloop)

    def describe(self) -> dict:
        """The fields of a `status --json` worker row that come from the process itself."""
        return {"pid": self.pid, "release": self.release, "python": self.python,
                "state": self.state, "started_at": self.started_at, "ready_at": self.ready_at,
                "event_loop": self.event_loop}


@dataclass(frozen=True)
class Histogram:
    """A histogram summed over workers: `counts[i]` observations of at most `buckets[i]`
    (not cumulative; one more count, the last, for +Inf) and their `sum`. Empty `buckets`:
    nothing was reported yet."""

    buckets: tuple[float, ...] = ()
    counts: tuple[int, ...] = ()
    sum: float = 0.0

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus buckets: (upper bound, observations at most that), +Inf last."""
        total, out = 0, []
        for bound, count in zip(self.buckets + (float("inf"),), self.counts):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return out


@dataclass(frozen=True)
class Totals:
    """The app's counters summed over past and present workers (they only grow)."""

    requests: int = 0
    overloaded: int = 0
    timed_out: int = 0
    status: Mapping[str, int] = field(default_factory=lambda: EMPTY)
    latency: Histogram = field(default_factory=Histogram)   # request durations
    queue: Histogram = field(default_factory=Histogram)     # queue times (X-Request-Start)


@dataclass(frozen=True)
class PoolSnapshot:
    """One app: its settings that readers show, its outcomes so far, its processes."""

    name: str
    root: str
    binds: tuple[str, ...]
    release: str | None                 # the release of the newest ready worker
    wanted: int                         # workers wanted now (dynamic pool: min..max)
    min_workers: int
    max_workers: int
    error: str | None                   # the last boot or restart error, until it is fixed
    spawning: states.Spawning           # RUNNING, or BACKOFF with its failures and retry time
    last_restart: Mapping[str, Any] | None
    restarts: Mapping[str, int]         # "ok" / "failed"
    replacements: Mapping[str, int]     # limit name -> workers replaced over it
    last_replacement: Mapping[str, Any] | None
    canary: Mapping[str, Any] | None    # the canary watched now, or the last one
    canaries: Mapping[str, int]         # "passed" / "failed"
    health: Mapping[str, Any] | None
    health_failures: int
    canary_settings: Mapping[str, Any]
    spawn_method: str | None
    stopping: bool
    workers: tuple[WorkerView, ...] = ()
    preloaders: tuple[WorkerView, ...] = ()
    totals: Totals = field(default_factory=Totals)

    @property
    def ready(self) -> tuple[WorkerView, ...]:
        return tuple(w for w in self.workers if w.state == states.READY)

    @property
    def serving(self) -> tuple[WorkerView, ...]:
        """Workers that count toward the wanted number (booting or ready)."""
        return tuple(w for w in self.workers if w.state in states.SERVING)

    @property
    def state(self) -> str:
        """"serving" (a worker is ready), "failed" (none is and the last boot failed) or
        "starting"."""
        if self.ready:
            return "serving"
        return "failed" if self.error else "starting"

    @property
    def booting(self) -> bool:
        return any(w.state == states.BOOTING for w in self.workers)
