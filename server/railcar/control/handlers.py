"""One function per admin command: `do_<command>(master, progress, **args) -> reply dict`.

Runs in the master. Replies are built with protocol.success / protocol.failure.
"""

from __future__ import annotations

import time

import gevent

from .. import __version__, states
from . import protocol


def do_ping(master, progress) -> dict:
    return protocol.success({"pid": master.pid, "version": __version__,
                             "started_at": master.started_at})


def _worker_row(worker, stats: dict | None, canary_pid: int | None) -> dict:
    """A `status --json` worker row: the process, its counters (every count it reports, as
    it answers now), its resources as last sampled."""
    row = worker.describe()
    row.update(requests=None, in_flight=None, long_lived=None, connections=None, evicted=None)
    row.update({k: v for k, v in (stats or {}).items() if type(v) is int})
    row.update(rss=worker.rss, uss=worker.uss, cpu=worker.cpu, replacing=worker.replacing,
               canary=canary_pid is not None and worker.pid == canary_pid)
    return row


def _app_status(pool) -> dict:
    view = pool.snapshot(resources=True)
    # The canary's pid and the rows' "canary" flags come from the one snapshot.
    canary = dict(view.canary) if view.canary else None
    canary_pid = canary["pid"] if canary and canary["state"] == "watching" else None
    stats = pool.ask("stats", 1.0, {w.pid for w in view.workers})
    return {
        "name": view.name,
        "root": view.root,
        "release": view.release,
        "binds": list(view.binds),
        "wanted_workers": view.wanted,
        "min_workers": view.min_workers,
        "max_workers": view.max_workers,
        "state": view.state,
        "error": view.error,
        "spawning": view.spawning.as_dict(time.monotonic()),
        "last_restart": _plain(view.last_restart),
        "restarts": dict(view.restarts),
        "replacements": dict(view.replacements),
        "last_replacement": _plain(view.last_replacement),
        "canary": canary,
        "canaries": dict(view.canaries),
        "health": _plain(view.health),
        "health_failures": view.health_failures,
        "canary_settings": dict(view.canary_settings),
        "workers": [_worker_row(w, stats.get(w.pid), canary_pid) for w in view.workers],
        "spawn_method": view.spawn_method,
        "preloaders": [{"pid": p.pid, "release": p.release, "state": p.state,
                        "current": p.current} for p in view.preloaders],
    }


def _plain(mapping) -> dict | None:
    return dict(mapping) if mapping is not None else None


def do_status(master, progress) -> dict:
    jobs = [gevent.spawn(_app_status, pool) for pool in master.pools]
    gevent.joinall(jobs)
    return protocol.success({
        "master": {"pid": master.pid, "version": __version__, "started_at": master.started_at,
                   "now": time.time()},
        "apps": [job.value for job in jobs]})


def do_requests(master, progress, app: str | None = None) -> dict:
    """Every request in flight in every worker (of one app or all)."""
    try:
        pools = master.find_pools(app)
    except LookupError as exc:
        return protocol.failure(str(exc))
    live = [{w.pid for w in pool.snapshot().workers
             if w.state in (states.READY, states.RETIRING)} for pool in pools]
    rows = []
    for pool, answers in zip(pools, _ask_all(pools, "requests", 2.0, live)):
        for pid, answer in answers.items():
            for request in (answer or {}).get("requests", []):
                rows.append(dict(request, app=pool.app.name, worker=pid))
    rows.sort(key=lambda row: -row["age"])
    return protocol.success({"requests": rows})


def do_restart(master, progress, app: str | None = None) -> dict:
    try:
        pools = master.find_pools(app)
    except LookupError as exc:
        return protocol.failure(str(exc))
    progress("restarting " + ", ".join(p.app.name for p in pools))
    results = master.restart(app, progress)
    apps = [dict(outcome.as_dict(), name=pool.app.name) for pool, outcome in results]
    failed = [a for a in apps if not a["ok"]]
    if failed:
        detail = "\n\n".join(f"{a['name']}: {a['error']}" for a in failed)
        return protocol.failure(
            "restart failed for " + ", ".join(a["name"] for a in failed)
            + "; the previous workers keep serving", detail, {"apps": apps})
    return protocol.success({"apps": apps})


def do_stop(master, progress, graceful: bool = True) -> dict:
    master.request_stop(graceful)
    return protocol.success({"pid": master.pid})


def do_backtraces(master, progress, app: str | None = None, worker: int | None = None) -> dict:
    try:
        pools = master.find_pools(app)
    except LookupError as exc:
        return protocol.failure(str(exc))
    pids = None if worker is None else {worker}
    answers = [(pool.app.name, pid, answer)
               for pool, replies in zip(pools, _ask_all(pools, "backtraces", 5.0,
                                                        [pids] * len(pools)))
               for pid, answer in replies.items()]
    if worker is not None and not answers:
        return protocol.failure(f"no worker with pid {worker}")
    return protocol.success({"workers": [
        {"app": name, "pid": pid, "text": (answer or {}).get("text", "(no answer)")}
        for name, pid, answer in answers]})


def _ask_all(pools, call: str, timeout: float, pids: list) -> list[dict]:
    """pool.ask of every pool at once (one app's slow workers never add to another's)."""
    jobs = [gevent.spawn(pool.ask, call, timeout, wanted) for pool, wanted in zip(pools, pids)]
    gevent.joinall(jobs)
    return [job.value or {} for job in jobs]
