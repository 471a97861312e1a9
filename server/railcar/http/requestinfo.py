"""What the worker adds to a request of its own: its id and its queue time.

Runs in a worker, once per request, so each piece is cheap:

- Request id: a client's (or proxy's) `X-Request-Id` is kept when it is 1 to 128 characters
  of letters, digits and `-_.:+/=@~` (enough for UUIDs, base64 and most tracing ids);
  anything else, or none, is replaced by 32 random hex digits (os.urandom, drawn 4 KiB at
  a time and afresh in a forked child: a getrandom call per request was a third of a small
  request's system calls). The app gets it as HTTP_X_REQUEST_ID and the response carries
  it as `X-Request-Id`.
- Queue time: how long the request waited between the front web server taking it and the
  app being called, from `X-Request-Start` (nginx `t=${msec}`: seconds with milliseconds;
  Apache `%t`: `t=` microseconds; also bare numbers, in seconds, milliseconds or
  microseconds since the epoch, told apart by their size). Only a trusted proxy's header
  counts (the connection decides); a value in the future by less than a second (clocks,
  rounding) counts as 0, anything further off as absent.
"""

from __future__ import annotations

import os
import re

__all__ = ["request_id", "queue_time"]

_REQUEST_ID = re.compile(r"[A-Za-z0-9\-_.:+/=@~]{1,128}")
_REQUEST_START = re.compile(r"(?:t=)?([0-9]{1,20}(?:\.[0-9]{1,9})?)")
_MAX_QUEUE = 86400.0   # a request start further back is not one
_SKEW = 1.0            # a start this far in the future is a clock or rounding difference
_POOL = 4096           # random bytes drawn at once: 256 request ids

_random = b""          # random bytes drawn, of which the first `_used` went into ids
_used = _POOL


def _forget_random() -> None:
    """In a forked child: draw afresh, or parent and child would hand out the same ids."""
    global _used
    _used = _POOL


os.register_at_fork(after_in_child=_forget_random)


def request_id(offered: str | None) -> str:
    """The request's id: `offered` (an X-Request-Id value) if acceptable, else a new one."""
    global _random, _used
    if offered and _REQUEST_ID.fullmatch(offered):
        return offered
    used = _used
    if used >= _POOL:
        _random = os.urandom(_POOL)
        used = 0
    _used = used + 16
    return _random[used:used + 16].hex()


def queue_time(value: str, now: float) -> float | None:
    """Seconds from the X-Request-Start `value` to `now` (time.time()), or None."""
    match = _REQUEST_START.fullmatch(value.strip())
    if match is None:
        return None
    start = float(match.group(1))
    if start > 1e14:        # microseconds (Apache's %t, 16 digits today)
        start /= 1e6
    elif start > 1e11:      # milliseconds (13 digits today)
        start /= 1e3
    waited = now - start
    if waited < 0:
        return 0.0 if waited > -_SKEW else None
    return waited if waited < _MAX_QUEUE else None
