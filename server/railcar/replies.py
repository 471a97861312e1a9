"""What the master accepts from a worker or a preloader: every channel message and every reply
to a call is checked for shape before the master uses it.

Runs in the master. Workers and preloaders run app code, so whatever they send is untrusted:
a value of the wrong type, a count that is not a count, a string of any length, keys of any
number. `check_event` and `check_reply` return a clean copy holding only the fields railcar
knows, with texts cut to a bound, or raise channel.BadMessage (the reader logs and drops it
and goes on). Pure functions: no process or socket is touched here.
"""

from __future__ import annotations

import math

from .channel import BadMessage

MAX_TEXT = 64 * 1024             # a boot error, a replace reason
MAX_BACKTRACES = 3 * 1024 * 1024    # a worker sends at most 2 Mi characters
MAX_REQUESTS = 10_000            # rows of `status --requests` from one worker
MAX_FIELD = 2048                 # method, path, client of one request in flight
MAX_NAME = 32                    # a worker's event-loop backend
MAX_BUCKETS = 64
COUNTERS = ("requests", "in_flight", "long_lived", "connections", "overloaded", "timed_out",
            "evicted")
REQUIRED_COUNTERS = ("requests", "in_flight")
HISTOGRAMS = ("latency", "queue")     # {"buckets", "counts", "sum"} each
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
WORKER_LIMITS = ("max_request_time", "max_requests", "memory_limit", "max_concurrent_requests")


def show(value) -> str:
    """A short repr for error messages: worker data never goes to the log in full."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _object(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise BadMessage(f"{what} is not an object: {show(value)}")
    return value


def _count(value, what: str) -> int:
    if type(value) is not int or value < 0:
        raise BadMessage(f"{what} is not a count: {show(value)}")
    return value


def _number(value, what: str) -> float:
    if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
        raise BadMessage(f"{what} is not a non-negative number: {show(value)}")
    return value


def _text(value, what: str, limit: int = MAX_TEXT, keep_end: bool = False) -> str:
    if not isinstance(value, str):
        raise BadMessage(f"{what} is not a string: {show(value)}")
    if len(value) <= limit:
        return value
    return "..." + value[-limit:] if keep_end else value[:limit] + "..."


def _pid(value, what: str) -> int:
    if type(value) is not int or value <= 1:
        raise BadMessage(f"{what} is not a pid: {show(value)}")
    return value


# --- replies to calls -----------------------------------------------------------------------
def stats(result) -> dict:
    """{"requests", "in_flight", ...counts, "status_counts": {"2xx": n}, "latency" and
    "queue": {"buckets", "counts", "sum"}, "replace": reason}."""
    result = _object(result, "stats")
    for name in REQUIRED_COUNTERS:
        if name not in result:
            raise BadMessage(f"stats without {name}")
    clean = {name: _count(result[name], name) for name in COUNTERS if name in result}
    if "status_counts" in result:
        counts = _object(result["status_counts"], "status_counts")
        unknown = set(counts) - set(STATUS_CLASSES)
        if unknown:
            raise BadMessage(f"status_counts has unknown classes: {show(sorted(unknown))}")
        clean["status_counts"] = {name: _count(n, name) for name, n in counts.items()}
    for name in HISTOGRAMS:
        if result.get(name) is not None:
            clean[name] = _histogram(_object(result[name], name), name)
    if result.get("replace"):
        reason = _text(result["replace"], "replace", limit=500)
        if reason.partition(":")[0] not in WORKER_LIMITS:
            # Its kind keys the app's replacement counts: only names railcar knows.
            raise BadMessage(f"replace for an unknown limit: {show(reason)}")
        clean["replace"] = reason
    return clean


def _histogram(histogram: dict, name: str) -> dict:
    buckets, counts = histogram.get("buckets"), histogram.get("counts")
    if not isinstance(buckets, list) or not 0 < len(buckets) <= MAX_BUCKETS:
        raise BadMessage(f"{name} buckets: {show(buckets)}")
    bounds = [_number(b, f"{name} bucket") for b in buckets]
    if bounds != sorted(set(bounds)):
        raise BadMessage(f"{name} buckets are not increasing")
    if not isinstance(counts, list) or len(counts) != len(bounds) + 1:
        raise BadMessage(f"{name} counts do not match the buckets: {show(counts)}")
    return {"buckets": bounds, "counts": [_count(c, f"{name} count") for c in counts],
            "sum": _number(histogram.get("sum"), f"{name} sum")}


def requests(result) -> dict:
    """{"requests": [{"method", "path", "client", "age"}]}."""
    rows = _object(result, "requests").get("requests")
    if not isinstance(rows, list):
        raise BadMessage(f"requests is not a list: {show(rows)}")
    clean = []
    for row in rows[:MAX_REQUESTS]:
        row = _object(row, "a request")
        clean.append({name: _text(row.get(name), name, MAX_FIELD)
                      for name in ("method", "path", "client")})
        clean[-1]["age"] = _number(row.get("age"), "age")
    return {"requests": clean}


def backtraces(result) -> dict:
    return {"text": _text(_object(result, "backtraces").get("text"), "text", MAX_BACKTRACES)}


def fork(result) -> dict:
    """A preloader's answer: {"pid": PID} or {"error": text}."""
    result = _object(result, "fork")
    if "pid" in result:
        return {"pid": _pid(result["pid"], "pid")}
    return {"error": _text(result.get("error"), "error")}


def anything(result) -> dict:
    return _object(result, "result")


REPLIES = {"stats": stats, "requests": requests, "backtraces": backtraces, "fork": fork}


def check_reply(call: str, result) -> dict:
    """The reply to `call`, checked; raises BadMessage."""
    return REPLIES.get(call, anything)(result)


# --- events ---------------------------------------------------------------------------------
def check_event(message: dict, kind: str) -> dict:
    """An event from a worker or (kind "preloader") a preloader: {"event": "ready",
    "event_loop": its backend or None},
    {"event": "boot_error", "error"}, {"event": "health_check"}, {"event": "health_error",
    "error"}, a preloader's {"event": "exited", "pid", "returncode"}. Raises BadMessage."""
    event = message.get("event")
    if event == "ready":
        loop = message.get("event_loop")    # absent from a worker of an older railcar
        return {"event": event,
                "event_loop": _text(loop, "event_loop", MAX_NAME) if loop is not None else None}
    if event == "health_check":
        return {"event": event}
    if event in ("boot_error", "health_error"):
        return {"event": event, "error": _text(message.get("error"), "error", keep_end=True)}
    if event == "exited" and kind == "preloader":
        returncode = message.get("returncode")
        if type(returncode) is not int and returncode is not None:
            raise BadMessage(f"returncode is not an int: {show(returncode)}")
        return {"event": event, "pid": _pid(message.get("pid"), "pid"),
                "returncode": returncode}
    raise BadMessage(f"unexpected event from a {kind}: {show(event)}")
