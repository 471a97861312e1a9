"""Typed views of the settings table for the server: what each reader gets of an app's rows.

- Limits: the worker's protocol limits and timeouts (section "limits"); the master ships them
  to the worker as a plain dict (AppConfig.limits), the worker builds Limits from it.
- Supervision: the master's policy for an app's workers (section "supervision"): replacement
  limits, dynamic sizing, spawn method, error pages.

Fields and defaults come from the rows (settings.view): a default is written in the table
alone, and a row without its field (or a field without its row) fails at import. Standard
library only: the worker imports Limits.
"""

from __future__ import annotations

from dataclasses import dataclass

from .settings import view


@dataclass(frozen=True)
@view("limits")
class Limits:
    """Per-worker protocol limits and timeouts (seconds); 0 turns off those that say so."""

    max_request_line: int
    max_header_size: int
    max_headers: int
    max_body_size: int
    keepalive_timeout: float
    header_timeout: float
    worker_connections: int
    # Peers whose X-Forwarded-For/-Proto count: addresses, networks, "unix" (see proxies.py).
    trusted_proxies: list
    max_concurrent_requests: int     # more in flight get 503 + Retry-After
    max_request_time: float          # longer requests get 504 and `on_timeout`
    client_body_timeout: float       # longest wait for more of a request body (408)
    client_body_min_rate: int        # bytes/s a body must average after that grace
    long_lived_timeout: float        # a retiring worker keeps WebSockets and streams so long


@dataclass(frozen=True)
@view("supervision")
class Supervision:
    """What the master enforces on one app's workers (read by the pool each tick)."""

    spawn_method: str            # "smart": forked from a preloader; "direct": each imports
    environment: str             # "development": the boot error page; "production": 503
    max_requests: int            # replace after this many requests (0: never) ...
    max_requests_jitter: int     # ... plus a random 0..jitter per worker
    memory_limit: int            # MiB of USS (0: none)
    max_workers: int             # dynamic pool up to this many (0: fixed at workers)
    idle_timeout: float          # seconds an extra worker may idle before it retires

    @property
    def smart(self) -> bool:
        return self.spawn_method == "smart"

    @property
    def development(self) -> bool:
        return self.environment == "development"
