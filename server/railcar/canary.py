"""The canary of a rolling restart: what it served while watched, and the verdict.

Runs in the master; a plain object, no process is touched here (pool.AppPool watches the
worker and feeds `record` with its `stats` replies). With `canary_duration` > 0, the first new
worker of a rolling restart serves beside every old worker, taking its share of connections
from the shared listeners, for `canary_duration` seconds. Then:

    watching -> passed   at most `max_error_rate` of its responses were 5xx, or it served
                         fewer than `min_requests` (too few to judge: `judged` is false)
    watching -> failed   its 5xx share is above `max_error_rate` over at least `min_requests`
                         requests, or the watch ended early (it exited, the server stops);
                         the restart aborts

The worker's counters start at zero (the health check is not a served request), so its
`stats` are exactly what it answered as the canary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

WATCHING = "watching"
PASSED = "passed"
FAILED = "failed"


@dataclass
class Canary:
    pid: int | None
    release: str
    duration: float
    min_requests: int
    max_error_rate: float
    beside: int                       # old workers serving beside it
    state: str = WATCHING
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    requests: int = 0
    errors: int = 0                   # 5xx responses
    judged: bool = False
    reason: str | None = None

    @classmethod
    def from_settings(cls, settings: dict, pid: int | None, release: str,
                      beside: int) -> Canary:
        return cls(pid=pid, release=release, duration=settings["canary_duration"],
                   min_requests=settings["canary_min_requests"],
                   max_error_rate=settings["canary_max_error_rate"], beside=beside)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def record(self, stats: dict | None) -> None:
        """Take the worker's latest `stats` reply (None: it did not answer; keep the last)."""
        if stats:
            self.requests = stats.get("requests", 0)
            self.errors = stats.get("status_counts", {}).get("5xx", 0)

    def counts(self) -> str:
        rate = self.error_rate
        share = f" ({rate:.1%})" if rate is not None else ""
        return f"{self.errors} of {self.requests} requests answered 5xx{share}"

    def finish(self, cut_short: str | None = None) -> bool:
        """Decide (watching -> passed/failed); True if the restart may go on.
        `cut_short`: why the watch ended early (the canary exited, the server stops): a
        failure whatever the counts."""
        self.finished_at = time.time()
        watched = f"in {self.finished_at - self.started_at:.1f} s"
        self.judged = cut_short is not None or self.requests >= self.min_requests
        if cut_short is not None:
            self.state = FAILED
            self.reason = f"the watch of canary worker {self.pid} ended early " \
                          f"({cut_short}); {self.counts()} {watched}"
        elif not self.judged:
            self.state = PASSED
            self.reason = f"{self.counts()} {watched}: fewer than canary_min_requests " \
                          f"({self.min_requests}), not judged"
        elif self.error_rate > self.max_error_rate:
            self.state = FAILED
            self.reason = f"{self.counts()} {watched}, above canary_max_error_rate " \
                          f"{self.max_error_rate:.1%}"
        else:
            self.state = PASSED
            self.reason = f"{self.counts()} {watched}, within canary_max_error_rate " \
                          f"{self.max_error_rate:.1%}"
        return self.state == PASSED

    def as_dict(self, now: float | None = None) -> dict:
        now = time.time() if now is None else now
        left = None
        if self.state == WATCHING:
            left = max(self.started_at + self.duration - now, 0.0)
        return {"state": self.state, "pid": self.pid, "release": self.release,
                "started_at": self.started_at, "finished_at": self.finished_at,
                "duration": self.duration, "seconds_left": left, "beside": self.beside,
                "requests": self.requests, "errors": self.errors,
                "error_rate": self.error_rate, "min_requests": self.min_requests,
                "max_error_rate": self.max_error_rate, "judged": self.judged,
                "reason": self.reason}
