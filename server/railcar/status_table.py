"""Render `railcar status` for people: one block per app, one row per worker."""

from __future__ import annotations

import os


def _size(value) -> str:
    if value is None:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return "-"


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _dash(value) -> str:
    return "-" if value is None else str(value)


def _canary_line(canary: dict, now: float) -> str:
    rate = canary["error_rate"]
    counts = (f"{canary['errors']} of {canary['requests']} requests 5xx"
              + (f" ({rate:.1%})" if rate is not None else "")
              + f", limit {canary['max_error_rate']:.1%} over at least "
              f"{canary['min_requests']}")
    where = f"worker {canary['pid']}, release {os.path.basename(canary['release'])}"
    if canary["state"] == "watching":
        return (f"canary: watching {where} beside {canary['beside']} old, "
                f"{canary['seconds_left']:.0f}s of {canary['duration']:g}s left; {counts}")
    verdict = "FAILED" if canary["state"] == "failed" else canary["state"]
    return (f"last canary: {verdict} {_duration(now - canary['finished_at'])} ago ({where}): "
            f"{canary['reason']}")


COLUMNS = ("PID", "STATE", "RELEASE", "REQUESTS", "IN FLIGHT", "LONG-LIVED", "CPU%", "RSS",
           "USS", "UPTIME")


def render(status: dict) -> str:
    now = status["master"]["now"]
    lines = [f"railcar {status['master']['version']}  master pid {status['master']['pid']}  "
             f"up {_duration(now - status['master']['started_at'])}"]
    for app in status["apps"]:
        lines.append("")
        lines.append(f"{app['name']}  [{app['state']}]  {' '.join(app['binds'])}  "
                     f"root {app['root']}")
        lines.append(f"  release: {app['release'] or '-'}")
        restart = app.get("last_restart")
        if restart:
            outcome = "ok" if restart["ok"] else "FAILED"
            took = restart["finished_at"] - restart["started_at"]
            lines.append(f"  last restart: {outcome} in {took:.1f}s, "
                         f"{_duration(now - restart['finished_at'])} ago, release "
                         f"{os.path.basename(restart.get('release') or '') or '-'}")
        for preloader in app.get("preloaders") or []:
            lines.append(f"  preloader: {preloader['pid']} {preloader['state']}, release "
                         f"{os.path.basename(preloader['release'])}"
                         + (" (new workers fork from it)" if preloader["current"] else ""))
        if app.get("max_workers", 0) > app.get("min_workers", 0):
            lines.append(f"  pool: {app['wanted_workers']} wanted "
                         f"({app['min_workers']}..{app['max_workers']})")
        replaced = app.get("last_replacement")
        if replaced:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(app["replacements"].items()))
            lines.append(f"  replaced workers: {counts}; last: {replaced['pid']} -> "
                         f"{replaced['new_pid']}, {_duration(now - replaced['at'])} ago "
                         f"({replaced['reason']})")
        health = app.get("health")
        if health:
            failed = app.get("health_failures")
            lines.append(f"  health check: GET {health['path']} (Host: {health['host']}), "
                         f"accepts {health['statuses']} within {health['timeout']:g}s"
                         + (f"; {failed} new worker(s) failed it" if failed else ""))
        canary = app.get("canary")
        if canary:
            lines.append("  " + _canary_line(canary, now))
        if app.get("error"):
            lines.append("  error: " + app["error"].replace("\n", "\n    "))
        rows = [COLUMNS] + [(
            _dash(w["pid"]), w["state"] + (" (canary)" if w.get("canary") else ""),
            os.path.basename(w["release"] or "") or "-",
            _dash(w.get("requests")), _dash(w.get("in_flight")), _dash(w.get("long_lived")),
            "-" if w.get("cpu") is None else f"{w['cpu']:.1f}", _size(w.get("rss")),
            _size(w.get("uss")),
            _duration(now - w["started_at"])) for w in app["workers"]]
        widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
        for row in rows:
            lines.append("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
    return "\n".join(lines)


REQUEST_COLUMNS = ("APP", "WORKER", "AGE", "METHOD", "PATH", "CLIENT")


def render_requests(result: dict) -> str:
    """`railcar status --requests`: one row per request in flight, oldest first."""
    requests = result["requests"]
    if not requests:
        return "no requests in flight"
    rows = [REQUEST_COLUMNS] + [(
        r["app"], str(r["worker"]), f"{r['age']:.1f}s", r["method"],
        r["path"] if len(r["path"]) <= 80 else r["path"][:77] + "...", r["client"])
        for r in requests]
    widths = [max(len(row[i]) for row in rows) for i in range(len(REQUEST_COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in rows)
