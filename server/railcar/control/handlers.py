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


def _worker_status(pool, worker, canary_pid: int | None) -> dict:
    stats = worker.call("stats", timeout=1.0) or {}
    row = worker.describe()
    row.update(requests=stats.get("requests"), in_flight=stats.get("in_flight"),
               connections=stats.get("connections"))
    sample = pool.samples.get(worker)
    if sample is not None and sample.rss is not None:   # sampled by the master's last tick
        row.update(rss=sample.rss, uss=sample.uss, cpu=sample.cpu)
    else:
        row.update(worker.resources())
    row["replacing"] = worker in pool.replacing
    row["canary"] = canary_pid is not None and worker.pid == canary_pid
    return row


def _app_status(pool) -> dict:
    # The canary first: the rows' "canary" flags and the app's "canary" are one snapshot.
    canary = pool.canary.as_dict() if pool.canary else None
    canary_pid = canary["pid"] if canary and canary["state"] == "watching" else None
    jobs = [gevent.spawn(_worker_status, pool, w, canary_pid) for w in list(pool.workers)]
    gevent.joinall(jobs)
    ready = any(w.state == states.READY for w in pool.workers)
    return {
        "name": pool.app.name,
        "root": pool.app.root,
        "release": pool.current_release(),
        "binds": pool.app.binds,
        "wanted_workers": pool.wanted,
        "min_workers": pool.app.workers,
        "max_workers": max(pool.app.supervision.get("max_workers") or 0, pool.app.workers),
        "state": "serving" if ready else ("failed" if pool.last_error else "starting"),
        "error": pool.last_error,
        "last_restart": pool.last_restart.as_dict() if pool.last_restart else None,
        "restarts": dict(pool.restarts),
        "replacements": dict(pool.replacements),
        "last_replacement": pool.last_replacement,
        "canary": canary,
        "canaries": dict(pool.canaries),
        "health": pool.app.health,
        "health_failures": pool.health_failures,
        "canary_settings": dict(pool.app.canary),
        "workers": [job.value for job in jobs],
        "spawn_method": pool.app.supervision.get("spawn_method"),
        "preloaders": [{"pid": p.pid, "release": p.release.path, "state": p.state,
                        "current": p is pool.preloader} for p in list(pool.preloaders)],
    }


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
    targets = [(p, w) for p in pools for w in p.workers
               if w.state in (states.READY, states.RETIRING)]
    jobs = [gevent.spawn(w.call, "requests", 2.0) for _, w in targets]
    gevent.joinall(jobs)
    rows = []
    for (pool, worker), job in zip(targets, jobs):
        for request in (job.value or {}).get("requests", []):
            rows.append(dict(request, app=pool.app.name, worker=worker.pid))
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
    targets = [(p, w) for p in pools for w in p.workers if worker is None or w.pid == worker]
    if worker is not None and not targets:
        return protocol.failure(f"no worker with pid {worker}")
    jobs = [gevent.spawn(w.call, "backtraces", 5.0) for _, w in targets]
    gevent.joinall(jobs)
    return protocol.success({"workers": [
        {"app": p.app.name, "pid": w.pid, "text": (job.value or {}).get("text", "(no answer)")}
        for (p, w), job in zip(targets, jobs)]})
