"""What the master learns about each worker once a second, and what it decides from it.

Runs in the master. Each tick the pool asks every worker for its `stats` over the channel
and reads its RSS and CPU with psutil; a `Sample` keeps the latest of both. From a sample,
`limit_exceeded` says whether the worker must be replaced and why, and `AppCounters` adds the
worker's counters to the app's totals (which keep growing across worker replacements, as
Prometheus counters must). Pure functions and plain objects: no process is touched here.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field

from . import snapshot
from .snapshot import Totals, frozen
from .views import Supervision

MIB = 1024 * 1024
# How old a worker's USS may get before it is read again (reading it costs milliseconds).
USS_INTERVAL = 5.0
# A worker that has not answered `stats` for this long (and for max_request_time) is stuck.
UNRESPONSIVE_MIN = 10.0
# Seconds a retiring worker may take past long_lived_timeout to close its WebSockets and
# streams (a close frame, then the app's return; http/server.py bounds it at 1.5 s).
LONG_LIVED_CLOSE = 2.0


# Seconds systemd gives the master past its own longest wait: to start, past a new worker's
# ready_timeout; to stop, past its wait for a retiring worker (the last workers killed,
# sockets closed, the pid file removed).
SYSTEMD_MARGIN = 30.0


def retire_timeout(graceful_timeout: float, long_lived_timeout: float) -> float:
    """How long the master waits for a retiring worker (rolling restart, replacement, stop):
    graceful_timeout for its ordinary requests, or long_lived_timeout plus LONG_LIVED_CLOSE
    for its long-lived connections, whichever is longer. The one rule: the pool waits so long,
    and systemd gives the master SYSTEMD_MARGIN more to stop: every unit (`railcar config
    systemd`, the deploy's) as its TimeoutStopSec= (render.py), and a master stopping
    gracefully asks for it from its own settings (master.py, EXTEND_TIMEOUT_USEC)."""
    return max(graceful_timeout, long_lived_timeout + LONG_LIVED_CLOSE)


@dataclass
class Sample:
    """The latest the master knows about one worker. Times are time.monotonic()."""

    first_seen: float
    request_budget: int | None = None   # requests after which the worker is replaced
    stats: dict | None = None            # the last answer to `stats`
    answered_at: float = 0.0             # when the worker last answered
    active_at: float = 0.0               # when it last had a request in flight or served one
    rss: int | None = None
    uss: int | None = None               # memory the worker alone holds (see resources())
    uss_at: float | None = None          # when `uss` was read
    cpu: float | None = None

    def record(self, stats: dict | None, resources: dict, now: float) -> None:
        previous = self.stats
        self.rss, self.cpu = resources.get("rss"), resources.get("cpu")
        if "uss" in resources:
            self.uss, self.uss_at = resources["uss"], now
        if stats is None:
            return
        self.stats, self.answered_at = stats, now
        # Open WebSockets and streams keep a worker busy too (idle_timeout must not end it).
        if stats.get("in_flight") or stats.get("long_lived") or previous is None \
                or stats.get("requests") != previous.get("requests"):
            self.active_at = now


def uss_due(sample: Sample | None, now: float) -> bool:
    """Whether the worker's USS is to be read in this round: first, then every
    USS_INTERVAL seconds."""
    return sample is None or sample.uss_at is None or now - sample.uss_at >= USS_INTERVAL


def request_budget(policy: Supervision) -> int | None:
    """max_requests plus this worker's share of jitter, or None without a limit."""
    if not policy.max_requests:
        return None
    return policy.max_requests + random.randint(0, policy.max_requests_jitter)


class Limit(enum.StrEnum):
    """The limits a worker is replaced over; the value keys the app's replacement counts."""

    MAX_REQUESTS = "max_requests"
    MEMORY_LIMIT = "memory_limit"
    MAX_REQUEST_TIME = "max_request_time"


class Replacement(str):
    """Why a worker must be replaced: the text "LIMIT: detail" (what the log and status show)
    carrying its `limit` (a Limit) and `detail`. `unresponsive`: the worker stopped answering
    the master (max_request_time found by the master, not reported by the worker), so its
    stacks are asked for (SIGUSR2) before it goes."""

    limit: Limit
    detail: str
    unresponsive: bool

    def __new__(cls, limit: Limit, detail: str, unresponsive: bool = False) -> Replacement:
        self = super().__new__(cls, f"{limit}: {detail}")
        self.limit, self.detail, self.unresponsive = Limit(limit), detail, unresponsive
        return self

    @classmethod
    def reported(cls, text: str) -> Replacement:
        """A worker's own `replace` in its stats ("LIMIT: detail", its LIMIT checked by
        railcar.replies against WORKER_LIMITS)."""
        limit, _, detail = text.partition(":")
        return cls(Limit(limit), detail.strip())


def limit_exceeded(sample: Sample, policy: Supervision, max_request_time: float,
                   now: float) -> Replacement | None:
    """Why the worker must be replaced, or None."""
    stats = sample.stats or {}
    if stats.get("replace"):
        return Replacement.reported(stats["replace"])
    budget = sample.request_budget
    if budget is not None and stats.get("requests", 0) >= budget:
        return Replacement(Limit.MAX_REQUESTS,
                           f"served {stats['requests']} requests (limit {budget})")
    # Only once it has served a request: a worker over the limit from its boot on would be
    # replaced by another just like it, again and again (see memory_over_at_boot).
    over = memory_over(sample, policy)
    if over and stats.get("requests"):
        return over
    if max_request_time:
        silent = now - (sample.answered_at or sample.first_seen)
        if silent > max(max_request_time, UNRESPONSIVE_MIN):
            return Replacement(Limit.MAX_REQUEST_TIME,
                               f"the worker has not answered for {silent:.0f} s",
                               unresponsive=True)
    return None


def memory_over(sample: Sample, policy: Supervision) -> Replacement | None:
    """A memory_limit Replacement if the worker owns more than memory_limit, else None.

    What it owns is its USS, not its RSS: pages shared with the preloader and the other
    workers are freed with none of them. RSS only where USS cannot be read."""
    limit = policy.memory_limit
    owned, measure = (sample.uss, "USS") if sample.uss is not None else (sample.rss, "RSS")
    if limit and owned and owned > limit * MIB:
        return Replacement(Limit.MEMORY_LIMIT,
                           f"{measure} {owned / MIB:.0f} MiB is over {limit} MiB")
    return None


def memory_over_at_boot(sample: Sample, policy: Supervision) -> Replacement | None:
    """The memory_limit reason for a worker that has served nothing yet: the app needs more
    than the limit to boot, so replacing the worker cannot help."""
    stats = sample.stats or {}
    return memory_over(sample, policy) if stats and not stats.get("requests") else None


@dataclass
class HistogramSum:
    """The sum of one histogram over workers, each reporting {"buckets", "counts", "sum"}
    (counts per bucket, not cumulative, the last one +Inf; checked by railcar.replies)."""

    buckets: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0

    def add(self, now: dict | None, before: dict | None) -> None:
        """Count what a worker observed between its reports `before` and `now`."""
        if not now:
            return
        if not self.buckets:
            self.buckets = list(now["buckets"])
            self.counts = [0] * len(now["counts"])
        if now["buckets"] != self.buckets:
            return      # another railcar's buckets: cannot be added up with ours
        before = before or {"counts": [0] * len(now["counts"]), "sum": 0.0}
        for index, count in enumerate(now["counts"]):
            self.counts[index] += _delta(count, before["counts"][index])
        self.sum += _delta(now["sum"], before["sum"])

    def frozen(self) -> snapshot.Histogram:
        return snapshot.Histogram(tuple(self.buckets), tuple(self.counts), self.sum)


@dataclass
class AppCounters:
    """Sums of every worker's request counters, past and present workers alike."""

    requests: int = 0
    overloaded: int = 0
    timed_out: int = 0
    status: dict[str, int] = field(default_factory=dict)
    latency: HistogramSum = field(default_factory=HistogramSum)   # request durations
    queue: HistogramSum = field(default_factory=HistogramSum)     # queue times
    seen: dict[int, dict] = field(default_factory=dict)   # pid -> last stats counted

    def add(self, pid: int, stats: dict) -> None:
        """Count what worker `pid` did since its previous stats (checked by
        railcar.replies). A counter that went down counts nothing: totals only grow."""
        last = self.seen.get(pid, {})
        self.seen[pid] = stats
        for key in ("requests", "overloaded", "timed_out"):
            setattr(self, key, getattr(self, key) + _delta(stats.get(key, 0), last.get(key, 0)))
        last_status = last.get("status_counts", {})
        for name, count in stats.get("status_counts", {}).items():
            self.status[name] = self.status.get(name, 0) + _delta(count, last_status.get(name, 0))
        self.latency.add(stats.get("latency"), last.get("latency"))
        self.queue.add(stats.get("queue"), last.get("queue"))

    def totals(self) -> Totals:
        """An immutable copy of the sums (railcar.snapshot)."""
        return Totals(requests=self.requests, overloaded=self.overloaded,
                      timed_out=self.timed_out, status=frozen(self.status),
                      latency=self.latency.frozen(), queue=self.queue.frozen())

    def forget(self, pid: int) -> None:
        self.seen.pop(pid, None)


def _delta(now, before):
    return max(now - before, 0)
